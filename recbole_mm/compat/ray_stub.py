"""Fixes 1-3 (ray): RecBole 1.2.1 imports ``ray.tune`` at ``import recbole.quick_start``. Delete when RecBole
drops ray or ray <= 2.6.3 imports on setuptools >= 82, numpy 2 and Python 3.12."""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types
from typing import Any

import numpy as np


# recbole/quick_start/quick_start.py:20 does `from ray import tune` for one call, `tune.report` in
# objective_function. ray<=2.6.3 (RecBole's pin) imports pkg_resources, removed in setuptools 82,
# and uses np.bool8, removed in numpy 2; it has no wheels for Python 3.12, so it is often absent.
def install() -> None:
    if "ray.tune" in sys.modules:
        return
    reason = _cannot_import()
    if reason is None:
        reason = _try_import()
        if reason is None:
            return
    ray = types.ModuleType("ray")
    tune = types.ModuleType("ray.tune")
    tune.report = _tune_report_noop
    ray.tune = tune
    ray.__recbole_mm_stub__ = reason  # why the real ray could not be used, for anyone debugging
    sys.modules["ray"] = ray
    sys.modules["ray.tune"] = tune


def _tune_report_noop(*args: Any, **kwargs: Any) -> None:
    """Stand-in for ``ray.tune.report``: outside a ray trial the report has nowhere to go."""


def _cannot_import() -> str | None:
    """Why ray cannot import here, known without importing it (a failed import still loads about 16 MiB of
    its dependencies into the process); None when only trying tells."""
    from importlib import metadata

    try:
        version = metadata.version("ray")
    except metadata.PackageNotFoundError:
        return "ray is not installed"
    major_minor = tuple(int(p) for p in version.split(".")[:2] if p.isdigit())
    if major_minor <= (2, 6) and importlib.util.find_spec("pkg_resources") is None:
        return f"ray {version} imports pkg_resources, which this setuptools no longer has"
    return None


def _try_import() -> str | None:
    """Import the real ``ray.tune`` (None: it works) or say why it failed, leaving no ray module behind."""
    had_bool8 = hasattr(np, "bool8")
    if not had_bool8:
        np.bool8 = np.bool_  # ray/tune/logger/tensorboardx.py:41, only while ray imports
    try:
        importlib.import_module("ray.tune")
        return None
    except Exception as exc:  # the real ray is broken (numpy 2, Python 3.12): stub it
        for name in [m for m in sys.modules if m == "ray" or m.startswith("ray.")]:
            del sys.modules[name]
        return f"{type(exc).__name__}: {exc}"
    finally:
        if not had_bool8 and hasattr(np, "bool8"):
            del np.bool8

"""Where the top-level ``properties/``, ``dataset_configs/`` and ``dataset/`` folders live.

In a source checkout (editable install or not installed at all) they sit next to the package; a
wheel installs them as data files under ``<prefix>/share/recbole_mm/``.
"""

from __future__ import annotations

import site
import sys
import sysconfig
from functools import lru_cache
from pathlib import Path

_MARKER = Path("properties") / "model"


@lru_cache(maxsize=1)
def resource_root() -> Path:
    """The folder holding ``properties/``, ``dataset_configs/`` and ``dataset/``."""
    checkout = Path(__file__).resolve().parent.parent
    candidates = [checkout]
    for prefix in (sysconfig.get_path("data"), sys.prefix, getattr(site, "USER_BASE", None)):
        if prefix:
            candidates.append(Path(prefix) / "share" / "recbole_mm")
    for candidate in candidates:
        if (candidate / _MARKER).is_dir():
            return candidate
    raise FileNotFoundError(
        "recbole_mm's properties/ folder was not found next to the package nor under "
        f"<prefix>/share/recbole_mm (looked in {', '.join(map(str, candidates))}); reinstall recbole_mm"
    )


def checkout_root() -> Path | None:
    """The source checkout this recbole_mm runs from (editable install, or the checkout on sys.path);
    None when it was installed from a wheel or an index."""
    root = Path(__file__).resolve().parent.parent
    return root if (root / "setup.cfg").is_file() and (root / _MARKER).is_dir() else None


def install_command(extra: str) -> str:
    """The pip command that adds an optional extra where recbole_mm runs from: the checkout's own path
    in a checkout (recbole_mm is not on an index there, so ``recbole_mm[extra]`` would not resolve), the
    package name once installed."""
    root = checkout_root()
    if root is not None:
        return f"pip install -e '{root}[{extra}]'"
    return f"pip install 'recbole_mm[{extra}]'"


def model_properties_file(model: str) -> Path:
    """The yaml of a plugin model's defaults (may not exist)."""
    return resource_root() / "properties" / "model" / f"{model}.yaml"


def dataset_config_file(dataset: str) -> Path:
    """The shipped yaml for a dataset name (may not exist)."""
    return resource_root() / "dataset_configs" / f"{dataset}.yaml"


def bundled_data_root() -> Path:
    """The folder holding the datasets shipped with recbole_mm, one sub-folder each."""
    return resource_root() / "dataset"

"""When recbole_mm attaches itself to RecBole: once, and only when RecBole is used.

``import recbole_mm`` imports neither torch nor RecBole, so commands that need neither (``recbole-mm
download``, ``recbole-mm features``) start quickly. What the plugin promises still holds for any code that
imports recbole_mm first, RecBole's own entry points included:

- the moment the ``recbole`` package has been imported (or at once, if it already was), RecBole's version
  fixes (:mod:`recbole_mm.compat`), the plugin's hooks on RecBole (:mod:`recbole_mm.hooks`) and its log
  folders (:mod:`recbole_mm.logs`) are installed, before any RecBole submodule is loaded; these import
  RecBole and third-party modules only, never a recbole_mm module that may be half-imported at that moment;
- the plugin's models, datasets and config defaults (:func:`recbole_mm.registry.register`, which imports
  every model) are registered at the first ``Config(...)`` or at RecBole's first lookup of a model module
  it cannot find, i.e. on first use, never while a recbole_mm module is still being imported.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import sys
from typing import Any

_installed = False
# RecBole's get_model probes recbole.model.<subpackage>.<name lowercased>; plugin models live under this one.
_MODEL_PACKAGE = "recbole.model.general_recommender."


def install() -> None:
    """Install RecBole's fixes and the plugin's hooks (RecBole is imported if it is not yet); once only."""
    global _installed
    if _installed:
        return
    _installed = True  # set first: the installs below import RecBole, whose import would call this again
    try:
        from recbole_mm import compat, deferred_imports, hooks, logs

        deferred_imports.install()  # before the fixes: they import RecBole's config, and so its evaluator
        compat.install()
        hooks.install()
        logs.install()
        _register_on_first_config()
    except BaseException:
        _installed = False
        raise


def _register_on_first_config() -> None:
    from recbole.config.configurator import Config

    original = Config.__init__
    if getattr(original, "_recbole_mm", False):
        return

    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        from recbole_mm import registry

        registry.register()  # once; its Config hooks must be in place before this Config reads anything
        original(self, *args, **kwargs)

    __init__._recbole_mm = True
    __init__.__wrapped__ = original
    Config.__init__ = __init__


class _RecBoleImportHook(importlib.abc.MetaPathFinder):
    """First on ``sys.meta_path``: runs :func:`install` right after the ``recbole`` package is executed."""

    def find_spec(self, fullname: str, path: Any, target: Any = None) -> Any:
        if fullname != "recbole":
            return None
        sys.meta_path.remove(self)  # one use; the search below must not find this finder again
        spec = importlib.util.find_spec("recbole")
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        exec_recbole = spec.loader.exec_module

        def exec_module(module: Any) -> None:
            exec_recbole(module)
            install()

        spec.loader.exec_module = exec_module  # this loader instance only: recbole's own, one import
        return spec


class _PluginModelFinder(importlib.abc.MetaPathFinder):
    """Last on ``sys.meta_path``: when RecBole looks for a model module that nobody else found (``get_model``
    before any ``Config``) and it is a plugin model's, import it through :func:`recbole_mm.registry.register`."""

    def find_spec(self, fullname: str, path: Any, target: Any = None) -> Any:
        if not fullname.startswith(_MODEL_PACKAGE) or fullname.count(".") != 3:
            return None
        from recbole_mm.model.general_recommender import MODELS

        if fullname[len(_MODEL_PACKAGE):] not in {name.lower() for name in MODELS}:
            return None
        return importlib.machinery.ModuleSpec(fullname, self)

    def create_module(self, spec: Any) -> None:
        return None

    def exec_module(self, module: Any) -> None:
        from recbole_mm import registry

        # register() puts the plugin's own module under this name; importlib returns what sys.modules holds.
        registry.register()


def activate() -> None:
    """Called by ``import recbole_mm``: install now if RecBole is loaded, else when it is first imported."""
    if not any(isinstance(f, _PluginModelFinder) for f in sys.meta_path):
        sys.meta_path.append(_PluginModelFinder())
    if "recbole" in sys.modules:
        install()
    elif not any(isinstance(f, _RecBoleImportHook) for f in sys.meta_path):
        sys.meta_path.insert(0, _RecBoleImportHook())

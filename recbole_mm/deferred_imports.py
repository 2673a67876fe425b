"""scikit-learn for RecBole on first use, not at import.

RecBole 1.2.1 imports five scikit-learn names at import time: three functions in its metrics module (AUC,
MAE and RMSE) and, because ``recbole.model.general_recommender`` imports every model, ``randomized_svd`` for
NCEPLRec and ``ElasticNet`` / ``ConvergenceWarning`` for SLIMElastic. ``import sklearn`` alone loads
sklearn.base, scipy.stats and joblib: about 70 MiB of resident memory in every RecBole process, which is most
of what a run holds above an MMRec run of the same model (``benchmarks/load_rss.py``), and about a second of
start-up, although no multimodal run calls any of the five.

While one of those three RecBole modules is executed, ``sklearn`` and the submodules it names are stand-ins
(then removed from ``sys.modules`` again, so any other ``import sklearn`` is the real package). A stand-in
function imports the real module when it is first called and then replaces every stand-in in the RecBole
module's namespace with the real object, so later calls, and ``ConvergenceWarning`` in SLIMElastic's warning
filter (used after its first ``ElasticNet(...)``), are scikit-learn's own. When scikit-learn is already
imported, nothing is deferred.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import types
from typing import Any

# RecBole module → {scikit-learn module: names it imports from there}.
DEFERRED: dict[str, dict[str, tuple[str, ...]]] = {
    "recbole.evaluator.metrics": {"sklearn.metrics": ("auc", "mean_absolute_error", "mean_squared_error")},
    "recbole.model.general_recommender.nceplrec": {"sklearn.utils.extmath": ("randomized_svd",)},
    "recbole.model.general_recommender.slimelastic": {"sklearn.linear_model": ("ElasticNet",),
                                                      "sklearn.exceptions": ("ConvergenceWarning",)},
}
# Names RecBole uses as a class (a warning category), not as a function: their stand-in is a class.
_CLASSES = {"ConvergenceWarning"}


def _materialise(module_name: str) -> None:
    """Replace every stand-in in the RecBole module's namespace by the real scikit-learn object."""
    namespace = vars(sys.modules[module_name])
    for key, value in list(namespace.items()):
        source = getattr(value, "__recbole_mm_deferred__", None)
        if source is not None:
            namespace[key] = getattr(importlib.import_module(source[0]), source[1])


def _standin(module_name: str, source: str, name: str) -> Any:
    if name in _CLASSES:
        standin = type(name, (UserWarning,), {"__module__": source})
    else:
        def standin(*args: Any, **kwargs: Any) -> Any:
            _materialise(module_name)
            return getattr(importlib.import_module(source), name)(*args, **kwargs)

        standin.__name__ = standin.__qualname__ = name
        standin.__doc__ = f"{source}.{name}, imported on first call (recbole_mm.deferred_imports)."
    standin.__recbole_mm_deferred__ = (source, name)
    return standin


def _standin_modules(module_name: str) -> dict[str, types.ModuleType]:
    modules: dict[str, types.ModuleType] = {}
    for source, names in DEFERRED[module_name].items():
        parts = source.split(".")
        for i in range(1, len(parts) + 1):
            modules.setdefault(".".join(parts[:i]), types.ModuleType(".".join(parts[:i])))
        for name in names:
            setattr(modules[source], name, _standin(module_name, source, name))
    for dotted, module in modules.items():  # `import sklearn.x` binds x on its parent
        if "." in dotted:
            parent, _, child = dotted.rpartition(".")
            setattr(modules[parent], child, module)
    return modules


class _DeferSklearn(importlib.abc.MetaPathFinder):
    """First on ``sys.meta_path``: runs the modules of :data:`DEFERRED` with stand-in scikit-learn modules."""

    def find_spec(self, fullname: str, path: Any, target: Any = None) -> Any:
        if fullname not in DEFERRED or "sklearn" in sys.modules:
            return None
        sys.meta_path.remove(self)  # the search below must not find this finder again
        try:
            spec = importlib.util.find_spec(fullname)
        finally:
            sys.meta_path.insert(0, self)
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        run_module = spec.loader.exec_module

        def exec_module(module: Any) -> None:
            if "sklearn" in sys.modules:  # imported meanwhile: nothing left to save
                return run_module(module)
            standins = _standin_modules(fullname)
            sys.modules.update(standins)
            try:
                run_module(module)
            finally:
                for name, standin in standins.items():
                    if sys.modules.get(name) is standin:
                        del sys.modules[name]

        spec.loader.exec_module = exec_module  # this spec's loader only: one import of that module
        return spec


def install() -> None:
    """Defer scikit-learn for the RecBole modules not imported yet; once."""
    if not any(isinstance(finder, _DeferSklearn) for finder in sys.meta_path):
        sys.meta_path.insert(0, _DeferSklearn())

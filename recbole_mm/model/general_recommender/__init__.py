"""General (user-item) recommenders of recbole_mm: the one list of the plugin's models.

Every module below this package (sub-packages included) is imported, and each RecBole model class it
defines (a subclass of RecBole's ``AbstractRecommender`` whose name does not start with ``_``) is a
plugin model under its class name: adding a model is adding its file, nothing is listed by hand
(RecBole-GNN finds its models by module the same way). :data:`MODELS` maps name → class; the classes
are also attributes of this package (``from recbole_mm.model.general_recommender import GUME``).
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import sys
from types import ModuleType

from recbole.model.abstract_recommender import AbstractRecommender


def find_models(package: ModuleType) -> dict[str, type]:
    """The model classes defined in ``package``'s modules (sub-packages included), by class name, the
    modules in name order; two models of one name are refused (RecBole finds models by name)."""
    models: dict[str, type] = {}
    found = pkgutil.walk_packages(package.__path__, prefix=f"{package.__name__}.")
    for info in sorted(found, key=lambda info: info.name):
        module = importlib.import_module(info.name)
        for name, cls in inspect.getmembers(module, inspect.isclass):
            if cls.__module__ != module.__name__ or not issubclass(cls, AbstractRecommender) or name.startswith("_"):
                continue
            if name in models:
                raise ImportError(f"two recbole_mm models named {name}, in {models[name].__module__} and "
                                  f"{module.__name__}; rename one of the classes")
            models[name] = cls
    return models


MODELS: dict[str, type] = find_models(sys.modules[__name__])
globals().update(MODELS)
__all__ = sorted(MODELS)

"""recbole_mm: multimodal recommendation models for RecBole (the list: ``recbole_mm.model.general_recommender``).

``import recbole_mm`` makes RecBole 1.2.1 work on today's numpy/scipy/pandas/torch
(:mod:`recbole_mm.compat`) and makes RecBole's own ``get_model``, ``run_recbole``,
``load_data_and_model`` and ``HyperTuning`` find the plugin's models by name. It does so lazily
(:mod:`recbole_mm.plugin`): torch and RecBole are not imported until they are used, so the
download and features commands start without them. The names below are imported on first access.
"""

from recbole_mm import plugin

plugin.activate()

__version__ = "0.1.0"

# Public name → the module that defines it (imported when the name is first used).
_EXPORTS = {
    "GraphRecommender": "recbole_mm.model.abstract_recommender",
    "MultiModalDataset": "recbole_mm.data",
    "MultiModalRecommender": "recbole_mm.model.abstract_recommender",
    "create_dataset": "recbole_mm.quick_start",
    "load_data_and_model": "recbole_mm.quick_start",
    "objective_function": "recbole_mm.quick_start",
    "run_recbole": "recbole_mm.quick_start",
    "recommend": "recbole_mm.recommendations",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    import importlib
    import importlib.util

    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    # `import recbole_mm; recbole_mm.quick_start.run(...)` worked when every submodule was imported eagerly.
    if not name.startswith("_") and importlib.util.find_spec(f"{__name__}.{name}") is not None:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module 'recbole_mm' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])

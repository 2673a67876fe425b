"""recbole_mm: multimodal recommendation models (VBPR, GUME, MM-GEF, FREEDOM, LATTICE, BM3, MGCN) for RecBole.

``import recbole_mm`` makes RecBole 1.2.1 work on today's numpy/scipy/pandas/torch
(:mod:`recbole_mm.compat`) and registers the plugin's models so that RecBole's own ``get_model``,
``run_recbole``, ``load_data_and_model`` and ``HyperTuning`` find them by name.
"""

from recbole_mm import compat

compat.install()

from recbole_mm import logs  # noqa: E402

logs.install()  # RecBole's log folders under log_dir (default: the working directory, as RecBole)

from recbole_mm import registry  # noqa: E402  (needs the shims above)

registry.register()

from recbole_mm.data import MultiModalDataset  # noqa: E402
from recbole_mm.model.abstract_recommender import MultiModalRecommender  # noqa: E402
from recbole_mm.quick_start import (  # noqa: E402
    create_dataset,
    load_data_and_model,
    objective_function,
    run_recbole,
)
from recbole_mm.recommendations import recommend  # noqa: E402

__version__ = "0.1.0"
__all__ = [
    "MultiModalDataset",
    "MultiModalRecommender",
    "create_dataset",
    "load_data_and_model",
    "objective_function",
    "recommend",
    "run_recbole",
]

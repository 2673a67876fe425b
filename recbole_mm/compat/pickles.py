"""Fixes 17-19 (RecBole 1.2.1 unpickles files it finds): the dataset and dataloader caches, and LDiffRec's
``item_emb.npy``. Not version fixes; delete when RecBole stops unpickling those files. Tests:
``tests/test_security.py``."""

from __future__ import annotations

import types
from typing import Any

import numpy as np


# data/utils.py:61 (create_dataset) and :122 (load_split_dataloaders, from data_preparation) pickle.load
# the file at dataset_save_path / dataloaders_save_path, or at RecBole's default cache path in
# checkpoint_dir when none is set, whatever save_dataset / save_dataloaders say: a file dropped into
# saved/ ran its code at the next training run. They are read only under trust_pickle: True.
def _readable_cache(config: Any, path_key: str, default_file: str) -> bool:
    """True when RecBole may read its pickled cache (``trust_pickle: True``, said in a log line when the
    file is there). Otherwise a configured path is an error and a file at the default path is ignored
    with a warning."""
    import os
    from logging import getLogger

    from recbole_mm.config_check import ConfigError, pickle_cache_problem
    from recbole_mm.errors import warn_user

    named = config[path_key]
    if config["trust_pickle"] is True:
        file = named or default_file
        if os.path.exists(file):
            getLogger().warning(f"trust_pickle: True, so the pickled cache {file} is read (unpickling runs any "
                                "code the file holds: only for files you wrote)")
        return True
    if named:
        raise ConfigError(pickle_cache_problem(config, path_key, named))
    if os.path.exists(default_file):
        warn_user(f"{default_file} (a pickled {path_key.split('_')[0]} cache at RecBole's default path) was not "
                  "read: unpickling can run any code it holds; delete it, or set trust_pickle: True if you "
                  "wrote it yourself")
    return False


def _dataset_class(config: Any) -> Any:
    """The class RecBole's ``create_dataset`` builds for ``config`` (``<Model>Dataset`` or its model type's)."""
    from recbole.data import dataset as datasets
    from recbole.utils import ModelType

    own = getattr(datasets, f"{config['model']}Dataset", None)
    if own is not None:
        return own
    by_type = {ModelType.SEQUENTIAL: "SequentialDataset", ModelType.KNOWLEDGE: "KnowledgeBasedDataset"}
    return getattr(datasets, by_type.get(config["MODEL_TYPE"], "Dataset"))


def _install_pickle_caches() -> None:
    import os

    import recbole.data
    import recbole.data.utils as data_utils
    import recbole.quick_start
    import recbole.quick_start.quick_start as recbole_quick_start

    original_create, original_load = data_utils.create_dataset, data_utils.load_split_dataloaders
    if getattr(original_create, "_recbole_mm", False):
        return

    def create_dataset(config: Any) -> Any:
        dataset_class = _dataset_class(config)
        default = os.path.join(config["checkpoint_dir"], f"{config['dataset']}-{dataset_class.__name__}.pth")
        if _readable_cache(config, "dataset_save_path", default):
            return original_create(config)
        dataset = dataset_class(config)
        if config["save_dataset"]:
            dataset.save()
        return dataset

    def load_split_dataloaders(config: Any) -> Any:
        default = os.path.join(config["checkpoint_dir"], f"{config['dataset']}-for-{config['model']}-dataloader.pth")
        return original_load(config) if _readable_cache(config, "dataloaders_save_path", default) else None

    create_dataset._recbole_mm = True
    for module in (data_utils, recbole.data, recbole_quick_start, recbole.quick_start):
        if getattr(module, "create_dataset", None) is original_create:
            module.create_dataset = create_dataset
        if getattr(module, "load_split_dataloaders", None) is original_load:
            module.load_split_dataloaders = load_split_dataloaders


# LDiffRec reads <dataset folder>/item_emb.npy with np.load(..., allow_pickle=True) (ldiffrec.py:232): an
# object array in that file runs code when loaded. The embeddings are numbers, so pickles are refused.
def _load_numbers_only(file: Any, *args: Any, **kwargs: Any) -> Any:
    """``np.load`` that never unpickles: an object array is one line naming the file."""
    from recbole_mm.errors import DataError

    kwargs["allow_pickle"] = False
    try:
        return np.load(file, *args, **kwargs)
    except ValueError as exc:
        if "allow_pickle" not in str(exc):
            raise
        raise DataError(f"{file}: holds pickled Python objects, which recbole_mm does not load (unpickling can "
                        "run code); save the embeddings as a numeric array (np.save of a float array)") from exc


class _NumbersOnlyNumpy(types.ModuleType):
    """numpy as one RecBole module sees it: the same names, with :func:`_load_numbers_only` as ``load``."""

    load = staticmethod(_load_numbers_only)

    def __getattr__(self, name: str) -> Any:
        return getattr(np, name)


def _install_numbers_only_np_load() -> None:
    import recbole.model.general_recommender.ldiffrec as ldiffrec

    if not isinstance(ldiffrec.np, _NumbersOnlyNumpy):
        ldiffrec.np = _NumbersOnlyNumpy("numpy")


def install() -> None:
    """Fixes 17, 18 and 19."""
    _install_pickle_caches()
    _install_numbers_only_np_load()

"""recbole_mm's quick-start API, drop-in equivalents of RecBole's for plugin and RecBole models.

They differ from RecBole's in three ways: general models read their data through
:class:`~recbole_mm.data.MultiModalDataset` (MMRec layout and item features), the dataset and its
feature files are validated before anything is written (log, checkpoint), and training runs on
recbole_mm's :class:`~recbole_mm.trainer.Trainer`, which records the best epoch and timings.
"""

from __future__ import annotations

import sys
from logging import getLogger
from time import perf_counter
from typing import Any

from recbole.config import Config
from recbole.data import create_dataset as recbole_create_dataset
from recbole.data import data_preparation
from recbole.trainer import Trainer as RecBoleTrainer
from recbole.utils import ModelType, get_model, get_trainer, init_logger, init_seed

from recbole_mm.checkpoint import load_checkpoint
from recbole_mm.config_check import check_against_dataset, make_checked_config
from recbole_mm.data.dataset import MultiModalDataset
from recbole_mm.data.protocol import apply_protocol
from recbole_mm.model.abstract_recommender import MultiModalRecommender
from recbole_mm.registry import canonical_model_name
from recbole_mm.trainer import PROTOCOL_MARK, Trainer, check_resume_file


def make_config(model: Any = None, dataset: str | None = None, config_file_list: list[str] | None = None,
                config_dict: dict | None = None) -> Config:
    """RecBole's ``Config``, after checking the model name (aliases resolved, unknown names refused),
    with every value checked (:mod:`recbole_mm.config_check`) before anything is written."""
    if isinstance(model, str):
        model = canonical_model_name(model)
    return make_checked_config(model, dataset, config_file_list, config_dict)


def create_dataset(config: Config):
    """RecBole's ``create_dataset``, except that general models use ``MultiModalDataset``."""
    import recbole.data.dataset as recbole_datasets

    own_class = hasattr(recbole_datasets, f"{config['model']}Dataset")
    if own_class or config["MODEL_TYPE"] not in (ModelType.GENERAL, ModelType.TRADITIONAL):
        return recbole_create_dataset(config)
    dataset = MultiModalDataset(config)
    if config["save_dataset"]:
        dataset.save()
    return dataset


def needs_item_features(config: Config) -> bool:
    """True when the configured model consumes item features."""
    return issubclass(get_model(config["model"]), MultiModalRecommender)


def make_trainer(config: Config, model):
    """The model's RecBole trainer; plain ``Trainer`` is swapped for recbole_mm's recording subclass."""
    trainer_class = get_trainer(config["MODEL_TYPE"], config["model"])
    if trainer_class is RecBoleTrainer:
        trainer_class = Trainer
    return trainer_class(config, model)


def prepare_data(config: Config, dataset) -> tuple:
    """RecBole's ``data_preparation`` plus recbole_mm's protocol switches (``test_masking``,
    ``negative_items``; see :mod:`recbole_mm.data.protocol`)."""
    train_data, valid_data, test_data = apply_protocol(config, *data_preparation(config, dataset))
    setattr(train_data, PROTOCOL_MARK, True)
    return train_data, valid_data, test_data


def _load_checked_dataset(config: Config):
    dataset = create_dataset(config)
    if needs_item_features(config):
        _ = dataset.item_features  # read and validate feature files now, before training starts
    check_against_dataset(config, dataset)
    return dataset


def _build_model(config: Config, train_data):
    init_seed(config["seed"] + config["local_rank"], config["reproducibility"])
    return get_model(config["model"])(config, train_data._dataset).to(config["device"])


def peak_memory_mb(device: Any) -> dict:
    """Peak resident memory of this process (MiB) and, on CUDA, peak allocated GPU memory."""
    import resource

    import torch

    peak = {"rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}  # Linux reports KiB
    if getattr(device, "type", str(device)) == "cuda":
        peak["cuda"] = torch.cuda.max_memory_allocated(device) / 2**20
    return peak


def run_recbole(model: Any = None, dataset: str | None = None, config_file_list: list[str] | None = None,
                config_dict: dict | None = None, saved: bool = True, resume: str | None = None) -> dict:
    """Train and test a model; returns RecBole's result dict plus ``best_epoch``, ``history``,
    ``saved_model_file`` and ``wall_seconds``. ``resume``: a checkpoint of a killed run with the same
    settings (``<name>.pth`` or ``<name>.last.pth``); training continues after its last epoch.
    """
    start = perf_counter()
    config = make_config(model, dataset, config_file_list, config_dict)
    if resume:
        check_resume_file(resume)
    init_seed(config["seed"], config["reproducibility"])
    # Data and features are checked before init_logger writes anything, so bad input leaves no files.
    dataset = _load_checked_dataset(config)
    init_logger(config)
    logger = getLogger()
    logger.info(sys.argv)
    logger.info(config)
    logger.info(dataset)

    train_data, valid_data, test_data = prepare_data(config, dataset)
    model = _build_model(config, train_data)
    logger.info(model)
    trainer = make_trainer(config, model)
    if resume:
        trainer.resume_checkpoint(resume)
    best_valid_score, best_valid_result = trainer.fit(
        train_data, valid_data, saved=saved, show_progress=config["show_progress"]
    )
    test_result = trainer.evaluate(test_data, load_best_model=saved, show_progress=config["show_progress"])
    return {
        "best_valid_score": best_valid_score,
        "valid_score_bigger": config["valid_metric_bigger"],
        "best_valid_result": best_valid_result,
        "test_result": test_result,
        "best_epoch": getattr(trainer, "best_epoch", None),
        "history": getattr(trainer, "history", []),
        "saved_model_file": trainer.saved_model_file if saved else None,
        "wall_seconds": perf_counter() - start,
        "peak_memory_mb": peak_memory_mb(config["device"]),
        "n_parameters": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "config": config,
    }


def objective_function(config_dict: dict | None = None, config_file_list: list[str] | None = None,
                       saved: bool = True) -> dict:
    """RecBole's ``objective_function`` for ``HyperTuning``, for plugin and RecBole models alike."""
    import logging

    from ray import tune  # the real ray.tune or recbole_mm.compat's stub

    config = make_config(config_dict=config_dict, config_file_list=config_file_list)
    init_seed(config["seed"], config["reproducibility"])
    logger = getLogger()
    for handler in logger.handlers[:]:
        logger.removeHandler(handler)
    init_logger(config)
    logging.basicConfig(level=logging.ERROR)
    dataset = _load_checked_dataset(config)
    train_data, valid_data, test_data = prepare_data(config, dataset)
    model = _build_model(config, train_data)
    trainer = make_trainer(config, model)
    best_valid_score, best_valid_result = trainer.fit(train_data, valid_data, verbose=False, saved=saved)
    test_result = trainer.evaluate(test_data, load_best_model=saved)
    tune.report(**test_result)
    return {
        "model": config["model"],
        "best_valid_score": best_valid_score,
        "valid_score_bigger": config["valid_metric_bigger"],
        "best_valid_result": best_valid_result,
        "test_result": test_result,
    }


def load_data_and_model(model_file: str, trust_pickle: bool = False) -> tuple:
    """Load a checkpoint with its dataset and dataloaders: ``(config, model, dataset, train, valid, test)``.

    Safe by default: only plain data is unpickled. A checkpoint written by plain RecBole pickles
    Python objects and needs ``trust_pickle=True``, for files whose origin you trust.
    """
    checkpoint = load_checkpoint(model_file, trust_pickle=trust_pickle)
    config = checkpoint["config"]
    init_seed(config["seed"], config["reproducibility"])
    init_logger(config)
    logger = getLogger()
    logger.info(config)
    dataset = create_dataset(config)
    logger.info(dataset)
    train_data, valid_data, test_data = prepare_data(config, dataset)
    model = _build_model(config, train_data)
    model.load_state_dict(checkpoint["state_dict"])
    model.load_other_parameter(checkpoint.get("other_parameter"))
    return config, model, dataset, train_data, valid_data, test_data

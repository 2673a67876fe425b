"""recbole_mm's quick-start API, drop-in equivalents of RecBole's for plugin and RecBole models.

They differ from RecBole's in three ways: general models read their data through
:class:`~recbole_mm.data.MultiModalDataset` (MMRec layout and item features), the dataset and its
feature files are validated before anything is written (log, checkpoint), and training runs on
recbole_mm's :class:`~recbole_mm.trainer.Trainer`, which records the best epoch and timings.
:func:`run` is RecBole's multi-process entry point (``nproc``, ``world_size``, ``ip``, ``port``,
``group_offset``) with :func:`run_recbole` in every process.
"""

from __future__ import annotations

import gc
import hashlib
import sys
from logging import getLogger
from time import perf_counter
from typing import Any

from recbole.config import Config
from recbole.data import create_dataset as recbole_create_dataset
from recbole.data import data_preparation
from recbole.trainer import Trainer as RecBoleTrainer
from recbole.utils import ModelType, get_model, get_trainer, init_seed

from recbole_mm.checkpoint import load_checkpoint
from recbole_mm.config_check import check_against_dataset, make_checked_config
from recbole_mm.data.dataset import MultiModalDataset, check_trainable
from recbole_mm.data.protocol import apply_protocol
from recbole_mm.distributed import check_distributed_args
from recbole_mm.errors import RecBoleMMError
from recbole_mm.logs import LOG_DIR_KEY, check_log_folder, init_logger
from recbole_mm.model.abstract_recommender import GraphRecommender, MultiModalRecommender
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
    check_trainable(config, dataset)
    return dataset


def global_rank(config: Config) -> int:
    """This process's rank among all processes of a run (0 for a single-process run)."""
    return 0 if config["single_spec"] else config["local_rank"] + (config["offset"] or 0)


def _build_model(config: Config, train_data):
    # RecBole seeds with seed + local_rank, which repeats on every node of a multi-node run (the local
    # ranks 0 of two nodes would draw the same negatives); the global rank is unique. DDP replaces the
    # other ranks' initial weights by rank 0's, and rank 0's seed is the single-process one.
    init_seed(config["seed"] + global_rank(config), config["reproducibility"])
    return get_model(config["model"])(config, train_data._dataset).to(config["device"])


def _fingerprint(tensors) -> str:
    """sha256 of the tensors' bytes (sparse ones by indices and values): equal iff bit-identical."""
    import torch

    digest = hashlib.sha256()
    for tensor in tensors:
        tensor = tensor.detach().coalesce() if tensor.is_sparse else tensor.detach()
        for part in (tensor.indices(), tensor.values()) if tensor.is_sparse else (tensor,):
            digest.update(part.cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def ranks_agree(tensors) -> bool:
    """True when every process of the run holds bit-identical ``tensors`` (a collective: all ranks call it)."""
    import torch.distributed as dist

    mine = _fingerprint(tensors)
    everyone = [None] * dist.get_world_size()
    dist.all_gather_object(everyone, mine)
    return all(other == mine for other in everyone)


def _agree_or_warn(config: Config, tensors, warning: str) -> bool | None:
    """:func:`ranks_agree` in a multi-process run (logging ``warning`` when they differ); None otherwise."""
    if config["single_spec"]:
        return None
    agree = ranks_agree(tensors)
    if not agree:
        getLogger().warning(warning)
    return agree


def peak_memory_mb(device: Any) -> dict:
    """Peak resident memory of this process (MiB) and, on CUDA, peak allocated GPU memory."""
    import resource

    import torch

    peak = {"rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}  # Linux reports KiB
    if getattr(device, "type", str(device)) == "cuda":
        peak["cuda"] = torch.cuda.max_memory_allocated(device) / 2**20
    return peak


def run_recbole(model: Any = None, dataset: str | None = None, config_file_list: list[str] | None = None,
                config_dict: dict | None = None, saved: bool = True, resume: str | None = None,
                screen_leakage: bool = False, test_details: bool = False) -> dict:
    """Train and test a model; returns RecBole's result dict plus ``best_epoch``, ``history``,
    ``saved_model_file`` and ``wall_seconds``. ``resume``: a checkpoint of a killed run with the same
    settings (``<name>.pth`` or ``<name>.last.pth``); training continues after its last epoch.

    ``screen_leakage``: refuse a split that leaks test or held-out items into training or model selection
    (:mod:`recbole_mm.leakage`) before training; the screen's counts are returned as ``leakage``.
    ``test_details``: also return ``test_details`` (per-user test metrics with the user ids, RecBole's
    beyond-accuracy metrics; :func:`recbole_mm.evaluation.evaluate_test`); the test result is unchanged.
    """
    start = perf_counter()
    config = make_config(model, dataset, config_file_list, config_dict)
    check_log_folder(config)  # RecBole's log/ and log_tensorboard/ folders, before the data loads
    if resume:
        check_resume_file(resume, config)  # another model's or dataset's checkpoint: before data and log
    init_seed(config["seed"], config["reproducibility"])
    # Data and features are checked before init_logger writes anything, so bad input leaves no files.
    dataset = _load_checked_dataset(config)
    init_logger(config)
    logger = getLogger()
    logger.info(sys.argv)
    logger.info(config)
    logger.info(dataset)

    train_data, valid_data, test_data = prepare_data(config, dataset)
    leakage = None
    if screen_leakage:
        from recbole_mm.leakage import check_split

        leakage = check_split(config, train_data, valid_data, test_data)
    model = _build_model(config, train_data)
    logger.info(model)
    # Multi-process runs: the data buffers as each process built them (before the trainer makes rank 0's
    # everyone's), and the parameters after training (DDP must keep them in sync).
    buffers = model.data_buffer_names() if isinstance(model, GraphRecommender) else []
    built_alike = _agree_or_warn(config, [getattr(model, name) for name in buffers],
                                 "the processes built different item features or graphs (float rounding "
                                 "across machines can flip kNN ties); rank 0's copies are used") if buffers else None
    trainer = make_trainer(config, model)
    if resume:
        trainer.resume_checkpoint(resume)
    best_valid_score, best_valid_result = trainer.fit(
        train_data, valid_data, saved=saved, show_progress=config["show_progress"]
    )
    trained_alike = _agree_or_warn(config, list(model.parameters()),
                                   "the processes ended training with different parameters: DDP did not keep "
                                   "them in sync, so the test metrics mix different models")
    details = None
    if test_details:
        from recbole_mm.evaluation import evaluate_test

        test_result, details = evaluate_test(trainer, test_data, train_data, load_best_model=saved,
                                             show_progress=config["show_progress"])
    else:
        test_result = trainer.evaluate(test_data, load_best_model=saved, show_progress=config["show_progress"])
    if not config["single_spec"]:
        import torch.distributed as dist

        # A process group's gloo threads must be gone before the interpreter finalises, or the process
        # aborts at exit ("terminate called without an active exception", seen once in CI). The DDP
        # wrapper keeps the group alive after destroy_process_group and sits in reference cycles, so it
        # would otherwise be freed only at finalisation: release it now, once every rank is done.
        dist.barrier()
        trainer.distributed_model = None
        gc.collect()
        dist.destroy_process_group()
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
        "leakage": leakage,
        "test_details": details,
        "distributed": None if config["single_spec"] else {"data_buffers_identical": built_alike,
                                                            "parameters_identical": trained_alike},
    }


_LAUNCH_KEYS = ("nproc", "world_size", "ip", "port", "offset")


def _run_rank(local_rank: int, model: Any, dataset: Any, config_file_list: Any, config_dict: dict,
              saved: bool, queue: Any) -> None:
    """One process of :func:`run` (RecBole's ``run_recboles`` with recbole_mm's :func:`run_recbole`)."""
    # RecBole's Config also reads sys.argv (spawned processes inherit the parent's) and lets it win over
    # config_dict: drop the launch keys there, so the checked values (world_size -1 resolved) are used.
    sys.argv = [arg for arg in sys.argv if not arg.startswith(tuple(f"--{key}=" for key in _LAUNCH_KEYS))]
    try:
        result = run_recbole(model, dataset, config_file_list, {**config_dict, "local_rank": local_rank}, saved)
    except RecBoleMMError as exc:
        queue.put(("error", exc))  # the parent raises it as one line, as in a one-process run
        raise
    if local_rank == 0:
        queue.put(("result", result))


def run(model: Any = None, dataset: str | None = None, config_file_list: list[str] | None = None,
        config_dict: dict | None = None, saved: bool = True, nproc: int = 1, world_size: int = -1,
        ip: str = "localhost", port: str = "5678", group_offset: int = 0, resume: str | None = None) -> dict | None:
    """RecBole's ``run``: :func:`run_recbole` in one process, or in ``nproc`` processes of a
    torch.distributed job (gloo on CPU, nccl on GPUs; see docs/multi-process.md).

    Returns the result of this machine's first process (metrics are gathered over all processes, so
    every machine gets the same numbers); a :class:`RecBoleMMError` in a process is raised here.
    ``resume`` (a killed run's checkpoint) is for one-process runs.
    """
    nproc, world_size, group_offset = check_distributed_args(nproc, world_size, group_offset, port)
    if nproc == 1 and world_size <= 0:
        return run_recbole(model, dataset, config_file_list, config_dict, saved, resume=resume)
    if resume:
        raise RecBoleMMError("--resume: resuming is supported for one-process runs only; drop --nproc/--world_size")
    if isinstance(model, str):
        model = canonical_model_name(model)  # an unknown name fails here, before any process starts
    import torch.multiprocessing as mp

    config_dict = {**(config_dict or {}), "world_size": nproc if world_size == -1 else world_size,
                   "ip": ip, "port": port, "nproc": nproc, "offset": group_offset}
    queue = mp.get_context("spawn").SimpleQueue()
    processes = mp.start_processes(_run_rank, args=(model, dataset, config_file_list, config_dict, saved, queue),
                                   nprocs=nproc, join=False, start_method="spawn")
    messages = []
    try:
        # Read while waiting: a result bigger than the pipe's buffer would block its sender forever.
        while not processes.join(timeout=0.5):
            while not queue.empty():
                messages.append(queue.get())
    except mp.ProcessRaisedException as exc:
        while not queue.empty():
            messages.append(queue.get())
        errors = [payload for kind, payload in messages if kind == "error"]
        if errors:
            raise errors[0] from exc  # bad input: the same one-line error as a one-process run
        raise
    while not queue.empty():
        messages.append(queue.get())
    return next((payload for kind, payload in messages if kind == "result"), None)


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


def load_data_and_model(model_file: str, trust_pickle: bool = False, log: bool = True,
                        log_dir: str | None = None) -> tuple:
    """Load a checkpoint with its dataset and dataloaders: ``(config, model, dataset, train, valid, test)``.

    Safe by default: only plain data is unpickled. A checkpoint written by plain RecBole pickles
    Python objects and needs ``trust_pickle=True``, for files whose origin you trust. ``log=False``
    leaves RecBole's logger as it is (no ``log/`` file, no config dump): for callers such as
    ``recommend`` whose output is the answer and that write nothing. Otherwise RecBole's log of the
    loading goes under ``log_dir`` (default: the working directory).
    """
    checkpoint = load_checkpoint(model_file, trust_pickle=trust_pickle)
    config = checkpoint["config"]
    if not config["single_spec"]:
        # Written by rank 0 of a multi-process run; loaded here into this one process (no process
        # group: RecBole's dataloaders and evaluate() would otherwise split and gather over ranks).
        import torch

        config["single_spec"], config["local_rank"] = True, 0
        if config["device"].type == "cuda":
            config["device"] = torch.device("cuda")
    init_seed(config["seed"], config["reproducibility"])
    # The stored log_dir is a folder of the machine and run that wrote the checkpoint: this process logs
    # where its caller says.
    config.final_config_dict[LOG_DIR_KEY] = log_dir
    logger = getLogger()
    if log:
        init_logger(config)
        logger.info(config)
    dataset = create_dataset(config)
    logger.info(dataset)
    train_data, valid_data, test_data = prepare_data(config, dataset)
    model = _build_model(config, train_data)
    model.load_state_dict(checkpoint["state_dict"])
    model.load_other_parameter(checkpoint.get("other_parameter"))
    return config, model, dataset, train_data, valid_data, test_data

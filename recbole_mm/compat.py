"""Every fix that lets RecBole 1.2.1 run on today's numpy, scipy, pandas, torch and setuptools.

RecBole 1.2.1 (Feb 2025) is the last release and upstream carries no compatibility fixes after it
(docs/recbole-compat.md lists the fixes and what each is for). Each shim below names the upstream
cause, is installed once by :func:`install` at ``import recbole_mm``, never edits RecBole's files,
and is guarded by a test in ``tests/test_compat.py``. Shims that change library behaviour act only
when the caller is RecBole's own code, so other users of numpy/pandas/torch see no difference.
Shims 16-19 close RecBole's ways of running code from a setting or a file (HyperTuning's ``eval``,
pickled caches, a pickled array); their tests are in ``tests/test_security.py``.
"""

from __future__ import annotations

import contextlib
import importlib
import re
import sys
import types
from typing import Any

import numpy as np

_installed = False


def _caller_is_recbole(depth: int = 2) -> bool:
    """True when the frame ``depth`` levels up belongs to a ``recbole.*`` module (not recbole_mm)."""
    frame = sys._getframe(depth)
    module = frame.f_globals.get("__name__", "")
    return module == "recbole" or module.startswith("recbole.")


# --- 1, 2, 3: ray -------------------------------------------------------------------------------
# recbole/quick_start/quick_start.py:20 does `from ray import tune` for one call, `tune.report` in
# objective_function. ray<=2.6.3 (RecBole's pin) imports pkg_resources, removed in setuptools 82,
# and uses np.bool8, removed in numpy 2; it has no wheels for Python 3.12, so it is often absent.
def _install_ray() -> None:
    if "ray.tune" in sys.modules:
        return
    had_bool8 = hasattr(np, "bool8")
    if not had_bool8:
        np.bool8 = np.bool_  # ray/tune/logger/tensorboardx.py:41, only while ray imports
    try:
        importlib.import_module("ray.tune")
        return
    except Exception as exc:  # the real ray is missing or broken (pkg_resources, numpy 2): stub it
        reason = f"{type(exc).__name__}: {exc}"
        for name in [m for m in sys.modules if m == "ray" or m.startswith("ray.")]:
            del sys.modules[name]
    finally:
        if not had_bool8 and hasattr(np, "bool8"):
            del np.bool8
    ray = types.ModuleType("ray")
    tune = types.ModuleType("ray.tune")
    tune.report = _tune_report_noop
    ray.tune = tune
    ray.__recbole_mm_stub__ = reason  # why the real ray could not be used, for anyone debugging
    sys.modules["ray"] = ray
    sys.modules["ray.tune"] = tune


def _tune_report_noop(*args: Any, **kwargs: Any) -> None:
    """Stand-in for ``ray.tune.report``: outside a ray trial the report has nowhere to go."""


# --- 4: numpy 2 aliases -------------------------------------------------------------------------
# recbole/config/configurator.py:630 compatibility_settings() assigns np.float_ etc., removed in
# numpy 2, in every Config(); RecBole itself later reads np.float (evaluator/metrics.py:90,...),
# np.bool (metrics.py:287) and np.str (hyper_tuning.py plot_hyper), so the aliases must exist.
_NUMPY_ALIASES = {
    "bool": "bool_",
    "int": "int_",
    "float": "float64",
    "complex": "complex128",
    "object": "object_",
    "str": "str_",
    "long": "int_",
    "unicode": "str_",
}


def _numpy_compatibility_settings(self: Any) -> None:
    """Replacement for ``Config.compatibility_settings`` that only uses names numpy 2 still has."""
    for alias, target in _NUMPY_ALIASES.items():
        setattr(np, alias, getattr(np, target))


# --- 5: scipy dok_matrix._update --------------------------------------------------------------
# LightGCN/NGCF/NCL/GCMC/SpectralCF/KGIN/MCCLK call A._update(dict) (e.g. lightgcn.py:111);
# scipy 1.13 removed that private method, and numpy 2 forces scipy >= 1.13.
def _install_dok_update() -> None:
    import scipy.sparse as sp

    if not hasattr(sp.dok_matrix, "_update"):

        def _update(self: Any, data: dict) -> None:
            self._dict.update(data)  # exactly scipy 1.12's body; _dict exists in 1.13–1.18

        sp.dok_matrix._update = _update


# --- 7: hyperopt >= 0.3 in exhaustive search --------------------------------------------------
# recbole/trainer/hyper_tuning.py:117 seeds a np.random.RandomState, but hyperopt >= 0.2.7 samples
# with the Generator API (rng.integers); the only hyperopt that imports without pkg_resources is
# 0.3.0. Same algorithm, with the generator type hyperopt expects.
def _hyperopt_rng(seed: Any) -> Any:
    from importlib.metadata import version

    major, minor, patch = (int(p) for p in re.findall(r"\d+", version("hyperopt"))[:3])
    if (major, minor, patch) >= (0, 2, 7):
        return np.random.default_rng(seed)
    return np.random.RandomState(seed)


def exhaustive_search(new_ids: list, domain: Any, trials: Any, seed: Any,
                      nbMaxSucessiveFailures: int = 1000) -> list:  # noqa: N803 (RecBole's name)
    """Draw configurations not tried before from ``domain`` (RecBole's exhaustive search)."""
    from hyperopt import pyll
    from hyperopt.base import miscs_update_idxs_vals

    def signature(vals: dict) -> int:
        return hash(frozenset((key, value[0] if len(value) > 0 else None) for key, value in vals.items()))

    seen = {signature(trial["misc"]["vals"]) for trial in trials.trials}
    rng = _hyperopt_rng(seed)
    docs = []
    for new_id in new_ids:
        for _attempt in range(nbMaxSucessiveFailures + 1):
            idxs, vals = pyll.rec_eval(
                domain.s_idxs_vals, memo={domain.s_new_ids: [new_id], domain.s_rng: rng}
            )
            if signature(vals) not in seen:
                break
        else:
            return []  # the space is exhausted
        result = domain.new_result()
        misc = dict(tid=new_id, cmd=domain.cmd, workdir=domain.workdir)
        miscs_update_idxs_vals([misc], idxs, vals)
        docs.extend(trials.new_trial_docs([new_id], [None], [result], [misc]))
    return docs


# --- 8, 9: pandas 3 ---------------------------------------------------------------------------
# 8. pandas 3 `Series.agg(len)` returns len(series) instead of per-element lengths; RecBole uses it
#    to split token_seq/float_seq columns (dataset.py:712,792,809,1217, kg_dataset.py:316,
#    sequential_dataset.py:165) — silently wrong item_length in sequential datasets.
# 9. pandas 3 Copy-on-Write: `df[field].fillna(..., inplace=True)` (dataset.py:501,648,650) fills a
#    temporary copy, so NaN floats stay NaN and NaN tokens stay NaN — silently wrong datasets.
def _install_pandas() -> None:
    import pandas as pd

    if int(pd.__version__.split(".")[0]) < 3 or getattr(pd.Series.agg, "_recbole_mm", False):
        return
    original_agg = pd.Series.agg
    original_fillna = pd.Series.fillna

    def agg(self: pd.Series, func: Any = None, axis: Any = 0, *args: Any, **kwargs: Any) -> Any:
        if func is len and _caller_is_recbole():
            return self.map(len)
        return original_agg(self, func, axis, *args, **kwargs)

    def fillna(self: pd.Series, *args: Any, **kwargs: Any) -> Any:
        if not (kwargs.get("inplace") and _caller_is_recbole()):
            return original_fillna(self, *args, **kwargs)
        kwargs["inplace"] = False
        filled = original_fillna(self, *args, **kwargs)
        # RecBole's three call sites are all `<frame>[field].fillna(...)` with the frame held in a
        # local named `df` or `feat`; write the result back into that frame.
        caller = sys._getframe(1).f_locals
        frame = caller.get("df") if "df" in caller else caller.get("feat")
        if frame is None or self.name not in frame:
            raise RuntimeError("recbole_mm pandas shim: unexpected fillna call site in RecBole")
        frame[self.name] = filled
        return None

    agg._recbole_mm = True
    pd.Series.agg = agg
    pd.Series.fillna = fillna


# --- 12: pandas 3 read-only column arrays -----------------------------------------------------
# dataset.py:2199 `_dataframe_to_interaction` turns `data[k].values` into tensors; under pandas 3's
# Copy-on-Write that array is a read-only view, and torch.LongTensor/FloatTensor of it prints
# "The given NumPy array is not writable ..." in every run. RecBole only iterates the frame and reads
# `.values`, so it is handed writable copies of the columns (torch copies them again anyway).
class _WritableColumns:
    """A DataFrame seen through ``for k in frame`` and ``frame[k].values``, with writable arrays."""

    def __init__(self, frame: Any) -> None:
        self._frame = frame

    def __iter__(self) -> Any:
        return iter(self._frame)

    def __getitem__(self, key: str) -> Any:
        return types.SimpleNamespace(values=np.require(self._frame[key].to_numpy(), requirements="W"))


def _install_writable_columns() -> None:
    from recbole.data.dataset.dataset import Dataset

    original = Dataset._dataframe_to_interaction
    if getattr(original, "_recbole_mm", False):
        return

    def dataframe_to_interaction(self: Any, data: Any) -> Any:
        return original(self, _WritableColumns(data))

    dataframe_to_interaction._recbole_mm = True
    Dataset._dataframe_to_interaction = dataframe_to_interaction


# --- 13: torch.cuda.amp ----------------------------------------------------------------------
# trainer.py:30 imports torch.cuda.amp, deprecated since torch 2.4: `amp.GradScaler(enabled=...)`
# (trainer.py:235, :1440) prints a FutureWarning at every training epoch's start, on CPU too, and
# `amp.autocast(enabled=...)` (:1453) another. torch.amp's device-generic API, with RecBole's
# device ("cuda"; both are disabled off CUDA), is the same object without the warning.
def _install_amp() -> None:
    import functools

    import recbole.trainer.trainer as trainer_module
    import torch

    trainer_module.amp = types.SimpleNamespace(
        GradScaler=functools.partial(torch.amp.GradScaler, "cuda"),
        autocast=functools.partial(torch.amp.autocast, "cuda"),
    )


# --- 14: torch.sparse.FloatTensor ------------------------------------------------------------
# RecBole's graph models build their adjacency with the legacy constructor
# `torch.sparse.FloatTensor(indices, values[, size])` (lightgcn.py:125, ngcf.py:125, sgl.py:179,
# ncl.py:146, gcmc.py, dmf.py, dgcf.py, spectralcf.py, kgat.py, kgin.py, mcclk.py, layers.py:1639),
# deprecated in torch 2: each such run prints "torch.sparse.SparseTensor(...) is deprecated". For
# RecBole's calls it is the constructor torch names instead, with the legacy one's semantics (the
# values' dtype, no invariant checks); anyone else, and isinstance checks, get the original class.
def _install_sparse_float_tensor() -> None:
    import torch

    original = torch.sparse.FloatTensor
    if getattr(original, "_recbole_mm", False):
        return

    class _LegacySparseConstructor(type):
        def __instancecheck__(cls, instance: Any) -> bool:
            return isinstance(instance, original)

        def __call__(cls, *args: Any, **kwargs: Any) -> Any:
            if 2 <= len(args) <= 3 and not kwargs and _caller_is_recbole() and all(
                    isinstance(a, torch.Tensor) for a in args[:2]):
                return torch.sparse_coo_tensor(*args, check_invariants=False)
            return original(*args, **kwargs)

    class FloatTensor(metaclass=_LegacySparseConstructor):
        """``torch.sparse.FloatTensor`` that RecBole's calls construct without the deprecation warning."""

        _recbole_mm = True
        _original = original

    torch.sparse.FloatTensor = FloatTensor


# --- 15: HyperTuning's output in fragments --------------------------------------------------
# hyper_tuning.py:413 runs hyperopt's fmin with its default progress bar, which sends stdout and
# stderr through hyperopt's DummyTqdmFile (std_out_err_redirect_tqdm.py): every write() becomes a
# line of its own. print(a, b) writes in pieces (hyper_tuning.py:347 "running parameters:" / dict),
# and RecBole's logger goes through colorama (utils/logger.py: colorama.init), which writes each
# colour run separately: every trial's log lines came out cut at each colour change. The same bar,
# with stdout and stderr passed on in whole lines.
class _LineBufferedTqdmFile:
    """A stream for use under a tqdm bar: text is passed to ``tqdm.write`` one whole line at a time."""

    def __init__(self, file: Any) -> None:
        self.file = file
        self._pending = ""

    def write(self, text: str) -> int:
        from tqdm import tqdm

        *lines, self._pending = (self._pending + text).split("\n")
        for line in lines:
            tqdm.write(line, file=self.file)
        return len(text)

    def flush(self) -> None:
        # No partial line here: colorama flushes after every colour run, in the middle of a line.
        getattr(self.file, "flush", lambda: None)()

    def finish(self) -> None:
        """Pass on a last line without its newline."""
        if self._pending:
            self.write("\n")

    def __getattr__(self, name: str) -> Any:  # isatty, encoding, fileno, ... of the real stream
        return getattr(self.file, name)


@contextlib.contextmanager
def hyperopt_progress(initial: int, total: int) -> Any:
    """hyperopt's progress bar (``tqdm_progress_callback``), with whole-line stdout/stderr under it."""
    from tqdm import tqdm

    streams = sys.stdout, sys.stderr
    wrapped = [_LineBufferedTqdmFile(stream) for stream in streams]
    sys.stdout, sys.stderr = wrapped
    try:
        with tqdm(total=total, file=streams[0], postfix={"best loss": "?"}, dynamic_ncols=True,
                  unit="trial", initial=initial) as bar:
            yield bar
    finally:
        for stream in wrapped:
            stream.finish()
        sys.stdout, sys.stderr = streams  # also drops colorama's wrappers added by the trials


def hyper_tuning_run(self: Any) -> None:
    """``HyperTuning.run`` with :func:`hyperopt_progress` as fmin's progress bar."""
    from hyperopt import fmin

    fmin(self.trial, self.space, algo=self.algo, max_evals=self.max_evals, early_stop_fn=self.early_stop_fn,
         show_progressbar=hyperopt_progress)
    if self.display_file is not None:
        self.plot_hyper()


# --- 6: torch >= 2.6 weights_only checkpoints -------------------------------------------------
# trainer.py:308 pickles the whole Config into every checkpoint; torch >= 2.6 loads with
# weights_only=True and refuses it at trainer.py:583/:323 and quick_start.py:250. Instead of
# loading unsafely, checkpoints are written as plain data (recbole_mm.checkpoint) and every
# reader of RecBole's checkpoints goes through the safe loader.
def _install_checkpoints() -> None:
    import recbole.quick_start
    import recbole.quick_start.quick_start as qs
    from recbole.model.abstract_recommender import AbstractRecommender
    from recbole.trainer.trainer import Trainer

    from recbole_mm import checkpoint

    Trainer._save_checkpoint = checkpoint.save_trainer_checkpoint
    original_load_other = AbstractRecommender.load_other_parameter

    def load_other_parameter(self: Any, para: Any) -> None:
        original_load_other(self, checkpoint.decode_other_parameter(para))

    AbstractRecommender.load_other_parameter = load_other_parameter
    qs.load_data_and_model = load_data_and_model
    recbole.quick_start.load_data_and_model = load_data_and_model


def load_data_and_model(model_file: str, *args: Any, **kwargs: Any) -> Any:
    """RecBole's ``load_data_and_model`` through :func:`recbole_mm.quick_start.load_data_and_model`
    (imported when called: this fix is installed while recbole_mm's own modules may still be importing)."""
    from recbole_mm import quick_start

    return quick_start.load_data_and_model(model_file, *args, **kwargs)


# --- 10, 11: multi-process (DDP) runs ---------------------------------------------------------
# 10. configurator.py:496-511 hard-codes backend="nccl", cuda:<rank> and asserts one gpu_id per
#     process, and trainer.py:62-64 passes device_ids=[rank]: `run(..., nproc=2)` cannot run on CPU.
# 11. trainer.py:132 names the checkpoint per process from a 1-second clock, only rank 0 saves
#     (:296) and nothing waits before evaluate(load_best_model=True) (:583): other ranks read a
#     missing or half-written file (seen on GPU too). The same 1-second name makes two separate
#     runs started in the same second share (and overwrite) one checkpoint file.
def _init_device(self: Any) -> None:
    """``Config._init_device`` that runs multi-process jobs on CPU with gloo (or ``dist_backend``)."""
    import os

    import torch

    config = self.final_config_dict
    gpu_id = config["gpu_id"]
    config["gpu_id"] = ",".join(map(str, gpu_id)) if isinstance(gpu_id, tuple) else str(gpu_id)
    os.environ["CUDA_VISIBLE_DEVICES"] = config["gpu_id"]
    use_cuda = len(config["gpu_id"]) > 0 and torch.cuda.is_available()
    if "local_rank" not in config:
        config["single_spec"] = True
        config["local_rank"] = 0
        config["device"] = torch.device("cuda") if use_cuda else torch.device("cpu")
        return
    rank = config["local_rank"]
    if use_cuda and len(config["gpu_id"].split(",")) < config["nproc"]:
        from recbole_mm.errors import RecBoleMMError

        raise RecBoleMMError(f"gpu_id: '{config['gpu_id']}' lists fewer GPUs than nproc={config['nproc']} "
                             "processes; give one per process, e.g. --gpu_id=0,1 for --nproc=2")
    torch.distributed.init_process_group(
        backend=config.get("dist_backend") or ("nccl" if use_cuda else "gloo"),
        rank=rank + config["offset"],
        world_size=config["world_size"],
        init_method=f"tcp://{config['ip']}:{config['port']}",
    )
    config["device"] = torch.device("cuda", rank) if use_cuda else torch.device("cpu")
    config["single_spec"] = False
    if use_cuda:
        torch.cuda.set_device(rank)
    if rank != 0:
        config["state"] = "error"
        config["show_progress"] = False
        config["verbose"] = False


def ensure_dir(dir_path: str) -> None:
    """Create ``dir_path`` if missing; safe when several processes create it at once."""
    import os

    os.makedirs(dir_path, exist_ok=True)


def _install_ensure_dir() -> None:
    # utils/utils.py:44 ensure_dir checks os.path.exists, then os.makedirs: DDP ranks starting together
    # race on ./log or ./saved and one dies with FileExistsError (seen in run(nproc=2) on CPU).
    # RecBole imported it by name into these modules; replace every reference to the original.
    import recbole.data.dataset.dataset
    import recbole.data.utils
    import recbole.trainer.trainer
    import recbole.utils
    import recbole.utils.logger
    import recbole.utils.utils

    original = recbole.utils.utils.ensure_dir
    for module in (recbole.utils.utils, recbole.utils, recbole.utils.logger, recbole.data.utils,
                   recbole.data.dataset.dataset, recbole.trainer.trainer):
        if getattr(module, "ensure_dir", None) is original:
            module.ensure_dir = ensure_dir


def _install_distributed() -> None:
    import os
    import uuid

    import torch
    import torch.distributed as dist
    from recbole.config.configurator import Config
    from recbole.trainer.trainer import AbstractTrainer, Trainer
    from torch.nn.parallel import DistributedDataParallel

    Config._init_device = _init_device

    def abstract_trainer_init(self: Any, config: Any, model: Any) -> None:
        self.config = config
        self.model = model
        if not config["single_spec"]:
            self.model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
            # recbole_mm's models keep data-derived buffers (features, sparse graphs) out of DDP's
            # broadcasts; they are made equal on every rank here, once (MultiModalRecommender).
            broadcast_data_buffers = getattr(self.model, "broadcast_data_buffers", None)
            if broadcast_data_buffers is not None:
                broadcast_data_buffers()
            on_cuda = config["device"].type == "cuda"
            self.distributed_model = DistributedDataParallel(
                self.model, device_ids=[config["local_rank"]] if on_cuda else None
            )

    original_init = Trainer.__init__
    original_evaluate = Trainer.evaluate

    def trainer_init(self: Any, config: Any, model: Any) -> None:
        original_init(self, config, model)
        # trainer.py:132 names the checkpoint <Model>-<time to the second>.pth: two runs started in
        # the same second (a benchmark with parallel workers) overwrite each other's best checkpoint
        # and may test the other run's weights. A random suffix, as RecBole's log files have, fixes it.
        stem, ext = os.path.splitext(self.saved_model_file)
        self.saved_model_file = f"{stem}-{uuid.uuid4().hex[:6]}{ext}"
        if not config["single_spec"]:
            name = [self.saved_model_file]
            dist.broadcast_object_list(name, src=0)  # every rank reads the file rank 0 writes
            self.saved_model_file = name[0]

    def evaluate(self: Any, eval_data: Any, load_best_model: bool = True, model_file: Any = None,
                 show_progress: bool = False) -> Any:
        if load_best_model and not self.config["single_spec"] and eval_data:
            dist.barrier()  # rank 0 has finished writing the best checkpoint
        return original_evaluate(self, eval_data, load_best_model=load_best_model, model_file=model_file,
                                 show_progress=show_progress)

    AbstractTrainer.__init__ = abstract_trainer_init
    Trainer.__init__ = trainer_init
    Trainer.evaluate = evaluate


# --- 16: HyperTuning's params file --------------------------------------------------------------
# hyper_tuning.py:239 eval()s the value of every `choice` line of a params file; the same lines are read
# here with recbole_mm's literal parser (config_check.parse_setting), and a bad line is one error naming it.
def build_space_from_file(file: str) -> dict:
    """``HyperTuning._build_space_from_file``: ``name choice [v1, v2]``, ``name uniform low,high``,
    ``name quniform low,high,q``, ``name loguniform low,high`` per line, values parsed as data."""
    from hyperopt import hp

    from recbole_mm.config_check import ConfigError, parse_setting

    bounds = {"uniform": 2, "quniform": 3, "loguniform": 2}
    space = {}
    with open(file, encoding="utf-8") as fp:
        for number, line in enumerate(fp, start=1):
            parts = line.strip().split(" ")
            if len(parts) < 3:
                continue
            name, kind, text = parts[0], parts[1], "".join(parts[2:])
            where = f"params file {file}, line {number}"
            if kind == "choice":
                values = parse_setting(text)
                if not isinstance(values, (list, tuple)) or not values:
                    raise ConfigError(f"{where}: choice {text!r} is not a list of values; write e.g. "
                                      f"{name} choice [0.01,0.001]")
                space[name] = hp.choice(name, list(values))
            elif kind in bounds:
                numbers = [parse_setting(v) for v in text.split(",")]
                if len(numbers) != bounds[kind] or not all(
                        isinstance(v, (int, float)) and not isinstance(v, bool) for v in numbers):
                    raise ConfigError(f"{where}: {kind} needs {bounds[kind]} numbers separated by commas, got {text!r}")
                space[name] = getattr(hp, kind)(name, *(float(v) for v in numbers))
            else:
                raise ConfigError(f"{where}: unknown parameter type {kind!r}; use choice, uniform, quniform or loguniform")
    return space


# --- 17, 18: pickled dataset and dataloader caches --------------------------------------------
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


# --- 19: pickled arrays ------------------------------------------------------------------------
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
    """Install every shim once; safe to call repeatedly."""
    global _installed
    if _installed:
        return
    _install_ray()
    _numpy_compatibility_settings(None)
    from recbole.config import configurator

    configurator.Config.compatibility_settings = _numpy_compatibility_settings
    _install_dok_update()
    _install_pandas()
    _install_writable_columns()
    _install_amp()
    _install_sparse_float_tensor()
    import recbole.trainer.hyper_tuning as hyper_tuning

    hyper_tuning.exhaustive_search = exhaustive_search
    hyper_tuning.HyperTuning.run = hyper_tuning_run
    hyper_tuning.HyperTuning._build_space_from_file = staticmethod(build_space_from_file)
    _install_distributed()
    _install_ensure_dir()
    _install_pickle_caches()
    _install_numbers_only_np_load()
    _install_checkpoints()
    _installed = True

"""Checkpoints that load with torch's safe default (``weights_only=True``).

RecBole pickles its whole ``Config`` (enums, ``torch.device``, a yaml loader class) into every
checkpoint, which torch >= 2.6 refuses to load, and loading it unsafely would let a checkpoint run
arbitrary code. recbole_mm stores the config as plain data instead (tagged dicts for enums and
devices) and rebuilds a ``Config`` on load. Reading a checkpoint written by plain RecBole needs the
explicit ``trust_pickle=True`` opt-in (or a one-time conversion with :func:`convert_checkpoint`).
"""

from __future__ import annotations

import argparse
import enum
import importlib
import os
import pickle
import zipfile
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch

from recbole_mm.errors import CheckpointError, exit_on_user_error

_PLAIN = (bool, int, float, str, type(None))
_TRUSTED_MODULES = ("recbole.", "recbole_mm.")


def to_plain(value: Any, key: str = "") -> Any:
    """Encode a config value with types that ``torch.load(weights_only=True)`` accepts."""
    if isinstance(value, enum.Enum):
        cls = type(value)
        return {"__enum__": f"{cls.__module__}:{cls.__qualname__}", "name": value.name}
    if isinstance(value, np.generic):  # before _PLAIN: np.float64 subclasses float, yet torch refuses it
        return value.item()
    if isinstance(value, _PLAIN):
        return value
    if isinstance(value, torch.device):
        return {"__device__": str(value)}
    if isinstance(value, dict):
        return {k: to_plain(v, f"{key}.{k}") for k, v in value.items()}
    if isinstance(value, tuple):
        return {"__tuple__": [to_plain(v, key) for v in value]}
    if isinstance(value, (list, set, frozenset)):
        return [to_plain(v, key) for v in value]
    if isinstance(value, np.ndarray):
        return [to_plain(v, key) for v in value.tolist()]
    raise CheckpointError(
        f"config entry '{key}' holds a {type(value).__name__}, which a safe checkpoint cannot store; "
        "use numbers, strings, lists or dicts in the config"
    )


def from_plain(value: Any) -> Any:
    """Inverse of :func:`to_plain`."""
    if isinstance(value, list):
        return [from_plain(v) for v in value]
    if not isinstance(value, dict):
        return value
    if "__enum__" in value:
        module_name, qualname = value["__enum__"].split(":")
        if not module_name.startswith(_TRUSTED_MODULES):
            raise CheckpointError(f"checkpoint config names enum {value['__enum__']} outside RecBole")
        cls = importlib.import_module(module_name)
        for part in qualname.split("."):
            cls = getattr(cls, part)
        if not (isinstance(cls, type) and issubclass(cls, enum.Enum)):
            raise CheckpointError(f"checkpoint config names {value['__enum__']}, which is not an enum")
        return cls[value["name"]]
    if "__device__" in value:
        device = torch.device(value["__device__"])
        if device.type == "cuda" and not torch.cuda.is_available():
            return torch.device("cpu")
        return device
    if "__tuple__" in value:
        return tuple(from_plain(v) for v in value["__tuple__"])
    return {k: from_plain(v) for k, v in value.items()}


def encode_other_parameter(params: dict) -> dict:
    """Model state kept outside ``state_dict`` (``other_parameter()``) as tensors and plain data.

    RecBole models keep scipy sparse matrices (ItemKNN, EASE) and numpy arrays there.
    """
    encoded = {}
    for key, value in params.items():
        if sp.issparse(value):
            coo = value.tocoo()
            value = {"__scipy_sparse__": value.format, "shape": list(coo.shape),
                     "row": torch.from_numpy(coo.row.astype(np.int64)),
                     "col": torch.from_numpy(coo.col.astype(np.int64)),
                     "data": torch.from_numpy(np.ascontiguousarray(coo.data))}
        elif isinstance(value, np.ndarray):
            value = {"__ndarray__": torch.from_numpy(np.ascontiguousarray(value))}
        elif not isinstance(value, torch.Tensor):
            value = to_plain(value, f"other_parameter.{key}")
        encoded[key] = value
    return encoded


def decode_other_parameter(params: dict | None) -> dict | None:
    """Inverse of :func:`encode_other_parameter`; values that carry no tag pass through unchanged."""
    if params is None:
        return None
    decoded = {}
    for key, value in params.items():
        if isinstance(value, dict) and "__scipy_sparse__" in value:
            coo = sp.coo_matrix((value["data"].numpy(), (value["row"].numpy(), value["col"].numpy())),
                                shape=tuple(value["shape"]))
            value = coo.asformat(value["__scipy_sparse__"])
        elif isinstance(value, dict) and "__ndarray__" in value:
            value = value["__ndarray__"].numpy()
        elif isinstance(value, (dict, list)):
            value = from_plain(value)
        decoded[key] = value
    return decoded


def config_to_plain(config: Any) -> dict:
    """A RecBole ``Config`` as plain data (its ``final_config_dict``)."""
    return {k: to_plain(v, k) for k, v in config.final_config_dict.items()}


def config_from_plain(data: dict) -> Any:
    """Rebuild a RecBole ``Config`` from :func:`config_to_plain` output without re-merging files."""
    from recbole.config import Config
    from recbole.utils import get_model

    config = Config.__new__(Config)
    config._init_parameters_category()
    config.yaml_loader = config._build_yaml_loader()
    config.file_config_dict = config.variable_config_dict = config.cmd_config_dict = {}
    config.external_config_dict = config.internal_config_dict = {}
    config.final_config_dict = from_plain(data)
    config.model = config.final_config_dict["model"]
    config.dataset = config.final_config_dict["dataset"]
    config.model_class = get_model(config.model)
    return config


# Temporaries of checkpoint writes, as recbole_mm writes them and as earlier versions did (<file>.pth.tmp):
# a killed run's are removed by the next checkpoint write into the same folder.
STALE_CHECKPOINT_TEMPS = (".*.pth.*.tmp", "*.pth.tmp")


def save_atomically(state: dict, path: str, elsewhere: str = "set --checkpoint_dir to another folder") -> None:
    """``torch.save`` through a temporary file that replaces ``path`` only when complete: an interrupted or
    failed save (a kill, a full disk) leaves ``path`` as it was and no temporary file behind (``elsewhere``:
    how the user writes to another folder, for the error line)."""
    from recbole_mm.storage import atomic_write

    with atomic_write(path, "checkpoint", elsewhere, stale=STALE_CHECKPOINT_TEMPS) as tmp:
        torch.save(state, tmp.file)


def save_trainer_checkpoint(self: Any, epoch: int, verbose: bool = True, **kwargs: Any) -> None:
    """Drop-in for RecBole's ``Trainer._save_checkpoint`` that writes a weights-only-loadable file."""
    if not self.config["single_spec"] and self.config["local_rank"] != 0:
        return
    saved_model_file = kwargs.pop("saved_model_file", self.saved_model_file)
    state = {
        "config": config_to_plain(self.config),
        "epoch": epoch,
        "cur_step": self.cur_step,
        "best_valid_score": float(self.best_valid_score),
        "state_dict": self.model.state_dict(),
        "other_parameter": encode_other_parameter(self.model.other_parameter()),
        "optimizer": self.optimizer.state_dict(),
    }
    save_atomically(state, saved_model_file)
    if verbose:
        from recbole.utils import set_color

        self.logger.info(set_color("Saving current", "blue") + f": {saved_model_file}")


def load_checkpoint(path: str, map_location: Any = None, trust_pickle: bool = False) -> dict:
    """Load a checkpoint; ``checkpoint['config']`` is returned as a RecBole ``Config``.

    Without ``trust_pickle`` only plain data is unpickled (torch's ``weights_only=True``), so a
    malicious file cannot run code. Old RecBole checkpoints need ``trust_pickle=True``.
    """
    path = str(path)
    if map_location is None and not torch.cuda.is_available():
        map_location = "cpu"  # a checkpoint saved on GPU loads on a machine without one (as its config does)
    if not os.path.isfile(path):
        what = "is a folder" if os.path.isdir(path) else "does not exist"
        raise CheckpointError(f"checkpoint {path} {what}; pass the path of a saved .pth file")
    if not os.access(path, os.R_OK):
        raise CheckpointError(f"checkpoint {path} is not readable (permission denied); fix its permissions")
    kind = _file_kind(path)
    if kind is None:
        raise CheckpointError(f"{path} is not a checkpoint (neither torch's zip format nor a pickle); "
                              "pass a .pth file written by RecBole or recbole_mm")
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        if kind == "zip" and "Weights only load failed" not in str(exc):
            raise _damaged(path, exc) from exc
        if not trust_pickle:
            raise CheckpointError(
                f"{path} pickles Python objects (as checkpoints of plain RecBole do) and was not loaded, "
                "because unpickling can run arbitrary code; if you trust where it came from, pass "
                "trust_pickle=True or convert it once: python -m recbole_mm.checkpoint --trust-pickle "
                f"{path} NEW.pth"
            ) from exc
        try:
            checkpoint = torch.load(path, map_location=map_location, weights_only=False)
        except _LOAD_ERRORS as exc2:
            raise _damaged(path, exc2) from exc2
    except _LOAD_ERRORS as exc:
        raise _damaged(path, exc) from exc
    if not (isinstance(checkpoint, dict) and "state_dict" in checkpoint and "config" in checkpoint):
        raise CheckpointError(f"{path} holds a {type(checkpoint).__name__} without 'state_dict' and 'config', "
                              "so it is not a RecBole checkpoint; pass a .pth file written by a training run")
    if isinstance(checkpoint.get("config"), dict):
        try:
            checkpoint["config"] = config_from_plain(checkpoint["config"])
        except (KeyError, ValueError, AttributeError, ImportError) as exc:
            raise CheckpointError(f"{path}: its config cannot be rebuilt ({type(exc).__name__}: {exc}); "
                                  "was it written by another version of RecBole or recbole_mm?") from exc
    stored_config_as_data(checkpoint["config"], path)
    return checkpoint


# A stored config's settings that make RecBole read a file other than the data: its pickled dataset and
# dataloader caches (recbole/data/utils.py:61, :122). A checkpoint brings weights, never a cache to read.
STORED_CONFIG_OFF = {"dataset_save_path": None, "dataloaders_save_path": None, "save_dataset": False,
                     "save_dataloaders": False, "trust_pickle": False}


def stored_config_as_data(config: Any, path: str) -> None:
    """Make a checkpoint's stored config safe to load data and a model with: the keys of
    :data:`STORED_CONFIG_OFF` are switched off (a stored ``trust_pickle`` never carries over), and a
    setting that RecBole's code runs (KD_DAGFM's ``teacher``) must hold an allowed name."""
    from recbole_mm.config_check import ConfigError, check_code_settings

    values = getattr(config, "final_config_dict", None)
    if not isinstance(values, dict):
        raise CheckpointError(f"{path}: its config is a {type(config).__name__}, not a RecBole Config; "
                              "pass a .pth file written by a training run")
    values.update(STORED_CONFIG_OFF)
    try:
        check_code_settings(config, source=f"stored in checkpoint {path}")
    except ConfigError as exc:
        raise CheckpointError(f"{exc}; RecBole would run it as code, so the checkpoint is not loaded") from exc


# What torch.load raises on a truncated or damaged file (a zip without its directory, a pickle cut short).
_LOAD_ERRORS = (RuntimeError, EOFError, KeyError, ValueError, IndexError, zipfile.BadZipFile, OSError,
                pickle.UnpicklingError, UnicodeDecodeError)


def _file_kind(path: str) -> str | None:
    """``zip`` (torch's format), ``pickle`` (torch's legacy format, plain pickles) or None."""
    with open(path, "rb") as f:
        head = f.read(4)
    if head.startswith(b"PK"):
        return "zip"
    if head[:1] == b"\x80":
        return "pickle"
    return None


def _damaged(path: str, exc: BaseException) -> CheckpointError:
    size = os.path.getsize(path)
    reason = " ".join(str(exc).split()).split(". ")[0][:100] or type(exc).__name__
    return CheckpointError(f"{path} is damaged or truncated ({size} bytes; torch: {reason}); "
                           "use another checkpoint, e.g. the run's .last.pth or a rerun's")


def convert_checkpoint(src: str, dst: str, trust_pickle: bool = False) -> None:
    """Rewrite a (trusted) full-pickle RecBole checkpoint as a safe recbole_mm checkpoint."""
    from recbole_mm.storage import check_folder, make_folder

    fix = "give DST in a folder you can write to"
    check_folder(os.path.dirname(os.path.abspath(dst)), "DST's folder", fix)  # before SRC is read
    checkpoint = load_checkpoint(src, map_location="cpu", trust_pickle=trust_pickle)
    checkpoint["config"] = config_to_plain(checkpoint["config"])
    checkpoint["other_parameter"] = encode_other_parameter(checkpoint.get("other_parameter") or {})
    checkpoint["best_valid_score"] = float(checkpoint["best_valid_score"])
    make_folder(os.path.dirname(os.path.abspath(dst)), "DST's folder", fix)
    save_atomically(checkpoint, dst, fix)


def main(argv: list[str] | None = None) -> None:
    """``python -m recbole_mm.checkpoint [--trust-pickle] SRC DST``."""
    import recbole_mm  # noqa: F401  (registers plugin models so their configs resolve)

    parser = argparse.ArgumentParser(description="Convert a RecBole checkpoint to a safe one.")
    parser.add_argument("src")
    parser.add_argument("dst")
    parser.add_argument("--trust-pickle", action="store_true",
                        help="allow unpickling SRC (only for files whose origin you trust)")
    args = parser.parse_args(argv)
    convert_checkpoint(args.src, args.dst, trust_pickle=args.trust_pickle)
    print(f"wrote {args.dst}")


if __name__ == "__main__":
    exit_on_user_error(main)

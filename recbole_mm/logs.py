"""Where RecBole's log files and tensorboard events go: under ``log_dir``, a folder checked before anything
is written.

RecBole writes ``./log/<Model>/<Model>-<dataset>-<time>-<hash>.log`` (``init_logger``) and
``./log_tensorboard/<same name>/`` (``get_tensorboard``, called by every trainer) into the working
directory, whatever the run's other folders: in a read-only working directory a run ended in
``OSError: './log'``, and benchmark cells wrote theirs outside ``--out``. Here both go under the
config key ``log_dir`` (unset: the working directory, RecBole's layout unchanged):
``<log_dir>/log/…`` and ``<log_dir>/log_tensorboard/…``. :func:`install` points RecBole's own
``init_logger`` and ``get_tensorboard`` at these, so RecBole's entry points follow ``log_dir`` too.
"""

from __future__ import annotations

import hashlib
import logging
import os
from typing import Any

from recbole_mm import storage

LOG_DIR_KEY = "log_dir"
_OURS = "_recbole_mm_handler"  # marks the handlers init_logger installed
# The tensorboard folder of this process's latest init_logger: RecBole names it after the log file
# handler it finds on the root logger, which is not ours when someone else configured logging first.
_tensorboard_folder: str | None = None


def log_root(config: Any) -> str:
    """The folder that receives ``log/`` and ``log_tensorboard/`` (``log_dir``; default the working directory)."""
    value = config.final_config_dict.get(LOG_DIR_KEY) if hasattr(config, "final_config_dict") else None
    return str(value) if value not in (None, "") else "."


def check_log_folder(config: Any) -> None:
    """``log_dir``'s ``log/`` and ``log_tensorboard/`` can be created and written: one line naming the key
    otherwise, before anything is written (RecBole would fail with ``OSError: './log'`` after loading data)."""
    root = log_root(config)
    where = f"--{LOG_DIR_KEY}={root}" if root != "." else "the working directory (log_dir unset)"
    for sub in ("log", "log_tensorboard"):
        problem = storage.folder_problem(os.path.join(root, sub))
        if problem is not None:
            raise storage.StorageError(f"{LOG_DIR_KEY}: RecBole's {sub}/ folder cannot be written under {where}: "
                                       f"{problem}; set --{LOG_DIR_KEY} to a folder you can write to")


def log_file_path(config: Any) -> str:
    """RecBole's log file name (model, dataset, local time, a hash of the config's values) under ``log_dir``."""
    from recbole.utils import get_local_time

    config_str = "".join(str(value) for value in config.final_config_dict.values())
    md5 = hashlib.md5(config_str.encode(encoding="utf-8")).hexdigest()[:6]
    name = f"{config['model']}-{config['dataset']}-{get_local_time()}-{md5}.log"
    return os.path.join(log_root(config), "log", str(config["model"]), name)


def init_logger(config: Any) -> None:
    """RecBole's ``init_logger`` (same file name, formats and levels, a console and a file handler on the
    root logger) under ``log_dir``. Unlike RecBole's, a second run in the same process logs to its own
    file: the handlers an earlier call installed are replaced (RecBole's ``basicConfig`` kept the first
    run's, so later runs logged into the first run's file and tensorboard folder, and left an empty file).
    Handlers installed by anyone else are left alone, and then, as with RecBole, none are added."""
    import colorlog
    from colorama import init
    from recbole.utils.logger import RemoveColorFilter, log_colors_config

    init(autoreset=True)
    check_log_folder(config)
    path = log_file_path(config)
    storage.make_folder(os.path.dirname(path), LOG_DIR_KEY, f"set --{LOG_DIR_KEY} to a folder you can write to")
    state = str(config["state"] or "info").lower()
    level = {"debug": logging.DEBUG, "warning": logging.WARNING, "error": logging.ERROR,
             "critical": logging.CRITICAL}.get(state, logging.INFO)
    file_handler = logging.FileHandler(path)
    file_handler.setLevel(level)
    file_handler.setFormatter(logging.Formatter("%(asctime)-15s %(levelname)s  %(message)s", "%a %d %b %Y %H:%M:%S"))
    file_handler.addFilter(RemoveColorFilter())
    stream_handler = logging.StreamHandler()
    stream_handler.setLevel(level)
    stream_handler.setFormatter(colorlog.ColoredFormatter("%(log_color)s%(asctime)-15s %(levelname)s  %(message)s",
                                                          "%d %b %H:%M", log_colors=log_colors_config))
    root_logger = logging.getLogger()
    for handler in [h for h in root_logger.handlers if getattr(h, _OURS, False)]:
        root_logger.removeHandler(handler)
        handler.close()
    for handler in (stream_handler, file_handler):
        setattr(handler, _OURS, True)
    logging.basicConfig(level=level, handlers=[stream_handler, file_handler])
    global _tensorboard_folder
    _tensorboard_folder = os.path.join(log_root(config), "log_tensorboard", os.path.basename(path).split(".")[0])


def get_tensorboard(logger: logging.Logger) -> Any:
    """RecBole's ``get_tensorboard``: a ``SummaryWriter`` in ``<log_dir>/log_tensorboard/<log file's name>``
    of the latest :func:`init_logger` (without one, RecBole's ``./log_tensorboard/`` named after the
    logger's file handler)."""
    from recbole.utils import get_local_time
    from torch.utils.tensorboard import SummaryWriter

    path = _tensorboard_folder
    if path is None:
        name = next((os.path.basename(h.baseFilename).split(".")[0] for h in logger.handlers
                     if hasattr(h, "baseFilename")), f"model-{get_local_time()}")
        path = os.path.join("log_tensorboard", name)
    try:
        return SummaryWriter(path)
    except OSError as exc:
        raise storage.write_error(exc, "tensorboard folder", path,
                                  f"set --{LOG_DIR_KEY} to another folder") from exc


def install() -> None:
    """Make RecBole's own entry points (its ``run_recbole``, trainers, ``HyperTuning``) use :func:`init_logger`
    and :func:`get_tensorboard`: RecBole imported both by name into the modules that call them."""
    import importlib

    for module_name, attribute, replacement in (
            ("recbole.utils", "init_logger", init_logger),
            ("recbole.utils.logger", "init_logger", init_logger),
            ("recbole.quick_start.quick_start", "init_logger", init_logger),
            ("recbole.utils", "get_tensorboard", get_tensorboard),
            ("recbole.utils.utils", "get_tensorboard", get_tensorboard),
            ("recbole.trainer.trainer", "get_tensorboard", get_tensorboard)):
        module = importlib.import_module(module_name)
        if hasattr(module, attribute):
            setattr(module, attribute, replacement)

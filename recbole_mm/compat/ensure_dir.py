"""RecBole 1.2.1's ``ensure_dir`` checks, then creates a folder: processes of a multi-process run that start
together race on ``./log`` or ``./saved``. Not a version fix; delete when RecBole creates folders in one step."""

from __future__ import annotations


def ensure_dir(dir_path: str) -> None:
    """Create ``dir_path`` if missing; safe when several processes create it at once."""
    import os

    os.makedirs(dir_path, exist_ok=True)


def install() -> None:
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

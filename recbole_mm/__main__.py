"""``python -m recbole_mm --model=GUME --dataset=tiktok``: the ``recbole-mm`` command."""

import recbole_mm  # noqa: F401  (RecBole is fixed and finds the models once it is imported: recbole_mm.plugin)
from recbole_mm.cli import console_main

if __name__ == "__main__":
    console_main(prog="python -m recbole_mm")

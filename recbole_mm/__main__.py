"""``python -m recbole_mm --model=GUME --dataset=tiktok``."""

import recbole_mm  # noqa: F401  (installs the compatibility shims and registers the models)
from recbole_mm.cli import main
from recbole_mm.errors import exit_on_user_error

if __name__ == "__main__":
    exit_on_user_error(main)

"""Train and test a RecBole or recbole_mm model: python run_recbole_mm.py --model=GUME --dataset=tiktok"""

# Imported at top level (not under __main__) so that processes spawned by RecBole's multi-process
# runs, which re-import this script, get the compatibility shims too.
import recbole_mm  # noqa: F401
from recbole_mm.cli import main
from recbole_mm.errors import exit_on_user_error

if __name__ == "__main__":
    exit_on_user_error(main)

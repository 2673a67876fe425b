"""Train and test a RecBole or recbole_mm model: python run_recbole_mm.py --model=GUME --dataset=tiktok

The same command as ``recbole-mm`` (subcommands included), for a checkout without an install.
"""

# Imported at top level (not under __main__) so that processes spawned by RecBole's multi-process
# runs, which re-import this script, get the compatibility shims too.
import recbole_mm  # noqa: F401
from recbole_mm.cli import console_main

if __name__ == "__main__":
    console_main(prog="run_recbole_mm.py")

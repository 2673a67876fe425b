"""CPU seconds and training loss of every training epoch, of recbole_mm's model or of MMRec's own, on TikTok
(seed 999): the side-by-side numbers of docs/<model>.md (e.g. docs/grcn.md).

    OMP_NUM_THREADS=1 python benchmarks/epoch_cpu_seconds.py ours GRCN epochs=3 reg_weight=1e-05
    OMP_NUM_THREADS=1 /work/refvenv/bin/python benchmarks/epoch_cpu_seconds.py mmrec GRCN --src /tmp/MMRec/src \\
        epochs=3 reg_weight=1e-05 learning_rate=0.001

Prints one JSON line per training epoch: side, model, epoch, train_loss (the sum over the epoch's batches,
as both trainers log it), cpu_seconds (``time.process_time`` around the trainer's ``_train_epoch``: this
process's CPU time, so other load on a shared machine does not count) and wall_seconds. Evaluation is not
timed. Run it with one thread, the two sides interleaved (A B A B ...), to compare the cost of an epoch.
``ours`` runs recbole_mm's quick-start (recbole_mm must be importable); ``mmrec`` runs
``scripts/run_mmrec_reference.py``'s set-up (MMRec imported from ``--src``, never vendored), whose
``key=value`` rules apply.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def timed(trainer_class, side: str, model: str, loss_of) -> None:
    """Wrap ``trainer_class._train_epoch`` to print the epoch's loss and CPU/wall seconds."""
    original = trainer_class._train_epoch

    def _train_epoch(self, train_data, epoch_idx, *args, **kwargs):
        cpu, wall = time.process_time(), time.perf_counter()
        result = original(self, train_data, epoch_idx, *args, **kwargs)
        record = {"side": side, "model": model, "epoch": epoch_idx, "train_loss": loss_of(result),
                  "cpu_seconds": round(time.process_time() - cpu, 3),
                  "wall_seconds": round(time.perf_counter() - wall, 3)}
        print(json.dumps(record), flush=True)
        return result

    trainer_class._train_epoch = _train_epoch


def total(loss) -> float:
    return float(sum(loss)) if isinstance(loss, tuple) else float(loss)


def ours(model: str, overrides: list[str]) -> None:
    import torch

    import recbole_mm
    from recbole_mm.config_files import parse_setting
    from recbole_mm.trainer import Trainer

    torch.set_num_threads(1)
    sys.argv = sys.argv[:1]  # RecBole's Config reads --key=value words from the command line
    timed(Trainer, "ours", model, total)
    config = {"seed": 999, "show_progress": False, "state": "WARNING"}
    config.update({k: parse_setting(v) for k, v in (kv.split("=", 1) for kv in overrides)})
    recbole_mm.run_recbole(model=model, dataset="tiktok", config_dict=config, saved=False)


def mmrec(model: str, src: str, overrides: list[str]) -> None:
    spec = importlib.util.spec_from_file_location("run_mmrec_reference", HERE.parent / "scripts" / "run_mmrec_reference.py")
    runner = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(runner)
    runner.install_shims()
    sys.path.insert(0, str(Path(src).resolve()))
    from common.trainer import Trainer

    timed(Trainer, "mmrec", model, lambda result: total(result[0]))  # MMRec returns (loss, per-batch losses)
    runner.main(src, model, *overrides)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("side", choices=["ours", "mmrec"])
    parser.add_argument("model")
    parser.add_argument("--src", help="MMRec's src folder (mmrec side)")
    parser.add_argument("overrides", nargs="*", help="key=value settings")
    args = parser.parse_intermixed_args()
    if args.side == "mmrec":
        if not args.src:
            parser.error("the mmrec side needs --src <MMRec>/src")
        mmrec(args.model, args.src, args.overrides)
    else:
        ours(args.model, args.overrides)


if __name__ == "__main__":
    main()

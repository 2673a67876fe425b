"""CPU seconds per training epoch of recbole_mm's model and of MMRec's own implementation on TikTok, one
thread, interleaved runs (ours, MMRec's, ours, MMRec's, ...), and the per-epoch training losses of both.

    python benchmarks/epoch_cpu_vs_mmrec.py /path/to/MMRec/src LayerGCN --rounds 2 --epochs 3 \\
        --ours-python .venv/bin/python --mmrec-python /path/to/refvenv/bin/python n_layers=4 dropout=0.1

Each run is a fresh process (seed 999, ``OMP_NUM_THREADS=1``, ``torch.set_num_threads(1)``) that times every
training epoch with ``time.process_time()`` around the trainer's ``_train_epoch`` (RecBole's for ours,
MMRec's ``common.trainer.Trainer`` for the reference): CPU time, not wall time, because the machine may be
shared. Evaluation is not timed. ``key=value`` settings go to both (MMRec's as one grid point, through
scripts/run_mmrec_reference.py, which also supplies its shims and, for what they leave unset, the MMRec settings
of our TikTok defaults, its ``TIKTOK_SETTINGS``). Prints one JSON line per run and a summary:
the median epoch's CPU seconds of each side and their ratio (ours / MMRec's).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve()
REPO = HERE.parent.parent
MARK = "EPOCH_CPU_JSON "


def _timed(method, record: list):
    def wrapper(self, *args, **kwargs):
        start = time.process_time()
        out = method(self, *args, **kwargs)
        loss = out[0] if isinstance(out, tuple) else out
        record.append({"cpu_s": time.process_time() - start, "loss": float(sum(loss) if isinstance(loss, tuple)
                                                                            else loss)})
        return out
    return wrapper


def child_ours(model: str, epochs: int, settings: list[str]) -> list[dict]:
    import torch

    torch.set_num_threads(1)
    sys.path.insert(0, str(REPO))
    import recbole_mm
    from recbole_mm import trainer as our_trainer
    from recbole_mm.config_files import parse_setting

    record: list[dict] = []
    our_trainer.Trainer._train_epoch = _timed(our_trainer.Trainer._train_epoch, record)
    config = {"epochs": epochs, "seed": 999, "show_progress": False, "state": "WARNING"}
    for kv in settings:
        key, value = kv.split("=", 1)
        config[key] = parse_setting(value)  # as the command line reads it: a literal, else the text
    recbole_mm.run_recbole(model=model, dataset="tiktok", config_dict=config, saved=False)
    return record


def child_mmrec(src: str, model: str, epochs: int, settings: list[str]) -> list[dict]:
    sys.path.insert(0, str(REPO / "scripts"))
    import run_mmrec_reference

    run_mmrec_reference.install_shims()
    sys.path.insert(0, str(Path(src).resolve()))
    run_mmrec_reference.alias_models_common()
    import common.trainer

    record: list[dict] = []
    common.trainer.Trainer._train_epoch = _timed(common.trainer.Trainer._train_epoch, record)
    run_mmrec_reference.main(src, model, f"epochs={epochs}", *settings)
    return record


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("mmrec_src")
    parser.add_argument("model")
    parser.add_argument("settings", nargs="*", help="key=value, given to both")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--ours-python", default=sys.executable)
    parser.add_argument("--mmrec-python", default=sys.executable)
    parser.add_argument("--child", choices=("ours", "mmrec"), help=argparse.SUPPRESS)
    args = parser.parse_intermixed_args()  # key=value settings before or after the options
    if args.child:
        run = child_ours if args.child == "ours" else (lambda *a: child_mmrec(args.mmrec_src, *a))
        print(MARK + json.dumps(run(args.model, args.epochs, args.settings)), flush=True)
        return
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    runs: dict[str, list[list[dict]]] = {"ours": [], "mmrec": []}
    for _ in range(args.rounds):
        for side, python in (("ours", args.ours_python), ("mmrec", args.mmrec_python)):
            out = subprocess.run([python, str(HERE), args.mmrec_src, args.model, *args.settings, "--epochs",
                                  str(args.epochs), "--child", side], env=env, cwd=REPO, capture_output=True,
                                 text=True)
            lines = [line for line in out.stdout.splitlines() if line.startswith(MARK)]
            if out.returncode or not lines:
                sys.exit(f"{side} run failed:\n{out.stderr[-3000:]}")
            epochs = json.loads(lines[-1][len(MARK):])
            runs[side].append(epochs)
            print(json.dumps({"side": side, "epochs": epochs}), flush=True)
    medians = {side: statistics.median(e["cpu_s"] for run in r for e in run) for side, r in runs.items()}
    print(json.dumps({"model": args.model, "median_epoch_cpu_s": medians,
                      "ratio_ours_over_mmrec": medians["ours"] / medians["mmrec"],
                      "first_run_losses": {side: [e["loss"] for e in r[0]] for side, r in runs.items()}}))


if __name__ == "__main__":
    main()

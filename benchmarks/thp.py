"""Transparent huge pages for torch's CPU allocator (THP_MEM_ALLOC_ENABLE=1, which the recbole-mm command
sets unless the environment already has it): CPU seconds per training epoch with it off and on, runs
interleaved, one thread pinned to one core, and the losses (which must be equal: only where the memory comes
from changes). Writes a markdown report.

    python benchmarks/thp.py --models GUME --epochs 2 --rounds 2 --out results/thp.md
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run(model: str, epochs: int, thp: bool, core: int) -> list[dict]:
    """One training run of ``model`` on TikTok (seed 999) in a fresh process; its per-epoch records."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "THP_MEM_ALLOC_ENABLE": "1" if thp else "0"}
    command = ["taskset", "-c", str(core), sys.executable, str(ROOT / "benchmarks" / "epoch_cpu_seconds.py"),
               "ours", model, f"epochs={epochs}"]
    out = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True, check=True).stdout
    return [json.loads(line) for line in out.splitlines() if line.startswith("{")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["GUME"])
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--core", type=int, default=1)
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "thp.md")
    args = parser.parse_args()
    rows = []
    for model in args.models:
        cpu = {False: [], True: []}
        losses = {False: [], True: []}
        for _ in range(args.rounds):
            for thp in (False, True):  # interleaved: off, on, off, on
                records = run(model, args.epochs, thp, args.core)
                cpu[thp] += [r["cpu_seconds"] for r in records]
                losses[thp].append([r["train_loss"] for r in records])
        same = all(run_losses == losses[False][0] for run_losses in losses[False] + losses[True])
        off, on = statistics.median(cpu[False]), statistics.median(cpu[True])
        rows.append(f"| {model} | {off:.2f} | {on:.2f} | {on / off:.2f} | {'yes' if same else 'NO'} |")
    command = "python benchmarks/thp.py " + " ".join(sys.argv[1:])
    text = "\n".join([
        "# Transparent huge pages for torch's CPU allocator",
        "",
        f"Made by `{command}` on {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}: TikTok, seed 999, one",
        f"thread pinned to core {args.core}, runs interleaved (off, on, ...), {args.rounds} round(s) of "
        f"{args.epochs} epoch(s); CPU seconds per training epoch, medians over every epoch of every round. "
        f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, kernel THP mode "
        f"`{Path('/sys/kernel/mm/transparent_hugepage/enabled').read_text().strip()}`; the machine may have been "
        "shared (CPU seconds of one-thread runs are the measure).",
        "",
        "| model | CPU s/epoch, THP off | THP on | on / off | losses identical |",
        "|---|---:|---:|---:|---|",
        *rows,
        "",
    ])
    args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()

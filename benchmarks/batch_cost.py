"""CPU seconds per training batch and peak RSS of one model, before/after: checkouts interleaved.

    python benchmarks/make_shaped.py /tmp/sports --shape sports          # GENERATED Sports-shaped features
    python benchmarks/batch_cost.py /tmp/base /work/wt-speed --model FREEDOM --dataset amazon-sports \\
        --data-path /tmp/sports --batches 20 --repeats 3
    python benchmarks/make_shaped.py /tmp/elec --shape electronics     # GENERATED Electronics shape
    python benchmarks/batch_cost.py /tmp/base /work/wt-speed --model GUME --dataset electronics-shaped \\
        --data-path /tmp/elec --batches 5 --repeats 2 \\
        --config '{"n_layers": 1, "bm_temp": 0.2, "um_loss": 0.1, "um_temp": 0.2, "vt_loss": 0.1}'

Each checkout (a folder holding a recbole_mm checkout, e.g. ``git archive REV | tar -x -C DIR``) runs
``benchmarks/electronics.py``'s cell (load, build, one first batch, then ``--batches`` timed training
batches of recbole_mm's trainer; no evaluation) in a fresh one-thread process (``taskset``, OMP/MKL and
torch at one thread) importing recbole_mm from that checkout. The checkouts alternate, ``--repeats``
rounds; the result is the median over rounds of each checkout's CPU seconds per timed batch (process
user+sys: on a shared machine, what the batch costs alone), the ratio to the first checkout, and the peak
RSS of the whole process (load and model build included). ``--json`` keeps every cell.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

HERE = Path(__file__).resolve()
sys.path.insert(0, str(HERE.parent))

import electronics  # noqa: E402
import speed  # noqa: E402


def run(checkout: Path, request: dict) -> dict:
    """One cell of ``electronics.py`` importing recbole_mm from ``checkout``."""
    import subprocess
    import tempfile

    command, env = speed.cell_command({"threads": 1}, checkout)
    command = command[: command.index(sys.executable)] + [sys.executable, str(electronics.HERE), "--cell",
                                                          json.dumps(request)]
    with tempfile.TemporaryDirectory(prefix="batch-cost-") as cwd:
        out = subprocess.run(command, capture_output=True, text=True, cwd=cwd, env=env, check=False)
    if out.returncode != 0:
        lines = [line for line in out.stderr.strip().splitlines() if line.strip()]
        return {**request, "failed": lines[-1] if lines else f"exit status {out.returncode}"}
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("checkouts", nargs="+", type=Path, help="recbole_mm checkouts; ratios are to the first")
    parser.add_argument("--model", required=True)
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--data-path", type=Path, required=True)
    parser.add_argument("--batches", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--config", default="{}", help="extra model settings, as JSON")
    parser.add_argument("--json", type=Path, help="where to keep every cell")
    args = parser.parse_args(argv)
    # A data set without a shipped config (the generated Electronics shape) runs under the shipped Amazon
    # protocol, as benchmarks/electronics.py runs it.
    shipped = (electronics.REPO / "dataset_configs" / f"{args.dataset}.yaml").is_file()
    base = ({"data_path": str(args.data_path), "show_progress": False, "state": "WARNING"} if shipped
            else electronics.dataset_config(args.data_path.resolve(), args.dataset))
    request = {"model": args.model, "dataset": args.dataset, "threads": 1, "batches": args.batches, "evaluate": False,
               "config": {**base, **json.loads(args.config)}}
    cells: dict[str, list[dict]] = {str(c): [] for c in args.checkouts}
    for round_ in range(args.repeats):
        for checkout in args.checkouts:
            cell = run(checkout.resolve(), request)
            cells[str(checkout)].append(cell)
            if "failed" in cell:
                print(f"round {round_ + 1} {checkout}: failed: {cell['failed']}", flush=True)
                continue
            per_batch = cell["phases"]["train"]["cpu"] / cell["batches_timed"]
            print(f"round {round_ + 1} {checkout}: {per_batch:.4f} CPU s/batch, peak RSS "
                  f"{cell['peak_rss_mib']:.0f} MiB, loss {cell['train_loss']!r}", flush=True)
            if args.json:
                args.json.write_text(json.dumps(cells, indent=1) + "\n")
    first = None
    for checkout, runs in cells.items():
        ok = [c for c in runs if "failed" not in c]
        if not ok:
            print(f"{checkout}: no successful cell")
            continue
        per_batch = statistics.median(c["phases"]["train"]["cpu"] / c["batches_timed"] for c in ok)
        rss = statistics.median(c["peak_rss_mib"] for c in ok)
        first = first or (per_batch, rss)
        print(f"{checkout}: median {per_batch:.4f} CPU s/batch (x{per_batch / first[0]:.2f}), peak RSS {rss:.0f} MiB "
              f"(x{rss / first[1]:.2f}), {len(ok)} round(s)")


if __name__ == "__main__":
    main()

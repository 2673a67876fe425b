"""Peak RSS and CPU seconds of loading one float64 feature table as recbole_mm's float32 tensor, per checkout.

    python benchmarks/load_rss.py /tmp/base /work/wt-speed --rows 63001 --dim 4096 --file /tmp/feat64.npy

Writes (once; kept when the shape matches) a GENERATED ``--rows`` x ``--dim`` float64 ``.npy`` (Electronics'
image table by default: 63,001 x 4096, 1.9 GiB), then, for each checkout (a folder holding a recbole_mm
checkout), in a fresh process importing recbole_mm from it: ``files.open_feature_file`` (the NaN scan)
and ``files.align_features`` (the float32 table the dataset holds), with every row's item present. Prints
the process's peak RSS (``ru_maxrss``: the memory-mapped file's pages it touched count too) and CPU seconds,
and checks that every checkout produced the same table (sha256 of its bytes).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

CHILD = r"""
import hashlib, json, resource, sys, time
import numpy as np
from recbole_mm.data import files
path, rows = sys.argv[1], int(sys.argv[2])
start = time.process_time()
array, missing = files.open_feature_file(path, "image", rows)
table = files.align_features(array, np.arange(rows, dtype=np.int64), missing, "error", path)
print(json.dumps({"module": files.__file__, "cpu_seconds": time.process_time() - start,
                  "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "sha256": hashlib.sha256(table.numpy().tobytes()).hexdigest()[:16]}))
"""


def write_table(path: Path, rows: int, dim: int, seed: int = 0) -> None:
    """A random non-negative float64 table, written block by block (never whole in memory)."""
    import numpy as np

    if path.exists():
        existing = np.load(path, mmap_mode="r")
        if existing.shape == (rows, dim) and existing.dtype == np.float64:
            return
    rng = np.random.default_rng(seed)
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float64, shape=(rows, dim))
    for start in range(0, rows, 4096):
        block = rng.standard_normal((min(4096, rows - start), dim))
        out[start:start + len(block)] = np.maximum(block, 0.0)
    out.flush()
    del out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("checkouts", nargs="+", type=Path)
    parser.add_argument("--rows", type=int, default=63001)
    parser.add_argument("--dim", type=int, default=4096)
    parser.add_argument("--file", type=Path, default=Path("/tmp/recbole_mm_feat64.npy"))
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args(argv)
    write_table(args.file, args.rows, args.dim)
    for round_ in range(args.repeats):
        for checkout in args.checkouts:
            env = {**os.environ, "PYTHONPATH": str(checkout.resolve()), "OMP_NUM_THREADS": "1"}
            # cwd "/": python -c puts the working directory first on sys.path, ahead of PYTHONPATH.
            out = subprocess.run([sys.executable, "-c", CHILD, str(args.file), str(args.rows)], capture_output=True,
                                 text=True, env=env, cwd="/", check=False)
            if out.returncode != 0:
                print(f"{checkout}: failed: {out.stderr.strip().splitlines()[-1:]}")
                continue
            cell = json.loads(out.stdout.strip().splitlines()[-1])
            print(f"round {round_ + 1} {checkout}: peak RSS {cell['peak_rss_mib']:.0f} MiB, {cell['cpu_seconds']:.1f} "
                  f"CPU s, table {cell['sha256']} ({cell['module']})", flush=True)


if __name__ == "__main__":
    main()

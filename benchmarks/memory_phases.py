"""Resident memory after each phase of an Electronics-shaped cell: current RSS (anonymous and file-backed) and
the peak so far, plus the CPU seconds per timed training batch; for finding which phase holds the peak and what
a memory setting trades for it.

    python benchmarks/make_shaped.py /tmp/elec --shape electronics     # GENERATED Electronics shape
    OMP_NUM_THREADS=1 python benchmarks/memory_phases.py GUME --data-path /tmp/elec knn_backend=faiss
    OMP_NUM_THREADS=1 python benchmarks/memory_phases.py GUME --data-path /tmp/elec knn_backend=faiss \\
        reuse_freed_memory=False

One process, one thread (``--threads``): ``benchmarks/electronics.py``'s cell settings for the label (``GUME``:
its Electronics setting), ``key=value`` overrides on top, then the phases of that script's cell
(``electronics.cell_phases``: config and dataset, the feature files, RecBole's loaders, the model's construction,
one first training batch, ``--batches`` timed batches, one full-sort validation pass), each followed by a line
with ``/proc/self/status``'s VmRSS (now), RssAnon, RssFile and VmHWM (the peak so far), in MiB. Where
``electronics.py`` reads only the peak after each phase, this shows what each phase leaves resident, e.g. that
reading a float64 feature file peaks while its mapped pages are held, or that the trainer's heap reuse
(``reuse_freed_memory``) keeps freed blocks between steps. The timed batches' CPU and wall seconds per batch are
on the line after them. With CUDA, RecBole's default ``gpu_id`` puts the cell
on the GPU, and every line also has ``torch.cuda.max_memory_allocated`` (``cuda_peak_mib``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve()
sys.path.insert(0, str(HERE.parent.parent))
sys.path.insert(0, str(HERE.parent))

import electronics  # noqa: E402  (its cell settings, data-set config and the cell's phases)


def resident() -> dict[str, float]:
    """This process's VmRSS, RssAnon, RssFile and VmHWM in MiB (Linux)."""
    fields = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "RssAnon", "RssFile", "VmHWM"):
            fields[name] = int(value.split()[0]) / 1024  # kB
    return fields


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("label", choices=list(electronics.CELLS))
    parser.add_argument("settings", nargs="*", help="key=value (yaml values)")
    parser.add_argument("--data-path", type=Path, default=Path("/tmp/elec"))
    parser.add_argument("--batches", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch's CPU threads (a GPU cell builds its kNN graphs on the CPU: give it the cores)")
    args = parser.parse_intermixed_args()
    sys.argv = sys.argv[:1]  # RecBole's Config reads --key=value from the command line: give it none
    import torch
    import yaml

    torch.set_num_threads(args.threads)
    model_name, cell_settings = electronics.CELLS[args.label]
    overrides = {k: yaml.safe_load(v) for k, v in (s.split("=", 1) for s in args.settings)}
    config = {**electronics.dataset_config(args.data_path), **cell_settings, **overrides}
    names = {"first_batch": "first batch", "train": f"{args.batches} batches", "eval": "validation pass"}
    start = wall = 0.0
    cuda = torch.cuda.is_available()  # RecBole's default gpu_id puts the cell on it: GPU memory and wall time too
    for name, _ in electronics.cell_phases(model_name, config, args.batches):
        extra = {}
        if name == "first_batch":
            start, wall = time.process_time(), time.perf_counter()
        elif name == "train":
            extra["cpu_seconds_per_batch"] = round((time.process_time() - start) / args.batches, 3)
            extra["wall_seconds_per_batch"] = round((time.perf_counter() - wall) / args.batches, 3)
        if cuda:
            extra["cuda_peak_mib"] = round(torch.cuda.max_memory_allocated() / 2**20)
        print(json.dumps({"phase": names.get(name, name), **{k: round(v) for k, v in resident().items()}, **extra}),
              flush=True)


if __name__ == "__main__":
    main()

"""kNN graph building at catalogue scale: build time, peak memory and recall@k of ``knn_neighbours``.

    python benchmarks/scale.py --sizes 10000 100000 --threads 2
    nice -n 0 python benchmarks/scale.py --sizes 1000000 --backends faiss --threads 2

Each (size, data, backend) is measured in a fresh child process, so the peak resident memory
(``ru_maxrss``, taken right after the build, before recall is measured) is that build's alone; it includes
the generated features themselves (n × dim float32). Recall@k is measured against exact brute force
(``graphs.exact_neighbours``) on a seeded sample of query rows. Two kinds of generated 384-d rows:
``random`` (i.i.d. Gaussian: the hardest case for an approximate index, no structure at all) and
``clustered`` (a Gaussian mixture, n/100 centres, noise 0.7 of the centre scale: closer to real item
embeddings, which cluster by category).

Results accumulate in ``results/scale-knn.json`` (one entry per size/data/backend, the latest run wins)
and are written into ``results/scale.md`` between this script's markers only, so other sections of that
file are left as they are.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shlex
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BEGIN, END = "<!-- scale.py: kNN graph building (begin) -->", "<!-- scale.py: kNN graph building (end) -->"


def generate(n: int, dim: int, kind: str, seed: int = 0):
    """Seeded float32 rows, made a block at a time (no float64 copy of the whole table)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    if kind == "random":
        return torch.randn(n, dim, generator=g)
    centres = torch.randn(max(n // 100, 1), dim, generator=g)
    out = torch.empty(n, dim)
    for start in range(0, n, 65_536):
        rows = min(65_536, n - start)
        out[start:start + rows] = centres[torch.randint(len(centres), (rows,), generator=g)]
        out[start:start + rows] += 0.7 * torch.randn(rows, dim, generator=g)
    return out


def measure(n: int, dim: int, k: int, kind: str, backend: str, queries: int, threads: int) -> dict:
    """One build in this process (the child): seconds, peak RSS after the build, recall on sampled rows."""
    import torch

    from recbole_mm.model.graphs import exact_neighbours, knn_neighbours

    torch.set_num_threads(threads)
    features = generate(n, dim, kind)
    start = time.perf_counter()
    indices, _ = knn_neighbours(features, k, backend=backend)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    sample = torch.randperm(n, generator=torch.Generator().manual_seed(1))[:min(queries, n)]
    truth, _ = exact_neighbours(features[sample].clone(), features, k)
    found = indices[sample]
    hits = sum(len(set(a) & set(b)) for a, b in zip(found.tolist(), truth.tolist()))
    return {"n": n, "dim": dim, "k": k, "data": kind, "backend": backend, "threads": threads,
            "seconds": seconds, "peak_bytes": peak, "recall": hits / (len(sample) * k), "queries": len(sample)}


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{cpu}, {os.cpu_count()} cores, {memory:.0f} GiB"


def commit() -> str:
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True).stdout.strip()

    return git("rev-parse", "--short", "HEAD") + (" (with uncommitted changes)" if git("status", "--porcelain",
                                                                                    "--", "recbole_mm") else "")


def render(entries: list[dict]) -> str:
    rows = sorted(entries, key=lambda e: (e["n"], e["data"], e["backend"] != "exact", e["backend"]))
    lines = [
        BEGIN,
        "## kNN graph building",
        "",
        "`recbole_mm.model.graphs.knn_neighbours(features, k, backend=...)` on generated rows (see",
        "`benchmarks/scale.py` for the two kinds). *Build* is the wall time of the call; *peak* the child",
        "process's peak resident memory right after it, including the features themselves; *recall@k* is",
        "against exact brute force on the stated number of sampled query rows. Each row states the command,",
        "commit and machine state that produced it.",
        "",
        "| items | dims | data | backend | threads | build (s) | peak (GiB) | features (GiB) | recall@k | k | queries "
        "| commit | load at start | command |",
        "|---:|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---|---|---|",
    ]
    for e in rows:
        lines.append(
            f"| {e['n']:,} | {e['dim']} | {e['data']} | {e['backend']} | {e['threads']} | {e['seconds']:.1f} "
            f"| {e['peak_bytes'] / 2**30:.2f} | {e['n'] * e['dim'] * 4 / 2**30:.2f} | {e['recall']:.4f} | {e['k']} "
            f"| {e['queries']:,} | {e['commit']} | {e['load']} | `{e['command']}` |")
    machines = sorted({e["machine"] for e in rows})
    lines += ["", f"Machine: {'; '.join(machines)}. *Load at start* is the 1-minute load average when the row's",
              "run began: above the thread count means the machine was shared with other work and times are",
              "pessimistic (OpenMP's 2-thread faiss suffers most from sharing). I.i.d. random rows have no",
              "structure for an HNSW index to exploit, so its recall there is a floor; item features cluster.",
              END]
    return "\n".join(lines) + "\n"


def write_section(path: Path, section: str, begin: str = BEGIN, end: str = END) -> None:
    """Replace a script's section of ``path`` (between its ``begin``/``end`` markers, this script's by
    default), or append it; nothing else changes."""
    text = path.read_text() if path.exists() else "# Scale\n\nMeasurements at catalogue scale.\n\n"
    if begin in text and end in text:
        head, rest = text.split(begin, 1)
        tail = rest.split(end, 1)[1].lstrip("\n")
        text = head + section + ("\n" + tail if tail else "")
    else:
        text = text.rstrip("\n") + "\n\n" + section
    tmp = path.with_suffix(".md.tmp")
    tmp.write_text(text)
    tmp.replace(path)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--data", nargs="+", default=["random", "clustered"], choices=["random", "clustered"])
    parser.add_argument("--backends", nargs="+", default=None, choices=["exact", "faiss", "auto"],
                        help="default: exact up to 10^5 items, and faiss at every size")
    parser.add_argument("--queries", type=int, default=1000, help="sampled query rows for recall")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=REPO / "results" / "scale.md")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(measure(**json.loads(args.child))), flush=True)
        return

    store = args.out.with_name("scale-knn.json")
    command = "python benchmarks/scale.py " + shlex.join(a for a in (argv if argv is not None else sys.argv[1:]))
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": str(args.threads)}
    for n in args.sizes:
        for kind in args.data:
            for backend in args.backends or (["exact", "faiss"] if n <= 100_000 else ["faiss"]):
                spec = {"n": n, "dim": args.dim, "k": args.k, "kind": kind, "backend": backend,
                        "queries": args.queries, "threads": args.threads}
                load, revision = f"{os.getloadavg()[0]:.1f}", commit()
                out = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)], env=env, check=True,
                                     capture_output=True, text=True)
                result = json.loads(out.stdout.strip().splitlines()[-1])
                result.update(command=command.strip(), commit=revision, machine=machine(), load=load,
                              date=datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"))
                print(f"{n:>9,} {kind:9} {backend:6} {result['seconds']:8.1f} s "
                      f"{result['peak_bytes'] / 2**30:6.2f} GiB  recall@{args.k} {result['recall']:.4f}", flush=True)
                # Read the store again just before writing: another run (e.g. the 10^6 row in the background)
                # may have added rows meanwhile.
                entries = {(e["n"], e["data"], e["backend"]): e
                           for e in (json.loads(store.read_text()) if store.exists() else [])}
                entries[(n, kind, backend)] = result
                store.write_text(json.dumps(list(entries.values()), indent=1) + "\n")
                write_section(args.out, render(list(entries.values())))


if __name__ == "__main__":
    main()

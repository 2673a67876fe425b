"""Cost of collecting one full-sort evaluation batch on a large catalogue: RecBole's ``Collector``
against recbole_mm's (``recbole_mm.speedups.Collector``), 4096 users x 60,000 items, one thread.

    for c in recbole recbole_mm; do OMP_NUM_THREADS=1 taskset -c 0 python benchmarks/eval_collect.py $c; done

Each call is its own process, so the peak RSS is that collector's (the score matrix alone is ~940 MiB).
"""

from __future__ import annotations

import resource
import sys
import time

import torch


def main(which: str, users: int = 4096, items: int = 60000) -> None:
    torch.set_num_threads(1)
    import recbole_mm  # noqa: F401  (shims before RecBole's imports)
    from recbole.config import Config
    from recbole.evaluator import Collector as RecBoleCollector

    from recbole_mm.speedups import Collector

    config = Config(model="BPR", dataset="ml-100k",
                    config_dict={"metrics": ["Recall", "NDCG", "Precision", "MAP"], "topk": [10, 20]})
    g = torch.Generator().manual_seed(0)
    scores = torch.randn(users, items, generator=g)
    positive_u = torch.randint(0, users, (users * 5,), generator=g)
    positive_i = torch.randint(1, items, (users * 5,), generator=g)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    collector = {"recbole": RecBoleCollector, "recbole_mm": Collector}[which](config)
    start = time.process_time()
    for _ in range(3):
        collector.eval_batch_collect(scores, None, positive_u, positive_i)
    seconds = (time.process_time() - start) / 3
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"{which}: {seconds:.3f} CPU s per batch; peak RSS {peak:.0f} MiB ({before:.0f} MiB before collecting)")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "recbole_mm")

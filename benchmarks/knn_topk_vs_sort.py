"""Former exact kNN (full stable sort per row) vs today's (top-k per block), back to back on one thread:

    PYTHONPATH=. OMP_NUM_THREADS=1 taskset -c 0 python benchmarks/knn_topk_vs_sort.py
"""
import statistics
import time

import torch

from recbole_mm.model.graphs import knn_neighbours
torch.set_num_threads(1)
def old(features, k, chunk_size=1024):
    n = features.shape[0]; k = min(k, n)
    unit = torch.nn.functional.normalize(features.float(), dim=1)
    I, V = [], []
    for s in range(0, n, chunk_size):
        sims = unit[s:s+chunk_size] @ unit.T
        o = torch.sort(sims, dim=1, descending=True, stable=True).indices[:, :k]
        I.append(o); V.append(torch.gather(sims, 1, o))
    return torch.cat(I), torch.cat(V)
x = torch.randn(8000, 384, generator=torch.Generator().manual_seed(0))
t_old, t_new = [], []
for rep in range(3):
    t = time.perf_counter(); a = old(x, 10); t_old.append(time.perf_counter() - t)
    t = time.perf_counter(); b = knn_neighbours(x, 10); t_new.append(time.perf_counter() - t)
    assert torch.equal(a[0], b[0])
print(f"n=8000 d=384 k=10 1 thread: old median {statistics.median(t_old):.2f} s, new median {statistics.median(t_new):.2f} s, ratio {statistics.median(t_old)/statistics.median(t_new):.1f}x; same neighbours")

"""Which HNSW library: build + search time, peak memory and recall@10 of faiss, hnswlib and usearch on
10^5 generated 384-d rows (the libraries installed by hand; only faiss is in the ann extra):

    python benchmarks/ann_libraries.py 100000 clustered faiss 32 80 64   # n, data, library, M, efC, efS
"""
import sys
import time

import numpy as np
import torch

torch.set_num_threads(2)
n, d, k = int(sys.argv[1]), 384, 10
kind = sys.argv[2]
rng = np.random.default_rng(0)
if kind == "random":
    x = rng.standard_normal((n, d), dtype=np.float32)
else:  # gaussian mixture: n/100 centres, noise 0.7 of the centre scale
    c = rng.standard_normal((max(n // 100, 10), d), dtype=np.float32)
    x = c[rng.integers(0, len(c), n)] + 0.7 * rng.standard_normal((n, d), dtype=np.float32)
x /= np.linalg.norm(x, axis=1, keepdims=True)
q = rng.choice(n, 1000, replace=False)
sims = x[q] @ x.T
truth = np.argsort(-sims, axis=1, kind="stable")[:, :k]
def recall(idx): return np.mean([len(set(a) & set(b)) / k for a, b in zip(idx[q], truth)])
lib = sys.argv[3]
t = time.perf_counter()
if lib == "faiss":
    import faiss; faiss.omp_set_num_threads(2)
    M, efc, efs = int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6])
    index = faiss.IndexHNSWFlat(d, M, faiss.METRIC_INNER_PRODUCT); index.hnsw.efConstruction = efc
    index.add(x); tb = time.perf_counter() - t
    index.hnsw.efSearch = efs
    _, idx = index.search(x, k)
elif lib == "hnswlib":
    import hnswlib
    M, efc, efs = int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6])
    index = hnswlib.Index(space="ip", dim=d); index.init_index(max_elements=n, ef_construction=efc, M=M)
    index.set_num_threads(2); index.add_items(x); tb = time.perf_counter() - t
    index.set_ef(efs); idx, _ = index.knn_query(x, k)
elif lib == "usearch":
    from usearch.index import Index
    M, efc, efs = int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6])
    index = Index(ndim=d, metric="ip", dtype=sys.argv[7] if len(sys.argv) > 7 else "f32", connectivity=M, expansion_add=efc, expansion_search=efs)
    index.add(np.arange(n), x, threads=2); tb = time.perf_counter() - t
    idx = index.search(x, k, threads=2).keys
elif lib == "ivf":
    import faiss; faiss.omp_set_num_threads(2)
    nlist, nprobe = int(sys.argv[4]), int(sys.argv[5])
    quant = faiss.IndexFlatIP(d); index = faiss.IndexIVFFlat(quant, d, nlist, faiss.METRIC_INNER_PRODUCT)
    index.train(x[rng.choice(n, min(n, 40 * nlist), replace=False)]); index.add(x); tb = time.perf_counter() - t
    index.nprobe = nprobe; _, idx = index.search(x, k)
tt = time.perf_counter() - t
import resource
print(f"{lib} {kind} n={n} args={sys.argv[4:]} build={tb:.1f}s total={tt:.1f}s recall@10={recall(np.asarray(idx)):.4f} peak={resource.getrusage(resource.RUSAGE_SELF).ru_maxrss/2**20:.2f}GiB", flush=True)

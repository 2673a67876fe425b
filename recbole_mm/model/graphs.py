"""Graph builders shared by the multimodal models: pure functions, tensors in, torch sparse tensors out.

Nothing here knows RecBole. Similarities are computed in row chunks, so memory stays
O(n·k + chunk·n) and no dense n×n matrix is ever formed. Ties in similarity are broken towards the
lower column index, so results are deterministic and comparable with a dense reference.
"""

from __future__ import annotations

import logging
import time
import warnings
from typing import NamedTuple

import torch

from recbole_mm.errors import RecBoleMMError
from recbole_mm.resources import install_command

_logger = logging.getLogger(__name__)

NORMALIZATIONS = ("sym", "row", "none")


KNN_BACKENDS = ("exact", "faiss", "auto")
# Above this many rows `auto` uses the approximate backend (when installed). Exact time grows as n²·dim
# (results/scale.md: 50,000 × 384 took 245 s on the shared 2-core machine, so 10^5 is about four times that
# and 10^6 some 400 times), the HNSW index about as n·log n (10^5 clustered rows: 458 s on the same shared
# machine, recall@10 1.0); below 10^5, exact is affordable and keeps the papers' graphs exactly.
AUTO_APPROXIMATE_ABOVE = 100_000
# At most this many similarities per block (256 MiB of float32), whatever chunk_size says: with 10^6 rows a
# 1024-row block alone would be 4 GiB.
_MAX_BLOCK_ELEMENTS = 1 << 26
_PROGRESS_AFTER_S = 5.0  # log progress only for builds that take longer than this
_PROGRESS_EVERY_S = 15.0


class _Progress:
    """Log lines ``kNN graph (<backend>): i/n rows, t s`` through the standard logger (RecBole's
    handlers print them), first after a few seconds and then every few more; silent for quick builds."""

    def __init__(self, what: str, total: int):
        self.what, self.total = what, total
        self.start = self.last = time.perf_counter()

    def update(self, done: int) -> None:
        now = time.perf_counter()
        if now - self.start >= _PROGRESS_AFTER_S and now - self.last >= _PROGRESS_EVERY_S or (
                done == self.total and now - self.start >= _PROGRESS_AFTER_S):
            self.last = now
            _logger.info(f"kNN graph ({self.what}): {done:,}/{self.total:,} rows, {now - self.start:.0f} s")


def _top_k_rows(sims: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row of ``sims`` the ``k`` largest entries, descending, equal values ordered by column: the
    result of a stable descending sort, cut at ``k``, without sorting the whole row."""
    values, cols = torch.topk(sims, k, dim=1, sorted=True)
    kth = values[:, -1:].clone()
    # Everything above the k-th value is surely in; torch.topk picks an arbitrary subset of the entries equal
    # to it. Where such ties reach beyond the selection, take the lowest columns among them instead.
    above = (sims > kth).sum(dim=1)
    ties = (sims == kth).sum(dim=1)
    redo = (above + ties > k).nonzero().squeeze(1)
    del above, ties
    n = sims.shape[1]
    columns = torch.arange(n, dtype=torch.int32, device=sims.device)
    # A few rows at a time: the int32 keys below cost as much as the similarities (rows of zeros all tie).
    step = max(1, sims.shape[0] // 4)
    for part in redo.split(step):
        block, threshold = sims[part], kth[part]
        # Key -1 for entries above the k-th value (all of them are taken), the column for ties, n otherwise:
        # the k smallest keys are exactly the wanted set.
        key = torch.where(block == threshold, columns, n)
        key.masked_fill_(block > threshold, -1)
        picked = torch.topk(key, k, dim=1, largest=False, sorted=False).indices
        cols[part] = picked
        values[part] = torch.gather(block, 1, picked)
        del key, block
    return _order_rows(cols, values, k)


def _order_rows(cols: torch.Tensor, values: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Each row's candidates ordered by descending value, equal values by column; the first ``k`` kept."""
    by_col = torch.sort(cols, dim=1).indices
    cols, values = torch.gather(cols, 1, by_col), torch.gather(values, 1, by_col)
    by_value = torch.sort(values, dim=1, descending=True, stable=True).indices[:, :k]
    return torch.gather(cols, 1, by_value), torch.gather(values, 1, by_value)


def exact_neighbours(queries: torch.Tensor, features: torch.Tensor, k: int,
                     chunk_size: int = 1024) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-``k`` cosine neighbours among the rows of ``features`` for each row of ``queries`` (brute force,
    in blocks of at most ``chunk_size`` query rows and 2^26 similarities, so memory stays O(q·k + block)).
    Descending similarity, ties to the lower column; rows of zeros have similarity 0 to everything.
    ``queries`` may be ``features`` itself (the kNN graph), or e.g. a sample of its rows (to measure recall);
    for other queries the feature rows are normalised a block at a time (no second copy of ``features``).
    """
    n = features.shape[0]
    k = min(k, n)
    same = queries is features
    unit = torch.nn.functional.normalize(features.float(), dim=1) if same else None
    rows = max(1, min(chunk_size, _MAX_BLOCK_ELEMENTS // max(n, 1)))
    base_rows = n if same else max(k, _MAX_BLOCK_ELEMENTS // rows)
    q = queries.shape[0]
    indices = torch.empty(q, k, dtype=torch.long, device=features.device)
    values = torch.empty(q, k, dtype=torch.float32, device=features.device)
    progress = _Progress("exact", q)
    for start in range(0, q, rows):
        if same:
            sims = unit[start:start + rows] @ unit.T
            indices[start:start + rows], values[start:start + rows] = _top_k_rows(sims, k)
        else:
            block = torch.nn.functional.normalize(queries[start:start + rows].float(), dim=1)
            best_cols, best_values = None, None
            for base in range(0, n, base_rows):
                sims = block @ torch.nn.functional.normalize(features[base:base + base_rows].float(), dim=1).T
                cols, vals = _top_k_rows(sims, min(k, sims.shape[1]))
                cols = cols + base
                if best_cols is not None:
                    cols, vals = _order_rows(torch.cat([best_cols, cols], 1), torch.cat([best_values, vals], 1), k)
                best_cols, best_values = cols, vals
            indices[start:start + rows], values[start:start + rows] = best_cols, best_values
        del sims  # free the block before the next one is allocated
        progress.update(min(start + rows, q))
    return indices, values


NO_NEIGHBOUR = -1  # index of an empty neighbour slot (knn_neighbours with skip_empty); builders drop it


def knn_neighbours(features: torch.Tensor, k: int, chunk_size: int = 1024,
                   backend: str = "exact", skip_empty: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-``k`` cosine neighbours of every row (the row itself included when it ranks).

    Returns ``(indices, similarities)``, both ``[n, min(k, n)]`` on the input's device, each row in
    descending similarity, ties ordered by column index. A row of zeros is an item without content
    (``missing_feature: zero``): with ``skip_empty`` (the default) it has no neighbours and is no one's
    neighbour, its slots and the slots no other row can fill being :data:`NO_NEIGHBOUR` (similarity 0),
    which the graph builders here drop; without it, it has similarity 0 to everything, so it would tie
    with every item and take the lowest ids. ``backend`` (the models' ``knn_backend``): ``exact`` (brute
    force in row blocks); ``faiss`` (an HNSW index, approximate, CPU; needs the ``ann`` extra);
    ``auto`` (``faiss`` above ``AUTO_APPROXIMATE_ABOVE`` rows when it is installed, else exact).
    """
    if features.dim() != 2:
        raise ValueError(f"features must be 2-D, got shape {tuple(features.shape)}")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if backend not in KNN_BACKENDS:
        # The configured knn_backend is validated by the models' schema and never arrives here unchecked;
        # this is the argument check for direct callers (benchmarks/scale.py passes its --backend), since
        # the dispatch below would otherwise run an unknown backend as exact.
        raise RecBoleMMError(f"knn_backend: {backend!r} is not one of {', '.join(KNN_BACKENDS)}; fix the config")
    n = features.shape[0]
    if skip_empty:
        empty = ~features.detach().any(dim=1)
        if empty.any():
            # Search among the rows with content only (ids mapped back, so ties keep the id order).
            width = min(k, n)
            indices = torch.full((n, width), NO_NEIGHBOUR, dtype=torch.long, device=features.device)
            values = torch.zeros(n, width, dtype=torch.float32, device=features.device)
            valid = (~empty).nonzero().squeeze(1)
            if len(valid):
                # Usually every row but the padding row 0: a view then, not a copy of the whole table.
                contiguous = int(valid[-1] - valid[0]) + 1 == len(valid)
                rows = features[int(valid[0]):int(valid[-1]) + 1] if contiguous else features[valid]
                found, sims = knn_neighbours(rows, k, chunk_size, backend, skip_empty=False)
                indices[valid, :found.shape[1]], values[valid, :found.shape[1]] = valid[found], sims
            return indices, values
    if backend == "auto":
        backend = "exact"
        if n > AUTO_APPROXIMATE_ABOVE:
            if _faiss(required=False) is not None:
                backend = "faiss"
            else:
                _logger.info(f"kNN graph over {n:,} items: exact (knn_backend: auto); "
                             f"{install_command('ann')} for the much faster approximate index")
    if backend == "faiss":
        return _faiss_neighbours(features, k, chunk_size)
    return exact_neighbours(features, features, k, chunk_size)


# HNSW settings: recall@10 1.0 on clustered 384-d rows at 10^4 and 10^5, 0.86 on i.i.d. random rows at 10^4
# (results/scale.md); faiss was chosen over hnswlib and usearch, which were slower to build at the same settings
# (benchmarks/ann_libraries.py). The search breadth grows with k so that k results always come back.
_HNSW_M = 32
_HNSW_EF_CONSTRUCTION = 80
_HNSW_EF_SEARCH = 64
_SIMILARITY_ROWS = 256  # rows whose neighbour similarities are recomputed at a time ([rows, k, dim] temporaries)
_ANN_CHUNK = 8192  # rows normalised, added and searched at a time: no second full copy of the features


def _faiss(required: bool = True):
    """The faiss module, or None (``required=False``) / a one-line error when it is not installed."""
    try:
        import faiss
    except ImportError:
        if required:
            raise RecBoleMMError(f"knn_backend: faiss needs the faiss library; {install_command('ann')} "
                                 "(or set knn_backend: exact)") from None
        return None
    return faiss


def _faiss_neighbours(features: torch.Tensor, k: int, chunk_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Approximate top-``k`` cosine neighbours from a faiss HNSW index over the unit rows, on CPU (the
    result goes back to the input's device). Similarities are recomputed in torch for the returned pairs
    and each row is ordered as :func:`exact_neighbours` orders it; the rare row with fewer than ``k``
    results (or a zero row, which an inner-product index cannot rank) is filled in exactly.
    """
    faiss = _faiss()
    n, dim = features.shape
    k = min(k, n)
    faiss.omp_set_num_threads(torch.get_num_threads())
    index = faiss.IndexHNSWFlat(dim, _HNSW_M, faiss.METRIC_INNER_PRODUCT)
    index.hnsw.efConstruction = _HNSW_EF_CONSTRUCTION
    index.hnsw.efSearch = max(_HNSW_EF_SEARCH, 2 * k)
    source = features.detach().float().cpu()
    # The index's vector store grows by add(); sized once here, it is never copied into a larger buffer
    # (which held the old and the new store at once: half a GiB more at the Electronics shape's 4096-d).
    codes = faiss.downcast_index(index.storage).codes
    if hasattr(codes, "resize"):
        codes.resize(n * dim * 4)
        codes.resize(0)

    def unit_rows(start: int) -> torch.Tensor:
        return torch.nn.functional.normalize(source[start:start + _ANN_CHUNK], dim=1).contiguous()

    progress = _Progress("faiss HNSW index", n)
    for start in range(0, n, _ANN_CHUNK):
        index.add(unit_rows(start).numpy())
        progress.update(min(start + _ANN_CHUNK, n))
    indices = torch.empty(n, k, dtype=torch.long)
    values = torch.empty(n, k, dtype=torch.float32)
    progress = _Progress("faiss HNSW search", n)
    for start in range(0, n, _ANN_CHUNK):
        block = unit_rows(start)
        found = torch.from_numpy(index.search(block.numpy(), k)[1]).long()
        missing = (found < 0).any(dim=1) | (block.abs().sum(dim=1) == 0)
        found = found.clamp_min(0)
        # In row blocks: the [rows, k, dim] neighbour table of a whole chunk was 1.3 GiB three times over at
        # the Electronics shape; each similarity is computed exactly as before (row by row).
        sims = torch.empty(found.shape, dtype=torch.float32)
        for s in range(0, len(block), _SIMILARITY_ROWS):
            e = s + _SIMILARITY_ROWS
            sims[s:e] = (block[s:e].unsqueeze(1) * torch.nn.functional.normalize(source[found[s:e]], dim=2)).sum(dim=2)
        found, sims = _order_rows(found, sims, k)
        if missing.any():
            rows = missing.nonzero().squeeze(1)
            found[rows], sims[rows] = exact_neighbours(block[rows], source, k, chunk_size)
        indices[start:start + len(block)], values[start:start + len(block)] = found, sims
        progress.update(min(start + _ANN_CHUNK, n))
    del index
    return indices.to(features.device), values.to(features.device)


def normalize_adjacency(rows: torch.Tensor, cols: torch.Tensor, values: torch.Tensor, n: int,
                        how: str = "sym") -> torch.Tensor:
    """Sparse ``[n, n]`` matrix from COO triplets, normalised by its row sums d:
    ``sym`` → D^-1/2 A D^-1/2, ``row`` → D^-1 A, ``none`` → A. Rows (and columns) with d = 0 stay zero.
    """
    if how not in NORMALIZATIONS:
        raise ValueError(f"normalization must be one of {NORMALIZATIONS}, got {how!r}")
    values = values.float()
    degree = torch.zeros(n, dtype=values.dtype, device=values.device).index_add_(0, rows, values)
    if how == "sym":
        inv_sqrt = torch.where(degree > 0, degree.clamp_min(1e-12).rsqrt(), torch.zeros_like(degree))
        values = inv_sqrt[rows] * values * inv_sqrt[cols]
    elif how == "row":
        inv = torch.where(degree > 0, 1.0 / degree.clamp_min(1e-12), torch.zeros_like(degree))
        values = inv[rows] * values
    return torch.sparse_coo_tensor(torch.stack([rows, cols]), values, (n, n), check_invariants=False).coalesce()


def graph_from_neighbours(indices: torch.Tensor, sims: torch.Tensor, weighted: bool = True,
                          normalization: str = "sym", offset: int = 0) -> torch.Tensor:
    """Item-item kNN graph from precomputed neighbours (:func:`knn_neighbours`): row i keeps its top-k
    neighbours, weighted by the similarity (or 1 when ``weighted=False``), then normalised (GUME/LATTICE:
    weighted, ``sym`` with row sums, i.e. D^-1/2 S D^-1/2 on a row-wise, generally asymmetric S); ``offset`` shifts every node id
    (e.g. by 1 to leave RecBole's padding item 0 isolated), giving an ``[n + offset]``-square matrix.
    """
    n, kk = indices.shape
    rows = torch.arange(n, device=indices.device).repeat_interleave(kk)
    cols = indices.reshape(-1)
    values = sims.reshape(-1) if weighted else torch.ones(n * kk, device=indices.device)
    keep = cols != NO_NEIGHBOUR  # items without content: no edges
    return normalize_adjacency(rows[keep] + offset, cols[keep] + offset, values[keep], n + offset, normalization)


def semantic_neighbours(neighbour_lists: list[torch.Tensor]) -> torch.Tensor:
    """Directed edges ``i → j`` where j is among i's top-k in *every* modality, self excluded (GUME's SN).

    ``neighbour_lists`` holds one ``[n, k_m]`` index matrix per modality (from :func:`knn_neighbours`).
    Returns a ``[2, E]`` long tensor sorted by (i, j).
    """
    if not neighbour_lists:
        raise ValueError("at least one modality is needed")
    n = neighbour_lists[0].shape[0]
    keys = None
    for neighbours in neighbour_lists:
        rows = torch.arange(n, device=neighbours.device).repeat_interleave(neighbours.shape[1])
        cols = neighbours.reshape(-1)
        keep = cols != NO_NEIGHBOUR  # an item without content in a modality has no neighbours there
        modality_keys = torch.unique(rows[keep] * n + cols[keep])
        keys = modality_keys if keys is None else keys[torch.isin(keys, modality_keys)]
    rows, cols = keys // n, keys % n
    keep = rows != cols
    return torch.stack([rows[keep], cols[keep]])


def augmented_adjacency(user_ids: torch.Tensor, item_ids: torch.Tensor, n_users: int, n_items: int,
                        item_edges: torch.Tensor | None = None, symmetric: bool = False) -> torch.Tensor:
    """GUME's augmented user-item adjacency A = [[0, R], [Rᵀ, G]] over n_users + n_items nodes,
    normalised D^-1/2 A D^-1/2 with D the row sums (as the original does, so with directed G the result
    is not symmetric). ``item_edges`` ([2, E] item→item, e.g. :func:`semantic_neighbours`) gives G;
    ``symmetric=True`` adds every item edge in both directions first (the cleaner variant).
    Duplicate (user, item) pairs count once.
    """
    users = user_ids.long()
    items = item_ids.long() + n_users
    rows = [users, items]
    cols = [items, users]
    if item_edges is not None and item_edges.numel():
        src, dst = item_edges[0].long() + n_users, item_edges[1].long() + n_users
        rows.append(src)
        cols.append(dst)
        if symmetric:
            rows.append(dst)
            cols.append(src)
    n = n_users + n_items
    keys = torch.unique(torch.cat(rows) * n + torch.cat(cols))
    row, col = keys // n, keys % n
    return normalize_adjacency(row, col, torch.ones(len(keys)), n, "sym")


def cooccurrence_graph(user_ids: torch.Tensor, item_ids: torch.Tensor, n_users: int, n_items: int, k: int,
                       normalization: str = "sym") -> torch.Tensor:
    """MM-GEF's collaborative item-item graph: C = RᵀR (co-occurrence counts, zero diagonal, duplicate
    interactions counted once); row i keeps its top-``k`` by count (ties to the lower index), each
    kept edge weighted C_ij / sqrt(deg_i · deg_j) with deg = the item's number of users; normalised.
    """
    import numpy as np
    import scipy.sparse as sp

    users, items = user_ids.cpu().numpy(), item_ids.cpu().numpy()
    r = sp.csr_matrix((np.ones(len(users), dtype=np.float64), (users, items)), shape=(n_users, n_items))
    r.data[:] = 1.0  # duplicates were summed by the constructor
    c = (r.T @ r).tocsr()
    c.setdiag(0)
    c.eliminate_zeros()
    degree = np.asarray(r.sum(axis=0)).ravel()
    rows, cols, values = [], [], []
    for i in range(n_items):
        start, end = c.indptr[i], c.indptr[i + 1]
        if start == end:
            continue
        candidates, counts = c.indices[start:end], c.data[start:end]
        keep = np.lexsort((candidates, -counts))[:k]
        rows.append(np.full(len(keep), i))
        cols.append(candidates[keep])
        values.append(counts[keep] / np.sqrt(degree[i] * degree[candidates[keep]]))
    if not rows:
        return torch.sparse_coo_tensor(torch.zeros(2, 0, dtype=torch.long), torch.zeros(0), (n_items, n_items))
    return normalize_adjacency(torch.from_numpy(np.concatenate(rows)), torch.from_numpy(np.concatenate(cols)),
                               torch.from_numpy(np.concatenate(values)), n_items, normalization)


class _SparseMatmul(torch.autograd.Function):
    """A @ X whose backward uses a precomputed Aᵀ (CSR): torch's own CSR backward re-transposes A on
    every call, which made propagation the dominant cost of a training step."""

    @staticmethod
    def forward(ctx, matrix: torch.Tensor, matrix_t: torch.Tensor, dense: torch.Tensor) -> torch.Tensor:
        ctx.matrix_t = matrix_t
        return _csr_mm(matrix, dense)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return None, None, _csr_mm(ctx.matrix_t, grad)


def _csr_mm(matrix: torch.Tensor, dense: torch.Tensor) -> torch.Tensor:
    """CSR ``matrix @ dense``. On CPU written straight into an uninitialised output (addmm, β = 0):
    ``@`` zero-fills and then copies its result, work that a propagation repeats at every layer."""
    if matrix.device.type != "cpu":
        return matrix @ dense
    out = dense.new_empty(matrix.shape[0], dense.shape[1])
    return torch.addmm(out, matrix, dense, beta=0, out=out)


def csr_pair(graph: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A sparse graph and its transpose as CSR tensors, the operands of :func:`sparse_matmul` (much faster than
    COO on CPU). torch prints "Sparse CSR tensor support is in beta state" at the first CSR tensor of a
    process; the CSR products used here are stable, so the line tells the user nothing and is silenced."""
    import warnings

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta state", category=UserWarning)
        return graph.to_sparse_csr(), graph.t().coalesce().to_sparse_csr()


def sparse_matmul(matrix: torch.Tensor, matrix_t: torch.Tensor, dense: torch.Tensor) -> torch.Tensor:
    """``matrix @ dense`` for CSR ``matrix`` with its CSR transpose ``matrix_t``, differentiable in ``dense``."""
    return _SparseMatmul.apply(matrix, matrix_t, dense)


def csr_rows(matrix: torch.Tensor, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The rows ``rows`` of CSR ``matrix`` (``[len(rows), n_cols]``, in the order given) and that block's CSR
    transpose, for :func:`sparse_matmul`: ``csr_rows(A, r)[0] @ X`` equals ``(A @ X)[r]`` row by row (each
    row's sum runs over the same entries in the same order), at the cost of the chosen rows' entries only."""
    crow, cols, values = matrix.crow_indices(), matrix.col_indices(), matrix.values()
    starts = crow[rows]
    counts = crow[rows + 1] - starts
    sub_crow = torch.zeros(len(rows) + 1, dtype=crow.dtype, device=crow.device)
    torch.cumsum(counts, 0, out=sub_crow[1:])
    # Position of every kept entry in the full matrix: its row's start plus its rank within the row.
    within = torch.arange(int(sub_crow[-1]), device=crow.device) - torch.repeat_interleave(sub_crow[:-1], counts)
    take = torch.repeat_interleave(starts, counts) + within
    sub_cols, sub_values = cols[take], values[take]
    shape = (len(rows), matrix.shape[1])
    block = torch.sparse_csr_tensor(sub_crow, sub_cols, sub_values, shape, check_invariants=False)
    positions = torch.repeat_interleave(torch.arange(len(rows), device=crow.device), counts)
    block_t = torch.sparse_coo_tensor(torch.stack([sub_cols, positions]), sub_values, shape[::-1],
                                      check_invariants=False).coalesce()
    return block, block_t.to_sparse_csr()


def degree_sensitive_keep(user_ids: torch.Tensor, item_ids: torch.Tensor, n_users: int, n_items: int,
                          dropout: float) -> torch.Tensor:
    """FREEDOM's degree-sensitive edge pruning: positions of the ``int(E · (1 - dropout))`` user-item
    edges kept, drawn without replacement with probability ∝ 1/sqrt(d_u · d_i) (degrees of the full
    graph), so edges between high-degree nodes are the likeliest to be dropped. Uses torch's global RNG.
    """
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {dropout}")
    users, items = user_ids.long(), item_ids.long()
    user_degree = torch.bincount(users, minlength=n_users).float()
    item_degree = torch.bincount(items, minlength=n_items).float()
    weights = user_degree[users].pow(-0.5) * item_degree[items].pow(-0.5)
    return torch.multinomial(weights, int(len(users) * (1.0 - dropout)))


def knn_edges(features: torch.Tensor, k: int, offset: int = 0, chunk_size: int = 1024,
              backend: str = "exact") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Top-``k`` cosine neighbours of every row as COO triplets ``(rows, cols, similarities)``, the
    similarities differentiable in ``features`` (LATTICE's learned graph). Neighbours are chosen without
    gradient (:func:`knn_neighbours`); the kept similarities are then recomputed from ``features``,
    which gives exactly the gradient of masking a dense similarity matrix to its top-k (only kept
    entries carry gradient) in O(n·k·d) memory. ``offset`` shifts every node id, as in
    :func:`graph_from_neighbours`; ``backend`` as in :func:`knn_neighbours`.
    """
    with torch.no_grad():
        indices, _ = knn_neighbours(features.detach(), k, chunk_size, backend)
    n, kk = indices.shape
    rows = torch.arange(n, device=indices.device).repeat_interleave(kk)
    cols = indices.reshape(-1)
    keep = cols != NO_NEIGHBOUR
    rows, cols = rows[keep], cols[keep]
    unit = torch.nn.functional.normalize(features.float(), dim=1)
    sims = (unit[rows] * unit[cols]).sum(dim=1)
    return rows + offset, cols + offset, sims


def learned_knn_graph(features: list[torch.Tensor], weights: torch.Tensor, k: int, n: int, offset: int = 0,
                      chunk_size: int = 1024, backend: str = "exact") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """LATTICE's learned item graph sym(Σ_m w_m topk(cos(features_m))) as COO triplets over ``n`` nodes,
    differentiable in the values (through the kept similarities, the weights ``w`` and the degrees): the
    per-modality top-``k`` graphs of :func:`knn_edges` are mixed *before* the D^-1/2 · D^-1/2 normalisation.
    Used by LATTICE and by MM-GEF's ``mm_graph: learned``."""
    rows, cols, values = [], [], []
    for weight, x in zip(weights, features):
        r, c, sims = knn_edges(x, k, offset=offset, chunk_size=chunk_size, backend=backend)
        rows.append(r)
        cols.append(c)
        values.append(weight * sims)
    graph = normalize_adjacency(torch.cat(rows), torch.cat(cols), torch.cat(values), n, "sym")
    indices = graph.indices()
    return indices[0], indices[1], graph.values()


def edge_propagate(rows: torch.Tensor, cols: torch.Tensor, values: torch.Tensor, dense: torch.Tensor,
                   n: int) -> torch.Tensor:
    """``A @ dense`` for A given by COO triplets (n rows), differentiable in both ``values`` and
    ``dense`` (for graphs that are learned; fixed graphs go through the faster CSR ``propagate``)."""
    out = torch.zeros(n, dense.shape[1], dtype=dense.dtype, device=dense.device)
    return out.index_add_(0, rows, values.unsqueeze(1) * dense[cols])


class EdgeStructure(NamedTuple):
    """The fixed sparsity pattern of a graph whose edge values change (learned or attention weights), for
    :func:`weighted_propagate`: CSR indices of A (edges in CSR order: by row, then column) and of Aᵀ, and
    ``to_transposed``, the edge positions in Aᵀ's CSR order. Made by :func:`edge_structure`."""

    crow: torch.Tensor
    col: torch.Tensor
    crow_t: torch.Tensor
    col_t: torch.Tensor
    to_transposed: torch.Tensor
    shape: tuple[int, int]


def edge_structure(rows: torch.Tensor, cols: torch.Tensor, shape: tuple[int, int]) -> EdgeStructure:
    """:class:`EdgeStructure` of the edges ``(rows[e], cols[e])``, which must be unique and in CSR order
    (sorted by row, then column; ValueError otherwise): edge e's value is then ``values[e]``."""
    n_rows, n_cols = shape
    keys = rows.long() * n_cols + cols.long()
    if len(keys) > 1 and not bool((keys[1:] > keys[:-1]).all()):
        raise ValueError("edges must be unique and sorted by row, then column")
    to_transposed = torch.argsort(cols.long() * n_rows + rows.long())
    crow = torch.zeros(n_rows + 1, dtype=torch.long, device=rows.device)
    crow[1:] = torch.cumsum(torch.bincount(rows.long(), minlength=n_rows), 0)
    crow_t = torch.zeros(n_cols + 1, dtype=torch.long, device=rows.device)
    crow_t[1:] = torch.cumsum(torch.bincount(cols.long(), minlength=n_cols), 0)
    return EdgeStructure(crow, cols.long(), crow_t, rows.long()[to_transposed], to_transposed, (n_rows, n_cols))


class _WeightedMatmul(torch.autograd.Function):
    """A @ X for A = CSR(structure, values), differentiable in both: dX = Aᵀ G (CSR), dvalues = (G Xᵀ) sampled
    at A's pattern (``torch.sparse.sampled_addmm``). No [E, d] temporaries, unlike gather-and-scatter."""

    @staticmethod
    def forward(ctx, values: torch.Tensor, dense: torch.Tensor, structure: EdgeStructure) -> torch.Tensor:
        ctx.structure = structure
        ctx.save_for_backward(values, dense)
        return _csr_mm(_csr(structure.crow, structure.col, values, structure.shape), dense)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        values, dense = ctx.saved_tensors
        s = ctx.structure
        grad_values = grad_dense = None
        if ctx.needs_input_grad[0]:
            pattern = _csr(s.crow, s.col, values.detach(), s.shape)
            grad_values = torch.sparse.sampled_addmm(pattern, grad, dense.detach().T, beta=0.0).values()
        if ctx.needs_input_grad[1]:
            transposed = _csr(s.crow_t, s.col_t, values.detach()[s.to_transposed], (s.shape[1], s.shape[0]))
            grad_dense = _csr_mm(transposed, grad)
        return grad_values, grad_dense, None


def _csr(crow: torch.Tensor, col: torch.Tensor, values: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta state", category=UserWarning)
        return torch.sparse_csr_tensor(crow, col, values, shape, check_invariants=False)


def weighted_propagate(structure: EdgeStructure, values: torch.Tensor, dense: torch.Tensor) -> torch.Tensor:
    """``A @ dense`` with A's pattern from :func:`edge_structure` and its values ``values`` (in that CSR
    order), differentiable in ``values`` and ``dense``: :func:`edge_propagate`'s result through CSR products,
    without its ``[E, d]`` gathered copies (GRCN's attention-weighted graph; docs/grcn.md §5 for the cost)."""
    return _WeightedMatmul.apply(values, dense, structure)


def segment_softmax(scores: torch.Tensor, groups: torch.Tensor, n_groups: int) -> torch.Tensor:
    """Softmax of edge ``scores`` ``[E]`` within each group of edges sharing ``groups[e]`` (e.g. the edges
    into one node: graph attention normalised over a node's neighbours). The per-group maximum is
    subtracted first (taken without gradient: the softmax does not depend on it), and 1e-16 is added to
    each group's sum, as PyG's ``softmax`` does, so a result equals a GAT layer's attention coefficients."""
    peak = scores.detach().new_full((n_groups,), float("-inf"))
    peak = peak.scatter_reduce(0, groups, scores.detach(), reduce="amax", include_self=True)
    weights = (scores - peak[groups]).exp()
    totals = weights.new_zeros(n_groups).index_add_(0, groups, weights) + 1e-16
    return weights / totals[groups]


def bipartite_adjacency(user_ids: torch.Tensor, item_ids: torch.Tensor, n_users: int, n_items: int,
                        self_loops: bool = False, normalization: str = "sym") -> torch.Tensor:
    """User-item adjacency [[0, R], [Rᵀ, 0]] (+ I with ``self_loops``) over n_users + n_items nodes,
    normalised by :func:`normalize_adjacency` (LATTICE's LightGCN: ``self_loops=True``, ``row``, i.e.
    D^-1 (A + I)). Duplicate (user, item) pairs count once.
    """
    n = n_users + n_items
    users, items = user_ids.long(), item_ids.long() + n_users
    rows, cols = [users, items], [items, users]
    if self_loops:
        rows.append(torch.arange(n, device=users.device))
        cols.append(torch.arange(n, device=users.device))
    keys = torch.unique(torch.cat(rows) * n + torch.cat(cols))
    # On the edges' device: FREEDOM re-draws its pruned graph on the model's device every epoch.
    return normalize_adjacency(keys // n, keys % n, torch.ones(len(keys), device=keys.device), n, normalization)


def user_item_block(adjacency: torch.Tensor, n_users: int, n_items: int) -> torch.Tensor:
    """The user→item block ``[n_users, n_items]`` of a normalised ``[n_users + n_items]``-square user-item
    adjacency (users first): R̃ = D_u^-1/2 R D_i^-1/2 for :func:`bipartite_adjacency`'s graph (MGCN), the same
    block of :func:`augmented_adjacency`'s (GUME); the models use it to give users the mean of their items'
    modality features."""
    return adjacency_block(adjacency, (0, n_users), (n_users, n_users + n_items))


def adjacency_block(adjacency: torch.Tensor, rows: tuple[int, int], cols: tuple[int, int]) -> torch.Tensor:
    """The block ``adjacency[rows[0]:rows[1], cols[0]:cols[1]]`` of a sparse square graph as a coalesced COO
    tensor, its entries in the graph's (row, column) order with the graph's values (so that a CSR product
    with it sums each row as a product with the whole graph does)."""
    adjacency = adjacency.coalesce()
    r, c = adjacency.indices()
    block = (r >= rows[0]) & (r < rows[1]) & (c >= cols[0]) & (c < cols[1])
    return torch.sparse_coo_tensor(torch.stack([r[block] - rows[0], c[block] - cols[0]]), adjacency.values()[block],
                                   (rows[1] - rows[0], cols[1] - cols[0]), check_invariants=False).coalesce()


def user_cooccurrence_neighbours(user_ids: torch.Tensor, item_ids: torch.Tensor, n_users: int, n_items: int,
                                 k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Each user's top-``k`` co-occurring users (DualGNN's and DRAGON's user-user graph), built from the
    training interactions in memory: C = R Rᵀ counts the items two users share (duplicate interactions count
    once, zero diagonal); row u keeps the ``k`` users with the largest counts, descending, equal counts to the
    lower user id. Returns ``(indices, counts)``, both ``[n_users, k]`` (long, float32); a user with fewer than
    ``k`` co-occurring users has :data:`NO_NEIGHBOUR` (count 0) in the remaining slots.

    MMRec reads the same lists from a file its preprocessing script writes (top-200 per user by
    ``torch.topk``, of which the models use the first 40); ``torch.topk`` orders equal counts arbitrarily,
    which is the only place the two can differ (docs/dualgnn.md).
    """
    import numpy as np
    import scipy.sparse as sp

    users, items = user_ids.cpu().numpy(), item_ids.cpu().numpy()
    r = sp.csr_matrix((np.ones(len(users), dtype=np.float64), (users, items)), shape=(n_users, n_items))
    r.data[:] = 1.0  # duplicates were summed by the constructor
    c = (r @ r.T).tocoo()
    off_diagonal = c.row != c.col
    rows, cols, counts = c.row[off_diagonal], c.col[off_diagonal], c.data[off_diagonal]
    # One sort of all entries by (row, -count, col); an entry's rank within its row is its slot.
    order = np.lexsort((cols, -counts, rows))
    rows, cols, counts = rows[order], cols[order], counts[order]
    starts = np.searchsorted(rows, np.arange(n_users))
    rank = np.arange(len(rows)) - starts[rows]
    keep = rank < k
    indices = torch.full((n_users, k), NO_NEIGHBOUR, dtype=torch.long)
    values = torch.zeros(n_users, k, dtype=torch.float32)
    slot_rows, slot_cols = torch.from_numpy(rows[keep]).long(), torch.from_numpy(rank[keep]).long()
    indices[slot_rows, slot_cols] = torch.from_numpy(cols[keep]).long()
    values[slot_rows, slot_cols] = torch.from_numpy(counts[keep]).float()
    return indices.to(user_ids.device), values.to(user_ids.device)


def pad_neighbour_slots(indices: torch.Tensor) -> torch.Tensor:
    """Slot positions ``[n, k]`` that fill every row's empty slots by resampling its own entries (DualGNN's
    and DRAGON's per-epoch user graph): a row with n_u < k neighbours keeps slots 0..n_u-1 and fills slot
    j ≥ n_u with the entry at a uniformly drawn slot among 0..j-1, padded ones included (as the reference's
    ``randint(0, len(list))`` on the growing list, so the draws are an urn, not uniform over the n_u).
    Rows without neighbours point every slot at 0 (empty). Uses torch's global RNG."""
    n, k = indices.shape
    lengths = (indices != NO_NEIGHBOUR).sum(dim=1)
    slots = torch.arange(k, device=indices.device).repeat(n, 1)
    for j in range(int(lengths.min()) if n else k, k):
        rows = ((lengths <= j) & (lengths > 0)).nonzero().squeeze(1)
        if len(rows):
            drawn = torch.randint(0, j, (len(rows),), device=indices.device)
            slots[rows, j] = slots[rows, drawn]
    slots[lengths == 0] = 0
    return slots


def neighbour_weight_graph(picks: torch.Tensor, weights: torch.Tensor, n: int) -> torch.Tensor:
    """Sparse ``[n, n]`` graph with row u = Σ_j weights[u, j] · e_{picks[u, j]} (``picks``, ``weights``:
    ``[n, k]``); a neighbour picked twice gets the sum of its weights; empty slots (:data:`NO_NEIGHBOUR` or
    weight 0) add nothing. Multiplying it with a table is the reference's ``weights @ table[picks]`` per row."""
    rows = torch.arange(picks.shape[0], device=picks.device).repeat_interleave(picks.shape[1])
    cols, values = picks.reshape(-1), weights.reshape(-1).float()
    keep = (cols != NO_NEIGHBOUR) & (values != 0)
    return torch.sparse_coo_tensor(torch.stack([rows[keep], cols[keep]]), values[keep], (n, n),
                                   check_invariants=False).coalesce()


def sampled_neighbour_graph(indices: torch.Tensor, counts: torch.Tensor, aggregation: str = "softmax"
                            ) -> torch.Tensor:
    """One epoch's user-user graph of DualGNN and DRAGON from :func:`user_cooccurrence_neighbours`: every row
    padded to ``k`` slots by :func:`pad_neighbour_slots` (torch's global RNG), weighted by the softmax of the
    picked co-occurrence counts (``softmax``) or 1/k each (``mean``); rows without neighbours stay empty."""
    if aggregation not in ("softmax", "mean"):
        raise ValueError(f"aggregation must be softmax or mean, got {aggregation!r}")
    slots = pad_neighbour_slots(indices)
    picks, picked = torch.gather(indices, 1, slots), torch.gather(counts, 1, slots)
    if aggregation == "softmax":
        weights = torch.softmax(picked, dim=1)
    else:
        weights = torch.full_like(picked, 1.0 / picked.shape[1])
    weights[indices[:, 0] == NO_NEIGHBOUR] = 0.0
    return neighbour_weight_graph(picks, weights, indices.shape[0])


def max_pool_graphs(graphs: list[torch.Tensor]) -> torch.Tensor:
    """Entry-wise maximum of sparse graphs of one shape over the union of their edges: an edge absent from
    a graph does not count as a zero there, so an edge only one graph has keeps that graph's weight
    (SMORE's fusion graph of the modalities' normalised kNN graphs). A single graph comes back unchanged.
    """
    if not graphs:
        raise ValueError("at least one graph is needed")
    graphs = [graph.coalesce() for graph in graphs]
    n_rows, n_cols = graphs[0].shape
    indices = torch.cat([graph.indices() for graph in graphs], dim=1)
    values = torch.cat([graph.values() for graph in graphs])
    keys, slot = torch.unique(indices[0] * n_cols + indices[1], return_inverse=True)
    pooled = values.new_full((len(keys),), float("-inf")).scatter_reduce_(0, slot, values, reduce="amax")
    return torch.sparse_coo_tensor(torch.stack([keys // n_cols, keys % n_cols]), pooled, (n_rows, n_cols),
                                   check_invariants=False).coalesce()


def drop_edges(graph: torch.Tensor, keep_rate: float) -> torch.Tensor:
    """Each stored entry of the sparse ``graph`` (self-loops and both directions separately) kept with
    probability ``keep_rate`` and scaled by 1/keep_rate, so the expected graph is the input (DiffMM's
    SpAdjDropEdge, its draw ⌊U(0, 1) + keep_rate⌋ kept for fidelity); ``keep_rate`` 1 returns the graph,
    drawing nothing. Uses torch's global RNG."""
    if keep_rate >= 1.0:
        return graph
    graph = graph.coalesce()
    keep = (torch.rand(graph._nnz(), device=graph.device) + keep_rate).floor().bool()  # the reference's draw
    return torch.sparse_coo_tensor(graph.indices()[:, keep], graph.values()[keep] / keep_rate, graph.shape,
                                   is_coalesced=True, check_invariants=False)


def agreed_neighbours(features: list[torch.Tensor], k: int, chunk_size: int = 1024) -> list[torch.Tensor]:
    """Per modality, each row's top-``k`` cosine neighbours among the rows whose similarity to it is at or above
    the mean of all n² similarities in every modality (DA-MRS's denoised kNN graphs: an edge needs every
    modality's agreement): ``[n, min(k, n)]`` index tensors, :data:`NO_NEIGHBOUR` where fewer rows qualify. The
    row itself qualifies (similarity 1). Rows of zeros (items without content) have no neighbours and are
    nobody's. Row chunks: no n × n matrix is formed; the mean is |Σ_i u_i|² / n² over the unit rows u_i."""
    units = [torch.nn.functional.normalize(x.float(), dim=1) for x in features]
    n = units[0].shape[0]
    k = min(k, n)
    means = [u.sum(dim=0).pow(2).sum() / (n * n) for u in units]
    has_content = torch.stack([x.abs().sum(dim=1) > 0 for x in features]).all(dim=0)
    out = [torch.full((n, k), NO_NEIGHBOUR, dtype=torch.long) for _ in units]
    rows = max(1, min(chunk_size, _MAX_BLOCK_ELEMENTS // max(n * len(units), 1)))
    for start in range(0, n, rows):
        sims = [u[start:start + rows] @ u.T for u in units]
        agreed = has_content[start:start + rows, None] & has_content[None, :]
        for s, mean in zip(sims, means):
            agreed &= s >= mean
        for indices, s in zip(out, sims):
            values, cols = torch.topk(s.masked_fill(~agreed, float("-inf")), k, dim=1)
            indices[start:start + rows] = torch.where(values > float("-inf"), cols, NO_NEIGHBOUR)
        del sims, agreed
    return out


def behaviour_graph(user_ids: torch.Tensor, item_ids: torch.Tensor, n_users: int, n_items: int, k: int,
                    min_count: int) -> torch.Tensor:
    """DA-MRS's item-item behaviour graph, ``[n_items, n_items]``: every real item linked to itself and to its
    top-``k`` items by number of shared training users (ties to the lower id), counting only pairs sharing at least
    ``min_count`` users; binary, D^-1/2 A D^-1/2 with D the row sums. Padding item 0 stays isolated.
    The item-side twin of :func:`user_cooccurrence_neighbours` (called with users and items swapped)."""
    neighbours, counts = user_cooccurrence_neighbours(item_ids, user_ids, n_items, n_users, k)
    neighbours[counts < min_count] = NO_NEIGHBOUR  # rows are sorted by count: this keeps the top k of the rest
    real = torch.arange(1, n_items)
    rows = torch.cat([real, torch.arange(n_items).repeat_interleave(neighbours.shape[1])])
    cols = torch.cat([real, neighbours.reshape(-1)])
    keep = cols != NO_NEIGHBOUR
    return normalize_adjacency(rows[keep], cols[keep], torch.ones(int(keep.sum())), n_items, "sym")


# PGL's constants of the global principal graph (the reference's): the share of the d leading singular triplets
# kept, and the magnitude below which an entry of the rank-reduced graph is dropped.
PRINCIPAL_SHARE = 0.25
PRINCIPAL_THRESHOLD = 1e-3


def principal_graph(block: torch.Tensor, rank: int, share: float = PRINCIPAL_SHARE,
                    threshold: float = PRINCIPAL_THRESHOLD, chunk_rows: int = 2048) -> torch.Tensor:
    """PGL's global principal graph of the normalised bipartite graph Â = [[0, R̃], [R̃ᵀ, 0]] (``block`` = R̃,
    sparse ``[n_users, n_items]``): Σ_{i<t} s_i s_{d-t+i} u_i v_iᵀ over Â's ``d = rank`` leading singular
    triplets (t = ⌊share·d⌋), entries below ``threshold`` in magnitude dropped; sparse,
    ``[n_users + n_items]``-square. A low-rank denoised view of the interactions, built once.

    Â's singular triplets come in pairs from R̃ = P Σ Qᵀ: σ_j with (u, v) = ([p_j; 0], [0; q_j]) and with
    ([0; q_j], [p_j; 0]), so s = (σ_1, σ_1, σ_2, σ_2, ...) and the sum has only a user→item block P W₀ Qᵀ and
    an item→user block Q W₁ Pᵀ. Computed from R̃'s ⌈d/2⌉ leading triplets (ARPACK, fixed start vector:
    deterministic), the dense blocks a chunk of rows at a time (never the dense [n, n] matrix).
    """
    # Imported here: SciPy costs every model's import time, and only PGL's global mode needs it.
    import numpy as np
    import scipy.sparse as sp
    from scipy.sparse.linalg import svds

    n_users, n_items = block.shape
    block = block.coalesce()
    rows, cols = block.indices().cpu().numpy()
    matrix = sp.csr_matrix((block.values().cpu().double().numpy(), (rows, cols)), shape=(n_users, n_items))
    pairs = (rank + 1) // 2
    if pairs < min(matrix.shape) - 1:
        p, sigma, qt = svds(matrix, k=pairs, v0=np.ones(min(matrix.shape)), solver="arpack")
    else:  # ARPACK needs k < min(shape) - 1: tiny graphs go dense
        p, sigma, qt = np.linalg.svd(matrix.toarray(), full_matrices=False)
    order = np.argsort(-sigma, kind="stable")[:pairs]
    p, sigma, q = p[:, order], sigma[order], qt[order].T
    s = np.repeat(sigma, 2)[:rank]  # Â's leading singular values; triplet i is pair i // 2, member i % 2
    top = int(share * rank)
    weights = s[:top] * s[len(s) - top:]
    member = np.arange(top) % 2
    pair = np.arange(top) // 2
    parts = []
    # member 0 puts σ_j's weight on the user→item block, member 1 on the item→user block.
    for side, (left, right, offset_rows, offset_cols) in enumerate(((p, q, 0, n_users), (q, p, n_users, 0))):
        chosen = member == side
        if not chosen.any():
            continue
        a = left[:, pair[chosen]] * weights[chosen]
        b = right[:, pair[chosen]]
        for start in range(0, len(a), chunk_rows):
            dense = a[start:start + chunk_rows] @ b.T
            r, c = np.nonzero(np.abs(dense) >= threshold)
            parts.append((r + start + offset_rows, c + offset_cols, dense[r, c]))
    n = n_users + n_items
    if not parts:
        return torch.sparse_coo_tensor(torch.zeros(2, 0, dtype=torch.long), torch.zeros(0), (n, n)).coalesce()
    r, c, v = (np.concatenate(x) for x in zip(*parts))
    indices = torch.from_numpy(np.stack([r, c]).astype(np.int64))
    graph = torch.sparse_coo_tensor(indices, torch.from_numpy(v).float(), (n, n), check_invariants=False)
    return graph.coalesce().to(block.device)

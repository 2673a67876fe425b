"""Graph builders against brute-force dense references: same neighbours, same weights."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from recbole_mm.model import graphs
from recbole_mm.model.graphs import (NO_NEIGHBOUR, agreed_neighbours, augmented_adjacency, behaviour_graph,
                                     bipartite_adjacency, drop_edges, graph_from_neighbours, knn_neighbours,
                                     principal_graph, semantic_neighbours, user_item_block)


def knn_graph(features: torch.Tensor, k: int, weighted: bool = True, normalization: str = "sym",
              chunk_size: int = 1024) -> torch.Tensor:
    """The kNN item graph the models build (knn_neighbours, then graph_from_neighbours), for the tests."""
    return graph_from_neighbours(*knn_neighbours(features, k, chunk_size), weighted=weighted,
                                 normalization=normalization)


def dense_knn(features: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Reference: full cosine matrix, per row the k largest, ties to the lower column index."""
    norms = np.linalg.norm(features, axis=1, keepdims=True)
    unit = features / np.where(norms == 0, 1, norms)
    sims = unit @ unit.T
    k = min(k, len(features))
    order = np.array([sorted(range(len(row)), key=lambda j: (-round(row[j], 6), j))[:k] for row in sims])
    return order, np.take_along_axis(sims, order, axis=1)


def dense_normalize(a: np.ndarray, how: str) -> np.ndarray:
    d = a.sum(axis=1)
    if how == "none":
        return a
    if how == "row":
        return a / np.where(d == 0, 1, d)[:, None] * (d > 0)[:, None]
    inv = np.where(d > 0, 1 / np.sqrt(np.where(d == 0, 1, d)), 0)
    return inv[:, None] * a * inv[None, :]


@pytest.mark.parametrize("n,dim,k,chunk", [(30, 5, 4, 7), (12, 3, 12, 5), (9, 4, 20, 100), (50, 8, 10, 16)])
def test_knn_neighbours_match_dense_reference(n, dim, k, chunk):
    rng = np.random.default_rng(n + k)
    features = rng.normal(size=(n, dim)).astype(np.float32)
    indices, sims = knn_neighbours(torch.from_numpy(features), k, chunk_size=chunk)
    ref_idx, ref_sims = dense_knn(features, k)
    assert indices.shape == (n, min(k, n))
    assert np.array_equal(indices.numpy(), ref_idx)
    assert np.allclose(sims.numpy(), ref_sims, atol=1e-5)


def test_ties_break_towards_lower_index():
    """Identical items (e.g. mean-filled features) have similarity 1 to each other: order by index."""
    features = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [2.0, 0.0]])
    indices, sims = knn_neighbours(features, 3, chunk_size=2)
    assert indices[3].tolist() == [0, 1, 3] and indices[0].tolist() == [0, 1, 3]
    assert torch.allclose(sims[3], torch.ones(3))
    ref_idx, _ = dense_knn(features.numpy(), 3)
    assert np.array_equal(indices.numpy(), ref_idx)


@pytest.mark.parametrize("weighted", [True, False])
@pytest.mark.parametrize("normalization", ["sym", "row", "none"])
def test_knn_graph_matches_dense_reference(weighted, normalization):
    rng = np.random.default_rng(7)
    features = np.abs(rng.normal(size=(25, 6))).astype(np.float32)  # non-negative: positive similarities
    graph = knn_graph(torch.from_numpy(features), 5, weighted=weighted, normalization=normalization, chunk_size=4)
    ref_idx, ref_sims = dense_knn(features, 5)
    dense = np.zeros((25, 25), dtype=np.float64)
    for i in range(25):
        dense[i, ref_idx[i]] = ref_sims[i] if weighted else 1.0
    expected = dense_normalize(dense, normalization)
    assert graph.is_sparse and graph.shape == (25, 25)
    assert np.allclose(graph.to_dense().numpy(), expected, atol=1e-5)
    assert graph._nnz() == 25 * 5


def test_semantic_neighbours_is_intersection_minus_self():
    rng = np.random.default_rng(3)
    n, k = 40, 8
    mods = [rng.normal(size=(n, 6)).astype(np.float32) for _ in range(3)]
    lists = [knn_neighbours(torch.from_numpy(m), k)[0] for m in mods]
    edges = semantic_neighbours(lists)
    expected = set()
    for i in range(n):
        common = set(dense_knn(mods[0], k)[0][i])
        for m in mods[1:]:
            common &= set(dense_knn(m, k)[0][i])
        expected |= {(i, j) for j in common if j != i}
    assert set(map(tuple, edges.T.tolist())) == expected
    assert edges.shape[0] == 2 and all(i != j for i, j in edges.T.tolist())
    # One modality: its own top-k minus self; k >= n: everyone (minus self).
    single = semantic_neighbours([knn_neighbours(torch.from_numpy(mods[0]), n + 5)[0]])
    assert single.shape[1] == n * (n - 1)


@pytest.mark.parametrize("symmetric", [False, True])
def test_augmented_adjacency_matches_dense_reference(symmetric):
    rng = np.random.default_rng(11)
    n_users, n_items = 7, 9
    users = rng.integers(0, n_users, size=30)
    items = rng.integers(0, n_items, size=30)
    item_edges = torch.tensor([[0, 0, 3, 5], [1, 4, 0, 5 - 1]])
    adj = augmented_adjacency(torch.from_numpy(users), torch.from_numpy(items), n_users, n_items,
                              item_edges=item_edges, symmetric=symmetric)
    n = n_users + n_items
    dense = np.zeros((n, n))
    for u, i in zip(users, items):
        dense[u, n_users + i] = dense[n_users + i, u] = 1.0
    for i, j in item_edges.T.tolist():
        dense[n_users + i, n_users + j] = 1.0
        if symmetric:
            dense[n_users + j, n_users + i] = 1.0
    expected = dense_normalize(dense, "sym")
    assert np.allclose(adj.to_dense().numpy(), expected, atol=1e-6)
    if not symmetric:
        assert not np.allclose(expected, expected.T)  # directed item edges: the original's asymmetry


def test_knn_over_many_chunks():
    """375 chunks of 8 rows: every item is its own nearest neighbour, rows stay in order."""
    features = torch.randn(3000, 4)
    indices, sims = knn_neighbours(features, 5, chunk_size=8)
    assert indices.shape == (3000, 5)
    assert torch.all(indices[:, 0] == torch.arange(3000))  # each item is its own nearest neighbour


# ---- items without content (missing_feature: zero) -------------------------------------------------
@pytest.mark.parametrize("weighted", [True, False])
def test_items_without_content_get_no_knn_edges(weighted):
    """A row of zeros tied with every item and took the k lowest ids as neighbours (and, unweighted, edges
    of weight 1); now it has no row or column entries, and the other items' graph is the graph over the
    items with content alone."""
    rng = np.random.default_rng(5)
    features = torch.from_numpy(rng.normal(size=(30, 5)).astype(np.float32))
    empty = torch.tensor([2, 9, 17])
    features[empty] = 0
    valid = torch.tensor([i for i in range(30) if i not in empty.tolist()])
    graph = knn_graph(features, 4, weighted=weighted).to_dense()
    assert not graph[empty].any() and not graph[:, empty].any()
    alone = knn_graph(features[valid], 4, weighted=weighted).to_dense()
    assert torch.allclose(graph[valid][:, valid], alone, atol=1e-6)
    # With the padding offset the models use, node 0 and the empty items stay isolated.
    indices, sims = knn_neighbours(features, 4)
    shifted = graphs.graph_from_neighbours(indices, sims, weighted=weighted, offset=1).to_dense()
    assert not shifted[empty + 1].any() and not shifted[:, empty + 1].any() and not shifted[0].any()


def test_items_without_content_have_no_semantic_neighbours():
    """GUME's semantic neighbours: an item without content in any modality is in no edge (a zero row
    used to share the lowest ids with every other zero row in every modality)."""
    rng = np.random.default_rng(6)
    image = torch.from_numpy(rng.normal(size=(40, 6)).astype(np.float32))
    text = torch.from_numpy(rng.normal(size=(40, 4)).astype(np.float32))
    image[[3, 8, 20]] = 0
    text[[3, 8, 31]] = 0
    edges = semantic_neighbours([knn_neighbours(image, 10)[0], knn_neighbours(text, 10)[0]])
    assert edges.shape[1] > 0 and not torch.isin(edges, torch.tensor([3, 8, 20, 31])).any()
    before = semantic_neighbours([knn_neighbours(image, 10, skip_empty=False)[0],
                                  knn_neighbours(text, 10, skip_empty=False)[0]])
    assert ((before[0] == 3) & (before[1] == 8)).any()  # the former tie: two empty items as neighbours


def test_models_give_items_without_content_no_content_edges(planted):
    """End to end, missing_feature: zero: an item whose image row is missing has no entry in GUME's image
    graph nor in its semantic-neighbour block, but keeps its text edges; one missing in both modalities
    has no entry in FREEDOM's mixed item graph either."""
    from builders import build_planted

    root, _ = planted
    image_only, both = [23, 31], [5, 10]  # external item ids = feature rows
    for modality, rows in (("image", image_only + both), ("text", both)):
        path = root / "planted" / f"{modality}_feat.npy"
        array = np.load(path)
        array[rows] = np.nan
        np.save(path, array)
    _, gume, train_data = build_planted("GUME", planted, missing_feature="zero", knn_k=5)
    dataset = train_data._dataset

    def internal(items):
        return torch.tensor([dataset.token2id(dataset.iid_field, str(i)) for i in items])

    no_image, no_text = internal(image_only + both), internal(both)
    image_graph, text_graph = gume.item_graph_image.to_dense(), gume.item_graph_text.to_dense()
    assert not image_graph[no_image].any() and not image_graph[:, no_image].any()
    assert not text_graph[no_text].any() and not text_graph[:, no_text].any()
    assert text_graph[internal(image_only)].any()  # their text still links them
    item_block = gume.norm_adj.to_dense()[gume.n_users:, gume.n_users:]  # semantic neighbours G
    assert item_block.any() and not item_block[no_image].any() and not item_block[:, no_image].any()
    _, freedom, _ = build_planted("FREEDOM", planted, missing_feature="zero", knn_k=5, feat_embed_dim=16)
    mixed = freedom.item_graph.to_dense()
    assert not mixed[no_text].any() and not mixed[:, no_text].any()
    assert mixed[internal(image_only)].any() and mixed.any()


def test_segment_softmax_matches_dense_masked_softmax():
    # Edges into 4 nodes (node 3 has none); large logits check the max shift (no overflow).
    torch.manual_seed(0)
    groups = torch.tensor([0, 2, 0, 1, 2, 2, 0])
    scores = torch.randn(7) * 50
    out = graphs.segment_softmax(scores, groups, 4)
    for g in range(3):
        mask = groups == g
        assert torch.allclose(out[mask], torch.softmax(scores[mask], dim=0), atol=1e-6)
    # Differentiable in the scores: the gradient of a group's sum is zero (it is always 1).
    scores.requires_grad_(True)
    graphs.segment_softmax(scores, groups, 4)[groups == 0].sum().backward()
    assert torch.allclose(scores.grad, torch.zeros(7), atol=1e-6)


def test_weighted_propagate_matches_edge_propagate_with_gradients():
    torch.manual_seed(1)
    n_rows, n_cols = 5, 4
    keys = torch.tensor([0, 2, 3, 5, 6, 9, 12, 14, 15, 17, 19])  # row * n_cols + col, sorted
    rows, cols = keys // n_cols, keys % n_cols
    structure = graphs.edge_structure(rows, cols, (n_rows, n_cols))
    values = torch.randn(len(keys), requires_grad=True)
    dense = torch.randn(n_cols, 3, requires_grad=True)
    out = graphs.weighted_propagate(structure, values, dense)
    weights = torch.randn(n_rows, 3)
    (out * weights).sum().backward()
    grads = values.grad.clone(), dense.grad.clone()
    values.grad = dense.grad = None
    expected = graphs.edge_propagate(rows, cols, values, dense, n_rows)
    (expected * weights).sum().backward()
    assert torch.allclose(out, expected, atol=1e-6)
    assert torch.allclose(grads[0], values.grad, atol=1e-6) and torch.allclose(grads[1], dense.grad, atol=1e-6)
    with pytest.raises(ValueError, match="sorted"):
        graphs.edge_structure(rows.flip(0), cols.flip(0), (n_rows, n_cols))


# ---- edge dropout, agreed kNN neighbours, behaviour graph (DiffMM, DA-MRS) ------------------------------
def test_drop_edges():
    graph = torch.sparse_coo_tensor(torch.tensor([[0, 1, 2, 3] * 50, list(range(200))]), torch.full((200,), 2.0),
                                    (4, 200), check_invariants=True).coalesce()
    assert drop_edges(graph, 1.0) is graph
    torch.manual_seed(0)
    dropped = drop_edges(graph, 0.25)
    assert 20 < dropped._nnz() < 80
    assert torch.all(dropped.values() == 8.0)  # kept entries scaled by 1/keep_rate
    kept = dropped.indices()
    assert torch.equal(graph.to_dense()[kept[0], kept[1]], torch.full((dropped._nnz(),), 2.0))


def test_agreed_neighbours_against_dense_masks():
    generator = torch.Generator().manual_seed(0)
    a, b = torch.rand(9, 3, generator=generator), torch.rand(9, 4, generator=generator)
    a[4] = 0.0  # an item without content in one modality: no neighbours, nobody's neighbour
    got = agreed_neighbours([a, b], k=3, chunk_size=2)
    sims = [F.normalize(x, dim=1) @ F.normalize(x, dim=1).T for x in (a, b)]
    agreed = (sims[0] >= sims[0].mean()) & (sims[1] >= sims[1].mean())
    agreed[4, :] = agreed[:, 4] = False
    for s, indices in zip(sims, got):
        for i in range(9):
            support = agreed[i].nonzero().squeeze(1).tolist()
            expected = sorted(support, key=lambda j: -s[i, j])[:3]
            assert set(indices[i][indices[i] != NO_NEIGHBOUR].tolist()) == set(expected), i
    assert (got[0][4] == NO_NEIGHBOUR).all() and not (got[1] == 4).any()
    assert (got[0][:, 0] == torch.where(torch.arange(9) == 4, NO_NEIGHBOUR, torch.arange(9))).all()  # self first


def test_behaviour_graph_by_hand():
    # items 1..4; users 0-2. Shared users: (1,2) 3, (1,3) 2, (2,3) 2, (3,4) 1 → with min_count 2 and k 1:
    # item 1 → 2, item 2 → 1, item 3 → 1 (tie with 2 goes to the lower id), item 4 → none; plus self loops.
    users = torch.tensor([0, 0, 0, 1, 1, 1, 2, 2, 2])
    items = torch.tensor([1, 2, 3, 1, 2, 3, 1, 2, 4])
    graph = behaviour_graph(users, items, 3, 5, k=1, min_count=2).to_dense()
    a = torch.zeros(5, 5)
    for i, j in [(1, 1), (2, 2), (3, 3), (4, 4), (1, 2), (2, 1), (3, 1)]:
        a[i, j] = 1.0
    d = a.sum(dim=1)
    inv = torch.where(d > 0, d.rsqrt(), torch.zeros_like(d))
    assert torch.allclose(graph, inv[:, None] * a * inv[None, :])
    assert graph[0].abs().sum() == 0 and graph[:, 0].abs().sum() == 0  # padding isolated


# ---- PGL's global principal graph against a dense SVD of the whole adjacency ----------------------------
def dense_principal(adjacency: np.ndarray, rank: int, share: float, threshold: float) -> np.ndarray:
    """The reference's recipe on a dense matrix: Â's ``rank`` leading triplets, Σ_{i<t} s_i s_{d-t+i} u_i v_iᵀ."""
    u, s, vt = np.linalg.svd(adjacency)
    u, s, vt = u[:, :rank], s[:rank], vt[:rank]
    top = int(share * rank)
    product = u[:, :top] @ np.diag(s[:top] * s[-top:]) @ vt[:top]
    return product * (np.abs(product) >= threshold)


@pytest.mark.parametrize("rank", [8, 16])
def test_principal_graph_equals_dense_svd_recipe(rank):
    rng = np.random.default_rng(0)
    n_users, n_items = 12, 9
    pairs = {(int(u), int(i)) for u, i in zip(rng.integers(0, n_users, 40), rng.integers(0, n_items, 40))}
    users, items = (torch.tensor(x) for x in zip(*sorted(pairs)))
    adjacency = bipartite_adjacency(users, items, n_users, n_items)
    ours = principal_graph(user_item_block(adjacency, n_users, n_items), rank=rank, threshold=1e-3).to_dense()
    expected = dense_principal(adjacency.to_dense().double().numpy(), rank, 0.25, 1e-3)
    # Equal pairs of singular values make the dense SVD's vectors arbitrary within a pair, but not the sum.
    assert np.allclose(ours.numpy(), expected, atol=1e-5)
    assert torch.equal(ours, ours.T)  # t even: both members of each pair, the same weight
    assert torch.all(ours[:n_users, :n_users] == 0) and torch.all(ours[n_users:, n_users:] == 0)


def test_principal_graph_uses_arpack_path_and_drops_small_entries():
    rng = np.random.default_rng(1)
    n_users, n_items = 60, 40
    pairs = {(int(u), int(i)) for u, i in zip(rng.integers(0, n_users, 400), rng.integers(0, n_items, 400))}
    users, items = (torch.tensor(x) for x in zip(*sorted(pairs)))
    adjacency = bipartite_adjacency(users, items, n_users, n_items)
    block = user_item_block(adjacency, n_users, n_items)
    ours = principal_graph(block, rank=16, threshold=1e-2)  # 8 pairs < min(60, 40) - 1: ARPACK
    expected = dense_principal(adjacency.to_dense().double().numpy(), 16, 0.25, 1e-2)
    assert np.allclose(ours.to_dense().numpy(), expected, atol=1e-5)
    assert ours.coalesce().values().abs().min() >= 1e-2 and ours._nnz() < 2 * n_users * n_items


# ---- a graph's rows (the last propagation layer of a training batch) ---------------------------------------
def test_csr_rows_is_the_rows_of_the_product_with_its_gradient():
    torch.manual_seed(2)
    n = 60
    dense_graph = torch.rand(n, n) * (torch.rand(n, n) < 0.1)
    dense_graph[7] = 0  # a row without entries
    graph = dense_graph.to_sparse_coo().coalesce()
    csr, csr_t = graph.to_sparse_csr(), graph.t().coalesce().to_sparse_csr()
    rows = torch.tensor([41, 3, 7, 59, 0, 3])  # any order, repeats and an empty row allowed
    block, block_t = graphs.csr_rows(csr, rows)
    assert torch.equal(block.to_dense(), dense_graph[rows])
    assert torch.equal(block_t.to_dense(), dense_graph[rows].t())
    x = torch.randn(n, 5, requires_grad=True)
    out = graphs.sparse_matmul(block, block_t, x)
    assert torch.equal(out, graphs.sparse_matmul(csr, csr_t, x)[rows])
    weights = torch.randn(len(rows), 5)
    (grad,) = torch.autograd.grad((out * weights).sum(), x)
    assert torch.allclose(grad, dense_graph[rows].t() @ weights, atol=1e-6)

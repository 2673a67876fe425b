"""MultiModalRecommender's building blocks (what new models are made of) against hand-built references,
and the model keys validated by their schema on every path that builds a model."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from builders import build_planted
from test_graphs import dense_knn, dense_normalize
from torch import nn

from recbole_mm import MultiModalRecommender
from recbole_mm.config_check import ConfigError
from recbole_mm.errors import RecBoleMMError


@pytest.fixture
def mgcn(planted, monkeypatch):
    """A built model (any MultiModalRecommender serves) and its training dataset; it keeps its fixed features
    (MGCN releases them after building, which these tests of the base's feature helpers must not see)."""
    monkeypatch.setattr(MultiModalRecommender, "release_fixed_features", lambda self, dataset: None)
    _, model, train_data = build_planted("MGCN", planted, knn_k=5)
    return model, train_data._dataset


def test_id_embeddings_draw_as_the_reference_does(mgcn):
    """nn.Embedding's own init for users then items, then xavier_uniform_ users then items: the random
    draws of the MMRec models' four lines, so a model calling it keeps its initial weights."""
    model, _ = mgcn
    torch.manual_seed(3)
    users, items = model.id_embeddings(8)
    torch.manual_seed(3)
    ref_users, ref_items = nn.Embedding(model.n_users, 8), nn.Embedding(model.n_items, 8)
    nn.init.xavier_uniform_(ref_users.weight)
    nn.init.xavier_uniform_(ref_items.weight)
    assert torch.equal(users.weight, ref_users.weight) and torch.equal(items.weight, ref_items.weight)
    assert users.weight.shape == (model.n_users, 8) and items.weight.shape == (model.n_items, 8)
    torch.manual_seed(3)
    plain_users, plain_items = model.id_embeddings(8, xavier=False)
    torch.manual_seed(3)
    assert torch.equal(plain_users.weight, nn.Embedding(model.n_users, 8).weight)
    assert torch.equal(plain_items.weight, nn.Embedding(model.n_items, 8).weight)


def test_feature_projections_one_linear_per_modality_in_order(mgcn):
    model, _ = mgcn
    torch.manual_seed(4)
    projections = model.feature_projections(5)
    torch.manual_seed(4)
    reference = [nn.Linear(model.item_features(m).shape[1], 5) for m in model.modalities]
    assert list(projections) == model.modalities == ["image", "text"]
    assert [p.in_features for p in projections.values()] == [8, 6]
    for layer, ref in zip(projections.values(), reference):
        assert torch.equal(layer.weight, ref.weight) and torch.equal(layer.bias, ref.bias)


def test_modality_weights():
    def weights(modalities, image_weight):  # the method reads only the modality names
        return MultiModalRecommender.modality_weights(SimpleNamespace(modalities=modalities), image_weight)

    assert weights(["image", "text"], 0.1) == {"image": 0.1, "text": 0.9}
    assert weights(["text", "image", "audio"], 0.2) == pytest.approx({"text": 0.4, "image": 0.2, "audio": 0.4})
    assert weights(["text", "audio"], 0.2) == {"text": 0.5, "audio": 0.5}
    assert weights(["image"], 0.2) == {"image": 1.0}


def test_interaction_edges_are_the_training_pairs_once_sorted(mgcn):
    model, dataset = mgcn
    users, items = model.interaction_edges(dataset)
    inter = dataset.inter_matrix(form="coo")
    pairs = sorted(set(zip(inter.row.tolist(), inter.col.tolist())))
    assert list(zip(users.tolist(), items.tolist())) == pairs
    assert users.dtype == items.dtype == torch.long and len(pairs) > 0


@pytest.mark.parametrize("weighted", [True, False])
@pytest.mark.parametrize("normalization", ["sym", "row", "none"])
def test_knn_item_graphs_match_dense_reference_with_padding_isolated(mgcn, weighted, normalization):
    model, _ = mgcn
    graphs = model.knn_item_graphs(4, weighted=weighted, normalization=normalization)
    assert list(graphs) == model.modalities
    for m, graph in graphs.items():
        features = model.item_features(m).numpy()
        n = len(features)
        idx, sims = dense_knn(features[1:], 4)  # real items only: item 0 is RecBole's padding
        adjacency = np.zeros((n, n), dtype=np.float32)
        for row in range(n - 1):
            adjacency[row + 1, idx[row] + 1] = sims[row] if weighted else 1.0
        assert graph.shape == (n, n)
        assert np.allclose(graph.to_dense().numpy(), dense_normalize(adjacency, normalization), atol=1e-5)
        dense = graph.to_dense()
        assert not dense[0].any() and not dense[:, 0].any()


def test_knn_item_graphs_from_given_features_or_neighbours(mgcn):
    model, _ = mgcn
    fused = {"fused": torch.cat([model.item_features(m) for m in model.modalities], dim=1)}
    graph = model.knn_item_graphs(4, features=fused)["fused"].to_dense().numpy()
    idx, sims = dense_knn(fused["fused"].numpy()[1:], 4)
    adjacency = np.zeros_like(graph)
    for row in range(len(idx)):
        adjacency[row + 1, idx[row] + 1] = sims[row]
    assert np.allclose(graph, dense_normalize(adjacency, "sym"), atol=1e-5)
    neighbours = model.item_neighbours(4)
    assert list(neighbours) == model.modalities
    for m, (indices, _) in neighbours.items():
        assert np.array_equal(indices.numpy(), dense_knn(model.item_features(m).numpy()[1:], 4)[0])
    again = model.knn_item_graphs(4, neighbours=neighbours)
    for m, graph in model.knn_item_graphs(4).items():
        assert torch.equal(graph.to_dense(), again[m].to_dense())


@pytest.mark.parametrize("model_name,key,value,allowed", [
    ("MMGEF", "fusion", "avg", "one of mean, concat, late"),
    ("MMGEF", "mm_graph", "dynamic", "one of fixed, learned"),
    ("GUME", "knn_backend", "annoy", "one of exact, faiss, auto"),
    ("LATTICE", "cf_model", "ngcf", "one of lightgcn, mf"),
    ("VBPR", "feature_norm", "max", "one of none, l2, standard"),
])
def test_a_model_built_from_recboles_own_config_checks_its_schema(planted, model_name, key, value, allowed):
    """RecBole's Config (plain run_recbole after `import recbole_mm`) checks no recbole_mm key: the model
    does, with its schema, the one declaration of each key (before, MM-GEF's choices were checked again
    in the model and LATTICE's cf_model not at all on this path: 'ngcf' trained LightGCN)."""
    from recbole.config import Config
    from recbole.data import data_preparation
    from recbole.utils import get_model

    from recbole_mm.quick_start import create_dataset

    root, config_dict = planted
    good = Config(model=model_name, dataset="planted", config_dict=config_dict)
    train_data = data_preparation(good, create_dataset(good))[0]
    bad = Config(model=model_name, dataset="planted", config_dict={**config_dict, key: value})
    with pytest.raises(ConfigError, match=f"{key}: '{value}' \\(set in config_dict\\) is not allowed: it must be "
                                          f"{allowed}"):
        get_model(model_name)(bad, train_data._dataset)


def test_the_example_of_adding_a_model_builds_and_trains(planted):
    """docs/adding-a-model.md's example class, as written there: built from a checked config, its loss
    falls over a few steps, every parameter gets a gradient, full-sort scores come out, and its schema
    is checked."""
    import re
    import sys
    import types
    from pathlib import Path

    from recbole.data import data_preparation
    from recbole.utils import init_seed

    from recbole_mm.config_check import make_checked_config
    from recbole_mm.quick_start import create_dataset

    doc = (Path(__file__).resolve().parent.parent / "docs" / "adding-a-model.md").read_text()
    source = re.search(r"```python\n(.*?)```", doc, re.S).group(1)
    module = types.ModuleType("adding_a_model_example")
    sys.modules[module.__name__] = module
    try:
        exec(compile(source, "docs/adding-a-model.md", "exec"), module.__dict__)  # noqa: S102 (the doc's code)
        root, config_dict = planted
        config = make_checked_config(module.Example, "planted", config_dict={
            **config_dict, "knn_k": 5, "n_layers": 2, "reg_weight": 1e-4})
        train_data = data_preparation(config, create_dataset(config))[0]
        init_seed(config["seed"], True)
        model = module.Example(config, train_data._dataset)
        optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
        batch = next(iter(train_data))
        losses = []
        for _ in range(5):
            optimizer.zero_grad()
            loss = model.calculate_loss(batch)
            loss.backward()
            losses.append(loss.item())
            optimizer.step()
        assert losses[-1] < losses[0]
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())
        model.eval()
        scores = model.full_sort_predict(batch)
        assert scores.shape == (len(batch) * model.n_items,) and torch.isfinite(scores).all()
        # Its config_schema is checked like the shipped models' (no other file declares its keys).
        with pytest.raises(ConfigError, match="knn_k: 0 .* an integer >= 1"):
            make_checked_config(module.Example, "planted", config_dict={**config_dict, "knn_k": 0, "n_layers": 2})
    finally:
        del sys.modules[module.__name__]


def test_batch_nodes_positions_point_back_at_the_batch(mgcn):
    model, _ = mgcn
    interaction = {model.USER_ID: torch.tensor([3, 1, 3]), model.ITEM_ID: torch.tensor([2, 2, 5]),
                   model.NEG_ITEM_ID: torch.tensor([7, 1, 2])}
    nodes, users, pos, neg = model.batch_nodes(interaction)
    assert nodes.tolist() == sorted(set(nodes.tolist())) and len(nodes) == 6  # users 1, 3; items 1, 2, 5, 7
    assert nodes[users].tolist() == [3, 1, 3]
    assert (nodes[pos] - model.n_users).tolist() == [2, 2, 5]
    assert (nodes[neg] - model.n_users).tolist() == [7, 1, 2]


def test_batch_bpr_scores_the_batch_rows_by_dot_products(mgcn):
    model, _ = mgcn
    interaction = {model.USER_ID: torch.tensor([3, 1, 3]), model.ITEM_ID: torch.tensor([2, 2, 5]),
                   model.NEG_ITEM_ID: torch.tensor([7, 1, 2])}
    users = torch.arange(10.0).repeat(2, 1).T  # user u's row is (u, u)
    items = torch.stack([torch.arange(10.0), -torch.arange(10.0)], dim=1) / 10  # item i's row is (i, -i) / 10
    users[1] = torch.tensor([1.0, 2.0])
    loss, u, pos, neg = model.batch_bpr(interaction, users, items)
    assert u.tolist() == [[3.0, 3.0], [1.0, 2.0], [3.0, 3.0]]
    assert pos.tolist() == items[[2, 2, 5]].tolist() and neg.tolist() == items[[7, 1, 2]].tolist()
    # Scores u·i: user 3 scores every item 0 (3i/10 − 3i/10); user 1 scores item i at (i − 2i)/10 = −i/10.
    margins = torch.tensor([0.0 - 0.0, -0.2 - -0.1, 0.0 - 0.0])
    assert loss.item() == pytest.approx(-torch.log(torch.sigmoid(margins)).mean().item())


def test_draw_epoch_graph_once_per_training_epoch_and_kept_for_evaluation(mgcn):
    model, _ = mgcn
    draws = []

    def draw():
        draws.append(model.training)
        return torch.eye(3).to_sparse()

    model.eval()
    model.draw_epoch_graph("g", draw)  # never drawn: drawn on first use
    for _ in range(2):
        model.train()
        model.draw_epoch_graph("g", draw)
        model.draw_epoch_graph("g", draw)
    model.eval()
    model.draw_epoch_graph("g", draw)
    assert draws == [False, True, True]


# ---- feature_pca: features projected once onto their leading principal components (opt-in) ---------------
def _low_rank_table(n_items: int, width: int, rank: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(11)
    scale = torch.linspace(10.0, 5.0, rank)
    table = (torch.randn(n_items, rank, generator=generator) * scale) @ torch.randn(rank, width, generator=generator)
    table = table + 0.01 * torch.randn(n_items, width, generator=generator)
    table[0] = 0  # padding
    table[5] = 0  # an item without this modality
    return table


def _reference_scores(table: torch.Tensor, n: int) -> torch.Tensor:
    """Principal-component scores by a plain SVD of the centred rows with content, up to each column's sign."""
    rows = table[table.abs().sum(dim=1) > 0].double()
    centred = rows - rows.mean(dim=0)
    _, _, vt = torch.linalg.svd(centred, full_matrices=False)
    return centred @ vt[:n].T


@pytest.mark.parametrize("exact", [True, False])
def test_pca_features_are_the_leading_principal_component_scores(monkeypatch, exact):
    from recbole_mm.model import abstract_recommender

    table = _low_rank_table(200, 40, 4)
    monkeypatch.setattr(abstract_recommender, "EXACT_PCA_MAX_WIDTH", 64 if exact else 8)
    state = torch.get_rng_state()
    out = abstract_recommender.pca_features(table, 3)
    assert torch.equal(state, torch.get_rng_state())  # the randomized path leaves the global stream alone
    assert out.shape == (200, 3) and out.dtype == torch.float32
    assert torch.equal(out[0], torch.zeros(3)) and torch.equal(out[5], torch.zeros(3))
    content = table.abs().sum(dim=1) > 0
    reference = _reference_scores(table, 3)
    signs = torch.sign((out[content].double() * reference).sum(dim=0))
    assert torch.allclose(out[content].double(), reference * signs, rtol=1e-4, atol=1e-3)
    assert torch.equal(out, abstract_recommender.pca_features(table, 3))  # repeatable, signs included
    assert abstract_recommender.pca_features(table, 40) is table  # not wider than asked: as loaded


def test_feature_pca_must_be_a_positive_integer(planted):
    with pytest.raises(ConfigError, match="feature_pca: 0 .* an integer >= 1 or None"):
        build_planted("GUME", planted, feature_pca=0)


def test_a_model_with_feature_pca_reads_the_projected_features(planted):
    _, model, train_data = build_planted("GUME", planted, knn_k=5, feature_pca=3)
    dataset = train_data._dataset
    from recbole_mm.model.abstract_recommender import pca_features

    for m in model.modalities:
        # GUME's trainable table starts from the projected features (the fixed ones are released once built).
        assert torch.equal(model.raw_features[m].weight, pca_features(dataset.item_features[m], 3))


@pytest.mark.parametrize("n_layers", [0, 1, 3])
def test_mean_propagation_of_some_rows_equals_those_rows_of_the_whole(mgcn, n_layers):
    """A training step that reads a few nodes' rows propagates the last layer for those rows only: the
    same numbers as the whole propagation's rows, and the gradient to float rounding."""
    model, _ = mgcn
    torch.manual_seed(5)
    n = model.n_users + model.n_items
    embeddings = torch.randn(n, 4, requires_grad=True)
    rows = torch.unique(torch.randint(0, n, (9,)))
    part = model.mean_propagation("norm_adj", embeddings, n_layers, rows)
    whole = model.mean_propagation("norm_adj", embeddings, n_layers)
    assert torch.equal(part, whole[rows])
    weights = torch.randn(len(rows), 4)
    (grad_part,) = torch.autograd.grad((part * weights).sum(), embeddings)
    (grad_whole,) = torch.autograd.grad((whole[rows] * weights).sum(), embeddings)
    assert torch.allclose(grad_part, grad_whole, atol=1e-6)
    # A re-registered graph (e.g. a pruned graph drawn again) drops the rows kept from the old one.
    before = model.propagate("norm_adj", embeddings, rows)
    model.register_graph("norm_adj", model.norm_adj * 2)
    after = model.propagate("norm_adj", embeddings, rows)
    assert torch.equal(after, model.propagate("norm_adj", embeddings)[rows])
    assert torch.allclose(after, 2 * before, atol=1e-6) and not torch.equal(after, before)


@pytest.mark.parametrize("n_layers", [0, 1, 3])
def test_bipartite_layers_are_each_views_whole_graph_propagation(mgcn, n_layers):
    """Views sharing their user input (SLMRec's) propagate the user chain once and each item chain over one
    block per layer: each view's layer means are mean_propagation's numbers bit for bit, whole or batch rows,
    and the gradients agree to float rounding."""
    model, _ = mgcn
    torch.manual_seed(6)
    users = torch.randn(model.n_users, 4, requires_grad=True)
    items = [torch.randn(model.n_items, 4, requires_grad=True) for _ in range(3)]
    views = model.bipartite_layers("norm_adj", users, items, n_layers)
    assert len(views) == 3 and all(len(u) == len(i) == n_layers + 1 for u, i in views)
    if n_layers:  # the user chain's tensors are shared, not recomputed per view
        assert views[0][0][0] is views[1][0][0] and views[0][1][1] is views[2][1][1]
    batch_users = torch.tensor([1, 3, 3, 0])
    batch_items = torch.tensor([2, 2, 5])
    user_means = model.layer_means([u for u, _ in views], batch_users)
    item_means = model.layer_means([i for _, i in views], batch_items)
    whole_items = model.layer_means([i for _, i in views])
    reference = [model.mean_propagation("norm_adj", torch.cat([users, x]), n_layers) for x in items]
    for v, whole in enumerate(reference):
        assert torch.equal(user_means[v], whole[batch_users])
        assert torch.equal(item_means[v], whole[model.n_users + batch_items])
        assert torch.equal(whole_items[v], whole[model.n_users:])
    weights = [torch.randn(len(batch_users) + len(batch_items), 4) for _ in items]
    rows = torch.cat([batch_users, model.n_users + batch_items])
    ours = torch.autograd.grad(sum((torch.cat([u, i]) * w).sum() for u, i, w in zip(user_means, item_means, weights)),
                               [users, *items])
    theirs = torch.autograd.grad(sum((whole[rows] * w).sum() for whole, w in zip(reference, weights)), [users, *items])
    for a, b in zip(ours, theirs):
        assert torch.allclose(a, b, atol=1e-6)


def test_bipartite_layers_refuse_a_graph_with_self_loops(mgcn):
    model, _ = mgcn
    n = model.n_users + model.n_items
    model.register_graph("looped", (model.norm_adj + torch.eye(n).to_sparse()).coalesce())
    with pytest.raises(RecBoleMMError, match="'looped' has user-user or item-item entries"):
        model.bipartite_layers("looped", torch.zeros(model.n_users, 2), [torch.zeros(model.n_items, 2)], 1)


def test_fused_features_are_the_modalities_side_by_side_gathered_from_one_kept_table(planted):
    _, model, _ = build_planted("VBPR", planted)
    items = torch.tensor([3, 1, 3, 7])
    expected = torch.cat([model.item_features(m).index_select(0, items) for m in model.modalities], dim=1)
    assert torch.equal(model.fused_features(items), expected)
    assert model.fused_features() is model.fused_features()  # built once, not per batch
    assert torch.equal(model.fused_features(), torch.cat([model.item_features(m) for m in model.modalities], 1))
    kept = model.fused_features()
    with torch.no_grad():
        model.item_features(model.modalities[0]).mul_(2.0)  # changed in place: the kept table follows
    assert torch.equal(model.fused_features(items)[:, :model.item_features(model.modalities[0]).shape[1]],
                       model.item_features(model.modalities[0]).index_select(0, items))
    kept = model.fused_features()
    model.to(torch.float64)  # moving the model drops the kept table: rebuilt from the moved buffers
    assert model.fused_features().dtype == torch.float64 and model.fused_features() is not kept

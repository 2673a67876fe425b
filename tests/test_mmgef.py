"""MM-GEF: graphs against dense references, attention, switches, gradients, learning, cold start."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

import recbole_mm
from recbole_mm.errors import RecBoleMMError
from recbole_mm.model.graphs import cooccurrence_graph
from recbole_mm.quick_start import create_dataset, make_config

from conftest import planted_config, write_planted_dataset
from test_graphs import knn_graph

BASE = {"knn_k": 5, "fusion": "concat"}


def build(root, name="planted", **overrides):
    from recbole.data import data_preparation
    from recbole.utils import get_model, init_seed

    config = make_config("MMGEF", name, config_dict={**planted_config(root, name), **BASE, **overrides})
    dataset = create_dataset(config)
    train_data, _, _ = data_preparation(config, dataset)
    init_seed(config["seed"], True)
    return get_model("MMGEF")(config, train_data._dataset), train_data


def test_cooccurrence_graph_matches_dense_reference():
    rng = np.random.default_rng(5)
    n_users, n_items, k = 12, 10, 3
    users, items = rng.integers(0, n_users, 50), rng.integers(0, n_items, 50)
    graph = cooccurrence_graph(torch.from_numpy(users), torch.from_numpy(items), n_users, n_items, k)
    r = np.zeros((n_users, n_items))
    r[users, items] = 1.0
    c = r.T @ r
    np.fill_diagonal(c, 0)
    degree = r.sum(axis=0)
    s = np.zeros_like(c)
    for i in range(n_items):
        candidates = [j for j in range(n_items) if c[i, j] > 0]
        keep = sorted(candidates, key=lambda j: (-c[i, j], j))[:k]
        for j in keep:
            s[i, j] = c[i, j] / np.sqrt(degree[i] * degree[j])
    d = s.sum(axis=1)
    inv = np.where(d > 0, 1 / np.sqrt(np.where(d > 0, d, 1)), 0)
    assert np.allclose(graph.to_dense().numpy(), inv[:, None] * s * inv[None, :], atol=1e-6)


def test_multimodal_graph_is_knn_on_fused_features(planted):
    root, _ = planted
    model, _ = build(root)
    fused = torch.cat([torch.nn.functional.normalize(model.item_features(m), dim=1) for m in model.modalities], 1)
    expected = knn_graph(fused[1:], 5).to_dense()
    assert torch.allclose(model.mm_graph_fused.to_dense()[1:, 1:], expected, atol=1e-6)
    assert model.mm_graph_fused.to_dense()[0].abs().sum() == 0  # padding item stays isolated


@pytest.mark.parametrize("attention", ["global", "item", "mean"])
def test_attention_weights_sum_to_one(planted, attention):
    root, _ = planted
    model, _ = build(root, graph_attention=attention)
    _, weights = model.item_content()
    assert torch.allclose(weights.sum(dim=1), torch.ones(len(weights)), atol=1e-6)
    assert weights.shape[1] == 2 and (weights.shape[0] == model.n_items) == (attention == "item")


@pytest.mark.parametrize("switch", [
    {"fusion": "late"}, {"graph_attention": "item"}, {"graph_attention": "mean"}, {"use_cf_graph": False},
    {"use_mm_graph": False}, {"inject": "input"}, {"inject": "both"}, {"n_item_layers": 2},
    {"mm_graph": "learned"}, {"item_graph_input": "id"},
])
def test_each_switch_changes_the_computation(planted, switch):
    root, _ = planted
    base, _ = build(root)
    changed, _ = build(root, **switch)
    if "graph_attention" in switch and switch["graph_attention"] == "mean":
        base.graph_scores.data = torch.tensor([1.0, -1.0])  # a learned, non-uniform mix to compare with
    with torch.no_grad():
        assert not torch.allclose(base.forward()[1], changed.forward()[1], atol=1e-6)


def test_mean_fusion_needs_equal_widths(planted):
    root, _ = planted
    with pytest.raises(RecBoleMMError, match="fusion: concat"):
        build(root, fusion="mean")


def test_gradients_reach_every_parameter(planted):
    root, _ = planted
    for attention in ("global", "item"):
        model, train_data = build(root, graph_attention=attention, fusion="late", inject="both")
        model.calculate_loss(next(iter(train_data))).backward()
        for name, parameter in model.named_parameters():
            assert parameter.grad is not None and parameter.grad.abs().sum() > 0, (attention, name)


@pytest.mark.parametrize("reading", [
    {"mm_graph": "learned"}, {"item_graph_input": "id"}, {"mm_graph": "learned", "item_graph_input": "id"},
])
def test_other_readings_reach_every_parameter(planted, reading):
    root, _ = planted
    model, train_data = build(root, graph_attention="item", fusion="late", inject="both", **reading)
    model.train()
    model.calculate_loss(next(iter(train_data))).backward()
    for name, parameter in model.named_parameters():
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, (reading, name)
    if reading == {"item_graph_input": "id"}:
        assert len(model.projections) == 0  # nothing reads the projected content then


def test_id_reading_propagates_the_id_embeddings(planted):
    root, _ = planted
    model, _ = build(root, item_graph_input="id", use_cf_graph=False)
    with torch.no_grad():
        h, _ = model.item_content()
        expected = model.mm_graph_fused.to_dense() @ model.item_embedding.weight
    assert torch.allclose(h, expected, atol=1e-6)


def test_learned_graph_is_lattice_mix_rebuilt_once_per_epoch(planted):
    """S = (1 - λ) sym(topk(cos(W x))) + λ Â^mm (dense reference); the first training batch of an epoch
    builds it with gradient into W, later ones reuse it detached, train() (a new epoch) drops it."""
    root, _ = planted
    model, train_data = build(root, mm_graph="learned", use_cf_graph=False, lambda_coeff=0.7)
    model.train()
    batch = next(iter(train_data))
    with torch.no_grad():
        content = model.projections["fused"](model.input_fused)
        expected = 0.3 * knn_graph(content[1:], 5).to_dense() + 0.7 * model.mm_graph_fused.to_dense()[1:, 1:]
        model.forward()  # first batch of the epoch: builds and keeps the graph
    kept = model.epoch_mm_graph_fused.to_dense()
    assert torch.allclose(kept[1:, 1:], expected, atol=1e-6) and kept[0].abs().sum() == 0
    with torch.no_grad():
        h, _ = model.item_content()
    assert torch.allclose(h, kept @ content, atol=1e-5)

    model.zero_grad()
    model.calculate_loss(batch).backward()  # the kept graph is detached: W gets gradient only via h⁰
    via_content = model.projections["fused"].weight.grad.clone()
    model.train()  # next epoch: rebuilt with gradient through the learned similarities too
    model.zero_grad()
    model.calculate_loss(batch).backward()
    assert not torch.allclose(model.projections["fused"].weight.grad, via_content, atol=1e-9)
    assert model.epoch_graph_ready("epoch_mm_graph_fused")
    model.eval()
    assert not model.epoch_graph_ready("epoch_mm_graph_fused")  # evaluation builds it from the current weights


def test_learned_graph_needs_the_multimodal_graph(planted):
    root, _ = planted
    with pytest.raises(RecBoleMMError, match="use_mm_graph"):
        build(root, mm_graph="learned", use_mm_graph=False)


@pytest.mark.parametrize("reading", [{}, {"mm_graph": "learned", "item_graph_input": "id"}])
def test_training_steps_are_deterministic_on_cpu(planted, reading):
    root, _ = planted
    losses = []
    for _ in range(2):
        model, train_data = build(root, **reading)
        model.train()
        optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
        run = []
        for batch in list(train_data)[:3]:
            optimizer.zero_grad()
            loss = model.calculate_loss(batch)
            loss.backward()
            optimizer.step()
            run.append(loss.item())
        losses.append(run)
    assert losses[0] == losses[1]


def test_mmgef_beats_popularity_on_planted_clusters(planted):
    root, config = planted
    config.update(BASE, epochs=20, learning_rate=0.01, stopping_step=20)
    pop = recbole_mm.run_recbole(model="Pop", dataset="planted", config_dict=config)
    mmgef = recbole_mm.run_recbole(model="MM-GEF", dataset="planted", config_dict=config)
    assert mmgef["test_result"]["recall@10"] > pop["test_result"]["recall@10"] + 0.3


def test_item_content_reaches_cold_items(tmp_path, monkeypatch):
    """An item with no training interaction is scored from its content: after training, users of its
    cluster score it higher than other users do, and changing its features changes its scores."""
    monkeypatch.chdir(tmp_path)
    root = tmp_path / "data"
    folder = write_planted_dataset(root)
    inter = pd.read_csv(folder / "planted.inter", sep="\t")
    cold = 6  # cluster 6 % 4 = 2
    inter.loc[inter.itemID == cold, "x_label"] = 2
    inter.to_csv(folder / "planted.inter", sep="\t", index=False)
    result = recbole_mm.run_recbole(model="MMGEF", dataset="planted", config_dict={
        **planted_config(root), **BASE, "epochs": 20, "learning_rate": 0.01, "stopping_step": 20})
    config, model, dataset, *_ = recbole_mm.load_data_and_model(result["saved_model_file"])
    model.eval()
    cold_id = dataset.token2id("itemID", str(cold))
    assert cold_id not in set(model_train_items(model))
    users = torch.arange(1, model.n_users)
    cluster = torch.tensor([int(t) % 4 for t in dataset.field2id_token["userID"][1:]])
    with torch.no_grad():
        user_vectors, item_vectors = model.forward()
        scores = user_vectors[users] @ item_vectors[cold_id]
    assert scores[cluster == 2].mean() > scores[cluster != 2].mean()
    model.train()  # drop the evaluation cache
    with torch.no_grad():
        model.input_fused[cold_id] = -model.input_fused[cold_id]
        changed = model.forward()[1][cold_id]
    assert not torch.allclose(changed, item_vectors[cold_id])


def model_train_items(model) -> list[int]:
    rows, cols = model.ui_graph.indices()
    return (cols[cols >= model.n_users] - model.n_users).unique().tolist()

"""DRAGON (DualGNN's user-item and user-user parts with concatenated modalities and a frozen item graph): the
item graph, the forward pass by hand, loss terms, gradients, determinism, learning, RecBole's own entry point,
and equality with MMRec's DRAGON on the fixture of tests/data/mmrec_fidelity (fed the user-user lists MMRec's
preprocessing script would write). The user-graph builders are tested in tests/test_dualgnn.py."""

from __future__ import annotations

import pytest
import torch

from builders import assert_gradients_reach, assert_trains_deterministically, build_planted
import recbole_mm
from test_dualgnn import MMREC_NAMES, check_against_mmrec


def build(planted, **overrides):
    _, model, train_data = build_planted("DRAGON", planted, **{"knn_k": 5, **overrides})
    return model, train_data


def test_item_graph_mixes_binary_knn_graphs(planted):
    model, _ = build(planted)
    dense = model.item_graph.to_dense()
    assert torch.all(dense[0] == 0) and torch.all(dense[:, 0] == 0)
    # Each modality's row holds k = 5 entries of 1/5 (row sums are the degrees of D^-1/2 A D^-1/2), mixed
    # 0.1 (image) / 0.9 (text): entries 0.02, 0.18 or 0.2 (in both), rows summing to 1.
    assert torch.allclose(dense[1:].sum(dim=1), torch.ones(model.n_items - 1))
    values = torch.unique(dense[dense > 0])
    assert all(any(abs(v - allowed) < 1e-6 for allowed in (0.02, 0.18, 0.2)) for v in values.tolist()), values


def test_forward_by_hand(planted):
    model, _ = build(planted, n_layers=2, n_mm_layers=1)
    model.eval()
    with torch.no_grad():
        users, items = model.forward()
        a = model.ui_graph.to_dense()
        reps = []
        for m in ("image", "text"):
            x = torch.cat([model.preferences[m], model.encoders[m](model.item_features(m))])
            x = x / x.norm(dim=1, keepdim=True).clamp_min(1e-12)
            reps.append(x + a @ x + a @ (a @ x))
        n = model.n_users
        w = model.user_fusion
        fused = torch.cat([w[:, 0] * reps[0][:n], w[:, 1] * reps[1][:n]], dim=1)
        expected_users = fused + model.user_graph.to_dense() @ fused
        cat_items = torch.cat(reps, dim=1)[n:]
        expected_items = cat_items + model.item_graph.to_dense() @ cat_items
    assert users.shape[1] == items.shape[1] == 2 * model.dim
    assert torch.allclose(users, expected_users, atol=1e-5)
    assert torch.allclose(items, expected_items, atol=1e-5)


def test_loss_is_log2_bpr_plus_regularisers(planted):
    model, train_data = build(planted, reg_weight=0.3)
    batch = next(iter(train_data))
    model.train()
    loss = model.calculate_loss(batch)
    users, items = model.forward()
    user = batch["userID"]
    u, pos, neg = users[user], items[batch["itemID"]], items[batch["neg_itemID"]]
    expected = -torch.log2(torch.sigmoid((u * pos).sum(1) - (u * neg).sum(1))).mean()
    reg = sum((model.preferences[m][user] ** 2).mean() for m in ("image", "text")) + (model.user_fusion[1:] ** 2).mean()
    assert loss.item() == pytest.approx((expected + 0.3 * reg).item(), rel=1e-6)
    assert not hasattr(model, "item_fusion")


def test_gradients_reach_every_parameter(planted):
    model, train_data = build(planted, reg_weight=0.1)
    model.calculate_loss(next(iter(train_data))).backward()
    assert_gradients_reach(model.named_parameters())


def test_deterministic_on_cpu(planted):
    root, config = planted
    config.update(epochs=2, knn_k=5)
    assert_trains_deterministically("DRAGON", config)


@pytest.mark.slow
def test_dragon_beats_popularity_on_planted_clusters(planted):
    root, config = planted
    config.update(epochs=15, knn_k=5, learning_rate=0.01, stopping_step=15)
    pop = recbole_mm.run_recbole(model="Pop", dataset="planted", config_dict=config)
    dragon = recbole_mm.run_recbole(model="DRAGON", dataset="planted", config_dict=config)
    assert dragon["test_result"]["recall@10"] > pop["test_result"]["recall@10"] + 0.3, (dragon, pop)


def test_single_modality_trains(planted):
    root, config = planted
    config.update(epochs=1, knn_k=5, modalities={"text": "text_feat.npy"})
    result = recbole_mm.run_recbole(model="DRAGON", dataset="planted", config_dict=config, saved=False)
    assert 0.0 <= result["test_result"]["recall@10"] <= 1.0


def test_recbole_run_recbole_finds_dragon(planted):
    from recbole.quick_start import run_recbole

    root, config = planted
    config.update(knn_k=5)
    result = run_recbole(model="DRAGON", dataset="planted", config_dict=config)
    assert 0.0 <= result["test_result"]["recall@10"] <= 1.0


def test_matches_mmrec_dragon(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    names = {theirs: ours for theirs, ours in MMREC_NAMES.items() if theirs != "weight_i"}
    check_against_mmrec("DRAGON", names, tmp_path)

"""DualGNN: the user co-occurrence graph against a dense computation, its per-epoch padding, loss terms,
gradients, determinism, learning, RecBole's own entry point, and equality with MMRec's DualGNN on the fixture
of tests/data/mmrec_fidelity (fed the user-user lists MMRec's preprocessing script would write)."""

from __future__ import annotations

import math

import pytest
import torch

import fidelity
from builders import assert_gradients_reach, build_planted
import recbole_mm
from recbole_mm.model.graphs import (NO_NEIGHBOUR, neighbour_weight_graph, pad_neighbour_slots,
                                     sampled_neighbour_graph, user_cooccurrence_neighbours)


# ---- the user co-occurrence graph ------------------------------------------------------------------
def dense_neighbours(users, items, n_users, n_items, k):
    """The reference computation written densely: C = R Rᵀ (binary R), zero diagonal, per row the k largest
    counts (ties: lower id) by a full stable sort."""
    r = torch.zeros(n_users, n_items)
    r[users, items] = 1.0
    c = r @ r.T
    c.fill_diagonal_(0)
    expected = []
    for u in range(n_users):
        order = sorted((v for v in range(n_users) if c[u, v] > 0), key=lambda v: (-c[u, v].item(), v))[:k]
        expected.append([(v, c[u, v].item()) for v in order])
    return expected


def test_user_cooccurrence_neighbours_match_a_dense_computation():
    g = torch.Generator().manual_seed(5)
    n_users, n_items = 30, 12
    users = torch.randint(0, n_users, (150,), generator=g)
    items = torch.randint(0, n_items, (150,), generator=g)  # duplicates included: they count once
    for k in (1, 3, 40):
        indices, counts = user_cooccurrence_neighbours(users, items, n_users, n_items, k)
        assert indices.shape == counts.shape == (n_users, k)
        for u, row in enumerate(dense_neighbours(users, items, n_users, n_items, k)):
            got = [(int(v), float(c)) for v, c in zip(indices[u], counts[u]) if v != NO_NEIGHBOUR]
            assert got == row, (k, u)
            assert torch.all(counts[u, len(row):] == 0)


def test_user_cooccurrence_by_hand():
    # u0: items {0, 1, 2}; u1: {0, 1}; u2: {2}; u3: {3}. Shared: u0-u1 2, u0-u2 1, u1-u2 0; u3 none.
    users = torch.tensor([0, 0, 0, 1, 1, 2, 3, 0])
    items = torch.tensor([0, 1, 2, 0, 1, 2, 3, 0])
    indices, counts = user_cooccurrence_neighbours(users, items, 4, 4, 2)
    assert indices.tolist() == [[1, 2], [0, -1], [0, -1], [-1, -1]]
    assert counts.tolist() == [[2.0, 1.0], [2.0, 0.0], [1.0, 0.0], [0.0, 0.0]]


def test_padding_resamples_as_an_urn():
    # Row 0: 2 neighbours in 4 slots; row 1: full; row 2: none.
    indices = torch.tensor([[7, 8, -1, -1], [1, 2, 3, 4], [-1, -1, -1, -1]])
    torch.manual_seed(0)
    draws = torch.stack([pad_neighbour_slots(indices) for _ in range(3000)])
    assert torch.all(draws[:, 0, :2] == torch.tensor([0, 1]))  # own entries first, unchanged
    assert torch.all(draws[:, 1] == torch.arange(4)) and torch.all(draws[:, 2] == 0)
    assert torch.all(draws[:, 0, 2:] < 2)
    # Slot 2 draws from slots {0, 1}; slot 3 from {0, 1, 2} (the padded one included): both pads equal
    # slot 0 with probability 1/2 · 2/3 = 1/3 (an independent uniform draw would give 1/4).
    both_zero = ((draws[:, 0, 2] == 0) & (draws[:, 0, 3] == 0)).float().mean().item()
    assert both_zero == pytest.approx(1 / 3, abs=0.03)


def test_sampled_graph_weights_are_softmax_of_the_picked_counts():
    indices = torch.tensor([[1, 2, -1], [0, 2, 3], [-1, -1, -1], [0, -1, -1]])
    counts = torch.tensor([[3.0, 1.0, 0.0], [3.0, 2.0, 1.0], [0.0, 0.0, 0.0], [5.0, 0.0, 0.0]])
    torch.manual_seed(1)
    dense = sampled_neighbour_graph(indices, counts).to_dense()
    full = torch.softmax(torch.tensor([3.0, 2.0, 1.0]), 0)
    assert torch.allclose(dense[1, [0, 2, 3]], full) and dense[1, 1] == 0
    assert torch.all(dense[2] == 0)
    assert dense[3, 0].item() == pytest.approx(1.0)  # one neighbour, picked three times
    # Row 0 picked user 1 a times and user 2 (3 - a) times: weights a·e³ : (3-a)·e¹, normalised.
    a = round((dense[0, 1] / dense[0, 2] * math.exp(1 - 3)).item() / (1 + (dense[0, 1] / dense[0, 2]
              * math.exp(1 - 3)).item()) * 3)
    assert a in (1, 2)
    expected = torch.tensor([a * math.exp(3), (3 - a) * math.exp(1)])
    assert torch.allclose(dense[0, 1:3], expected / expected.sum())
    assert torch.allclose(dense.sum(1), torch.tensor([1.0, 1.0, 0.0, 1.0]))
    mean = sampled_neighbour_graph(indices, counts, "mean").to_dense()
    assert torch.allclose(mean[1, [0, 2, 3]], torch.full((3,), 1 / 3))


def test_neighbour_weight_graph_sums_repeated_picks():
    picks = torch.tensor([[1, 1, 2], [-1, -1, -1], [0, 1, 0]])
    weights = torch.tensor([[0.2, 0.3, 0.5], [0.0, 0.0, 0.0], [0.1, 0.1, 0.8]])
    dense = neighbour_weight_graph(picks, weights, 3).to_dense()
    assert torch.allclose(dense, torch.tensor([[0.0, 0.5, 0.5], [0.0, 0.0, 0.0], [0.9, 0.1, 0.0]]))


# ---- the model on the planted set ----------------------------------------------------------------
def build(planted, **overrides):
    _, model, train_data = build_planted("DualGNN", planted, **overrides)
    return model, train_data


def test_loss_is_log2_bpr_plus_regularisers(planted):
    model, train_data = build(planted, reg_weight=0.3)
    batch = next(iter(train_data))
    model.train()
    loss = model.calculate_loss(batch)
    users, items = model.forward()  # the same epoch graph
    user = batch["userID"]
    u, pos, neg = users[user], items[batch["itemID"]], items[batch["neg_itemID"]]
    expected = -torch.log2(torch.sigmoid((u * pos).sum(1) - (u * neg).sum(1))).mean()
    reg = sum((model.preferences[m][user] ** 2).mean() for m in ("image", "text"))
    reg = reg + (model.user_fusion[1:] ** 2).mean() + (model.item_fusion[1:] ** 2).mean()
    assert loss.item() == pytest.approx((expected + 0.3 * reg).item(), rel=1e-6)


def test_forward_by_hand(planted):
    model, _ = build(planted, n_layers=2)
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
        fused = w[:, 0] * (reps[0] + reps[1])[:n] + w[:, 1] * reps[1][:n]
        expected_users = fused + model.user_graph.to_dense() @ fused
    assert torch.allclose(items, (reps[0] + reps[1])[n:], atol=1e-5)
    assert torch.allclose(users, expected_users, atol=1e-5)


def test_user_graph_is_redrawn_each_epoch_and_kept_for_evaluation(planted):
    model, _ = build(planted, user_graph_k=8)
    model.train()
    model.forward()
    first = model.user_graph
    model.forward()
    assert model.user_graph is first
    model.eval()
    model.forward()
    assert model.user_graph is first
    model.train()
    model.forward()
    assert model.user_graph is not first
    assert torch.allclose(torch.sparse.sum(first, 1).to_dense()[1:], torch.ones(model.n_users - 1))


def test_gradients_reach_every_parameter(planted):
    model, train_data = build(planted, reg_weight=0.1)
    model.calculate_loss(next(iter(train_data))).backward()
    assert_gradients_reach(model.named_parameters())


def test_deterministic_on_cpu(planted):
    root, config = planted
    config.update(epochs=2)
    runs = [recbole_mm.run_recbole(model="DualGNN", dataset="planted", config_dict=config, saved=False)
            for _ in range(2)]
    assert [h["train_loss"] for h in runs[0]["history"]] == [h["train_loss"] for h in runs[1]["history"]]
    assert runs[0]["test_result"] == runs[1]["test_result"]


@pytest.mark.slow
def test_dualgnn_beats_popularity_on_planted_clusters(planted):
    root, config = planted
    config.update(epochs=15, learning_rate=0.01, stopping_step=15)
    pop = recbole_mm.run_recbole(model="Pop", dataset="planted", config_dict=config)
    dualgnn = recbole_mm.run_recbole(model="DualGNN", dataset="planted", config_dict=config)
    assert dualgnn["test_result"]["recall@10"] > pop["test_result"]["recall@10"] + 0.3, (dualgnn, pop)


def test_single_modality_trains(planted):
    root, config = planted
    config.update(epochs=1, modalities={"text": "text_feat.npy"})
    result = recbole_mm.run_recbole(model="DualGNN", dataset="planted", config_dict=config, saved=False)
    assert 0.0 <= result["test_result"]["recall@10"] <= 1.0


def test_recbole_run_recbole_finds_dualgnn(planted):
    from recbole.quick_start import run_recbole

    root, config = planted
    result = run_recbole(model="DualGNN", dataset="planted", config_dict=config)
    assert 0.0 <= result["test_result"]["recall@10"] <= 1.0


# ---- fidelity: MMRec's DualGNN on the same data, user-user lists, weights and batches -----------------
# MMRec's parameter names → ours (rows 1.. of ours for user/item tables: RecBole's padding is row 0).
MMREC_NAMES = {
    "weight_u": "user_fusion", "weight_i": "item_fusion",
    "v_gcn.preference": "preferences.image", "t_gcn.preference": "preferences.text",
    "v_gcn.MLP.weight": "encoders.image.0.weight", "v_gcn.MLP.bias": "encoders.image.0.bias",
    "v_gcn.MLP_1.weight": "encoders.image.2.weight", "v_gcn.MLP_1.bias": "encoders.image.2.bias",
    "t_gcn.MLP.weight": "encoders.text.0.weight", "t_gcn.MLP.bias": "encoders.text.0.bias",
    "t_gcn.MLP_1.weight": "encoders.text.2.weight", "t_gcn.MLP_1.bias": "encoders.text.2.bias",
}
PER_ROW = {"weight_u", "weight_i", "v_gcn.preference", "t_gcn.preference"}


def test_builder_gives_the_lists_of_mmrecs_preprocessing_script(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    record, model = fidelity.build("DualGNN", tmp_path)
    theirs = record["user_graph_dict"]
    indices, counts = model.user_neighbours, model.user_counts  # built in __init__ from the training rows
    assert max(len(neighbours) for neighbours, _ in theirs.values()) <= indices.shape[1]
    for user, (neighbours, values) in theirs.items():
        # Ours in our ids (user + 1); theirs ordered by count, equal counts to the lower id, like ours.
        expected = sorted(zip(neighbours, values), key=lambda pair: (-pair[1], pair[0]))
        got = [(int(v) - 1, float(c)) for v, c in zip(indices[user + 1], counts[user + 1]) if v != NO_NEIGHBOUR]
        assert got == [(v, float(c)) for v, c in expected], user
    assert torch.all(indices[0] == NO_NEIGHBOUR)  # padding user


def check_against_mmrec(model_name: str, names: dict[str, str], tmp_path) -> None:
    """Our ``model_name`` with the weights of the fixture's MMRec model (``names``: theirs → ours) and the user
    graph MMRec drew: the same losses and gradients on both batches, and the same full-ranking scores."""
    record, model = fidelity.build(model_name, tmp_path)
    state = record["state"]
    with torch.no_grad():
        for theirs, ours in names.items():
            target = fidelity.getattr_path(model, ours)
            (target[1:] if theirs in PER_ROW else target).copy_(state[theirs])
    # The epoch's user graph MMRec sampled (its ids + 1), fed to ours in place of our own draw.
    picks = torch.full((model.n_users, record["epoch_user_graph"].shape[1]), NO_NEIGHBOUR)
    weights = torch.zeros(picks.shape)
    picks[1:], weights[1:] = record["epoch_user_graph"] + 1, record["user_weight_matrix"]
    model.train()
    model.keep_epoch_graph("user_graph", neighbour_weight_graph(picks, weights, model.n_users))
    for b, ids in enumerate(record["batches"]):
        model.zero_grad()
        loss = model.calculate_loss(fidelity.batch(model, ids))
        loss.backward()
        assert loss.item() == pytest.approx(record[f"loss_{b}"].item(), abs=1e-6)
        for theirs, ours in names.items():
            grad = fidelity.getattr_path(model, ours).grad
            if theirs in PER_ROW:
                assert torch.all(grad[0] == 0), ours
                grad = grad[1:]
            assert torch.allclose(grad, record[f"grads_{b}"][theirs], atol=1e-6), (b, theirs)
    assert torch.allclose(fidelity.scores(model), record["scores"], atol=1e-5)


def test_matches_mmrec_dualgnn(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    check_against_mmrec("DualGNN", MMREC_NAMES, tmp_path)

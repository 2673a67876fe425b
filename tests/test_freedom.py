"""FREEDOM: pruning by hand, loss terms, gradients, determinism, learning, RecBole's own entry point, and
equality with MMRec's FREEDOM on the fixture of tests/data/mmrec_fidelity."""

from __future__ import annotations

import math

import pytest
import torch

import fidelity
from builders import assert_trains_deterministically, build_planted
import recbole_mm
from recbole_mm.errors import RecBoleMMError
from recbole_mm.model.graphs import bipartite_adjacency, degree_sensitive_keep
from recbole_mm.model.losses import bpr_loss


# ---- degree-sensitive pruning --------------------------------------------------------------------
def test_degree_sensitive_keep_count_and_bias():
    # User 0 has 4 items, users 1-4 one each (item 0 has degree 5, items 1-4 degree 1... see below).
    users = torch.tensor([0, 0, 0, 0, 1, 2, 3, 4])
    items = torch.tensor([0, 1, 2, 3, 4, 5, 6, 7])
    torch.manual_seed(0)
    kept = torch.stack([degree_sensitive_keep(users, items, 5, 8, dropout=0.5) for _ in range(2000)])
    assert kept.shape == (2000, 4) and all(len(set(row.tolist())) == 4 for row in kept[:20])
    # P(draw) ∝ 1/sqrt(d_u d_i): 1/2 for user 0's edges, 1 for the others, so the others survive more.
    freq = torch.bincount(kept.reshape(-1), minlength=8).float() / 2000
    assert freq[:4].max() < freq[4:].min()
    assert freq.sum().item() == pytest.approx(4.0)
    with pytest.raises(ValueError):
        degree_sensitive_keep(users, items, 5, 8, dropout=1.0)


def test_bipartite_adjacency_by_hand():
    # Users 0, 1; items 0, 1; edges (0,0), (0,1), (1,1): degrees u0 2, u1 1, i0 1, i1 2.
    adj = bipartite_adjacency(torch.tensor([0, 0, 1, 0]), torch.tensor([0, 1, 1, 0]), 2, 2).to_dense()
    expected = torch.zeros(4, 4)
    for u, i, value in ((0, 0, 1 / math.sqrt(2)), (0, 1, 1 / 2), (1, 1, 1 / math.sqrt(2))):
        expected[u, 2 + i] = expected[2 + i, u] = value
    assert torch.allclose(adj, expected)


# ---- the model on the planted set ----------------------------------------------------------------
def build(planted, **overrides):
    _, model, train_data = build_planted("FREEDOM", planted, **{"knn_k": 5, "feat_embed_dim": 16, **overrides})
    return model, train_data


def test_loss_is_bpr_plus_weighted_modality_bpr(planted):
    model, train_data = build(planted, reg_weight=0.3)
    batch = next(iter(train_data))
    torch.manual_seed(3)
    loss = model.calculate_loss(batch)
    torch.manual_seed(3)
    model.train()  # the same pruned graph again
    users, items = model.forward()
    u = users[batch["userID"]]
    pos, neg = batch["itemID"], batch["neg_itemID"]
    expected = bpr_loss((u * items[pos]).sum(1), (u * items[neg]).sum(1))
    for m in ("image", "text"):
        w, b = model.projections[m].weight, model.projections[m].bias
        feats = model.raw_features[m].weight
        expected = expected + 0.3 * bpr_loss((u * (feats[pos] @ w.T + b)).sum(1), (u * (feats[neg] @ w.T + b)).sum(1))
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)


def test_pruned_graph_is_redrawn_each_epoch_and_evaluation_uses_the_full_graph(planted):
    model, _ = build(planted, dropout=0.5)
    model.train()
    model.forward()
    first = model.pruned_adj
    model.forward()
    assert model.pruned_adj is first  # fixed within the epoch
    edges = len(model.edge_users)
    assert first._nnz() == 2 * int(edges * 0.5) and model.norm_adj._nnz() == 2 * edges
    model.eval()
    eval_out = model.forward()
    model.train()
    model.forward()
    assert not torch.equal(model.pruned_adj.indices(), first.indices())
    # Evaluation: the full graph, no pruning draws.
    model.eval()
    assert torch.equal(model.forward()[1], eval_out[1])


def test_item_graph_mixes_binary_knn_graphs(planted):
    model, _ = build(planted)
    dense = model.item_graph.to_dense()
    assert torch.all(dense[0] == 0) and torch.all(dense[:, 0] == 0)
    # Each modality's row holds k = 5 entries of 1/5; mixed 0.1 (image) / 0.9 (text).
    assert torch.allclose(dense[1:].sum(dim=1), torch.ones(model.n_items - 1))
    values = torch.unique(dense[dense > 0])
    assert all(any(abs(v - allowed) < 1e-6 for allowed in (0.02, 0.18, 0.2)) for v in values.tolist()), values


def test_gradients_reach_every_parameter(planted):
    model, train_data = build(planted, reg_weight=0.1)
    model.calculate_loss(next(iter(train_data))).backward()
    for name, parameter in model.named_parameters():
        if name.startswith("projections.") and name.endswith(".bias"):
            # u·b is added to both the positive and the negative score, so BPR cancels it (as in the original).
            assert torch.all(parameter.grad == 0), name
            continue
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name


def test_bad_dropout_is_rejected(planted):
    with pytest.raises(RecBoleMMError, match="dropout"):
        build(planted, dropout=1.0)


def test_deterministic_on_cpu(planted):
    root, config = planted
    config.update(epochs=2, knn_k=5, feat_embed_dim=16)
    assert_trains_deterministically("FREEDOM", config)


@pytest.mark.slow
def test_freedom_beats_popularity_on_planted_clusters(planted):
    root, config = planted
    config.update(epochs=15, knn_k=5, feat_embed_dim=16, learning_rate=0.01, stopping_step=15)
    pop = recbole_mm.run_recbole(model="Pop", dataset="planted", config_dict=config)
    freedom = recbole_mm.run_recbole(model="FREEDOM", dataset="planted", config_dict=config)
    assert freedom["test_result"]["recall@10"] > pop["test_result"]["recall@10"] + 0.3, (freedom, pop)


def test_single_modality_trains(planted):
    root, config = planted
    config.update(epochs=1, knn_k=5, feat_embed_dim=16, modalities={"text": "text_feat.npy"})
    result = recbole_mm.run_recbole(model="FREEDOM", dataset="planted", config_dict=config, saved=False)
    assert 0.0 <= result["test_result"]["recall@10"] <= 1.0


def test_recbole_run_recbole_finds_freedom(planted):
    from recbole.quick_start import run_recbole

    root, config = planted
    config.update(knn_k=5, feat_embed_dim=16)
    result = run_recbole(model="FREEDOM", dataset="planted", config_dict=config)
    assert 0.0 <= result["test_result"]["recall@10"] <= 1.0


# ---- fidelity: MMRec's FREEDOM on the same data, weights and batches --------------------------------
def test_matches_mmrec_freedom(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    record, model, names = fidelity.load("FREEDOM", tmp_path)
    torch.manual_seed(1)  # the reference drew its pruned graph first thing after this seed, as we do
    fidelity.replay(model, record, lambda: fidelity.our_grads(model, names))
    # The same pruned graph: reference node n ↔ ours n + 1 (users), n - n_users + our n_users + 1 (items).
    n_users = model.n_users - 1
    ref = torch.arange(record["pruned_adj"].shape[0])
    ours_index = torch.where(ref < n_users, ref + 1, ref - n_users + model.n_users + 1)
    pruned = model.pruned_adj.to_dense()[ours_index][:, ours_index]
    assert torch.allclose(pruned, record["pruned_adj"], atol=1e-6)
    assert torch.allclose(fidelity.scores(model), record["scores"], atol=1e-5)


@pytest.mark.slow
def test_recboles_trainer_redraws_once_per_epoch(planted, monkeypatch):
    from recbole_mm.model.general_recommender.freedom import FREEDOM

    draws = []
    original = FREEDOM.pruned_graph
    monkeypatch.setattr(FREEDOM, "pruned_graph", lambda self: (draws.append(self.training), original(self))[1])
    root, config = planted
    config.update(epochs=3, knn_k=5, feat_embed_dim=16, train_batch_size=64)  # several batches per epoch
    recbole_mm.run_recbole(model="FREEDOM", dataset="planted", config_dict=config, saved=False)
    assert draws == [True] * 3

"""LATTICE: the learned-graph building blocks against dense computations, loss terms, gradients,
determinism, learning, RecBole's own entry point, and equality with MMRec's LATTICE on the fixture of
tests/data/mmrec_fidelity."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import fidelity
from builders import assert_gradients_reach, assert_trains_deterministically, build_planted
import recbole_mm
from recbole_mm.errors import RecBoleMMError
from recbole_mm.model.graphs import bipartite_adjacency, edge_propagate, knn_edges, normalize_adjacency
from recbole_mm.model.losses import bpr_loss, squared_l2


# ---- building blocks -----------------------------------------------------------------------------
def dense_topk(features: torch.Tensor, k: int) -> torch.Tensor:
    """The original's construction: cosine similarities masked to each row's top-k (gradient through them)."""
    unit = features / features.norm(dim=1, keepdim=True)
    sims = unit @ unit.T
    values, indices = sims.topk(k, dim=1)
    return torch.zeros_like(sims).scatter(1, indices, values)


def test_knn_edges_equal_dense_topk_with_gradient():
    torch.manual_seed(0)
    x = torch.randn(7, 4, requires_grad=True)
    weight = torch.randn(7, 7)
    (dense_topk(x, 3) * weight).sum().backward()
    expected_grad = x.grad.clone()
    x.grad = None
    rows, cols, sims = knn_edges(x, 3)
    dense = torch.zeros(7, 7).index_put((rows, cols), sims)
    assert torch.allclose(dense, dense_topk(x, 3).detach(), atol=1e-6)
    (sims * weight[rows, cols]).sum().backward()
    assert torch.allclose(x.grad, expected_grad, atol=1e-5)


def test_edge_propagate_is_a_differentiable_sparse_matmul():
    rows, cols = torch.tensor([0, 0, 2]), torch.tensor([1, 2, 0])
    values = torch.tensor([0.5, 2.0, -1.0], requires_grad=True)
    dense = torch.tensor([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]], requires_grad=True)
    out = edge_propagate(rows, cols, values, dense, 3)
    assert torch.allclose(out, torch.tensor([[11.5, 14.0], [0.0, 0.0], [-1.0, -2.0]]))
    out.sum().backward()
    assert torch.allclose(values.grad, torch.tensor([7.0, 11.0, 3.0]))  # row sums of dense[cols]
    assert torch.allclose(dense.grad, torch.tensor([[-1.0, -1.0], [0.5, 0.5], [2.0, 2.0]]))


def test_lattice_user_item_graph_is_row_normalised_with_self_loops():
    # Users 0, 1; item 0; edges (0,0), (1,0): rows of A + I: u0 {u0, i0}, u1 {u1, i0}, i0 {u0, u1, i0}.
    adj = bipartite_adjacency(torch.tensor([0, 1]), torch.tensor([0, 0]), 2, 1, self_loops=True,
                              normalization="row").to_dense()
    expected = torch.tensor([[0.5, 0.0, 0.5], [0.0, 0.5, 0.5], [1 / 3, 1 / 3, 1 / 3]])
    assert torch.allclose(adj, expected)


def test_mixed_learned_graph_normalises_after_mixing():
    # Two modalities' top-k edges weighted w, summed, then D^-1/2 (Σ w S) D^-1/2 with D the row sums.
    rows, cols = torch.tensor([0, 0, 1, 0]), torch.tensor([0, 1, 1, 1])
    values = torch.tensor([0.3 * 1.0, 0.3 * 0.5, 0.3 * 1.0, 0.7 * 0.8])
    dense = normalize_adjacency(rows, cols, values, 2, "sym").to_dense()
    s = torch.tensor([[0.3, 0.3 * 0.5 + 0.7 * 0.8], [0.0, 0.3]])
    d = s.sum(dim=1).rsqrt()
    assert torch.allclose(dense, d[:, None] * s * d[None, :])


# ---- the model on the planted set ----------------------------------------------------------------
def build(planted, **overrides):
    _, model, train_data = build_planted("LATTICE", planted, **{"knn_k": 5, **overrides})
    return model, train_data


def test_loss_is_bpr_plus_l2_over_the_configured_batch_size(planted):
    model, train_data = build(planted, reg_weight=0.5)
    batch = next(iter(train_data))
    loss = model.calculate_loss(batch)
    users, items = model.forward()
    u, p, n = users[batch["userID"]], items[batch["itemID"]], items[batch["neg_itemID"]]
    expected = bpr_loss((u * p).sum(1), (u * n).sum(1)) + 0.5 * squared_l2(u, p, n, denominator=256)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)


def test_learned_graph_gets_gradient_on_the_first_batch_of_an_epoch_only(planted):
    model, train_data = build(planted)
    batches = iter(train_data)
    model.train()
    model.calculate_loss(next(batches)).backward()
    assert model.projections["image"].weight.grad.abs().sum() > 0 and model.modal_weight.grad.abs().sum() > 0
    model.zero_grad()
    model.calculate_loss(next(batches)).backward()
    assert model.projections["image"].weight.grad is None or model.projections["image"].weight.grad.abs().sum() == 0
    model.zero_grad()
    model.train()  # a new epoch: rebuilt with gradient
    model.calculate_loss(next(batches)).backward()
    assert model.projections["image"].weight.grad.abs().sum() > 0


def test_gradients_reach_every_parameter(planted):
    model, train_data = build(planted)
    model.calculate_loss(next(iter(train_data))).backward()
    assert_gradients_reach(model.named_parameters())


def test_mf_backbone_and_unknown_backbone(planted):
    model, train_data = build(planted, cf_model="mf")
    users, items = model.forward()
    assert torch.equal(users, model.user_embedding.weight)
    h = F.normalize(model.item_propagation(), dim=1)
    assert torch.allclose(items, model.item_embedding.weight + h, atol=1e-6)
    with pytest.raises(RecBoleMMError, match="cf_model"):
        build(planted, cf_model="ngcf")


def test_deterministic_on_cpu(planted):
    root, config = planted
    config.update(epochs=2, knn_k=5)
    assert_trains_deterministically("LATTICE", config)


def test_lattice_beats_popularity_on_planted_clusters(planted):
    root, config = planted
    config.update(epochs=15, knn_k=5, learning_rate=0.01, stopping_step=15)
    pop = recbole_mm.run_recbole(model="Pop", dataset="planted", config_dict=config)
    lattice = recbole_mm.run_recbole(model="LATTICE", dataset="planted", config_dict=config)
    assert lattice["test_result"]["recall@10"] > pop["test_result"]["recall@10"] + 0.3, (lattice, pop)


def test_single_modality_trains(planted):
    root, config = planted
    config.update(epochs=1, knn_k=5, modalities={"image": "image_feat.npy"})
    result = recbole_mm.run_recbole(model="LATTICE", dataset="planted", config_dict=config, saved=False)
    assert 0.0 <= result["test_result"]["recall@10"] <= 1.0


def test_recbole_run_recbole_finds_lattice(planted):
    from recbole.quick_start import run_recbole

    root, config = planted
    config.update(knn_k=5)
    result = run_recbole(model="LATTICE", dataset="planted", config_dict=config)
    assert 0.0 <= result["test_result"]["recall@10"] <= 1.0


# ---- fidelity: MMRec's LATTICE on the same data, weights and batches --------------------------------
def test_matches_mmrec_lattice(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    record, model, names = fidelity.load("LATTICE", tmp_path)
    model.train()  # batch 0 rebuilds the learned graph with gradient, batch 1 uses it detached
    for b, ids in enumerate(record["batches"]):
        model.zero_grad()
        loss = model.calculate_loss(fidelity.batch(model, ids))
        loss.backward()
        assert loss.item() == pytest.approx(record[f"loss_{b}"].item(), abs=1e-6)
        ours = fidelity.our_grads(model, names)
        assert set(ours) == set(record[f"grads_{b}"])
        for name, grad in record[f"grads_{b}"].items():
            assert torch.allclose(ours[name], grad, atol=1e-6), (b, name)
    assert torch.allclose(fidelity.scores(model), record["scores"], atol=1e-5)


def test_recboles_trainer_rebuilds_once_per_epoch_and_per_evaluation(planted, monkeypatch):
    from recbole_mm.model.general_recommender.lattice import LATTICE

    builds = []
    original = LATTICE.learned_graph
    monkeypatch.setattr(LATTICE, "learned_graph", lambda self: (builds.append(self.training), original(self))[1])
    root, config = planted
    config.update(epochs=3, knn_k=5, train_batch_size=64)  # several batches per epoch
    recbole_mm.run_recbole(model="LATTICE", dataset="planted", config_dict=config, saved=False)
    assert builds.count(True) == 3  # the first batch of each epoch
    assert builds.count(False) >= 3  # every evaluation pass rebuilds from the current weights

"""MGCN: fuser and graph block by hand, gradients, determinism, learning, and fidelity to MMRec's MGCN
(tests/data/mgcn_reference.json, made by tests/data/mmrec_reference.py)."""

from __future__ import annotations

import pytest
import torch
from builders import (MGCN_NAMES, assert_gradients_reach, assert_loss_and_grads_match, assert_scores_match,
                      assert_trains_deterministically, build_from_fixture, build_planted, load_fixture,
                      load_reference_weights)
from torch import nn

import recbole_mm
from recbole_mm.model.graphs import augmented_adjacency, user_item_block
from recbole_mm.model.layers import attentive_fusion


# ---- building blocks on tiny inputs ---------------------------------------------------------------
class Constant(nn.Module):
    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, x):
        return self.fn(x)


def test_attentive_fusion_by_hand():
    a = torch.tensor([[1.0, 0.0]])
    b = torch.tensor([[0.0, 2.0]])
    # attention scores: sum of the row → 1 and 2; softmax → w = (1, e) / (1 + e)
    attention = Constant(lambda x: x.sum(dim=1, keepdim=True))
    gates = [Constant(lambda h: torch.full_like(h, 0.5)), Constant(lambda h: torch.ones_like(h))]
    fused, weights = attentive_fusion([a, b], attention, gates, behaviour=torch.zeros(1, 2))
    e = torch.e
    w = torch.tensor([1.0, e]) / (1 + e)
    common = w[0] * a + w[1] * b
    expected = (0.5 * (a - common) + 1.0 * (b - common) + common) / 3
    assert torch.allclose(weights, w.unsqueeze(0)) and torch.allclose(fused, expected)
    single, _ = attentive_fusion([a], attention, gates[:1], torch.zeros(1, 2))
    assert torch.allclose(single, a / 2)  # one modality: common = the view, no specific part


def test_user_item_block_by_hand():
    # users 0, 1; items 0, 1; R = [[1, 1], [0, 1]]: degrees u = (2, 1), i = (1, 2)
    adjacency = augmented_adjacency(torch.tensor([0, 0, 1]), torch.tensor([0, 1, 1]), 2, 2)
    block = user_item_block(adjacency, 2, 2).to_dense()
    expected = torch.tensor([[1 / 2 ** 0.5, 1 / 2], [0.0, 1 / 2 ** 0.5]])
    assert torch.allclose(block, expected)


# ---- the model -----------------------------------------------------------------------------------
def build(planted, **overrides):
    return build_planted("MGCN", planted, **{"knn_k": 5, **overrides})


def test_gradients_reach_every_parameter(planted):
    config, model, train_data = build(planted)
    model.calculate_loss(next(iter(train_data))).backward()
    assert_gradients_reach(model.named_parameters())


def test_final_is_id_view_plus_side_and_weights_sum_to_one(planted):
    config, model, _ = build(planted)
    out = model.forward()
    assert torch.allclose(out["o"], out["h_id"] + out["side"])
    assert torch.allclose(out["attention"].sum(dim=1), torch.ones(len(out["o"])), atol=1e-6)


def test_contrastive_weight_changes_the_loss(planted):
    losses = []
    for cl_loss in (0.0, 0.5):
        config, model, train_data = build(planted, cl_loss=cl_loss)
        losses.append(model.calculate_loss(next(iter(train_data))).item())
    assert losses[0] != pytest.approx(losses[1], abs=1e-6)


def test_deterministic_on_cpu(planted):
    root, config = planted
    config.update(epochs=2, knn_k=5)
    assert_trains_deterministically("MGCN", config)


@pytest.mark.slow
def test_mgcn_beats_popularity_on_planted_clusters(planted):
    root, config = planted
    config.update(epochs=15, knn_k=5, learning_rate=0.01, stopping_step=15)
    pop = recbole_mm.run_recbole(model="Pop", dataset="planted", config_dict=config)
    mgcn = recbole_mm.run_recbole(model="MGCN", dataset="planted", config_dict=config)
    recall, pop_recall = mgcn["test_result"]["recall@10"], pop["test_result"]["recall@10"]
    assert recall > pop_recall + 0.3, (recall, pop_recall)


def test_single_modality_trains(planted):
    root, config = planted
    config.update(epochs=1, knn_k=5, modalities={"image": "image_feat.npy"})
    result = recbole_mm.run_recbole(model="MGCN", dataset="planted", config_dict=config, saved=False)
    assert 0.0 <= result["test_result"]["recall@10"] <= 1.0


def test_recbole_run_recbole_finds_mgcn(planted):
    from recbole.quick_start import run_recbole

    root, config = planted
    config.update(knn_k=5)
    result = run_recbole(model="MGCN", dataset="planted", config_dict=config)
    assert 0.0 <= result["test_result"]["recall@10"] <= 1.0


# ---- fidelity to MMRec's MGCN ---------------------------------------------------------------------


def test_matches_mmrec_reference(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    fixture = load_fixture("mgcn")
    model, config, user_map, item_map = build_from_fixture("MGCN", fixture, tmp_path / "data")
    load_reference_weights(model, fixture, MGCN_NAMES, user_map, item_map)
    assert_loss_and_grads_match(model, fixture, MGCN_NAMES, user_map, item_map)
    assert_scores_match(model, fixture, user_map, item_map)

"""BM3: loss terms by hand, gradients, determinism, the no-negative path, learning, and fidelity to
MMRec's BM3 (tests/data/bm3_reference.json, made by tests/data/mmrec_reference.py)."""

from __future__ import annotations

import math

import pytest
import torch
from builders import (assert_gradients_reach, assert_scores_match, build_from_fixture, build_planted, load_fixture,
                      load_reference_weights, permuted_rows)

import recbole_mm
from recbole_mm.errors import RecBoleMMError
from recbole_mm.model.losses import cosine_alignment, frobenius_norms
from recbole_mm.model.general_recommender import bm3 as bm3_module
from recbole_mm.quick_start import make_config


# ---- loss terms on tiny inputs ------------------------------------------------------------------
def test_cosine_alignment_by_hand():
    online = torch.tensor([[1.0, 0.0], [1.0, 1.0]], requires_grad=True)
    target = torch.tensor([[2.0, 0.0], [-1.0, 0.0]], requires_grad=True)
    value = cosine_alignment(online, target)  # cosines 1 and -1/√2
    assert value.item() == pytest.approx(1 - (1 - 1 / math.sqrt(2)) / 2, abs=1e-6)
    value.backward()
    assert target.grad is None and online.grad is not None  # the target is a stop-gradient


def test_frobenius_norms_by_hand():
    value = frobenius_norms(torch.tensor([[3.0, 4.0]]), torch.tensor([[1.0], [0.0]]), denominator=2)
    assert value.item() == pytest.approx((5 + 1) / 2)  # norms, not squared


# ---- the model -----------------------------------------------------------------------------------
def build(planted, **overrides):
    return build_planted("BM3", planted, **overrides)


def test_trains_without_negatives(planted):
    config, model, train_data = build(planted)
    assert config["train_neg_sample_args"]["distribution"] == "none"
    batch = next(iter(train_data))
    assert model.NEG_ITEM_ID not in batch.columns and len(batch) == config["train_batch_size"]
    # The dataset config's sampling (e.g. TikTok's) does not reach BM3; a user's explicit one is refused.
    tiktok = make_config("BM3", "tiktok", config_dict={"state": "WARNING"})
    assert tiktok["train_neg_sample_args"]["distribution"] == "none"
    with pytest.raises(RecBoleMMError, match="train_neg_sample_args"):
        build(planted, train_neg_sample_args={"distribution": "uniform", "sample_num": 1})


def test_gradients_reach_every_parameter(planted):
    config, model, train_data = build(planted)
    model.calculate_loss(next(iter(train_data))).backward()
    assert_gradients_reach(model.named_parameters())


def test_deterministic_on_cpu_and_protocol_switches(planted):
    root, config = planted
    # negative_items: train has nothing to restrict without negatives; test_masking still applies.
    config.update(epochs=2, negative_items="train", test_masking="train")
    runs = [recbole_mm.run_recbole(model="BM3", dataset="planted", config_dict=config, saved=False) for _ in range(2)]
    assert [h["train_loss"] for h in runs[0]["history"]] == [h["train_loss"] for h in runs[1]["history"]]
    assert runs[0]["test_result"] == runs[1]["test_result"]


def test_bm3_beats_popularity_on_planted_clusters(planted):
    root, config = planted
    config.update(epochs=15, learning_rate=0.01, stopping_step=15)
    pop = recbole_mm.run_recbole(model="Pop", dataset="planted", config_dict=config)
    bm3 = recbole_mm.run_recbole(model="BM3", dataset="planted", config_dict=config)
    recall, pop_recall = bm3["test_result"]["recall@10"], pop["test_result"]["recall@10"]
    assert recall > pop_recall + 0.3, (recall, pop_recall)


def test_single_modality_trains(planted):
    root, config = planted
    config.update(epochs=1, modalities={"image": "image_feat.npy"})
    result = recbole_mm.run_recbole(model="BM3", dataset="planted", config_dict=config, saved=False)
    assert 0.0 <= result["test_result"]["recall@10"] <= 1.0


def test_recbole_run_recbole_finds_bm3(planted):
    from recbole.quick_start import run_recbole

    root, config = planted
    result = run_recbole(model="BM3", dataset="planted", config_dict=config)
    assert 0.0 <= result["test_result"]["recall@10"] <= 1.0


# ---- fidelity to MMRec's BM3 ----------------------------------------------------------------------
NAMES = {
    "user_embedding.weight": "user_embedding.weight", "item_id_embedding.weight": "item_embedding.weight",
    "predictor.weight": "predictor.weight", "predictor.bias": "predictor.bias",
    "image_embedding.weight": "raw_features.image.weight", "text_embedding.weight": "raw_features.text.weight",
    "image_trs.weight": "projections.image.weight", "image_trs.bias": "projections.image.bias",
    "text_trs.weight": "projections.text.weight", "text_trs.bias": "projections.text.bias",
}


def test_matches_mmrec_reference(tmp_path, monkeypatch):
    from recbole.data.interaction import Interaction

    monkeypatch.chdir(tmp_path)
    fixture = load_fixture("bm3")
    model, config, user_map, item_map = build_from_fixture("BM3", fixture, tmp_path / "data")
    load_reference_weights(model, fixture, NAMES, user_map, item_map)

    # Replay the reference's dropout masks (drawn for users, items, text, image, in that order).
    masks = [torch.tensor(m) for m in fixture["dropout_masks"]]
    tables = [user_map, item_map, item_map, item_map]
    calls = []

    def replay(shape, p, device="cpu"):
        j = len(calls)
        calls.append(j)
        return permuted_rows(masks[j], tables[j], torch.ones(shape)) != 0

    monkeypatch.setattr(bm3_module, "dropout_mask", replay)
    batch = fixture["batch"]
    interaction = Interaction({"userID": user_map[batch["users"]], "itemID": item_map[batch["pos"]]})
    model.train()
    loss = model.calculate_loss(interaction)
    assert len(calls) == 4
    assert loss.item() == pytest.approx(fixture["loss"], rel=1e-5)

    assert_scores_match(model, fixture, user_map, item_map)

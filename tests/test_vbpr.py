"""VBPR against MMRec's port (tests/data/mmrec_fidelity/vbpr.pt, made by scripts/make_mmrec_fidelity_fixture.py):
same data, weights and batches give the same losses, gradients and full-ranking scores; and the same initial
distributions (xavier-uniform ID tables, xavier-normal projection)."""

from __future__ import annotations

import math

import pytest
import torch

import fidelity

# MMRec's VBPR concatenates text before image and projects the raw features (docs/vbpr.md): our modality order
# and feature_norm set to match, so that the reference's projection weight is ours column for column.
MMREC_LAYOUT = {"modalities": {"text": "text_feat.npy", "image": "image_feat.npy"}, "feature_norm": "none"}
NAMES = {"u_embedding": "user_embedding.weight", "i_embedding": "item_embedding.weight",
         "item_linear.weight": "feature_projection.weight", "item_linear.bias": "feature_projection.bias"}


def test_matches_mmrec_vbpr(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    record, model, names = fidelity.load("VBPR", tmp_path, NAMES, **MMREC_LAYOUT)
    projection = ("feature_projection.weight", "feature_projection.bias")
    fidelity.replay(model, record, lambda: fidelity.our_grads(model, names, unpadded=projection))
    assert torch.allclose(fidelity.scores(model), record["scores"], atol=1e-5)


def test_initial_distributions_are_mmrecs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _, model = fidelity.build("VBPR", tmp_path, embedding_size=64)
    for table in (model.user_embedding.weight, model.item_embedding.weight):
        bound = math.sqrt(6 / sum(table.shape))
        # Uniform on [-b, b]: nothing beyond b and a std of b/sqrt(3); xavier-normal has the same std but
        # puts about 8% of its draws beyond b (P(|z| > sqrt(3))).
        assert table.abs().max() <= bound
        assert table.std().item() == pytest.approx(bound / math.sqrt(3), rel=0.1)
    weight = model.feature_projection.weight
    std = math.sqrt(2 / sum(weight.shape))
    assert (weight.abs() > math.sqrt(3) * std).float().mean().item() > 0.02  # normal tails, not uniform
    assert torch.all(model.feature_projection.bias == 0)

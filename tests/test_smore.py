"""SMORE: spectral filters, the max-pooled fusion graph and the loss by hand, gradients, determinism,
learning, and fidelity to MMRec's SMORE (tests/data/smore_reference.json, made by
scripts/make_smore_fidelity_fixture.py)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from builders import (assert_gradients_reach, assert_loss_and_grads_match, assert_scores_match,
                      assert_trains_deterministically, build_from_fixture, build_planted, load_fixture,
                      load_reference_weights)

import recbole_mm
from recbole_mm.errors import RecBoleMMError
from recbole_mm.model.general_recommender.smore import filtered_signal, spectra
from recbole_mm.model.graphs import max_pool_graphs

# MMRec SMORE parameter name → ours, for the modalities named image and text (the fixture's).
SMORE_NAMES = {
    "user_embedding.weight": "user_embedding.weight", "item_id_embedding.weight": "item_embedding.weight",
    "image_embedding.weight": "raw_features.image.weight", "text_embedding.weight": "raw_features.text.weight",
    "image_trs.weight": "projections.image.weight", "image_trs.bias": "projections.image.bias",
    "text_trs.weight": "projections.text.weight", "text_trs.bias": "projections.text.bias",
    "query_v.0.weight": "queries.image.0.weight", "query_v.0.bias": "queries.image.0.bias",
    "query_v.2.weight": "queries.image.2.weight",
    "query_t.0.weight": "queries.text.0.weight", "query_t.0.bias": "queries.text.0.bias",
    "query_t.2.weight": "queries.text.2.weight",
    "gate_v.0.weight": "denoise_gates.image.0.weight", "gate_v.0.bias": "denoise_gates.image.0.bias",
    "gate_t.0.weight": "denoise_gates.text.0.weight", "gate_t.0.bias": "denoise_gates.text.0.bias",
    "gate_f.0.weight": "fusion_gate.0.weight", "gate_f.0.bias": "fusion_gate.0.bias",
    "gate_image_prefer.0.weight": "preference_gates.image.0.weight",
    "gate_image_prefer.0.bias": "preference_gates.image.0.bias",
    "gate_text_prefer.0.weight": "preference_gates.text.0.weight",
    "gate_text_prefer.0.bias": "preference_gates.text.0.bias",
    "gate_fusion_prefer.0.weight": "fusion_preference_gate.0.weight",
    "gate_fusion_prefer.0.bias": "fusion_preference_gate.0.bias",
    "image_complex_weight": "filters.image", "text_complex_weight": "filters.text",
    "fusion_complex_weight": "fusion_filter",
}


# ---- building blocks on tiny inputs ---------------------------------------------------------------
def dft_filter(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """The filter written out with the DFT's definition: X_k = Σ_n x_n e^{-2πikn/d} / √d over the d
    frequencies, the full spectrum's upper half the conjugate of the weighted lower half, back with
    x_n = Σ_k Y_k e^{2πikn/d} / √d (real part)."""
    d = x.shape[1]
    n = torch.arange(d, dtype=torch.float64)
    basis = torch.exp(-2j * math.pi * n[:, None] * n[None, :] / d) / math.sqrt(d)
    spectrum = x.double().to(torch.complex128) @ basis.T
    w = torch.complex(weight[0, :, 0].double(), weight[0, :, 1].double())
    full = torch.ones(d, dtype=torch.complex128)
    full[: d // 2 + 1] = w
    for k in range(d // 2 + 1, d):
        full[k] = w[d - k].conj()
    return (spectrum * full @ basis.conj()).real.float()


@pytest.mark.parametrize("d", [4, 5])
def test_spectral_filter_against_the_dft_definition(d):
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(3, d, generator=generator)
    weight = torch.randn(1, d // 2 + 1, 2, generator=generator)
    if d % 2 == 0:
        weight[0, d // 2, 1] = 0.0  # the Nyquist bin of a real signal is real: irfft ignores its imaginary part
    weight[0, 0, 1] = 0.0  # likewise the zero-frequency bin
    (spectrum,) = spectra([x])
    assert torch.allclose(filtered_signal(spectrum, weight, d), dft_filter(x, weight), atol=1e-5)
    # a filter of ones is the identity (orthonormal scaling both ways)
    ones = torch.stack([torch.ones(d // 2 + 1), torch.zeros(d // 2 + 1)], dim=1)[None]
    assert torch.allclose(filtered_signal(spectrum, ones, d), x, atol=1e-6)


def test_product_of_spectra_is_a_circular_convolution():
    # irfft(rfft(a) · rfft(b)) with orthonormal scaling = (a ⊛ b) / √d: the fusion view convolves the modalities
    d = 6
    a, b = torch.randn(2, d, generator=torch.Generator().manual_seed(1)).split(1)
    za, zb = spectra([a, b])
    ones = torch.stack([torch.ones(d // 2 + 1), torch.zeros(d // 2 + 1)], dim=1)[None]
    circular = torch.stack([sum(a[0, j] * b[0, (n - j) % d] for j in range(d)) for n in range(d)]) / math.sqrt(d)
    assert torch.allclose(filtered_signal(za * zb, ones, d)[0], circular, atol=1e-5)


def test_max_pool_graphs_by_hand():
    a = torch.tensor([[0.0, 0.5, 0.0], [0.2, 0.0, 0.0], [0.0, 0.0, 0.0]])
    b = torch.tensor([[0.0, 0.3, 0.4], [0.6, 0.0, 0.0], [0.0, 0.0, 0.0]])
    pooled = max_pool_graphs([a.to_sparse(), b.to_sparse()])
    expected = torch.tensor([[0.0, 0.5, 0.4], [0.6, 0.0, 0.0], [0.0, 0.0, 0.0]])
    assert torch.equal(pooled.to_dense(), expected) and pooled._nnz() == 3
    # an edge one graph lacks is not a zero there: a negative weight survives when the other graph has no edge
    c = torch.tensor([[0.0, -1.0], [0.0, 0.0]]).to_sparse()
    assert torch.equal(max_pool_graphs([c, torch.zeros(2, 2).to_sparse()]).to_dense(), c.to_dense())
    assert torch.equal(max_pool_graphs([a.to_sparse()]).to_dense(), a)


# ---- the model -----------------------------------------------------------------------------------
def build(planted, **overrides):
    return build_planted("SMORE", planted, **{"knn_k": 5, **overrides})


def test_loss_by_hand(planted):
    """BPR + L2 + cl_loss · (InfoNCE items + InfoNCE users), with the views from forward() (all nodes)."""
    config, model, train_data = build(planted, reg_weight=0.01, cl_loss=0.3, cl_temp=0.5)
    interaction = next(iter(train_data))
    model.train()
    out = model.forward()
    u = interaction[model.USER_ID]
    p, n = interaction[model.ITEM_ID] + model.n_users, interaction[model.NEG_ITEM_ID] + model.n_users
    o, side, h = out["o"], out["side"], out["h_id"]
    bpr = -F.logsigmoid((o[u] * o[p]).sum(1) - (o[u] * o[n]).sum(1)).mean()
    l2 = 0.5 * (o[u].pow(2).sum() + o[p].pow(2).sum() + o[n].pow(2).sum()) / config["train_batch_size"]

    def nce(a, b, t):
        a, b = F.normalize(a, dim=1), F.normalize(b, dim=1)
        logits = a @ b.T / t
        return (-(logits.diag() - logits.exp().sum(1).log())).mean()

    expected = bpr + 0.01 * l2 + 0.3 * (nce(side[p], h[p], 0.5) + nce(side[u], h[u], 0.5))
    assert model.calculate_loss(interaction).item() == pytest.approx(expected.item(), rel=1e-5)


def test_side_is_the_mean_of_the_gated_views(planted):
    config, model, _ = build(planted)
    model.eval()
    out = model.forward()
    assert torch.allclose(out["o"], out["h_id"] + out["side"])
    # with every preference gate and query weight zero: σ(0) = 1/2, softmax over d of zeros = 1/d
    with torch.no_grad():
        for module in [*model.preference_gates.values(), model.fusion_preference_gate, *model.queries.values()]:
            for parameter in module.parameters():
                parameter.zero_()
    d = config["embedding_size"]
    items = model.item_embedding.weight
    z = spectra([model.projections[m](model.raw_features[m].weight) for m in model.modalities])
    views = [model.item_item_view(f"item_graph_{m}",
                                  items * model.denoise_gates[m](filtered_signal(s, model.filters[m], d)))
             for m, s in zip(model.modalities, z)]
    fusion = model.item_item_view("fusion_item_graph",
                                  items * model.fusion_gate(filtered_signal(z[0] * z[1], model.fusion_filter, d)))
    expected = (sum(v / d * 0.5 for v in views) + fusion * 0.5) / 3
    assert torch.allclose(model.forward()["side"], expected, atol=1e-7)


def test_fusion_graph_is_the_max_of_the_modality_graphs(planted):
    config, model, _ = build(planted, modality_knn_k={"image": 3})
    image, text = model.item_graph_image.to_dense(), model.item_graph_text.to_dense()
    assert model.item_graph_image._nnz() == 3 * (model.n_items - 1)  # its own k
    assert model.item_graph_text._nnz() == 5 * (model.n_items - 1)
    either = (image != 0) | (text != 0)
    expected = torch.where(either, torch.maximum(torch.where(image != 0, image, -torch.inf),
                                                 torch.where(text != 0, text, -torch.inf)), torch.zeros_like(image))
    assert torch.equal(model.fusion_item_graph.to_dense(), expected)


def test_unknown_modality_in_modality_knn_k_is_one_clear_error(planted):
    with pytest.raises(RecBoleMMError, match="modality_knn_k names audio"):
        build(planted, modality_knn_k={"audio": 3})


def test_gradients_reach_every_parameter(planted):
    config, model, train_data = build(planted, dropout_rate=0.1)
    model.calculate_loss(next(iter(train_data))).backward()
    assert_gradients_reach(model.named_parameters())


def test_training_step_on_batch_rows_equals_the_full_forward(planted):
    """calculate_loss computes the preference module on the batch's rows only; same loss as on all rows."""
    config, model, train_data = build(planted)
    interaction = next(iter(train_data))
    model.train()
    full = model.forward()
    nodes = torch.tensor([model.n_users + 2, 3, 1, model.n_users + model.n_items - 1])
    part = model.forward(nodes)
    for key in ("o", "side", "h_id"):
        assert torch.allclose(full[key][nodes], part[key], atol=1e-7), key
    assert torch.isfinite(model.calculate_loss(interaction))


def test_deterministic_on_cpu(planted):
    root, config = planted
    config.update(epochs=2, knn_k=5, dropout_rate=0.1)
    assert_trains_deterministically("SMORE", config)


@pytest.mark.slow
def test_smore_beats_popularity_on_planted_clusters(planted):
    root, config = planted
    config.update(epochs=15, knn_k=5, learning_rate=0.01, stopping_step=15)
    pop = recbole_mm.run_recbole(model="Pop", dataset="planted", config_dict=config)
    smore = recbole_mm.run_recbole(model="SMORE", dataset="planted", config_dict=config)
    recall, pop_recall = smore["test_result"]["recall@10"], pop["test_result"]["recall@10"]
    assert recall > pop_recall + 0.3, (recall, pop_recall)


def test_single_modality_trains(planted):
    root, config = planted
    config.update(epochs=1, knn_k=5, modalities={"image": "image_feat.npy"})
    result = recbole_mm.run_recbole(model="SMORE", dataset="planted", config_dict=config, saved=False)
    assert 0.0 <= result["test_result"]["recall@10"] <= 1.0


def test_recbole_run_recbole_finds_smore(planted):
    from recbole.quick_start import run_recbole

    root, config = planted
    config.update(knn_k=5)
    result = run_recbole(model="SMORE", dataset="planted", config_dict=config)
    assert 0.0 <= result["test_result"]["recall@10"] <= 1.0


# ---- fidelity to MMRec's SMORE --------------------------------------------------------------------
def test_matches_mmrec_reference(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    fixture = load_fixture("smore")
    model, config, user_map, item_map = build_from_fixture("SMORE", fixture, tmp_path / "data")
    load_reference_weights(model, fixture, SMORE_NAMES, user_map, item_map)
    assert_loss_and_grads_match(model, fixture, SMORE_NAMES, user_map, item_map)
    assert_scores_match(model, fixture, user_map, item_map)

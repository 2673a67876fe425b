"""LGMRec: the contrast term by hand, the forward pass against a dense rewrite, the loss, gradients,
determinism, learning, one modality, RecBole's own entry point, and equality with MMRec's LGMRec on the fixture
of tests/data/mmrec_fidelity."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import fidelity
from builders import assert_gradients_reach, build_planted
import recbole_mm
from recbole_mm.errors import RecBoleMMError
from recbole_mm.model.losses import bpr_loss, candidate_nce


# ---- the contrast term ---------------------------------------------------------------------------
def test_candidate_nce_by_hand():
    anchors = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    candidates = torch.tensor([[1.0, 1.0], [0.0, 3.0], [-1.0, 0.0]])
    positives = candidates[[0, 1]]
    tau = 0.5
    expected = 0.0
    for a, p in zip(anchors, positives):
        cos = [float(a @ c / (a.norm() * c.norm())) for c in candidates]
        pos = float(a @ p / (a.norm() * p.norm()))
        expected += -math.log(math.exp(pos / tau) / sum(math.exp(c / tau) for c in cos))
    assert candidate_nce(anchors, positives, candidates, tau).item() == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("tau", [0.2, 0.01])  # 0.01: logits past 40, the max-shifted path
def test_candidate_nce_with_counts_equals_the_expanded_rows(tau):
    torch.manual_seed(0)
    ids = torch.randint(0, 40, (200,))
    anchors, candidates = torch.randn(40, 6, requires_grad=True), torch.randn(40, 6, requires_grad=True)
    expanded = candidate_nce(anchors[ids], candidates[ids], candidates, tau)
    grads = torch.autograd.grad(expanded, (anchors, candidates))
    distinct, counts = torch.unique(ids, return_counts=True)
    assert len(distinct) < len(ids)
    once = candidate_nce(anchors[distinct], candidates[distinct], candidates, tau, counts=counts)
    assert once.item() == pytest.approx(expanded.item(), rel=1e-6)
    for got, want in zip(torch.autograd.grad(once, (anchors, candidates)), grads):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5 * want.abs().max().item())


# ---- the model on the planted set ----------------------------------------------------------------
def build(planted, **overrides):
    _, model, train_data = build_planted("LGMRec", planted, **{"feat_embed_dim": 16, "hyper_num": 3, **overrides})
    return model, train_data


def dense_embeddings(model, gumbel: dict, masks: dict):
    """The final representations written out with dense matrices, given the Gumbel-softmax memberships
    and dropout masks (already scaled) the model drew."""
    adj = model.norm_adj.to_dense()
    r = model.user_items.to_dense()
    ego = torch.cat([model.user_embedding.weight, model.item_embedding.weight])
    layers = [ego]
    for _ in range(model.n_ui_layers):
        layers.append(adj @ layers[-1])
    cge = torch.stack(layers).mean(dim=0)
    out = cge.clone()
    ghe = torch.zeros_like(ego)
    for m in model.modalities:
        items = model.item_features(m) @ model.feature_maps[m]
        users = (r @ items) / r.sum(dim=1, keepdim=True).clamp_min(1)
        x = torch.cat([users, items])
        for _ in range(model.n_mm_layers):
            x = adj @ x
        out = out + F.normalize(x)
        item_h, user_h = gumbel[m][0] * masks[m][0], gumbel[m][1] * masks[m][1]
        z = cge[model.n_users + 1:]
        for _ in range(model.n_hyper_layers):
            latent = item_h.T @ z
            z = item_h @ latent
        ghe[1: model.n_users] += user_h @ latent
        ghe[model.n_users + 1:] += z
    out = out + model.alpha * F.normalize(ghe)
    return out[: model.n_users], out[model.n_users:]


def test_forward_matches_a_dense_rewrite(planted, monkeypatch):
    model, _ = build(planted, keep_rate=0.6, n_hyper_layer=2)
    drawn_gumbel, drawn_masks = {}, {}
    real_gumbel, real_dropout = F.gumbel_softmax, F.dropout
    order = iter([(m, side) for m in model.modalities for side in (0, 1)])
    order_masks = iter([(m, side) for m in model.modalities for side in (0, 1)])

    def gumbel(logits, **kwargs):
        out = real_gumbel(logits, **kwargs)
        m, side = next(order)
        drawn_gumbel.setdefault(m, [None, None])[side] = out.detach()
        return out

    def dropout(x, p, training):
        out = real_dropout(x, p, training)
        m, side = next(order_masks)
        drawn_masks.setdefault(m, [None, None])[side] = torch.where(x != 0, out / x, torch.zeros_like(x)).detach()
        return out

    monkeypatch.setattr(F, "gumbel_softmax", gumbel)
    monkeypatch.setattr(F, "dropout", dropout)
    model.train()
    users, items = model.forward()
    for m in model.modalities:  # the memberships are rows of a softmax; the masks are 0 or 1/keep_rate
        assert torch.allclose(drawn_gumbel[m][0].sum(dim=1), torch.ones(model.n_items - 1), atol=1e-5)
        mask = drawn_masks[m][0]
        assert torch.all((mask == 0) | torch.isclose(mask, torch.tensor(1 / 0.6))), mask.unique()
    expected_users, expected_items = dense_embeddings(model, drawn_gumbel, drawn_masks)
    assert torch.allclose(users, expected_users, atol=1e-5) and torch.allclose(items, expected_items, atol=1e-5)


def test_loss_is_bpr_plus_contrast_plus_norm_regulariser(planted, monkeypatch):
    model, train_data = build(planted, cl_weight=0.3, reg_weight=0.05)
    batch = next(iter(train_data))
    model.train()
    torch.manual_seed(5)
    loss = model.calculate_loss(batch)
    torch.manual_seed(5)
    users_v, items_v, hyper = model.embeddings()
    u_ids, pos, neg = batch["userID"], batch["itemID"], batch["neg_itemID"]
    u, p, n = users_v[u_ids], items_v[pos], items_v[neg]
    (ua, ia), (ub, ib) = hyper["image"], hyper["text"]
    contrast = (candidate_nce(ua[u_ids - 1], ub[u_ids - 1], ub, 0.2)
                + candidate_nce(ia[pos - 1], ib[pos - 1], ib, 0.2))
    reg = (u.norm() + p.norm() + n.norm()) / len(u_ids)
    expected = bpr_loss((u * p).sum(1), (u * n).sum(1)) + 0.3 * contrast + 0.05 * reg
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)


def test_evaluation_draws_no_dropout_and_is_computed_once_per_pass(planted):
    model, _ = build(planted, keep_rate=0.5)
    model.eval()
    first = model.user_item_vectors()
    assert model.user_item_vectors() is first  # cached for the pass: one Gumbel draw per evaluation
    model.train()
    model.eval()
    assert not torch.equal(model.user_item_vectors()[0], first[0])  # a new pass draws new Gumbel noise


def test_gradients_reach_every_parameter(planted):
    model, train_data = build(planted, cl_weight=0.1)
    model.train()
    model.calculate_loss(next(iter(train_data))).backward()
    assert_gradients_reach(model.named_parameters())


def test_feat_embed_dim_must_equal_embedding_size(planted):
    with pytest.raises(RecBoleMMError, match="feat_embed_dim"):
        build(planted, feat_embed_dim=8)


def test_deterministic_on_cpu(planted):
    root, config = planted
    config.update(epochs=2, feat_embed_dim=16)
    runs = [recbole_mm.run_recbole(model="LGMRec", dataset="planted", config_dict=config, saved=False) for _ in range(2)]
    assert [h["train_loss"] for h in runs[0]["history"]] == [h["train_loss"] for h in runs[1]["history"]]
    assert runs[0]["test_result"] == runs[1]["test_result"]


@pytest.mark.slow
def test_lgmrec_beats_popularity_on_planted_clusters(planted):
    root, config = planted
    config.update(epochs=15, feat_embed_dim=16, learning_rate=0.01, stopping_step=15)
    pop = recbole_mm.run_recbole(model="Pop", dataset="planted", config_dict=config)
    lgmrec = recbole_mm.run_recbole(model="LGMRec", dataset="planted", config_dict=config)
    assert lgmrec["test_result"]["recall@10"] > pop["test_result"]["recall@10"] + 0.3, (lgmrec, pop)


def test_single_modality_trains(planted):
    root, config = planted
    config.update(epochs=1, feat_embed_dim=16, modalities={"text": "text_feat.npy"})
    result = recbole_mm.run_recbole(model="LGMRec", dataset="planted", config_dict=config, saved=False)
    assert 0.0 <= result["test_result"]["recall@10"] <= 1.0


def test_recbole_run_recbole_finds_lgmrec(planted):
    from recbole.quick_start import run_recbole

    root, config = planted
    config.update(feat_embed_dim=16)
    result = run_recbole(model="LGMRec", dataset="planted", config_dict=config)
    assert 0.0 <= result["test_result"]["recall@10"] <= 1.0


# ---- fidelity: MMRec's LGMRec on the same data, weights, batches and random draws --------------------
NAMES = {"user_embedding.weight": "user_embedding.weight", "item_id_embedding.weight": "item_embedding.weight",
         "item_image_trs": "feature_maps.image", "v_hyper": "hyperedges.image",
         "item_text_trs": "feature_maps.text", "t_hyper": "hyperedges.text"}
UNPADDED = ("feature_maps.image", "hyperedges.image", "feature_maps.text", "hyperedges.text")


def test_matches_mmrec_lgmrec(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    record, model, names = fidelity.load("LGMRec", tmp_path, NAMES)
    # Our Gumbel noise and dropout masks span the real users and items only, in the reference's order and
    # shapes, so the same seed gives the same draws.
    torch.manual_seed(record["seeds"]["train"])
    model.train()
    for b, ids in enumerate(record["batches"]):
        model.zero_grad()
        loss = model.calculate_loss(fidelity.batch(model, ids))
        loss.backward()
        assert loss.item() == pytest.approx(record[f"loss_{b}"].item(), rel=1e-5)
        ours = fidelity.our_grads(model, names, unpadded=UNPADDED)
        for name, grad in record[f"grads_{b}"].items():
            if name in names:
                assert torch.allclose(ours[name], grad, atol=1e-5), (b, name)
            else:  # the reference's frozen feature tables
                assert torch.all(grad == 0), name
    model.eval()
    torch.manual_seed(record["seeds"]["scores"])  # scoring draws Gumbel noise too, in the reference as here
    assert torch.allclose(fidelity.scores(model), record["scores"], atol=1e-4)

"""DA-MRS: its graphs and loss terms by hand, gradients, determinism, learning, and fidelity to MMRec's DAMRS
(tests/data/damrs_reference.json, made by scripts/make_damrs_fidelity_fixture.py)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from builders import (assert_gradients_reach, assert_loss_and_grads_match, assert_scores_match,
                      assert_trains_deterministically, build_from_fixture, build_planted, load_fixture,
                      load_reference_weights)

import recbole_mm
from recbole_mm.errors import RecBoleMMError
from recbole_mm.model.general_recommender.damrs import _feedback_weights
from recbole_mm.model.losses import neighbour_discrimination

DAMRS_NAMES = {"user_embedding.weight": "user_embedding.weight", "item_id_embedding.weight": "item_embedding.weight"}


# ---- building blocks on tiny inputs ---------------------------------------------------------------
def test_feedback_weights_by_hand():
    users = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    pos = [torch.tensor([[1.0, 0.0], [1.0, 0.0]]), torch.tensor([[-1.0, 0.0], [0.0, 5.0]])]
    neg = [torch.tensor([[0.0, 1.0], [0.0, 1.0]]), torch.tensor([[1.0, 1.0], [1.0, 0.0]])]
    s = torch.sigmoid
    p = torch.tensor([[s(torch.tensor(1.0)), s(torch.tensor(0.0))], [s(torch.tensor(-1.0)), s(torch.tensor(2.0))]])
    n_mean = torch.stack([s(torch.tensor(0.0)), s(torch.tensor(2.0)), s(torch.tensor(2 ** -0.5)),
                          s(torch.tensor(0.0))]).mean()
    mean = p.mean(dim=0)
    var = ((p - mean) ** 2).sum(dim=0) / 1  # unbiased over 2 views
    pos_w, neg_w = _feedback_weights(users, pos, neg)
    assert torch.allclose(pos_w, mean * torch.exp(-2 * var), atol=1e-6)
    expected_neg = torch.where(mean < n_mean, (p.max(dim=0).values - n_mean).clamp(0, 1), torch.zeros(2))
    assert torch.allclose(neg_w, expected_neg, atol=1e-6)
    assert neg_w[0] > 0 and neg_w[1] == 0  # the first pair scores below the negatives' mean: trained backwards


# ---- the model -----------------------------------------------------------------------------------
def build(planted, **overrides):
    return build_planted("DAMRS", planted, **{"knn_k": 5, **overrides})


def test_loss_by_hand(planted):
    """Weighted BPR + neighbor_weight · discrimination + kl_weight · symmetric KL, from forward()'s views."""
    config, model, train_data = build(planted, kl_weight=0.7, neighbor_weight=0.2)
    interaction = next(iter(train_data))
    model.train()
    users_e, items_e, views = model.forward()
    assert len(views) == 3  # image, text, behaviour
    u, p, n = (interaction[model.USER_ID], interaction[model.ITEM_ID], interaction[model.NEG_ITEM_ID])
    content = (views[0] + views[1] + views[2]) / 3
    final = items_e + content
    pw, nw = _feedback_weights(users_e[u], [v[p] for v in views], [v[n] for v in views])
    margin = (users_e[u] * final[p]).sum(1) - (users_e[u] * final[n]).sum(1)
    bpr = -(torch.log(torch.sigmoid(margin)) * pw + torch.log(torch.sigmoid(-margin)) * nw).mean()
    bi, bu = torch.unique(torch.cat([p, n])), torch.unique(u)
    pg = torch.sigmoid(users_e[bu] @ F.normalize(items_e[bi], dim=1).T)
    pt = torch.sigmoid(users_e[bu] @ F.normalize(content[bi], dim=1).T)

    def kl(x, y):
        return x * torch.log(x) - x * torch.log(y) + (1 - x) * torch.log(1 - x) - (1 - x) * torch.log(1 - y)

    expected = (bpr + 0.2 * neighbour_discrimination(views, bi, 10, 0.2)
                + 0.7 * torch.mean(kl(pg, pt) + kl(pt, pg)))
    assert model.calculate_loss(interaction).item() == pytest.approx(expected.item(), rel=1e-5)


def test_scores_are_lightgcn_plus_mean_view(planted):
    config, model, _ = build(planted)
    model.eval()
    users, items = model.user_item_vectors()
    u, i, views = model.forward()
    assert torch.allclose(items, i + sum(views) / 3) and torch.equal(users, u)
    # the views are the item ID embeddings propagated n_mm_layers times over their graphs
    assert torch.allclose(views[-1], model.behaviour_graph @ model.item_embedding.weight, atol=1e-6)


def test_too_few_items_for_the_pseudo_positives_is_one_clear_error(planted):
    with pytest.raises(RecBoleMMError, match="n_pseudo_positives: 40 needs at least 80 items"):
        build(planted, n_pseudo_positives=40)


def test_gradients_reach_every_parameter(planted):
    config, model, train_data = build(planted)
    model.calculate_loss(next(iter(train_data))).backward()
    assert_gradients_reach(model.named_parameters())


def test_deterministic_on_cpu(planted):
    root, config = planted
    config.update(epochs=2, knn_k=5)
    assert_trains_deterministically("DAMRS", config)


@pytest.mark.slow
def test_damrs_beats_popularity_on_planted_clusters(planted):
    root, config = planted
    config.update(epochs=15, knn_k=5, learning_rate=0.01, stopping_step=15)
    pop = recbole_mm.run_recbole(model="Pop", dataset="planted", config_dict=config)
    damrs = recbole_mm.run_recbole(model="DA-MRS", dataset="planted", config_dict=config)
    recall, pop_recall = damrs["test_result"]["recall@10"], pop["test_result"]["recall@10"]
    assert recall > pop_recall + 0.3, (recall, pop_recall)


def test_single_modality_trains(planted):
    root, config = planted
    config.update(epochs=1, knn_k=5, modalities={"image": "image_feat.npy"})
    result = recbole_mm.run_recbole(model="DAMRS", dataset="planted", config_dict=config, saved=False)
    assert 0.0 <= result["test_result"]["recall@10"] <= 1.0


def test_recbole_run_recbole_finds_damrs(planted):
    from recbole.quick_start import run_recbole

    root, config = planted
    config.update(knn_k=5)
    result = run_recbole(model="DAMRS", dataset="planted", config_dict=config)
    assert 0.0 <= result["test_result"]["recall@10"] <= 1.0


# ---- fidelity to MMRec's DAMRS --------------------------------------------------------------------
def test_matches_mmrec_reference(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    fixture = load_fixture("damrs")
    model, config, user_map, item_map = build_from_fixture("DAMRS", fixture, tmp_path / "data")
    for name, graph in [("item_graph_image", "image"), ("item_graph_text", "text"), ("behaviour_graph", "behaviour")]:
        ours = getattr(model, name).to_dense()[item_map][:, item_map]
        assert torch.allclose(ours, torch.tensor(fixture["graphs"][graph], dtype=torch.float32), atol=1e-6), name
    load_reference_weights(model, fixture, DAMRS_NAMES, user_map, item_map)
    # grad_atol 2e-6: float32 rounding of sums of exp(cos / 0.2); the reference's own gradients are 7e-7 from a
    # float64 evaluation of our model on the same weights (the largest entry is 0.03).
    assert_loss_and_grads_match(model, fixture, DAMRS_NAMES, user_map, item_map, grad_atol=2e-6)
    assert_scores_match(model, fixture, user_map, item_map)

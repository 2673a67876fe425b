"""GRCN: the forward pass against a dense re-computation, loss terms by hand, gradients, determinism, learning,
RecBole's own entry point, and equality with MMRec's GRCN on the fixture of tests/data/mmrec_fidelity."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from recbole.data.interaction import Interaction

import fidelity
from builders import assert_trains_deterministically, build_planted
import recbole_mm
from recbole_mm.model.losses import bpr_loss


def build(planted, **overrides):
    _, model, train_data = build_planted("GRCN", planted, **{"latent_embedding": 8, **overrides})
    return model, train_data


def masked_softmax(logits: torch.Tensor, mask: torch.Tensor, dim: int) -> torch.Tensor:
    return torch.softmax(logits.masked_fill(~mask, float("-inf")), dim=dim).nan_to_num(0.0)


def dense_forward(model, dataset) -> tuple[torch.Tensor, torch.Tensor]:
    """GRCN's representations from dense [users × items] matrices, written from the equations of
    docs/grcn.md without the model's sparse helpers."""
    n_users = model.n_users
    inter = dataset.inter_matrix(form="coo")
    mask = torch.zeros(n_users, model.n_items, dtype=torch.bool)
    mask[torch.from_numpy(inter.row).long(), torch.from_numpy(inter.col).long()] = True
    user_parts, item_parts, to_items, to_users = [], [], [], []
    for j, m in enumerate(model.modalities):
        content = F.normalize(F.leaky_relu(model.projections[m](model.item_features(m))))
        pref = F.normalize(model.preferences[m])
        if model.routing == "paper":
            for _ in range(model.n_routing):
                pref = F.normalize(pref + masked_softmax(pref @ content.T, mask, 1) @ content)
        logits = pref @ content.T
        over_users = masked_softmax(logits, mask, 0)  # into item i, normalised over its users
        over_items = masked_softmax(logits, mask, 1)  # into user u, normalised over its items
        user_parts.append(pref + over_items @ content)
        item_parts.append(content + over_users.T @ pref)
        to_items.append(over_users * model.confidence[:n_users, j:j + 1])  # source: the user
        to_users.append(over_items * model.confidence[n_users:, j].unsqueeze(0))  # source: the item
    w_to_items = torch.relu(torch.stack(to_items).amax(dim=0)) * mask
    w_to_users = torch.relu(torch.stack(to_users).amax(dim=0)) * mask
    e = F.normalize(model.node_embedding)
    e_u, e_i = e[:n_users], e[n_users:]
    h1_u, h1_i = w_to_users @ e_i, w_to_items.T @ e_u
    h2_u, h2_i = w_to_users @ h1_i, w_to_items.T @ h1_u
    users = torch.cat([e_u + h1_u + h2_u, *user_parts], dim=1)
    items = torch.cat([e_i + h1_i + h2_i, *item_parts], dim=1)
    return users, items


@pytest.mark.parametrize("routing", ["reference", "paper"])
def test_forward_matches_dense_equations(planted, routing):
    model, train_data = build(planted, routing=routing, n_layers=2)
    users, items = model.forward()
    expected_users, expected_items = dense_forward(model, train_data._dataset)
    assert users.shape == (model.n_users, 16 + 2 * 8)
    assert torch.allclose(users, expected_users, atol=1e-5)
    assert torch.allclose(items, expected_items, atol=1e-5)


def test_routing_changes_preferences_only_in_paper_mode(planted):
    reference, _ = build(planted, routing="reference")
    paper, _ = build(planted, routing="paper")
    ref_users, ref_items = reference.forward()
    paper_users, paper_items = paper.forward()
    assert not torch.allclose(ref_users[:, :16], paper_users[:, :16])  # the edge weights differ too
    assert not torch.allclose(ref_users[:, 16:], paper_users[:, 16:])
    # n_layers 0: no routing iteration, the two modes agree.
    zero, _ = build(planted, routing="paper", n_layers=0)
    assert torch.allclose(zero.forward()[0], ref_users)


def test_loss_is_bpr_plus_weighted_l2(planted):
    model, train_data = build(planted, reg_weight=0.5)
    batch = next(iter(train_data))
    loss = model.calculate_loss(batch)
    users, items = model.forward()
    uid, pos, neg = batch["userID"], batch["itemID"], batch["neg_itemID"]
    u = users[uid]
    expected = bpr_loss((u * items[pos]).sum(1), (u * items[neg]).sum(1))
    emb = model.node_embedding.detach()
    d = emb.shape[1]
    # MMRec's mean over [2B, d] of e_u² + e_item² (users repeated, items pos/neg interleaved), by hand:
    n = len(uid)
    id_term = sum(float((emb[uid[b]] ** 2).sum()) * 2 + float((emb[model.n_users + pos[b]] ** 2).sum())
                  + float((emb[model.n_users + neg[b]] ** 2).sum()) for b in range(n)) / (2 * n * d)
    pref = {m: model.preferences[m].detach() for m in ("image", "text")}
    batch_pref = sum(float((pref[m][uid] ** 2).sum()) / (n * pref[m].shape[1]) for m in pref)
    all_image = float((pref["image"][1:] ** 2).sum()) / ((model.n_users - 1) * pref["image"].shape[1])
    assert loss.item() == pytest.approx(expected.item() + 0.5 * (id_term + batch_pref + all_image), rel=1e-5)
    model.reg_weight = 0.0
    assert model.calculate_loss(batch).item() == pytest.approx(expected.item(), rel=1e-6)


def test_gradients_reach_every_parameter(planted):
    model, train_data = build(planted, reg_weight=0.1)
    model.calculate_loss(next(iter(train_data))).backward()
    for name, parameter in model.named_parameters():
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name
        if name in ("node_embedding", "confidence") or name.startswith("preferences."):
            assert torch.all(parameter.grad[0] == 0), name  # padding user 0: no edge, never in a batch


def test_deterministic_on_cpu(planted):
    root, config = planted
    config.update(epochs=2, latent_embedding=8)
    assert_trains_deterministically("GRCN", config)


@pytest.mark.slow
def test_grcn_beats_popularity_on_planted_clusters(planted):
    root, config = planted
    config.update(epochs=20, latent_embedding=8, learning_rate=0.01, stopping_step=20)
    pop = recbole_mm.run_recbole(model="Pop", dataset="planted", config_dict=config)
    grcn = recbole_mm.run_recbole(model="GRCN", dataset="planted", config_dict=config)
    assert grcn["test_result"]["recall@10"] > pop["test_result"]["recall@10"] + 0.3, (grcn, pop)


def test_single_modality_trains(planted):
    root, config = planted
    config.update(epochs=1, latent_embedding=8, modalities={"text": "text_feat.npy"})
    result = recbole_mm.run_recbole(model="GRCN", dataset="planted", config_dict=config, saved=False)
    assert 0.0 <= result["test_result"]["recall@10"] <= 1.0


def test_recbole_run_recbole_finds_grcn(planted):
    from recbole.quick_start import run_recbole

    root, config = planted
    config.update(latent_embedding=8)
    result = run_recbole(model="GRCN", dataset="planted", config_dict=config)
    assert 0.0 <= result["test_result"]["recall@10"] <= 1.0


# ---- fidelity: MMRec's GRCN on the same data, weights and batches -----------------------------------
def load_reference(tmp_path):
    """(record, model, node map): our GRCN holding MMRec's initial weights (made by
    scripts/make_mmrec_fidelity_fixture.py). MMRec's node n is ours node_map[n] (users and items shift by
    one for RecBole's padding user 0 and item 0)."""
    from recbole.data import data_preparation
    from recbole.utils import get_model

    from conftest import planted_config
    from recbole_mm.quick_start import create_dataset, make_config

    record = torch.load(fidelity.DATA / fidelity.NAME / "grcn.pt", weights_only=True)
    config_dict = planted_config(fidelity.DATA, fidelity.NAME, checkpoint_dir=str(tmp_path / "saved"), **record["config"])
    config = make_config("GRCN", fidelity.NAME, config_dict=config_dict)
    train_data, _, _ = data_preparation(config, create_dataset(config))
    model = get_model("GRCN")(config, train_data._dataset)
    n_users = record["state"]["v_gcn.preference"].shape[0]
    ref = torch.arange(record["state"]["id_gcn.id_embedding"].shape[0])
    node_map = torch.where(ref < n_users, ref + 1, ref - n_users + model.n_users + 1)
    with torch.no_grad():
        for name, parameter in reference_names(model, node_map).items():
            target, rows = parameter
            target[rows] = record["state"][name]
    return record, model, node_map


def reference_names(model, node_map) -> dict[str, tuple[torch.Tensor, object]]:
    """MMRec's parameter name → (our tensor, the rows of it that hold the reference's)."""
    every = slice(None)
    names = {"id_gcn.id_embedding": (model.node_embedding, node_map), "model_specific_conf": (model.confidence, node_map)}
    for m, prefix in (("image", "v_gcn"), ("text", "t_gcn")):
        names[f"{prefix}.preference"] = (model.preferences[m], slice(1, None))
        names[f"{prefix}.MLP.weight"] = (model.projections[m].weight, every)
        names[f"{prefix}.MLP.bias"] = (model.projections[m].bias, every)
    return names


def test_matches_mmrec_grcn(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    record, model, node_map = load_reference(tmp_path)
    fidelity.replay(model, record, lambda: {name: parameter.grad[rows]
                                            for name, (parameter, rows) in reference_names(model, node_map).items()})
    assert torch.allclose(fidelity.scores(model), record["scores"], atol=1e-5)


def test_scores_are_the_forward_dot_products(planted):
    model, _ = build(planted)
    model.eval()
    users, items = model.forward()
    flat = model.full_sort_predict(Interaction({"userID": torch.tensor([3, 7])}))
    assert torch.allclose(flat.reshape(2, -1), users[[3, 7]] @ items.T, atol=1e-6)

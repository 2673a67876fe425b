"""LayerGCN: layer refinement and loss by hand, the alternating pruning, gradients, determinism, learning,
training without feature files, RecBole's own entry point, and equality with MMRec's LayerGCN on the fixture
of tests/data/mmrec_fidelity."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import fidelity
from builders import assert_trains_deterministically, build_planted
from conftest import planted_config, write_planted_dataset
import recbole_mm
from recbole_mm.errors import RecBoleMMError


def build(planted, **overrides):
    _, model, train_data = build_planted("LayerGCN", planted, **{"n_layers": 3, **overrides})
    return model, train_data


def dense_forward(model, adjacency: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The layer-refined sum written out with a dense adjacency: x_l = cos(A x_{l-1}, x_0) A x_{l-1}."""
    ego = torch.cat([model.user_embedding.weight, model.item_embedding.weight])
    x, total = ego, torch.zeros_like(ego)
    for _ in range(model.n_layers):
        x = adjacency @ x
        weights = torch.stack([F.cosine_similarity(x[n], ego[n], dim=0) for n in range(len(x))])
        x = weights[:, None] * x
        total = total + x
    return total[: model.n_users], total[model.n_users:]


def test_forward_is_the_layer_refined_sum_without_the_ego_layer(planted):
    model, _ = build(planted)
    model.eval()
    users, items = model.forward()
    expected_users, expected_items = dense_forward(model, model.norm_adj.to_dense())
    assert torch.allclose(users, expected_users, atol=1e-6) and torch.allclose(items, expected_items, atol=1e-6)
    # Padding user and item are isolated nodes: nothing reaches them.
    assert torch.all(users[0] == 0) and torch.all(items[0] == 0)


def test_refinement_gradients_equal_autograd_of_cosine_similarity():
    """The hand-written backward of the layer refinement against autograd through F.cosine_similarity, with
    a zero row (a node the pruned graph isolates) and in float64 (so the two agree to rounding)."""
    from recbole_mm.model.general_recommender.layergcn import _EPS, _Refine

    torch.manual_seed(0)
    x = torch.randn(30, 5, dtype=torch.float64)
    x[4] = 0
    ego = torch.randn(30, 5, dtype=torch.float64, requires_grad=True)
    grad = torch.randn(30, 5, dtype=torch.float64)
    x_ref, x_new = x.clone().requires_grad_(), x.clone().requires_grad_()
    reference = F.cosine_similarity(x_ref, ego, dim=-1).unsqueeze(1) * x_ref
    expected = torch.autograd.grad(reference, (x_ref, ego), grad)
    refined = _Refine.apply(x_new, ego, torch.linalg.vector_norm(ego.detach(), dim=1).clamp_min(_EPS))
    torch.testing.assert_close(refined, reference, rtol=1e-12, atol=1e-12)
    for got, want in zip(torch.autograd.grad(refined, (x_new, ego), grad), expected):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    assert torch.autograd.gradcheck(
        lambda a, b: _Refine.apply(a, b, torch.linalg.vector_norm(b, dim=1).clamp_min(_EPS)),
        (torch.randn(6, 4, dtype=torch.float64, requires_grad=True),
         torch.randn(6, 4, dtype=torch.float64, requires_grad=True)))


def test_loss_is_summed_bpr_plus_half_squared_l2_of_the_ego_rows(planted):
    model, train_data = build(planted, reg_weight=0.05, dropout=0.0)
    batch = next(iter(train_data))
    model.train()
    loss = model.calculate_loss(batch)
    users, items = model.forward()
    u_ids, pos, neg = batch["userID"], batch["itemID"], batch["neg_itemID"]
    u = users[u_ids]
    scores = (u * items[pos]).sum(1) - (u * items[neg]).sum(1)
    bpr = sum(-torch.log(torch.sigmoid(s)) for s in scores)
    ego_u, ego_i = model.user_embedding.weight, model.item_embedding.weight
    l2 = 0.5 * sum((ego_u[a] ** 2).sum() + (ego_i[p] ** 2).sum() + (ego_i[n] ** 2).sum()
                   for a, p, n in zip(u_ids, pos, neg))
    assert loss.item() == pytest.approx((bpr + 0.05 * l2).item(), rel=1e-5)


def test_pruning_alternates_degree_sensitive_and_uniform_and_evaluation_uses_the_whole_graph(planted, monkeypatch):
    import recbole_mm.model.general_recommender.layergcn as module

    draws = []
    original = module.degree_sensitive_keep
    monkeypatch.setattr(module, "degree_sensitive_keep", lambda *a, **k: (draws.append("degree"), original(*a, **k))[1])
    model, _ = build(planted, dropout=0.3)
    edges = len(model.edge_users)
    graphs = []
    for _ in range(3):
        model.train()
        model.forward()
        model.forward()  # fixed within the epoch
        graphs.append(model.pruned_adj)
        assert model.pruned_adj._nnz() == 2 * int(edges * 0.7)
    assert draws == ["degree", "degree"]  # epochs 1 and 3; epoch 2 drew uniformly
    assert not torch.equal(graphs[0].indices(), graphs[1].indices())
    model.eval()
    expected = dense_forward(model, model.norm_adj.to_dense())
    assert torch.allclose(model.forward()[1], expected[1], atol=1e-6)
    assert model.norm_adj._nnz() == 2 * edges


def test_no_dropout_trains_on_the_whole_graph(planted):
    model, _ = build(planted, dropout=0.0)
    model.train()
    users, _ = model.forward()
    assert not hasattr(model, "pruned_adj")
    assert torch.allclose(users, dense_forward(model, model.norm_adj.to_dense())[0], atol=1e-6)


def test_gradients_reach_every_parameter(planted):
    model, train_data = build(planted, reg_weight=0.0)
    model.calculate_loss(next(iter(train_data))).backward()
    for name, parameter in model.named_parameters():
        assert parameter.grad is not None and parameter.grad[1:].abs().sum() > 0, name


def test_bad_dropout_is_rejected(planted):
    with pytest.raises(RecBoleMMError, match="dropout"):
        build(planted, dropout=1.0)


def test_deterministic_on_cpu(planted):
    root, config = planted
    config.update(epochs=3, dropout=0.2)  # both kinds of pruning draws
    assert_trains_deterministically("LayerGCN", config)


@pytest.mark.slow
def test_layergcn_beats_popularity_on_planted_clusters(planted):
    root, config = planted
    config.update(epochs=30, learning_rate=0.01, stopping_step=30, reg_weight=1e-4)
    pop = recbole_mm.run_recbole(model="Pop", dataset="planted", config_dict=config)
    layergcn = recbole_mm.run_recbole(model="LayerGCN", dataset="planted", config_dict=config)
    assert layergcn["test_result"]["recall@10"] > pop["test_result"]["recall@10"] + 0.2, (layergcn, pop)


def test_trains_on_a_dataset_without_feature_files(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    root = tmp_path / "data"
    folder = write_planted_dataset(root, name="plain")
    for path in folder.glob("*.npy"):
        path.unlink()
    config = planted_config(root, name="plain", epochs=1)
    del config["modalities"]
    result = recbole_mm.run_recbole(model="LayerGCN", dataset="plain", config_dict=config, saved=False)
    assert 0.0 <= result["test_result"]["recall@10"] <= 1.0


def test_recbole_run_recbole_finds_layergcn(planted):
    from recbole.quick_start import run_recbole

    root, config = planted
    result = run_recbole(model="LayerGCN", dataset="planted", config_dict=config)
    assert 0.0 <= result["test_result"]["recall@10"] <= 1.0


# ---- fidelity: MMRec's LayerGCN on the same data, weights and batches -------------------------------
NAMES = {"user_embeddings": "user_embedding.weight", "item_embeddings": "item_embedding.weight"}


def test_matches_mmrec_layergcn(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    record, model, names = fidelity.load("LayerGCN", tmp_path, NAMES)
    torch.manual_seed(record["seeds"]["train"])  # the reference drew its pruned graph first thing after it
    model.train()
    for b, ids in enumerate(record["batches"]):
        model.zero_grad()
        loss = model.calculate_loss(fidelity.batch(model, ids))
        loss.backward()
        assert loss.item() == pytest.approx(record[f"loss_{b}"].item(), rel=1e-6)
        ours = fidelity.our_grads(model, names)
        for name, grad in record[f"grads_{b}"].items():
            assert torch.allclose(ours[name], grad, atol=1e-6), (b, name)
    # The same degree-sensitively pruned graph: reference node n ↔ ours n + 1 (users), n + 2 (items).
    n_users = model.n_users - 1
    ref = torch.arange(record["pruned_adj"].shape[0])
    ours_index = torch.where(ref < n_users, ref + 1, ref + 2)
    assert torch.allclose(model.pruned_adj.to_dense()[ours_index][:, ours_index], record["pruned_adj"], atol=1e-6)
    assert torch.allclose(fidelity.scores(model), record["scores"], atol=1e-5)

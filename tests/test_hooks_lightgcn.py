"""RecBole's LightGCN after ``import recbole_mm``: its forward propagates through CSR copies of its graph
(recbole_mm.hooks._lightgcn_forward), which must give RecBole's own numbers: each row's sum over the same entries,
in sorted column order (RecBole's graph is not coalesced, so its COO product may add them in another order: float
rounding; on TikTok the two are bit for bit the same, benchmarks/model_fingerprint.py --models LightGCN)."""

from __future__ import annotations

import copy

import torch

from builders import build_planted


def recboles_forward(model):
    """RecBole 1.2.1's LightGCN.forward, written out (COO torch.sparse.mm per layer, mean of the layers)."""
    embeddings = model.get_ego_embeddings()
    layers = [embeddings]
    for _ in range(model.n_layers):
        embeddings = torch.sparse.mm(model.norm_adj_matrix, embeddings)
        layers.append(embeddings)
    return torch.split(torch.stack(layers, dim=1).mean(dim=1), [model.n_users, model.n_items])


def test_lightgcn_forward_and_gradients_are_recboles(planted):
    from recbole.model.general_recommender.lightgcn import LightGCN

    from recbole_mm import hooks

    _, model, _ = build_planted("LightGCN", planted, n_layers=3)
    assert type(model) is LightGCN and LightGCN.forward is hooks._lightgcn_forward
    weights = [torch.randn(model.n_users, model.latent_dim), torch.randn(model.n_items, model.latent_dim)]
    results = []
    for forward in (model.forward, lambda: recboles_forward(model)):
        model.zero_grad()
        users, items = forward()
        ((users * weights[0]).sum() + (items * weights[1]).sum()).backward()
        results.append((users.detach(), items.detach(), model.user_embedding.weight.grad.clone(),
                        model.item_embedding.weight.grad.clone()))
    for ours, recboles in zip(*results):
        assert torch.allclose(ours, recboles, rtol=1e-6, atol=1e-7)


def test_a_copy_of_a_trained_lightgcn_works(planted):
    """RecBole deep-copies the model to count its FLOPs: the CSR copies (which cannot be deep-copied) are not
    carried over but rebuilt, and a new graph is picked up instead of a stale copy."""
    _, model, _ = build_planted("LightGCN", planted)
    before = model.forward()[1].detach()
    twin = copy.deepcopy(model)
    assert torch.equal(twin.forward()[1], before)
    model.norm_adj_matrix = (model.norm_adj_matrix * 2).coalesce()
    assert torch.allclose(model.forward()[1], recboles_forward(model)[1], rtol=1e-6, atol=1e-7)
    assert not torch.allclose(model.forward()[1], before)

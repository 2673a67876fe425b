"""GUME's fast training step against a test-local reference of the computation it replaced (main at
4ebc365: full-graph forward, per-modality extended propagations, logits ÷ τ, cross-entropy, perturbation
of every user row): loss and every parameter gradient agree within 1e-5 relative, with the noise fixed."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from recbole_mm.model import losses
from test_gume import build


# ---- the old computation, restated for the comparison -----------------------------------------------
def _old_lightgcn(model, embeddings):
    layers = [embeddings]
    for _ in range(model.n_ui_layers):
        layers.append(model.propagate("norm_adj", layers[-1]))
    return torch.stack(layers).mean(dim=0)


def _old_forward(model):
    items = model.item_embedding.weight
    h_id = _old_lightgcn(model, torch.cat([model.user_embedding.weight, items]))
    explicit, extended = [], []
    for m in model.modalities:
        x_item = items * model.purifiers[m](model.raw_features[m].weight)
        for _ in range(model.n_layers):
            x_item = model.propagate(f"item_graph_{m}", x_item)
        explicit.append(torch.cat([model.propagate("user_item_graph", x_item), x_item]))
        if model.use_um:
            extended.append(_old_lightgcn(model, torch.cat([model.extended_users[m], x_item])))
    weights = torch.softmax(torch.cat([model.attention(x) for x in explicit], dim=1), dim=1)
    coarse = sum(weights[:, j:j + 1] * x for j, x in enumerate(explicit))
    fine = [model.fine_gates[m](h_id) * (x - coarse) for m, x in zip(model.modalities, explicit)]
    z = (sum(fine) + coarse) / (len(fine) + 1)
    h_ext = torch.stack(extended).mean(dim=0) if extended else None
    return {"o": h_id + z, "z": z, "h_id": h_id, "h_ext": h_ext, "explicit": explicit}


def _old_info_nce(anchors, positives, temperature):
    logits = F.normalize(anchors, dim=1) @ F.normalize(positives, dim=1).T / temperature
    return F.cross_entropy(logits, torch.arange(len(anchors)))


def old_loss(model, interaction, noise_tables):
    """main's calculate_loss; the k-th perturbation uses the full per-user table noise_tables[k]."""
    tables = iter(noise_tables)

    def perturb(x):
        return x + torch.sign(x) * F.normalize(next(tables), dim=1) * model.noise_eps

    users = interaction[model.USER_ID]
    pos = interaction[model.ITEM_ID] + model.n_users
    neg = interaction[model.NEG_ITEM_ID] + model.n_users
    out = _old_forward(model)
    o = out["o"]
    loss = losses.bpr_loss((o[users] * o[pos]).sum(dim=1), (o[users] * o[neg]).sum(dim=1))
    loss = loss + model.reg_weight_1 * losses.squared_l2(o[users], o[pos], o[neg], denominator=model.batch_size)
    if model.vt_loss:
        real = [torch.cat([x[1:model.n_users], x[model.n_users + 1:]]) for x in out["explicit"]]
        loss = loss + model.vt_loss * losses.gaussian_alignment(real)
    if model.bm_loss:
        z, h_id = out["z"], out["h_id"]
        loss = loss + model.bm_loss * (_old_info_nce(z[users], h_id[users], model.bm_temp)
                                       + _old_info_nce(z[pos], h_id[pos], model.bm_temp))
    if model.use_um:
        z_users, ext_users = out["z"][: model.n_users], out["h_ext"][: model.n_users]
        um = (_old_info_nce(ext_users[users], z_users[users], model.um_temp)
              + _old_info_nce(perturb(z_users)[users], perturb(z_users)[users], model.um_temp)
              + _old_info_nce(perturb(ext_users)[users], perturb(ext_users)[users], model.um_temp))
        loss = loss + model.um_loss * um
        loss = loss + model.reg_weight_2 * losses.squared_l2(out["h_ext"][pos], denominator=model.batch_size)
    return loss


def fix_noise(monkeypatch, tables):
    """The new step draws noise per distinct batch user; serve it from the same per-user tables."""
    calls = iter(tables)
    monkeypatch.setattr(losses, "uniform_noise", lambda ids, dim, like: next(calls)[ids])


def loss_and_grads(model, compute):
    model.zero_grad()
    loss = compute()
    loss.backward()
    return loss.detach(), {name: p.grad.clone() for name, p in model.named_parameters()}


def assert_close(new, old, rtol=1e-5):
    scale = old.abs().max().clamp_min(1e-30)
    assert ((new - old).abs().max() / scale).item() <= rtol


@pytest.mark.parametrize("overrides", [
    {},
    {"n_layers": 2, "bm_temp": 0.4, "vt_loss": 0.1},  # TikTok's values
    {"user_modality_enhancement": False},
    {"external_alignment": False, "internal_alignment": False},
    {"um_temp": 0.01},  # 1/τ above 40: the max-shifted log-sum-exp
])
def test_fast_step_matches_the_old_computation(planted, monkeypatch, overrides):
    config, model, train_data = build(planted, knn_k=5, **overrides)
    # In float64, so that the comparison sees the mathematics, not float32 cancellation in gradients
    # that nearly sum to zero (the attention's, ~1e-8 here).
    model.double()
    batch = next(iter(train_data))
    # Duplicated users in the batch must share their noise, as in the old full-matrix draw; duplicated
    # users and items are what the InfoNCE terms collapse into counts.
    assert len(torch.unique(batch[model.USER_ID])) < len(batch)
    assert len(torch.unique(batch[model.ITEM_ID])) < len(batch)
    generator = torch.Generator().manual_seed(3)
    tables = [torch.rand(model.n_users, config["embedding_size"], generator=generator, dtype=torch.float64)
              for _ in range(4)]
    old, old_grads = loss_and_grads(model, lambda: old_loss(model, batch, tables))
    fix_noise(monkeypatch, tables)
    new, new_grads = loss_and_grads(model, lambda: model.calculate_loss(batch))
    assert_close(new, old)
    assert old_grads.keys() == new_grads.keys()
    for name in old_grads:
        assert_close(new_grads[name], old_grads[name]), name


def test_forward_matches_the_old_forward(planted):
    config, model, _ = build(planted, knn_k=5)
    model.double()
    new, old = model.forward(), _old_forward(model)
    for key in ("o", "z", "h_id", "h_ext"):
        assert_close(new[key], old[key])


@pytest.mark.parametrize("temperature", [0.2, 0.01])
def test_info_nce_matches_cross_entropy_with_gradients(temperature):
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(50, 8, generator=generator, dtype=torch.float64, requires_grad=True)
    b = torch.randn(50, 8, generator=generator, dtype=torch.float64, requires_grad=True)
    b_rows = torch.cat([b[:25], b[:25]])  # duplicated rows: false negatives, as in a batch
    new = losses.info_nce(a, b_rows, temperature)
    grads_new = torch.autograd.grad(new, [a, b])
    old = _old_info_nce(a.double(), b_rows.double(), temperature)
    grads_old = torch.autograd.grad(old, [a, b])
    assert_close(new.detach(), old.detach())
    for g_new, g_old in zip(grads_new, grads_old):
        assert_close(g_new, g_old)


@pytest.mark.parametrize("temperature", [0.4, 0.01])
def test_info_nce_over_distinct_rows_with_counts_is_the_expanded_batch(temperature):
    """Distinct rows with multiplicities: the value and gradients of the batch with every duplicate."""
    generator = torch.Generator().manual_seed(1)
    a = torch.randn(7, 5, generator=generator, dtype=torch.float64, requires_grad=True)
    b = torch.randn(7, 5, generator=generator, dtype=torch.float64, requires_grad=True)
    ids = torch.tensor([3, 0, 6, 3, 3, 1, 2, 6, 4, 5, 0, 3])  # each of the 7 rows at least once
    counts = torch.bincount(ids, minlength=7)
    new = losses.info_nce(a, b, temperature, counts=counts)
    grads_new = torch.autograd.grad(new, [a, b])
    old = _old_info_nce(a[ids], b[ids], temperature)
    grads_old = torch.autograd.grad(old, [a, b])
    assert_close(new.detach(), old.detach())
    for g_new, g_old in zip(grads_new, grads_old):
        assert_close(g_new, g_old)
    # Counts of one are the plain loss; ignoring the counts is not.
    assert_close(losses.info_nce(a, b, temperature, counts=torch.ones(7)), losses.info_nce(a, b, temperature))
    assert abs(losses.info_nce(a, b, temperature).item() - old.item()) > 1e-3


def test_perturb_rows_shares_noise_between_duplicate_ids():
    torch.manual_seed(0)
    rows = torch.tensor([[1.0, -2.0], [3.0, 4.0], [1.0, -2.0]])
    noisy = losses.perturb_rows(rows, torch.tensor([5, 7, 5]), eps=0.1)
    assert torch.equal(noisy[0], noisy[2]) and not torch.equal(noisy[0] - rows[0], noisy[1] - rows[1])
    delta = noisy - rows
    assert torch.all(torch.sign(delta) == torch.sign(rows))
    assert torch.allclose(delta.norm(dim=1), torch.full((3,), 0.1), atol=1e-6)


def test_freeze_features_keeps_the_function_and_drops_the_tables(planted, monkeypatch):
    """freeze_features: same loss at initialisation (the tables start as the features), no trainable
    copy of the features, and a training step leaves the features untouched."""
    _, faithful, train_data = build(planted, knn_k=5)
    _, frozen, _ = build(planted, knn_k=5, freeze_features=True)
    batch = next(iter(train_data))
    generator = torch.Generator().manual_seed(3)
    tables = [torch.rand(faithful.n_users, 16, generator=generator) for _ in range(8)]
    fix_noise(monkeypatch, tables[:4] + tables[:4])
    assert_close(frozen.calculate_loss(batch).detach(), faithful.calculate_loss(batch).detach())
    n_features = sum(frozen.item_features(m).numel() for m in frozen.modalities)
    count = lambda model: sum(p.numel() for p in model.parameters())  # noqa: E731
    assert count(faithful) - count(frozen) == n_features
    before = {m: frozen.item_features(m).clone() for m in frozen.modalities}
    optimizer = torch.optim.Adam(frozen.parameters(), lr=0.1)
    fix_noise(monkeypatch, tables[4:])
    frozen.calculate_loss(batch).backward()
    optimizer.step()
    assert all(torch.equal(frozen.item_features(m), before[m]) for m in frozen.modalities)

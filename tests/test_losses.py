"""Loss terms of recbole_mm/model/losses.py on tiny hand-checked inputs (GUME's are in test_gume.py)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from recbole_mm.model import losses
from recbole_mm.model.losses import (dot_bpr_loss, gaussian_alignment, neighbour_discrimination, perturb_blocks,
                                    symmetric_bernoulli_kl)


def test_dot_bpr_loss_by_hand():
    users = torch.tensor([[1.0, 2.0], [0.5, -1.0]])
    pos = torch.tensor([[1.0, 1.0], [2.0, 0.0]])
    neg = torch.tensor([[0.0, 1.0], [0.0, 1.0]])
    # Scores u·i⁺ = 3 and 1, u·i⁻ = 2 and −1: margins 1 and 2.
    expected = -(torch.log(torch.sigmoid(torch.tensor(1.0))) + torch.log(torch.sigmoid(torch.tensor(2.0)))) / 2
    assert dot_bpr_loss(users, pos, neg).item() == pytest.approx(expected.item())
    assert dot_bpr_loss(users, neg, pos).item() > dot_bpr_loss(users, pos, neg).item()  # swapped: the wrong order costs


def test_perturb_blocks_by_hand(monkeypatch):
    # Two rows of two 2-wide blocks: four blocks, each with its own noise row (3-4-5 and axis vectors: easy norms).
    x = torch.tensor([[1.0, -2.0, 0.0, 3.0],
                      [-1.0, 0.5, 2.0, -4.0]])
    noise = torch.tensor([[3.0, 4.0], [1.0, 0.0], [0.0, 2.0], [6.0, 8.0]])
    calls = []

    def fixed(ids, dim, like):
        calls.append((ids.tolist(), dim))
        return noise

    monkeypatch.setattr(losses, "uniform_noise", fixed)
    got = perturb_blocks(x, width=2, eps=0.5)
    assert calls == [([0, 1, 2, 3], 2)]  # one draw, one noise row per block, blocks in row-major order
    # b + sign(b) * (ε / ‖ε‖) * eps, block by block; sign(0) = 0 leaves the zero entry alone.
    expected = torch.tensor([[1.0 + 0.3, -2.0 - 0.4, 0.0 + 0.0, 3.0 + 0.0],
                             [-1.0 - 0.0, 0.5 + 0.5, 2.0 + 0.3, -4.0 - 0.4]])
    assert torch.allclose(got, expected)


def test_perturb_blocks_noise_is_bounded_and_keeps_signs():
    torch.manual_seed(0)
    x = torch.randn(5, 12)
    got = perturb_blocks(x, width=4, eps=0.1)
    shift = (got - x).reshape(-1, 4)
    assert torch.all(torch.sign(got) == torch.sign(x))  # the noise pushes away from zero
    assert torch.allclose(shift.norm(dim=1), torch.full((15,), 0.1))  # |ε/‖ε‖ · eps| per block: ε ≥ 0


def test_symmetric_bernoulli_kl_equals_its_definition():
    a, b = torch.tensor([-2.0, 0.3, 1.5, 4.0]), torch.tensor([1.0, 0.3, -0.5, 2.0])
    p, q = torch.sigmoid(a), torch.sigmoid(b)

    def kl(x, y):
        return x * torch.log(x / y) + (1 - x) * torch.log((1 - x) / (1 - y))

    assert torch.allclose(symmetric_bernoulli_kl(a, b), kl(p, q) + kl(q, p), atol=1e-6)
    assert torch.isfinite(symmetric_bernoulli_kl(torch.tensor([200.0]), torch.tensor([-200.0]))).all()


def test_neighbour_discrimination_by_hand():
    generator = torch.Generator().manual_seed(3)
    views = [torch.randn(8, 3, generator=generator) for _ in range(2)]
    anchors = torch.tensor([1, 5])
    got = neighbour_discrimination(views, anchors, n_positives=2, temperature=0.5)
    losses = []
    for v, w in [(0, 1), (1, 0)]:
        per_anchor = []
        for i in anchors.tolist():
            cos = [F.cosine_similarity(views[x][i][None], views[x][1:], dim=1) for x in (v, w)]
            p_own, p_other = torch.softmax(cos[0], 0), torch.softmax(cos[1], 0)
            agreed = torch.topk(p_other + 2 * p_own, 2).indices.tolist()
            rest = [j for j in torch.argsort(p_own, descending=True).tolist() if j not in agreed][:2]
            e = torch.exp(cos[0] / 0.5)
            total, on_agreed = e.sum(), e[agreed].sum()
            per_anchor.append(-torch.log(on_agreed / total + 1e-9) - torch.log(e[rest].sum() / (total - on_agreed) + 1e-9))
        losses.append(torch.stack(per_anchor).mean())
    assert got.item() == pytest.approx(((losses[0] + losses[1]) / 2).item(), rel=1e-5)


@pytest.mark.parametrize("rows", [1, 3, 64])
def test_neighbour_discrimination_in_row_blocks_is_the_whole_matrix_bit_for_bit(monkeypatch, rows):
    """The anchors × items chains run ``_ROWS`` rows at a time; any block size (here one that leaves a short last
    block) gives the loss and gradients of one block holding every anchor."""
    generator = torch.Generator().manual_seed(5)
    base = [torch.randn(40, 6, generator=generator) for _ in range(3)]
    anchors = torch.tensor([1, 2, 3, 5, 8, 13, 21, 34, 39, 7])

    def run(block):
        monkeypatch.setattr(losses, "_ROWS", block)
        views = [v.clone().requires_grad_() for v in base]
        loss = neighbour_discrimination(views, anchors, n_positives=3, temperature=0.2)
        loss.backward()
        return loss.detach(), [v.grad for v in views]

    whole_loss, whole_grads = run(len(anchors))
    loss, grads = run(rows)
    assert torch.equal(loss, whole_loss)
    assert all(torch.equal(g, w) for g, w in zip(grads, whole_grads))
    assert all(g.abs().sum() > 0 for g in grads)


@pytest.mark.parametrize("shape", [(2048, 64), (7, 3), (5,)])
def test_frobenius_norms_value_and_gradient_are_torchs_bit_for_bit(shape):
    torch.manual_seed(3)
    tensors = [torch.randn(*shape, requires_grad=True) for _ in range(3)]
    tensors.append(torch.zeros(*shape, requires_grad=True))  # a zero tensor: zero gradient, as torch's
    ours = losses.frobenius_norms(*tensors, denominator=7)
    plain = sum(torch.linalg.vector_norm(t) for t in tensors) / 7
    assert torch.equal(ours, plain)
    weight = torch.tensor(0.37)
    for got, want in zip(torch.autograd.grad(ours * weight, tensors), torch.autograd.grad(plain * weight, tensors)):
        assert torch.equal(got, want)


def test_gaussian_alignment_over_blocks_has_autograd_s_numbers_without_keeping_the_deviations():
    """The block form's variance (losses._SquaredDeviations) gives bit for bit the loss and gradients of
    ((block - mean) ** 2).sum() through autograd."""
    torch.manual_seed(0)
    blocks = [torch.randn(500, 64, requires_grad=True), torch.randn(120, 64, requires_grad=True),
              torch.randn(500, 64, requires_grad=True), torch.randn(120, 64, requires_grad=True)]

    def views():
        return [(blocks[0] * 1.5, blocks[1] * 1.5), (blocks[2] * 0.5 + 1, blocks[3] * 0.5 + 1)]

    def by_autograd(modalities):
        stats = []
        for parts in modalities:
            count = sum(p.numel() for p in parts)
            mean = sum(p.sum() for p in parts) / count
            stats.append((mean, sum(((p - mean) ** 2).sum() for p in parts) / (count - 1)))
        (mean_a, var_a), (mean_b, var_b) = stats
        return torch.stack([(var_a - var_b).abs() + (mean_a - mean_b).abs()]).mean()

    ours = gaussian_alignment(views())
    theirs = by_autograd(views())
    assert ours.item() == theirs.item()
    for mine, reference in zip(torch.autograd.grad(ours, blocks), torch.autograd.grad(theirs, blocks)):
        assert torch.equal(mine, reference)

"""Loss terms shared by the multimodal models, as pure functions (tested against hand-computed values)."""

from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F


def bpr_loss(pos_scores: torch.Tensor, neg_scores: torch.Tensor) -> torch.Tensor:
    """-mean log σ(pos - neg)."""
    return -F.logsigmoid(pos_scores - neg_scores).mean()


def info_nce(anchors: torch.Tensor, positives: torch.Tensor, temperature: float) -> torch.Tensor:
    """mean_n -log softmax_m(cos(a_n, b_m)/τ)[n]: row n of ``positives`` is the positive of anchor n,
    every other row an in-batch negative (duplicated rows act as false negatives, as in GUME).
    """
    a = F.normalize(anchors, dim=1)
    b = F.normalize(positives, dim=1)
    logits = a @ b.T / temperature
    return F.cross_entropy(logits, torch.arange(len(a), device=a.device))


def squared_l2(*tensors: torch.Tensor, denominator: float) -> torch.Tensor:
    """½ Σ‖t‖² / denominator (GUME divides by the configured batch size, not the batch's)."""
    return 0.5 * sum(t.pow(2).sum() for t in tensors) / denominator


def gaussian_alignment(features: list[torch.Tensor]) -> torch.Tensor:
    """GUME's internal alignment L_VT: |Var(X^a) − Var(X^b)| + |Mean(X^a) − Mean(X^b)| over all entries
    (unbiased variance), averaged over all modality pairs; zero for a single modality.
    """
    pairs = list(itertools.combinations(features, 2))
    if not pairs:
        return features[0].new_zeros(())
    terms = [(a.var() - b.var()).abs() + (a.mean() - b.mean()).abs() for a, b in pairs]
    return torch.stack(terms).mean()


def perturb(x: torch.Tensor, eps: float = 0.1) -> torch.Tensor:
    """SimGCL-style noise: x + sign(x) ⊙ normalize_row(ε)·eps with ε ~ U(0, 1), fresh on every call."""
    return x + torch.sign(x) * F.normalize(torch.rand_like(x), dim=1) * eps


def cosine_alignment(online: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """1 - mean_n cos(online_n, target_n), with no gradient through ``target`` (BM3's bootstrapped
    alignment: the target view is a stop-gradient copy)."""
    return 1 - F.cosine_similarity(online, target.detach(), dim=-1).mean()


def frobenius_norms(*tensors: torch.Tensor, denominator: float) -> torch.Tensor:
    """Σ‖t‖_F / denominator: norms, not squared (MMRec's ``EmbLoss``, which BM3 uses as its regulariser)."""
    return sum(torch.linalg.vector_norm(t) for t in tensors) / denominator

"""Neural building blocks shared by the multimodal models (functions over the models' own modules,
so each model keeps its parameter names)."""

from __future__ import annotations

import torch
from torch import nn


def attentive_fusion(views: list[torch.Tensor], attention: nn.Module, gates: list[nn.Module],
                     behaviour: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """MGCN's behaviour-aware fuser (GUME's attribute separation): the common part is the attention-
    weighted sum c = Σ_m softmax_m(attention(x_m)) x_m; each view keeps its specific part gated by the
    behaviour representation, s_m = gate_m(behaviour) ⊙ (x_m - c); the result is (Σ_m s_m + c) / (M + 1).

    ``views``: M tensors ``[N, d]``; ``attention``: d → 1; ``gates``: one d → d module per view.
    Returns (fused ``[N, d]``, attention weights ``[N, M]``).
    """
    weights = torch.softmax(torch.cat([attention(x) for x in views], dim=1), dim=1)
    common = sum(weights[:, j:j + 1] * x for j, x in enumerate(views))
    specific = [gate(behaviour) * (x - common) for gate, x in zip(gates, views)]
    return (sum(specific) + common) / (len(views) + 1), weights

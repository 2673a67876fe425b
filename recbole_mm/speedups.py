"""What recbole_mm's trainer uses instead of RecBole's and torch's defaults: the same results in less
time and memory (each pinned to the computation it replaces in tests/test_hot_paths.py)."""

from __future__ import annotations

import torch
from recbole.evaluator import Collector as RecBoleCollector


class Collector(RecBoleCollector):
    """RecBole's ``Collector`` with ``rec.topk`` (what Recall, NDCG, Precision, MAP, Hit, MRR read) built
    without RecBole's dense ``[users, items]`` int matrix of positives: membership of the top-k items in
    the batch's positive (user, item) pairs and the per-user positive counts give the same integers, at
    the cost of the top-k instead of two passes over the whole score matrix (and none of its memory)."""

    def eval_batch_collect(self, scores_tensor: torch.Tensor, interaction, positive_u: torch.Tensor,
                           positive_i: torch.Tensor) -> None:
        if not self.register.need("rec.topk"):
            return super().eval_batch_collect(scores_tensor, interaction, positive_u, positive_i)
        n_rows, n_items = scores_tensor.shape
        device = scores_tensor.device
        _, topk_idx = torch.topk(scores_tensor, max(self.topk), dim=-1)
        # Distinct positive pairs as keys row * n_items + item (RecBole sets each pair's cell to 1 once).
        keys = torch.unique(positive_u.to(device).long() * n_items + positive_i.to(device).long())
        rows = torch.arange(n_rows, device=device).unsqueeze(1)
        pos_idx = torch.isin(rows * n_items + topk_idx, keys).int()
        pos_len = torch.bincount(keys // n_items, minlength=n_rows).unsqueeze(1)  # int64, as RecBole's sum
        self.data_struct.update_tensor("rec.topk", torch.cat((pos_idx, pos_len), dim=1))
        # Everything else (rec.items, rec.meanrank, rec.score, data.label) exactly as RecBole collects it.
        setattr(self.register, "rec.topk", False)
        try:
            super().eval_batch_collect(scores_tensor, interaction, positive_u, positive_i)
        finally:
            setattr(self.register, "rec.topk", True)


def multi_tensor(optimizer: torch.optim.Optimizer, fused: bool = False) -> torch.optim.Optimizer:
    """Switch an Adam/AdamW optimizer left at torch's default (``foreach=None``, one tensor at a time on
    CPU) to its multi-tensor implementation, which computes the same update bit for bit.

    ``fused``: torch's fused (one kernel per parameter) implementation instead, where every parameter's
    device has it: the same update up to float rounding (≈1 ulp per step, not bit for bit), faster again
    than multi-tensor on CPU (results/speed-issue24.md).
    The trainer asks for it for every model unless the model's class says ``fused_adam = False``
    (Trainer._build_optimizer).
    """
    if not isinstance(optimizer, (torch.optim.Adam, torch.optim.AdamW)):
        return optimizer
    if optimizer.defaults.get("foreach") is not None:
        return optimizer
    from torch.optim.optimizer import _get_fused_kernels_supported_devices

    devices = _get_fused_kernels_supported_devices()
    for group in optimizer.param_groups:
        if fused and not group.get("fused") and all(p.device.type in devices and p.is_floating_point()
                                                    and not p.is_sparse for p in group["params"]):
            group["fused"] = True  # no step has run yet: the state is created for the fused kernel
        elif not group.get("fused"):
            group["foreach"] = True
    return optimizer


class RowGradients:
    """Row-sparse gradients for embedding tables that a model reads only by the batch's rows, with the
    dense-gradient optimizer step computed as before.

    A table marked ``rows_only`` (:meth:`MultiModalRecommender.trainable_feature_tables`) is switched to
    ``nn.Embedding(sparse=True)``: its backward yields the batch's rows instead of a fresh all-zero
    ``[items, dim]`` gradient per step (FREEDOM's 4096-d image table: a new 110 MB on TikTok, zero-filled
    and page-faulted every batch). Just before ``optimizer.step()`` those rows are added (``index_add_``,
    in the order the dense backward adds them) into one persistent dense buffer per table, which becomes
    the parameter's gradient; after the step only those rows are zeroed again. The optimizer therefore
    sees the same dense gradient and makes the same update, momentum of the untouched rows included
    (a lazy row update, e.g. ``SparseAdam``, would change the function). Rows a lookup hits more than
    once are summed in index order as the dense backward does; a row hit by two lookups (a positive and
    a negative) may be summed in another order (float rounding).
    """

    def __init__(self, tables: list[torch.nn.Embedding]):
        self.tables = tables
        self._buffers: dict[int, torch.Tensor] = {}
        self._rows: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    @classmethod
    def attach(cls, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> "RowGradients | None":
        """Switch ``model``'s ``rows_only`` embedding tables to sparse gradients and hook ``optimizer``;
        None (nothing changed) when the model has no such table or the optimizer handles sparse gradients
        itself (``SparseAdam``)."""
        tables = [m for m in model.modules() if isinstance(m, torch.nn.Embedding) and getattr(m, "rows_only", False)]
        if not tables or isinstance(optimizer, torch.optim.SparseAdam):
            return None
        helper = cls(tables)
        for table in tables:
            table.sparse = True
        optimizer.register_step_pre_hook(helper._densify)
        optimizer.register_step_post_hook(helper._clear)
        return helper

    def _densify(self, optimizer, args, kwargs) -> None:
        for table in self.tables:
            weight = table.weight
            grad = weight.grad
            if grad is None or not grad.is_sparse:
                continue
            buffer = self._buffers.get(id(weight))
            if buffer is None or buffer.shape != weight.shape or buffer.device != weight.device \
                    or buffer.dtype != weight.dtype:
                buffer = self._buffers[id(weight)] = torch.zeros_like(weight, memory_format=torch.contiguous_format)
            rows = grad._indices()[0]
            buffer.index_add_(0, rows, grad._values())
            self._rows[id(weight)] = (buffer, rows)
            weight.grad = buffer

    def _clear(self, optimizer, args, kwargs) -> None:
        for buffer, rows in self._rows.values():
            buffer.index_fill_(0, rows, 0)
        self._rows.clear()


_UNIFORM_DRAWS_BERNOULLI: bool | None = None


def _uniform_draws_bernoulli() -> bool:
    """Whether this torch draws ``bernoulli_(q)`` on the CPU as ``uniform_() < q`` over float64 uniforms (the
    same values from the same generator state, leaving it in the same state); checked once per process on a
    private generator, so a torch whose kernel differs keeps the plain draw."""
    global _UNIFORM_DRAWS_BERNOULLI
    if _UNIFORM_DRAWS_BERNOULLI is None:
        plain, fast = torch.Generator().manual_seed(20231), torch.Generator().manual_seed(20231)
        expected = torch.empty(1031).bernoulli_(0.7, generator=plain)
        drawn = torch.empty(1031, dtype=torch.float64).uniform_(generator=fast) < 0.7
        _UNIFORM_DRAWS_BERNOULLI = bool(torch.equal(expected, drawn.float())
                                        and torch.equal(plain.get_state(), fast.get_state()))
    return _UNIFORM_DRAWS_BERNOULLI


def dropout_mask(shape: tuple[int, ...], p: float, device: torch.device | str = "cpu") -> torch.Tensor:
    """The keep-mask (bool) that ``F.dropout(x, p, training=True)`` draws for an ``x`` of ``shape`` on
    ``device``, from the same random stream, which it leaves in the same state: ``dropout_rows(x[r], mask[r], p)``
    equals ``F.dropout(x, p)[r]`` (bit for bit on the CPU), so a model that needs a few rows of a dropped-out
    table pays for the draw only, not for the table's scaling and product.

    On the CPU torch's dropout draws ``bernoulli_(1 - p)`` one element at a time from float64 uniforms;
    drawing those uniforms directly and comparing them (:func:`_uniform_draws_bernoulli` checks that this
    torch does exactly that) takes about half the time. Elsewhere the mask comes from ``F.dropout`` itself."""
    device = torch.device(device)
    if device.type == "cpu" and _uniform_draws_bernoulli():
        return torch.empty(shape, dtype=torch.float64).uniform_() < 1 - p
    return torch.nn.functional.dropout(torch.ones(shape, device=device), p, training=True) != 0


def dropout_rows(rows: torch.Tensor, mask: torch.Tensor, p: float) -> torch.Tensor:
    """``rows`` under the keep-``mask`` of :func:`dropout_mask` (the same rows of it), scaled by 1/(1 - p) as
    torch's dropout does (its factor mask / (1 - p) first, then the product: the same floats)."""
    return rows * mask.to(rows.dtype).div_(1 - p)

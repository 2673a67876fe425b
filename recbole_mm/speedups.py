"""What recbole_mm's trainer uses instead of RecBole's and torch's defaults: the same results in less
time and memory (each pinned to the computation it replaces in tests/test_hot_paths.py)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

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


class TableSteps:
    """The Adam step of trainable feature tables that a model projects whole (``FeatureLinear`` on the table's
    ``.weight``: GUME, LATTICE, MGCN, SMORE, PGL), computed inside the projection's backward in row chunks:
    the table's gradient ``dP @ W`` is never materialised whole.

    Per chunk of :attr:`rows` rows, the gradient rows are computed into one reused buffer and torch's fused
    Adam/AdamW kernel updates the chunk's views of the table and of its state (the optimizer's own state
    tensors, in the optimizer's fused format, created on the first step as the optimizer would): the same
    elementwise update as the optimizer's step over the dense gradient (the chunks' product rows equal the
    whole product's to float rounding), without a fresh ``[items, width]`` gradient per step (GUME's
    Electronics image table: 1 GiB, page-faulted and zero-filled each step) or a second pass over it. The
    weight and bias gradients are computed first, from the table as the forward read it. The table then has
    no ``.grad`` and the optimizer's ``step()`` skips it; lr, betas, eps, weight decay and maximize come from
    its param group at backward time (schedulers step per epoch, so they are the step's).

    Used only when each table is projected once per step: a table projected twice (two backward nodes) gets
    its dense gradient as usual. A table that also receives a gradient another way is refused at the step
    (its update would have missed that part). Attached by recbole_mm's trainer only for fused Adam/AdamW
    without amsgrad, and not with ``clip_grad_norm`` or across processes (both need the whole gradient).
    """

    rows = 256  # chunk rows: a 4096-wide chunk's gradient (4 MiB) stays in cache for the update

    def __init__(self, optimizer: torch.optim.Optimizer, tables: list[torch.nn.Parameter]):
        self.optimizer = optimizer
        self.tables = tables
        self._uses: dict[int, int] = {}
        self._stepped: list[torch.nn.Parameter] = []
        self._buffer: torch.Tensor | None = None

    @classmethod
    def attach(cls, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> "TableSteps | None":
        """Hook ``model``'s whole-table feature projections to ``optimizer``; None (nothing changed) when the
        model has no such table or the optimizer is not a fused Adam/AdamW without amsgrad."""
        from recbole_mm.model.abstract_recommender import FeatureLinear

        tables = [m.weight for m in model.modules()
                  if isinstance(m, torch.nn.Embedding) and getattr(m, "feature_table", False)
                  and not getattr(m, "rows_only", False) and m.weight.requires_grad]
        if not tables or not isinstance(optimizer, (torch.optim.Adam, torch.optim.AdamW)):
            return None
        helper = cls(optimizer, tables)
        for table in tables:
            group = helper._group(table)
            if group is None or not group.get("fused") or group["amsgrad"] or group.get("differentiable") \
                    or group.get("capturable") or table.dtype != torch.float32:
                return None
        for module in model.modules():
            if isinstance(module, FeatureLinear):
                module.table_steps = helper
        optimizer.register_step_pre_hook(helper._check)
        optimizer.register_step_post_hook(helper._reset)
        return helper

    def reads(self, x: torch.Tensor) -> bool:
        """Whether ``x`` is one of the hooked tables, read with gradients (a training step)."""
        return torch.is_grad_enabled() and any(x is table for table in self.tables)

    def project(self, table: torch.nn.Parameter, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        """``table @ weight.T + bias`` whose backward steps ``table`` in place (when it is its only reader)."""
        self._uses[id(table)] = self._uses.get(id(table), 0) + 1
        return _TableProjection.apply(table, weight, bias, self)

    def step_rows(self, table: torch.nn.Parameter, grad_out: torch.Tensor, weight: torch.Tensor) -> bool:
        """The optimizer's update of ``table`` for the gradient ``grad_out @ weight``, chunk by chunk; False
        (nothing done) when the table has more than one reader this step."""
        if self._uses.get(id(table)) != 1:
            return False
        group = self._group(table)
        state = self.optimizer.state[table]
        if not state:  # as Adam's _init_group creates it for a fused group
            from torch.optim.optimizer import _get_scalar_dtype

            state["step"] = torch.zeros((), dtype=_get_scalar_dtype(is_fused=True), device=table.device)
            state["exp_avg"] = torch.zeros_like(table, memory_format=torch.preserve_format)
            state["exp_avg_sq"] = torch.zeros_like(table, memory_format=torch.preserve_format)
        decoupled = group.get("decoupled_weight_decay", isinstance(self.optimizer, torch.optim.AdamW))
        kernel = torch._fused_adamw_ if decoupled else torch._fused_adam_
        beta1, beta2 = group["betas"]
        options = dict(amsgrad=False, lr=group["lr"], beta1=beta1, beta2=beta2, weight_decay=group["weight_decay"],
                       eps=group["eps"], maximize=group["maximize"])
        step, exp_avg, exp_avg_sq = state["step"], state["exp_avg"], state["exp_avg_sq"]
        rows = self.rows
        shape = (rows, table.shape[1])
        if self._buffer is None or self._buffer.shape != shape or self._buffer.dtype != table.dtype \
                or self._buffer.device != table.device:
            self._buffer = torch.empty(shape, dtype=table.dtype, device=table.device)
        step.add_(1)
        with torch.no_grad():
            for start in range(0, table.shape[0], rows):
                end = min(start + rows, table.shape[0])
                grad = torch.mm(grad_out[start:end], weight, out=self._buffer[: end - start])
                kernel([table[start:end]], [grad], [exp_avg[start:end]], [exp_avg_sq[start:end]], [], [step],
                       **options)
        self._stepped.append(table)
        return True

    def _group(self, table: torch.nn.Parameter) -> dict | None:
        # Looked up per step: load_state_dict (resume) replaces the group dicts the lr scheduler then updates.
        return next((g for g in self.optimizer.param_groups if any(p is table for p in g["params"])), None)

    def _check(self, optimizer, args, kwargs) -> None:
        for table in self._stepped:
            if table.grad is not None:
                raise RuntimeError("a feature table stepped in its projection's backward (recbole_mm.speedups."
                                   "TableSteps) also received a gradient another way; read it only through "
                                   "its FeatureLinear, or build the model outside recbole_mm's trainer")

    def _reset(self, optimizer, args, kwargs) -> None:
        self._uses.clear()
        self._stepped.clear()


class _TableProjection(torch.autograd.Function):
    """``table @ weight.T + bias`` whose backward hands the table's gradient to :class:`TableSteps`."""

    @staticmethod
    def forward(ctx, table, weight, bias, steps):
        ctx.save_for_backward(table, weight)
        ctx.steps = steps
        ctx.has_bias = bias is not None
        return torch.addmm(bias, table, weight.t()) if bias is not None else torch.mm(table, weight.t())

    @staticmethod
    def backward(ctx, grad_out):
        table, weight = ctx.saved_tensors
        grad_out = grad_out.contiguous()
        # Weight and bias first: they read the table as the forward did, before the in-place step.
        grad_weight = grad_out.t().mm(table) if ctx.needs_input_grad[1] else None
        grad_bias = grad_out.sum(0) if ctx.has_bias and ctx.needs_input_grad[2] else None
        grad_table = None
        if ctx.needs_input_grad[0] and not ctx.steps.step_rows(table, grad_out, weight):
            grad_table = grad_out.mm(weight)
        return grad_table, grad_weight, grad_bias, None


GLIBC_MMAP_THRESHOLD_MAX = 32 * 2**20  # malloc.c: DEFAULT_MMAP_THRESHOLD_MAX on 64-bit


def holds_large_tensors(model: torch.nn.Module) -> bool:
    """Whether a parameter or buffer of ``model`` is above glibc's largest mmap threshold: the size at which a
    step's temporaries (shaped like the model's tables) keep getting fresh pages (:func:`reuse_freed_memory`).
    Below it glibc already serves freed blocks again (its threshold rises to the largest block freed)."""
    tensors = [*model.parameters(), *model.buffers()]
    return any((t.values() if t.is_sparse else t).numel() * t.element_size() > GLIBC_MMAP_THRESHOLD_MAX
               for t in tensors if t.layout in (torch.strided, torch.sparse_coo))


_GLIBC = None  # the C library through ctypes where it is glibc, else False (found on first use)
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD, _M_MMAP_MAX = -1, -3, -4  # malloc.h
_GLIBC_MMAP_MAX_DEFAULT = 65536  # malloc.c: DEFAULT_MMAP_MAX
_reusing = False  # reuse_freed_memory() is in force


def _glibc():
    global _GLIBC
    if _GLIBC is None:
        import ctypes
        import ctypes.util
        import sys

        _GLIBC = False
        if sys.platform.startswith("linux"):
            try:
                libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            except OSError:
                libc = None
            if libc is not None and hasattr(libc, "gnu_get_libc_version"):  # musl has a mallopt that does nothing
                _GLIBC = libc
    return _GLIBC


def reuse_freed_memory() -> bool:
    """Have glibc's malloc serve large blocks from its heap and keep freed pages (``mallopt``: no mmap, a 2 GiB
    trim threshold), for the rest of the process; False where that is not glibc (nothing changed).

    A training step allocates the same full-graph temporaries every time (tens of MB each at the Electronics
    shape). glibc hands every block above its mmap threshold (at most 32 MiB) fresh pages from the kernel and
    returns them on free, so each step page-faults and zero-fills all of them again: 44 % of GUME's CPU time
    at the Electronics shape was kernel time (issue #24's profile). Served from the heap, a freed block's pages are reused by
    the next step's. Numbers are unchanged (only where memory comes from); peak RSS may grow by what the
    heap keeps between steps (TikTok BPR with it: 585 MiB, results/speed-mmrec-baaf657.md; without: 561 MiB,
    results/speed-mmrec-8b16234.md). recbole_mm's trainer calls it on CPU for models that
    :func:`holds_large_tensors` (``reuse_freed_memory: True`` always, ``False`` never); evaluation maps its
    large blocks again while it runs (:func:`large_blocks_mapped`)."""
    global _reusing
    libc = _glibc()
    if not libc:
        return False
    _reusing = bool(libc.mallopt(_M_MMAP_MAX, 0)) and bool(libc.mallopt(_M_TRIM_THRESHOLD, 2**31 - 1))
    return _reusing


def release_free_heap() -> None:
    """Hand the C heap's free pages back to the system (glibc ``malloc_trim``; a no-op elsewhere).

    A training step frees many mid-sized tensors that glibc keeps in its heap rather than returning;
    evaluation then allocates its score matrices on top of them, so the process's peak holds both.
    Trimming at the switch between the two lowers the peak without touching any result (measured by
    ``benchmarks/gume_cost.py memory``; the models call it when they switch between training and evaluation).
    """
    libc = _glibc()
    if libc:
        libc.malloc_trim(0)


@contextlib.contextmanager
def large_blocks_mapped() -> Iterator[None]:
    """While it runs, blocks of 32 MiB and more get their own mappings again (returned to the kernel when
    freed), where :func:`reuse_freed_memory` had turned that off; nothing changes otherwise.

    A full-sort evaluation allocates one ``[users, items]`` score matrix per batch while RecBole's loop still
    holds the previous batch's. From the heap, the hole a freed matrix leaves rarely fits the next one (large
    blocks are aligned), so the heap grows by a whole matrix: at the Electronics shape (4,096 users × 63,002
    items, 1 GB per matrix) LightGCN's validation pass peaked at 9,529 MiB from the heap and at 3,674 MiB
    mapped (`python benchmarks/electronics.py --data-path <elec> --models LightGCN --threads 1 --batches 30`;
    2,785 MiB once the previous batch's scores also go first, recbole_mm.hooks).
    Evaluation allocates few such blocks, so mapping them costs little."""
    libc = _glibc() if _reusing else None
    if not libc:
        yield
        return
    libc.mallopt(_M_MMAP_THRESHOLD, GLIBC_MMAP_THRESHOLD_MAX)  # smaller blocks stay on the heap
    libc.mallopt(_M_MMAP_MAX, _GLIBC_MMAP_MAX_DEFAULT)
    try:
        yield
    finally:
        libc.mallopt(_M_MMAP_MAX, 0)


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

"""Loss terms shared by the multimodal models, as pure functions (tested against hand-computed values)."""

from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F


def bpr_loss(pos_scores: torch.Tensor, neg_scores: torch.Tensor) -> torch.Tensor:
    """-mean log σ(pos - neg)."""
    return -F.logsigmoid(pos_scores - neg_scores).mean()


def dot_bpr_loss(users: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
    """:func:`bpr_loss` of dot-product scores, -mean log σ(u·i⁺ − u·i⁻), over the rows of a batch's users and
    their positive and negative items (the pairwise loss most models train on)."""
    return bpr_loss((users * pos).sum(dim=1), (users * neg).sum(dim=1))


class _MeanLogSumExp(torch.autograd.Function):
    """Σ_n w_n log Σ_m c_m exp((a bᵀ)_nm) with its gradient formed in the forward pass; w_n = c_n / Σ c
    (the mean over rows when every count c is 1).

    ``counts`` (None: all 1): row n of ``a`` and of ``b`` each stand for c_n identical rows of a batch,
    so this equals the plain mean log-sum-exp of the expanded n'×n' problem (n' = Σ c): a candidate
    repeated c_m times adds c_m equal exponentials to every row's sum, and an anchor repeated c_n times
    adds c_n equal log-sum-exps to the mean. Duplicates all still count; only the summation is reordered.

    The gradient of a scalar weighted log-sum-exp is known as soon as the logits are: dL/da = W P b and
    dL/db = Pᵀ W a with P_nm = c_m exp(·)_nm / Σ_k c_k exp(·)_nk and W = diag(w). Forming both in
    forward, over blocks of ``_BLOCK`` anchor rows, keeps the working set in cache and never holds the
    n×n matrix for backward, and P itself is never formed: the row sums scale the n×d operands instead.
    ``bound`` ≥ max |logit| (1/τ for unit rows): up to 40 the exponentials can neither overflow nor
    underflow in float32 (the counts sum to the batch size, so a row's sum is bounded as in the expanded
    batch), so the usual max-shift pass is skipped.

    ``row_weights`` (optional) replaces w: Σ_n w_n log Σ_m c_m exp(·) with the given w (e.g. anchor counts,
    for a sum over a batch's anchors against a fixed candidate set: :func:`candidate_nce`).
    """

    @staticmethod
    def forward(ctx, a: torch.Tensor, b: torch.Tensor, bound: float, counts: torch.Tensor | None,
                row_weights: torch.Tensor | None = None) -> torch.Tensor:
        want_a, want_b = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        n = len(a)
        weights = row_weights if row_weights is not None else None if counts is None else counts / counts.sum()
        values = a.new_empty(n)
        grad_a = torch.empty_like(a) if want_a else None
        grad_b = torch.zeros_like(b) if want_b else None
        for start in range(0, n, _BLOCK):
            rows = slice(start, start + _BLOCK)
            exps = a[rows] @ b.T
            shift = None
            if bound > 40.0:
                shift = exps.amax(dim=1, keepdim=True)
                exps.sub_(shift)
            exps.exp_()
            if counts is not None:
                exps.mul_(counts)  # column m: c_m identical candidates
            sums = exps.sum(dim=1, keepdim=True)
            value = sums.log()
            values[rows] = (value if shift is None else value + shift).squeeze(1)
            if want_a or want_b:
                inverse = sums.reciprocal_()  # w_n / Σ_m c_m exp(·) per row, below
                inverse = inverse.div_(n) if weights is None else inverse.mul_(weights[rows, None])
                if want_a:
                    torch.mm(exps, b, out=grad_a[rows])
                    grad_a[rows].mul_(inverse)
                if want_b:
                    grad_b.addmm_(exps.T, a[rows] * inverse)
        ctx.save_for_backward(grad_a, grad_b)
        return values.mean() if weights is None else values @ weights

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: torch.Tensor):
        grad_a, grad_b = ctx.saved_tensors
        return (None if grad_a is None else grad_a * grad,
                None if grad_b is None else grad_b * grad, None, None, None)


_BLOCK = 128  # anchor rows per block: 128×2048 float32 logits = 1 MiB, cache-sized (64-512 were timed)


def info_nce(anchors: torch.Tensor, positives: torch.Tensor, temperature: float,
             counts: torch.Tensor | None = None) -> torch.Tensor:
    """mean_n -log softmax_m(cos(a_n, b_m)/τ)[n]: row n of ``positives`` is the positive of anchor n,
    every other row an in-batch negative (duplicated rows act as false negatives, as in GUME).

    Computed as mean_n [logsumexp_m(â_n·b̂_m) − â_n·b̂_n] with â = a/(‖a‖τ), b̂ = b/‖b‖: the temperature
    is folded into the n×d anchors instead of dividing the n×n logits (same function, reordered).

    ``counts``: for a batch whose duplicated ids have identical anchor rows and identical positive rows
    (a user's representation is the same wherever the user occurs), pass the distinct ids' rows once
    each with their multiplicities; the value and gradients are those of the expanded batch (every
    duplicate still counts, as a negative and as an anchor, through its count), at (distinct/n)² of the
    cost. See :class:`_MeanLogSumExp`.
    """
    a = F.normalize(anchors, dim=1) / temperature
    b = F.normalize(positives, dim=1)
    weights = None if counts is None else counts.to(a.dtype)
    positive = (a * b).sum(dim=1)
    positive = positive.mean() if weights is None else positive @ weights / weights.sum()
    return _MeanLogSumExp.apply(a, b, 1.0 / temperature, weights) - positive


def dot_info_nce(anchors: torch.Tensor, positives: torch.Tensor, temperature: float) -> torch.Tensor:
    """mean_n -log softmax_m(a_n·b_m/τ)[n] on raw dot products (no normalisation): row n of ``positives`` is
    the positive of anchor n, the other rows in-batch negatives (SLMRec's fine-and-coarse spaces).

    Computed as mean_n [logsumexp_m(a_n·b_m/τ) − a_n·b_n/τ] through :class:`_MeanLogSumExp` (gradients
    formed in forward, cache-sized blocks): the same function as cross-entropy over the n×n logits up to float
    rounding (3e-8 relative on SLMRec's TikTok losses), without the logits, their log-softmax and its n×n
    gradient, which at batch 2048 were a third of SLMRec's step."""
    scaled = anchors / temperature
    return (_MeanLogSumExp.apply(scaled, positives, float("inf"), None)
            - (scaled * positives).sum(dim=1).mean())


def candidate_nce(anchors: torch.Tensor, positives: torch.Tensor, candidates: torch.Tensor,
                  temperature: float, counts: torch.Tensor | None = None) -> torch.Tensor:
    """Σ_n -log [exp(cos(a_n, p_n)/τ) / Σ_j exp(cos(a_n, c_j)/τ)]: InfoNCE against a fixed candidate set
    (all users or all items, the positive among them), summed over the anchors (LGMRec's hypergraph contrast).

    Computed as Σ_n [logsumexp_j(â_n·ĉ_j) − â_n·p̂_n] with â = a/(‖a‖τ): the same function as the ratio of
    exponentials, without overflow for any τ.

    ``counts``: row n of ``anchors`` and ``positives`` stands for counts[n] identical rows (a batch's
    distinct ids once each, as from ``torch.unique(..., return_counts=True)``); the value and gradients are
    those of the expanded rows, at distinct/n of the cost, and the log-sum-exp runs through
    :class:`_MeanLogSumExp` (gradients formed in forward, no n×|candidates| matrix kept for backward): the
    same function up to float rounding, so a model's numbers move in their last digits when it passes them.
    """
    a = F.normalize(anchors, dim=1) / temperature
    positive = (a * F.normalize(positives, dim=1)).sum(dim=1)
    if counts is None:
        return (torch.logsumexp(a @ F.normalize(candidates, dim=1).T, dim=1) - positive).sum()
    weights = counts.to(a.dtype)
    return _MeanLogSumExp.apply(a, F.normalize(candidates, dim=1), 1.0 / temperature, None, weights) - positive @ weights


def bpr_side_contrast(o: torch.Tensor, side: torch.Tensor, h_id: torch.Tensor, users: torch.Tensor,
                      pos: torch.Tensor, neg: torch.Tensor, reg_weight: float, cl_weight: float,
                      temperature: float, batch_size: int) -> torch.Tensor:
    """MGCN's training loss, which SMORE keeps: BPR on the final rows ``o`` plus their squared L2 over the
    batch size, plus ``cl_weight`` times the InfoNCE between the side (modality) rows and the ID rows of
    the batch's positive items and of its users. ``users``/``pos``/``neg`` index the rows."""
    loss = bpr_loss((o[users] * o[pos]).sum(dim=1), (o[users] * o[neg]).sum(dim=1))
    loss = loss + reg_weight * squared_l2(o[users], o[pos], o[neg], denominator=batch_size)
    return loss + cl_weight * (info_nce(side[pos], h_id[pos], temperature)
                               + info_nce(side[users], h_id[users], temperature))


def squared_l2(*tensors: torch.Tensor, denominator: float) -> torch.Tensor:
    """½ Σ‖t‖² / denominator (GUME divides by the configured batch size, not the batch's)."""
    return 0.5 * sum(t.pow(2).sum() for t in tensors) / denominator


def gaussian_alignment(features: list[torch.Tensor | tuple[torch.Tensor, ...]]) -> torch.Tensor:
    """GUME's internal alignment L_VT: |Var(X^a) − Var(X^b)| + |Mean(X^a) − Mean(X^b)| over all entries
    (unbiased variance), averaged over all modality pairs; zero for a single modality.

    A modality's X may be given as a tuple of blocks (its rows in pieces, e.g. GUME's user and item
    blocks): the statistics are those of the blocks' concatenation, without building it.
    """
    stats = [_mean_var(x if isinstance(x, (tuple, list)) else (x,)) for x in features]
    pairs = list(itertools.combinations(stats, 2))
    if not pairs:
        return stats[0][0].new_zeros(())
    terms = [(var_a - var_b).abs() + (mean_a - mean_b).abs() for (mean_a, var_a), (mean_b, var_b) in pairs]
    return torch.stack(terms).mean()


def _mean_var(blocks: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and unbiased variance over every entry of the blocks (two passes, as torch.var)."""
    if len(blocks) == 1:
        return blocks[0].mean(), blocks[0].var()
    count = sum(block.numel() for block in blocks)
    mean = sum(block.sum() for block in blocks) / count
    return mean, sum(_SquaredDeviations.apply(block, mean) for block in blocks) / (count - 1)


class _SquaredDeviations(torch.autograd.Function):
    """``((x - mean) ** 2).sum()`` with torch's forward and backward arithmetic, saving ``x`` and ``mean`` instead
    of the ``[rows, d]`` deviations: ``x`` is a block the model holds anyway (GUME's R̃ X_I^m and X_I^m), so the
    deviations (a second copy of every block, 124 MB per step at the Electronics shape, alive from the forward
    to the backward) are recomputed in the backward instead of kept."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, mean: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x, mean)
        return ((x - mean) ** 2).sum()

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x, mean = ctx.saved_tensors
        # As autograd computes it: pow's grad * (2 * d), then sub's -sum for the broadcast mean.
        grad_x = (x - mean).mul_(2.0).mul_(grad)
        return grad_x, -grad_x.sum()


def cosine_alignment(online: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """1 - mean_n cos(online_n, target_n), with no gradient through ``target`` (BM3's bootstrapped
    alignment: the target view is a stop-gradient copy)."""
    return 1 - F.cosine_similarity(online, target.detach(), dim=-1).mean()


class _FrobeniusNorm(torch.autograd.Function):
    """‖x‖_F with torch's forward and a two-pass backward, ``x / ‖x‖ * g``: bit for bit torch's gradient
    (which also builds a ``‖x‖ == 0`` mask over the whole tensor and fills it: half the time of a backward
    that every BPR step of VBPR and BM3 pays three times). A zero ``x`` gets a zero gradient, as in torch."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        norm = torch.linalg.vector_norm(x)
        ctx.save_for_backward(x, norm)
        return norm

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        x, norm = ctx.saved_tensors
        # Clamping changes nothing but a zero norm, whose x is all zeros: 0 / tiny = 0.
        return x.div(norm.clamp_min(torch.finfo(norm.dtype).tiny)).mul_(grad)


def frobenius_norms(*tensors: torch.Tensor, denominator: float) -> torch.Tensor:
    """Σ‖t‖_F / denominator: norms, not squared (RecBole's and MMRec's ``EmbLoss``: VBPR's and BM3's
    regulariser, with the batch size as the denominator)."""
    return sum(_FrobeniusNorm.apply(t) for t in tensors) / denominator


def perturb_rows(rows: torch.Tensor, ids: torch.Tensor, eps: float = 0.1) -> torch.Tensor:
    """SimGCL-style noise, ``x + sign(x) ⊙ normalize_row(ε)·eps`` with ε ~ U(0, 1), applied to the full matrix
    and then indexed by ``ids`` (GUME's perturb(x)[users]), given only ``rows = x[ids]``: the noise is drawn
    for the distinct ids only (rows sharing an id share their noise), so a batch never pays for the rows it
    does not use.
    """
    unique, inverse = torch.unique(ids, return_inverse=True)
    noise = F.normalize(uniform_noise(unique, rows.shape[1], rows), dim=1)[inverse]
    return rows + torch.sign(rows) * noise * eps


def perturb_blocks(x: torch.Tensor, width: int, eps: float) -> torch.Tensor:
    """SimGCL's noise on every ``width``-column block of every row: b + sign(b) ⊙ ε/‖ε‖ · eps, ε ~ U(0, 1)
    drawn per block (through :func:`uniform_noise`, which tests can fix). MENTOR's noisy views, which keep
    several ``width``-wide tables side by side and perturb each on its own; GUME's per-row noise is
    :func:`perturb_rows`."""
    blocks = x.reshape(-1, width)
    noise = F.normalize(uniform_noise(torch.arange(len(blocks), device=x.device), width, blocks), dim=1)
    return (blocks + torch.sign(blocks) * noise * eps).reshape(x.shape)


def uniform_noise(ids: torch.Tensor, dim: int, like: torch.Tensor) -> torch.Tensor:
    """U(0, 1) noise of shape [len(ids), dim] for the rows ``ids`` (dtype and device of ``like``); one
    function so that tests can fix the noise per id."""
    return torch.rand(len(ids), dim, dtype=like.dtype, device=like.device)


def symmetric_bernoulli_kl(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """KL(σ(a) ‖ σ(b)) + KL(σ(b) ‖ σ(a)) of Bernoulli variables, entry-wise, from the logits ``a``, ``b`` (DA-MRS's
    preference alignment): it equals (σ(a) − σ(b)) · (a − b), finite where σ saturates (the reference's logs of
    σ reach log 0 there)."""
    return (torch.sigmoid(a) - torch.sigmoid(b)) * (a - b)


def neighbour_discrimination(views: list[torch.Tensor], items: torch.Tensor, n_positives: int,
                             temperature: float) -> torch.Tensor:
    """DA-MRS's neighbour discrimination, the mean over views: each anchor item is pulled towards the neighbours
    the views agree on, then towards its own view's next nearest. For view v and anchor item i (rows ``items`` of
    the ``[n_items, d]`` views; candidates the real items 1..): cosine c_ij, p_v = softmax_j(c) (no gradient);
    A = top-``n_positives`` of Σ_{w≠v} p_w + 2 p_v (neighbours the views agree on), S = the next
    ``n_positives`` of p_v outside A; with e_j = exp(c_ij / τ), T = Σ_j e_j:
    loss_i = −log(Σ_A e / T + 1e-9) − log(Σ_S e / (T − Σ_A e) + 1e-9), averaged over the anchors."""
    anchors = [F.normalize(v[items], dim=1) for v in views]
    candidates = [F.normalize(v[1:], dim=1) for v in views]
    # b.T made contiguous: autograd then computes b's gradient as aᵀ·g, 2.6 times faster here than the (g ᵀ·a)ᵀ it
    # picks for a transposed operand (the same floats: each entry is the same dot product).
    cosines = [a @ b.T.contiguous() for a, b in zip(anchors, candidates)]
    positives = _pseudo_positives(cosines, n_positives)
    losses = []
    for a, b, c, (agreed, single) in zip(anchors, candidates, cosines, positives):
        everything = _RowSumExp.apply(c, temperature)
        # The positives' similarities from their rows ([anchors, n_positives, d]), as the reference scores them:
        # gathering them from the anchors × items matrix would give that matrix a second, scattered gradient.
        on_agreed = torch.exp((a.unsqueeze(1) * b[agreed]).sum(dim=2) / temperature).sum(dim=1)
        on_single = torch.exp((a.unsqueeze(1) * b[single]).sum(dim=2) / temperature).sum(dim=1)
        losses.append((-torch.log(on_agreed / everything + 1e-9)
                       - torch.log(on_single / (everything - on_agreed) + 1e-9)).mean())
    return sum(losses) / len(losses)


# Rows of an anchors × items matrix processed at a time by the row-wise chains below: each step of a chain then
# reads what the previous one wrote from cache instead of memory (64 × 6,708 floats at TikTok: 1.7 MB), and no
# anchors × items temporary is allocated. Every operation is row-wise, so the floats are those of whole matrices.
_ROWS = 64


def _pseudo_positives(cosines: list[torch.Tensor], k: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per view, (A, S) of :func:`neighbour_discrimination` as ``[anchors, k]`` item indices (no gradient)."""
    n = cosines[0].shape[0]
    out = [(torch.empty(n, k, dtype=torch.long, device=c.device), torch.empty(n, k, dtype=torch.long, device=c.device))
           for c in cosines]
    with torch.no_grad():
        for start in range(0, n, _ROWS):
            probs = [torch.softmax(c[start:start + _ROWS], dim=1) for c in cosines]
            total = probs[0] + probs[1] if len(probs) > 1 else probs[0].clone()
            for p in probs[2:]:
                total += p
            ranking = torch.empty_like(total)
            for p, (agreed, single) in zip(probs, out):
                top = torch.topk(torch.add(total, p, out=ranking), k, dim=1).indices
                agreed[start:start + _ROWS] = top
                single[start:start + _ROWS] = torch.topk(p.scatter_(1, top, 0.0), k, dim=1).indices
    return out


class _RowSumExp(torch.autograd.Function):
    """Σ_j exp(c_ij / τ) per row, as ``torch.exp(c / τ).sum(dim=1)`` computes it and with its gradient
    (g_i · exp(c_ij / τ)) / τ, but with one anchors × items buffer instead of four: the exponentials are
    taken in place and become the gradient in place, ``_ROWS`` rows at a time."""

    @staticmethod
    def forward(ctx, c: torch.Tensor, temperature: float) -> torch.Tensor:
        e = torch.empty_like(c)
        sums = c.new_empty(c.shape[0])
        for start in range(0, c.shape[0], _ROWS):
            rows = torch.div(c[start:start + _ROWS], temperature, out=e[start:start + _ROWS]).exp_()
            torch.sum(rows, dim=1, out=sums[start:start + _ROWS])
        ctx.save_for_backward(e)
        ctx.temperature = temperature
        return sums

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        if getattr(ctx, "used", False):
            raise RuntimeError("_RowSumExp's backward ran twice (retain_graph): its saved exponentials are spent")
        ctx.used = True
        (e,) = ctx.saved_tensors
        # Training backpropagates each graph once, so e is free to become the gradient.
        for start in range(0, e.shape[0], _ROWS):
            e[start:start + _ROWS].mul_(grad[start:start + _ROWS].unsqueeze(1)).div_(ctx.temperature)
        return e, None

"""Paired significance of benchmark runs over the same test users, with Holm's correction.

Each run's per-user test metric (RecBole's per-user values, :mod:`recbole_mm.evaluation`) is first
averaged over the run's seeds, user by user; two runs are then paired over the users both were tested
on. For each pair: the mean paired difference with a 95 % percentile-bootstrap interval (users
resampled with replacement), the paired t-test's p-value (``scipy.stats.ttest_rel``; it tests the same
mean difference the interval estimates, and decides the marks) and the Wilcoxon signed-rank test's
(``scipy.stats.wilcoxon``, zero differences dropped; a check that does not lean on the mean).
Each family of p-values is Holm-corrected across all of a table's comparisons.

What this measures: whether the difference would hold for other users drawn like the test users,
*given these trained models*. Training randomness is what the seeds show: with at least three seeds per
run, :func:`seed_overlap` says whether the two runs' seed ranges overlap.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

ALPHA = 0.05
N_BOOTSTRAP = 10_000
MIN_SEEDS_FOR_OVERLAP = 3


def holm(pvalues: list[float] | np.ndarray) -> np.ndarray:
    """Holm's step-down adjusted p-values (same order as given): the i-th smallest p times (m - i + 1),
    made non-decreasing in that order and capped at 1. A NaN p-value counts as 1."""
    p = np.nan_to_num(np.asarray(pvalues, dtype=float), nan=1.0)
    adjusted, running, m = np.empty(len(p)), 0.0, len(p)
    for rank, index in enumerate(np.argsort(p, kind="stable")):
        running = max(running, min(1.0, (m - rank) * p[index]))
        adjusted[index] = running
    return adjusted


def bootstrap_ci(diff: np.ndarray, n_boot: int = N_BOOTSTRAP, level: float = 0.95, seed: int = 0,
                 chunk: int = 500) -> tuple[float, float]:
    """Percentile-bootstrap interval of the mean of ``diff`` (resampling its entries with replacement)."""
    diff = np.asarray(diff, dtype=np.float64)
    if len(diff) == 0:
        return math.nan, math.nan
    rng = np.random.default_rng(seed)
    means = np.concatenate([diff[rng.integers(0, len(diff), size=(min(chunk, n_boot - start), len(diff)))].mean(axis=1)
                            for start in range(0, n_boot, chunk)])
    tail = (1 - level) / 2
    low, high = np.quantile(means, [tail, 1 - tail])
    return float(low), float(high)


def paired_tests(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """Two-sided p-values of the paired t-test and the Wilcoxon signed-rank test of ``a - b``
    (1.0 when every difference is zero: nothing to tell apart)."""
    from scipy import stats

    diff = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    if len(diff) < 2 or not np.any(diff != 0):
        return 1.0, 1.0
    p_t = float(stats.ttest_rel(a, b).pvalue)
    p_w = float(stats.wilcoxon(diff, zero_method="wilcox").pvalue)
    return (1.0 if math.isnan(p_t) else p_t), (1.0 if math.isnan(p_w) else p_w)


def user_means(seeds: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """Per-user values averaged over seeds: ``[(users, values), ...]`` → (sorted users, means), each user's
    mean over the seeds that tested it."""
    users = np.concatenate([u for u, _ in seeds]).astype(str)
    values = np.concatenate([v for _, v in seeds]).astype(np.float64)
    unique, inverse = np.unique(users, return_inverse=True)
    sums = np.bincount(inverse, weights=values, minlength=len(unique))
    counts = np.bincount(inverse, minlength=len(unique))
    return unique, sums / counts


def seed_overlap(a: list[float], b: list[float]) -> bool | None:
    """Whether the seed ranges [min, max] of two runs overlap; None with fewer than three seeds in either."""
    if min(len(a), len(b)) < MIN_SEEDS_FOR_OVERLAP:
        return None
    return max(a) >= min(b) and max(b) >= min(a)


@dataclass
class RunValues:
    """What the comparisons need of one run for one metric: per-user values averaged over its seeds
    (users sorted) and the seed-level test values."""

    users: np.ndarray
    values: np.ndarray
    seeds: list[float]

    @property
    def mean(self) -> float:
        return float(np.mean(self.seeds))


@dataclass
class Comparison:
    metric: str
    run: str
    against: str
    kind: str  # "best" or "reference"
    users: int
    diff: float  # mean over the paired users of run - against
    ci: tuple[float, float]
    p_t: float
    p_wilcoxon: float
    seeds_run: list[float] = field(default_factory=list)
    seeds_against: list[float] = field(default_factory=list)
    p_t_holm: float = math.nan
    p_wilcoxon_holm: float = math.nan

    @property
    def significant(self) -> bool:
        """Significant at :data:`ALPHA` after Holm's correction (paired t-test)."""
        return self.p_t_holm < ALPHA

    @property
    def overlap(self) -> bool | None:
        return seed_overlap(self.seeds_run, self.seeds_against)


def compare(metric: str, run: str, against: str, kind: str, a: RunValues, b: RunValues,
            n_boot: int = N_BOOTSTRAP, seed: int = 0) -> Comparison:
    """One comparison of ``a`` (run) against ``b`` over the users both were tested on (no correction yet)."""
    common, ia, ib = np.intersect1d(a.users, b.users, assume_unique=True, return_indices=True)
    x, y = a.values[ia], b.values[ib]
    p_t, p_w = paired_tests(x, y)
    return Comparison(metric, run, against, kind, len(common), float(np.mean(x - y)) if len(common) else math.nan,
                      bootstrap_ci(x - y, n_boot, seed=seed), p_t, p_w, list(a.seeds), list(b.seeds))


def compare_table(runs: dict[str, dict[str, RunValues]], metrics: list[str], main: list[str],
                  reference: str | None = None, n_boot: int = N_BOOTSTRAP, seed: int = 0) -> list[Comparison]:
    """Every run against the table's best of each metric (highest seed mean among the ``main`` runs that
    have per-user values) and against ``reference``, Holm-corrected across all these comparisons.

    ``runs``: label → metric → :class:`RunValues` (runs without per-user values left out)."""
    comparisons = []
    for metric in metrics:
        have = {label: r[metric] for label, r in runs.items() if metric in r}
        candidates = [label for label in main if label in have]
        best = max(candidates, key=lambda label: have[label].mean) if candidates else None
        for kind, target in (("best", best), ("reference", reference)):
            if target is None or target not in have:
                continue
            for label, values in have.items():
                if label != target:
                    comparisons.append(compare(metric, label, target, kind, values, have[target], n_boot, seed))
    # A pair listed twice (a run against the best that is also the reference, or the other way round) is one
    # hypothesis: the tests are symmetric, so it counts once in the correction and both rows get its value.
    pairs = {c.metric + "\0" + "\0".join(sorted((c.run, c.against))): c for c in reversed(comparisons)}
    distinct = list(pairs.values())
    for name in ("p_t", "p_wilcoxon"):
        adjusted = dict(zip(pairs, holm([getattr(c, name) for c in distinct])))
        for c in comparisons:
            setattr(c, f"{name}_holm", float(adjusted[c.metric + "\0" + "\0".join(sorted((c.run, c.against)))]))
    return comparisons


def distinct_pairs(comparisons: list[Comparison]) -> int:
    """How many distinct (metric, unordered pair) hypotheses the comparisons test: Holm's m."""
    return len({(c.metric, frozenset((c.run, c.against))) for c in comparisons})


# ---- report text --------------------------------------------------------------------------------
MARKS = {"best": "*", "reference": "†"}


def marks(comparisons: list[Comparison]) -> dict[tuple[str, str], str]:
    """(run, metric) → the marks of its significant comparisons (``*`` vs the best, ``†`` vs the reference)."""
    out: dict[tuple[str, str], str] = {}
    for c in comparisons:
        if c.significant:
            out[(c.run, c.metric)] = out.get((c.run, c.metric), "") + MARKS[c.kind]
    return {key: "".join(sorted(set(value), key="*†".index)) for key, value in out.items()}


def _p(value: float) -> str:
    return "< 0.0001" if value < 1e-4 else f"{value:.4f}"


def _overlap(c: Comparison) -> str:
    if c.overlap is None:
        return f"- ({len(c.seeds_run)} vs {len(c.seeds_against)} seeds)"
    ranges = f"{min(c.seeds_run):.4f}-{max(c.seeds_run):.4f} vs {min(c.seeds_against):.4f}-{max(c.seeds_against):.4f}"
    return f"{'overlap' if c.overlap else 'apart'} ({ranges})"


def markdown_lines(comparisons: list[Comparison], untested: list[str], n_boot: int = N_BOOTSTRAP) -> list[str]:
    """The report's significance section."""
    lines = ["## Significance (paired over test users)", "",
             "Each run's per-user test metric is averaged over its seeds, then paired with the other run's over the "
             "users both were tested on. Δ = mean of run − against over those users, with a 95 % percentile-bootstrap "
             f"interval ({n_boot} resamples of users, seed 0); p-values of the paired t-test and the Wilcoxon "
             f"signed-rank test, each Holm-corrected across the {distinct_pairs(comparisons)} distinct comparisons below. In the table, "
             f"`*` marks a difference from the column's best run, `†` one from the reference run, significant at "
             f"{ALPHA} after correction (paired t-test); the best run of each column is in bold. Seeds: whether the "
             f"two runs' seed ranges of the metric overlap (with at least {MIN_SEEDS_FOR_OVERLAP} seeds each). These "
             "tests treat the trained models as fixed: they say whether a difference would hold for other users, "
             "while training randomness shows in the seed ranges."]
    if untested:
        lines += ["", "Not tested (no per-user metrics in their cached cells; `--fill-missing` runs them again): "
                  + ", ".join(untested) + "."]
    if not comparisons:
        return lines + ["", "No comparison: fewer than two runs have per-user metrics."]
    lines += ["", "| metric | run | against | users | Δ | 95 % CI | p (t, Holm) | p (Wilcoxon, Holm) | significant | seeds |",
              "|---|---|---|---:|---:|---|---:|---:|---|---|"]
    for c in comparisons:
        lines.append(f"| {c.metric} | {c.run} | {c.against} ({c.kind}) | {c.users} | {c.diff:+.4f} | "
                     f"[{c.ci[0]:+.4f}, {c.ci[1]:+.4f}] | {_p(c.p_t_holm)} | {_p(c.p_wilcoxon_holm)} | "
                     f"{'yes' if c.significant else 'no'} | {_overlap(c)} |")
    return lines

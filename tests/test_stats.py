"""Paired significance: Holm against hand-computed values, a true difference found, A/A at the nominal rate."""

from __future__ import annotations

import numpy as np
import pytest

from recbole_mm import stats


def test_holm_matches_hand_computed_values():
    # Sorted: 0.005·4 = 0.02, 0.01·3 = 0.03, 0.03·2 = 0.06, 0.04·1 = 0.04 → kept non-decreasing: 0.06.
    assert stats.holm([0.01, 0.04, 0.03, 0.005]).tolist() == pytest.approx([0.03, 0.06, 0.06, 0.02])
    # Capped at 1, monotone even when a later product is smaller, NaN counted as 1.
    assert stats.holm([0.5, 0.6]).tolist() == [1.0, 1.0]
    assert stats.holm([0.001, float("nan"), 0.02]).tolist() == pytest.approx([0.003, 1.0, 0.04])
    assert stats.holm([0.04]).tolist() == [0.04] and stats.holm([]).tolist() == []


def _users(n: int) -> np.ndarray:
    return np.array([f"u{i:05d}" for i in range(n)])


def _hits(rng, p: np.ndarray) -> np.ndarray:
    """One test item per user: per-user Recall@K is a hit flag with the user's probability."""
    return (rng.random(len(p)) < p).astype(np.float32)


def test_a_truly_better_run_is_found_significant_and_its_interval_excludes_zero():
    rng = np.random.default_rng(0)
    n = 2000
    p = rng.beta(0.6, 4.0, size=n)  # users differ a lot in how predictable they are
    better = stats.RunValues(_users(n), _hits(rng, np.clip(p + 0.05, 0, 1)), [0.2, 0.21, 0.2])
    worse = stats.RunValues(_users(n), _hits(rng, p), [0.15, 0.16, 0.15])
    c = stats.compare("recall@20", "worse", "better", "best", worse, better, n_boot=2000)
    assert c.users == n and c.diff == pytest.approx(float(np.mean(worse.values - better.values)))
    assert c.ci[0] < c.diff < c.ci[1] < 0 and c.p_t < 0.01 and c.p_wilcoxon < 0.01
    assert c.overlap is False  # seed ranges 0.15-0.16 vs 0.20-0.21


def test_a_a_comparisons_are_significant_at_about_the_nominal_rate():
    """Two runs that are draws of the same per-user distribution: over 400 simulated tables the paired
    tests and the bootstrap interval reject at about 5 % (binomial sd 1.1 %)."""
    rng = np.random.default_rng(1)
    reps, n = 400, 300
    rejections = {"t": 0, "wilcoxon": 0, "ci": 0}
    for _ in range(reps):
        p = rng.beta(0.6, 4.0, size=n)
        a, b = _hits(rng, p), _hits(rng, p)
        p_t, p_w = stats.paired_tests(a, b)
        low, high = stats.bootstrap_ci(a - b, n_boot=1000, seed=int(rng.integers(1 << 30)))
        rejections["t"] += p_t < 0.05
        rejections["wilcoxon"] += p_w < 0.05
        rejections["ci"] += not low <= 0 <= high
    for name, count in rejections.items():
        assert 0.02 <= count / reps <= 0.09, (name, count / reps)


def test_user_means_average_each_user_over_the_seeds_that_tested_it():
    users, means = stats.user_means([(np.array(["b", "a"]), np.array([1.0, 0.0])),
                                     (np.array(["a", "b", "c"]), np.array([1.0, 0.0, 0.5]))])
    assert users.tolist() == ["a", "b", "c"] and means.tolist() == [0.5, 0.5, 0.5]


def test_compare_table_pairs_on_common_users_and_corrects_across_all_comparisons():
    rng = np.random.default_rng(2)
    n = 1500
    p = rng.beta(0.6, 4.0, size=n)
    runs = {
        "best": {"recall@20": stats.RunValues(_users(n), _hits(rng, np.clip(p + 0.08, 0, 1)), [0.3, 0.31, 0.3])},
        "same": {"recall@20": stats.RunValues(_users(n), _hits(rng, np.clip(p + 0.08, 0, 1)), [0.29, 0.3, 0.31])},
        "base": {"recall@20": stats.RunValues(_users(n), _hits(rng, p), [0.2, 0.21, 0.19])},
        # An ablation with one seed and a higher mean: not a candidate for the table's best.
        "extra": {"recall@20": stats.RunValues(_users(n)[::2], _hits(rng, p[::2]), [0.5])},
    }
    comparisons = stats.compare_table(runs, ["recall@20"], main=["best", "same", "base"], reference="base",
                                      n_boot=500)
    pairs = [(c.run, c.against, c.kind) for c in comparisons]
    assert pairs == [("same", "best", "best"), ("base", "best", "best"), ("extra", "best", "best"),
                     ("best", "base", "reference"), ("same", "base", "reference"), ("extra", "base", "reference")]
    assert comparisons[2].users == n // 2  # paired over the users both were tested on
    # best vs base is listed twice (base against the best, best against the reference): one hypothesis in Holm's m.
    assert stats.distinct_pairs(comparisons) == 5
    distinct = [comparisons[i] for i in (0, 1, 2, 4, 5)]
    expected = dict(zip([(c.run, c.against) for c in distinct], stats.holm([c.p_t for c in distinct])))
    expected[("best", "base")] = expected[("base", "best")]
    assert [c.p_t_holm for c in comparisons] == pytest.approx([expected[(c.run, c.against)] for c in comparisons])
    verdict = {(c.run, c.against): c.significant for c in comparisons}
    assert verdict[("base", "best")] and verdict[("best", "base")] and not verdict[("same", "best")]
    marks = stats.marks(comparisons)
    assert marks[("base", "recall@20")] == "*" and marks[("best", "recall@20")] == "†"
    assert marks[("same", "recall@20")] == "†"  # level with the best, above the reference
    text = "\n".join(stats.markdown_lines(comparisons, ["old run"], n_boot=500))
    assert "| recall@20 | base | best (best) | 1500 |" in text and "Not tested (no per-user metrics" in text
    assert "apart (0.1900-0.2100 vs 0.3000-0.3100)" in text and "- (1 vs 3 seeds)" in text


def test_identical_runs_have_no_difference_to_test():
    values = np.array([0.0, 1.0, 0.5], dtype=np.float32)
    assert stats.paired_tests(values, values.copy()) == (1.0, 1.0)
    assert stats.seed_overlap([0.1, 0.2], [0.1, 0.2, 0.3]) is None
    assert stats.seed_overlap([0.1, 0.2, 0.15], [0.2, 0.3, 0.25]) is True

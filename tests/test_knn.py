"""kNN search: exact top-k with deterministic ties, its memory bound, and the approximate (faiss) backend."""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from recbole_mm.errors import RecBoleMMError
from recbole_mm.model import graphs
from recbole_mm.model.graphs import exact_neighbours, knn_neighbours
from recbole_mm.resources import install_command

from conftest import REPO


def sorted_reference(features: torch.Tensor, k: int, chunk_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The former builder: a full stable descending sort of each similarity row (ties by column)."""
    unit = torch.nn.functional.normalize(features.float(), dim=1)
    indices, values = [], []
    for start in range(0, len(features), chunk_size):
        sims = unit[start:start + chunk_size] @ unit.T
        order = torch.sort(sims, dim=1, descending=True, stable=True).indices[:, :min(k, len(features))]
        indices.append(order)
        values.append(torch.gather(sims, 1, order))
    return torch.cat(indices), torch.cat(values)


@pytest.mark.parametrize("seed", range(12))
def test_topk_ties_match_a_stable_sort(seed):
    """Small-integer features with zero rows and duplicates: similarities tie everywhere."""
    g = torch.Generator().manual_seed(seed)
    n, dim = int(torch.randint(5, 300, (1,), generator=g)), int(torch.randint(1, 5, (1,), generator=g))
    features = torch.randint(-1, 2, (n, dim), generator=g).float()
    features[torch.rand(n, generator=g) < 0.2] = 0
    k, chunk = int(torch.randint(1, 25, (1,), generator=g)), int(torch.randint(1, 80, (1,), generator=g))
    indices, sims = knn_neighbours(features, k, chunk, skip_empty=False)  # the search itself, zero rows too
    ref_indices, ref_sims = sorted_reference(features, k, chunk)
    assert torch.equal(indices, ref_indices) and torch.equal(sims, ref_sims)
    # A subset of the rows as queries (the base normalised block by block): the same neighbour similarities.
    # Not bit for bit: a matmul of another shape may sum in another order (BLAS kernels differ between CPUs
    # and thread counts), and with ties everywhere a last-bit difference can swap two tied neighbours.
    m = n // 2 + 1
    query_indices, query_sims = exact_neighbours(features[:m].clone(), features, k, chunk)
    unit = torch.nn.functional.normalize(features, dim=1)
    true_sims = torch.gather(unit[:m] @ unit.T, 1, query_indices)
    assert torch.allclose(query_sims, ref_sims[:m], atol=1e-6) and torch.allclose(true_sims, ref_sims[:m], atol=1e-6)


def test_rows_of_zeros_take_the_lowest_columns():
    features = torch.zeros(50, 4)
    features[7] = 1.0
    indices, sims = knn_neighbours(features, 5, chunk_size=8, skip_empty=False)
    assert indices[0].tolist() == [0, 1, 2, 3, 4] and torch.equal(sims[0], torch.zeros(5))
    assert indices[7].tolist() == [7, 0, 1, 2, 3]


def test_queries_against_blocks_of_the_base(monkeypatch):
    """With a tiny block budget the base rows are visited in several blocks and merged: same answer."""
    features = torch.randn(300, 6, generator=torch.Generator().manual_seed(1))
    full, full_sims = knn_neighbours(features, 7)
    monkeypatch.setattr(graphs, "_MAX_BLOCK_ELEMENTS", 16 * 40)
    queries, sims = exact_neighbours(features[::3].clone(), features, 7, chunk_size=16)
    assert torch.equal(queries, full[::3]) and torch.allclose(sims, full_sims[::3], atol=1e-6)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_exact_on_cuda_matches_cpu():
    features = torch.randn(2000, 32, generator=torch.Generator().manual_seed(2))
    indices, _ = knn_neighbours(features.cuda(), 10)
    assert indices.device.type == "cuda"
    # Float sums differ in the last bits between devices: compare neighbour sets, allowing near-ties.
    assert (indices.cpu() == knn_neighbours(features, 10)[0]).float().mean() > 0.99


@pytest.mark.slow
def test_memory_stays_within_n_k_plus_one_block():
    """Peak RSS of a child process building 30,000 × 32 exactly (5 % zero rows, so the tie path runs):
    the rise over its baseline must stay within a few similarity blocks plus the outputs. The former
    builder kept every block's full sort order alive: n² · 8 bytes = 7.2 GB here."""
    n, dim, k, chunk = 30_000, 32, 10, 1024
    script = textwrap.dedent(f"""
        import json, resource, torch
        from recbole_mm.model.graphs import knn_neighbours
        torch.set_num_threads(1)
        x = torch.randn({n}, {dim}, generator=torch.Generator().manual_seed(0))
        x[::20] = 0
        knn_neighbours(x[:2000], {k}, {chunk}, skip_empty=False)  # warm up torch's allocator and kernels
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        indices, _ = knn_neighbours(x, {k}, {chunk}, skip_empty=False)
        after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        print(json.dumps({{"before": before * 1024, "after": after * 1024, "zero_row": indices[0].tolist()}}))
    """)
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, check=True)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    block = chunk * n * 4  # one float32 similarity block
    # A few blocks' worth: the block, its comparison masks and top-k scratch, and what the allocator keeps
    # cached (measured: at most 0.49 GB in two runs; the bound is 0.89 GB, the former builder needed 7.2 GB).
    bound = 6 * block + 2 * n * k * 12 + 2 * n * dim * 4 + 128 * 2**20
    assert result["after"] - result["before"] < bound, (result, bound)
    assert result["zero_row"] == list(range(k))


# ---- backends --------------------------------------------------------------------------------------
def clustered(n: int, dim: int, seed: int = 0) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n // 50, dim))
    return torch.from_numpy(centres[rng.integers(0, len(centres), n)] + 0.5 * rng.normal(size=(n, dim))).float()


def recall(found: torch.Tensor, truth: torch.Tensor) -> float:
    return float(np.mean([len(set(a) & set(b)) / len(b) for a, b in zip(found.tolist(), truth.tolist())]))


def test_faiss_backend_recall_and_order():
    pytest.importorskip("faiss")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a single thread builds the same HNSW index every time
    try:
        features = clustered(3000, 24)
        features[5] = 0
        truth, _ = knn_neighbours(features, 10, skip_empty=False)
        found, sims = knn_neighbours(features, 10, backend="faiss", skip_empty=False)
        again, _ = knn_neighbours(features, 10, backend="faiss", skip_empty=False)
        skipped, _ = knn_neighbours(features, 10, backend="faiss")
    finally:
        torch.set_num_threads(threads)
    assert found.shape == (3000, 10) and recall(found, truth) > 0.95
    assert torch.all(sims[:, :-1] >= sims[:, 1:])  # descending
    assert found[5].tolist() == list(range(10))  # a zero row is answered exactly
    assert torch.equal(found, again)
    # By default the zero row (an item without content) has no neighbours and is no one's neighbour.
    assert (skipped[5] == graphs.NO_NEIGHBOUR).all() and not (skipped == 5).any()
    assert recall(skipped[torch.arange(3000) != 5], truth[torch.arange(3000) != 5]) > 0.95


def test_faiss_missing_is_one_clear_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "faiss", None)  # import faiss → ImportError
    with pytest.raises(RecBoleMMError, match=re.escape(install_command("ann"))):
        knn_neighbours(torch.randn(20, 3), 3, backend="faiss")


def test_auto_without_faiss_is_exact_and_says_so(monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "faiss", None)
    monkeypatch.setattr(graphs, "AUTO_APPROXIMATE_ABOVE", 100)
    features = torch.randn(150, 5, generator=torch.Generator().manual_seed(3))
    with caplog.at_level(logging.INFO, logger="recbole_mm.model.graphs"):
        indices, _ = knn_neighbours(features, 4, backend="auto")
    assert torch.equal(indices, knn_neighbours(features, 4)[0])
    assert install_command("ann") in caplog.text
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="recbole_mm.model.graphs"):
        knn_neighbours(features[:50], 4, backend="auto")  # below the threshold: exact, no line
    assert caplog.text == ""


def test_auto_above_threshold_uses_faiss(monkeypatch):
    pytest.importorskip("faiss")
    calls = []
    monkeypatch.setattr(graphs, "AUTO_APPROXIMATE_ABOVE", 100)
    monkeypatch.setattr(graphs, "_faiss_neighbours", lambda f, k, c: calls.append(len(f)) or (None, None))
    knn_neighbours(torch.randn(150, 5), 4, backend="auto")
    knn_neighbours(torch.randn(80, 5), 4, backend="auto")
    assert calls == [150]


def test_unknown_backend_is_rejected():
    with pytest.raises(RecBoleMMError, match="knn_backend"):
        knn_neighbours(torch.randn(10, 3), 3, backend="annoy")


def test_models_read_knn_backend(planted):
    from recbole.data import data_preparation
    from recbole.utils import get_model

    from recbole_mm.quick_start import create_dataset, make_config

    root, config_dict = planted
    for value, expected in ((None, "auto"), ("exact", "exact")):
        overrides = {} if value is None else {"knn_backend": value}
        config = make_config("GUME", "planted", config_dict={**config_dict, **overrides, "knn_k": 5})
        train_data = data_preparation(config, create_dataset(config))[0]
        assert get_model("GUME")(config, train_data._dataset).knn_backend == expected
    # Refused with the configuration, before data or model (and any log file) exist.
    with pytest.raises(RecBoleMMError, match="knn_backend: 'annoy'.*exact, faiss, auto"):
        make_config("MMGEF", "planted", config_dict={**config_dict, "knn_backend": "annoy"})


def test_scale_benchmark_rewrites_only_its_section(tmp_path):
    import importlib.util

    spec = importlib.util.spec_from_file_location("scale", REPO / "benchmarks" / "scale.py")
    scale = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(scale)
    path = tmp_path / "scale.md"
    path.write_text("# Scale\n\n## Electronics-shaped training\n\nrows by someone else\n")
    scale.write_section(path, f"{scale.BEGIN}\n## kNN graph building\nfirst\n{scale.END}\n")
    scale.write_section(path, f"{scale.BEGIN}\n## kNN graph building\nsecond\n{scale.END}\n")
    text = path.read_text()
    assert "rows by someone else" in text and "second" in text and "first" not in text
    assert text.count(scale.BEGIN) == 1


def test_slow_builds_log_progress(monkeypatch, caplog):
    features = torch.randn(100, 4, generator=torch.Generator().manual_seed(4))
    with caplog.at_level(logging.INFO, logger="recbole_mm.model.graphs"):
        knn_neighbours(features, 3, chunk_size=10)  # quick: silent
    assert caplog.text == ""
    monkeypatch.setattr(graphs, "_PROGRESS_AFTER_S", 0.0)
    monkeypatch.setattr(graphs, "_PROGRESS_EVERY_S", 0.0)
    with caplog.at_level(logging.INFO, logger="recbole_mm.model.graphs"):
        knn_neighbours(features, 3, chunk_size=10)
    assert "kNN graph (exact): 100/100 rows" in caplog.text


# ---- items without content ---------------------------------------------------------------------------
@pytest.mark.parametrize("seed", range(4))
def test_rows_without_content_get_no_neighbours_and_are_no_ones(seed):
    """missing_feature: zero leaves items without content as rows of zeros: they get no neighbours and
    appear in no one's list; the others' lists are the search over the rows with content alone."""
    g = torch.Generator().manual_seed(seed)
    features = torch.randint(-1, 2, (80, 3), generator=g).float()
    features[torch.rand(80, generator=g) < 0.3] = 0
    empty = ~features.any(dim=1)
    features[~empty & (features.abs().sum(dim=1) == 0)] = 1.0
    valid = (~empty).nonzero().squeeze(1)
    indices, sims = knn_neighbours(features, 60, chunk_size=7)
    assert indices.shape == sims.shape == (80, 60)
    assert (indices[empty] == graphs.NO_NEIGHBOUR).all() and (sims[empty] == 0).all()
    assert not torch.isin(indices, empty.nonzero().squeeze(1)).any()
    ref_indices, ref_sims = sorted_reference(features[valid], 60, 7)
    width = ref_indices.shape[1]  # fewer rows with content than k: the rest of each list is empty
    assert torch.equal(indices[valid, :width], valid[ref_indices]) and torch.equal(sims[valid, :width], ref_sims)
    assert (indices[:, width:] == graphs.NO_NEIGHBOUR).all()


def test_all_rows_empty_gives_empty_lists():
    indices, sims = knn_neighbours(torch.zeros(6, 3), 4)
    assert (indices == graphs.NO_NEIGHBOUR).all() and indices.shape == (6, 4) and (sims == 0).all()


def test_padding_row_skipped_through_a_view():
    """The usual empty row is the padding row 0 alone: the search then runs on a view of rows 1.. (no copy of
    the table) and finds what a search of those rows finds, ids shifted by one; row 0 gets no neighbours."""
    torch.manual_seed(3)
    features = torch.randn(40, 6)
    features[0] = 0
    indices, sims = knn_neighbours(features, 4, chunk_size=7)
    expected, expected_sims = knn_neighbours(features[1:].clone(), 4, chunk_size=7, skip_empty=False)
    assert torch.equal(indices[1:], expected + 1) and torch.equal(sims[1:], expected_sims)
    assert (indices[0] < 0).all() and torch.equal(sims[0], torch.zeros(4))

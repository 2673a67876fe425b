"""benchmarks/make_shaped.py --shape electronics and benchmarks/electronics.py at a tiny shape (300 users x
100 items): the generated set is what it claims (MMRec layout read by recbole_mm's reader, exact counts, no
duplicate pairs, 5-core degrees, long tail, MMRec's per-user split, MMRec's dtypes), and two real cells
(GUME and GUME freeze_features, one batch) write their rows into a scale.md without touching other sections.
No timed assertions: only that the measurements are there and consistent."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys

import numpy as np
import pytest

from conftest import REPO
from recbole_mm.data import files

sys.path.insert(0, str(REPO / "benchmarks"))
spec = importlib.util.spec_from_file_location("electronics", REPO / "benchmarks" / "electronics.py")
electronics = importlib.util.module_from_spec(spec)
spec.loader.exec_module(electronics)
make_shaped = electronics.make_shaped

SHAPE = {"users": 300, "items": 100, "interactions": 3000, "image_dim": 16, "text_dim": 8}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("elec")
    make_shaped.write_electronics(root, **SHAPE, seed=3, command="python benchmarks/make_shaped.py ROOT")
    return root


def test_degree_sequence_is_exact_bounded_and_long_tailed():
    rng = np.random.default_rng(0)
    degrees = make_shaped.degree_sequence(20_000, 180_000, 5, 400, 1.4, rng)
    assert degrees.sum() == 180_000 and degrees.min() >= 5 and degrees.max() <= 400
    assert degrees.max() > 10 * np.median(degrees)  # a long tail, not a uniform spread
    with pytest.raises(ValueError):
        make_shaped.degree_sequence(10, 40, 5, 100, 1.0, rng)  # 10 nodes cannot all have 5 of 40


def test_bipartite_edges_keep_degrees_and_have_no_repeated_pairs():
    rng = np.random.default_rng(1)
    users = np.array([30, 30, 5, 5, 10])  # dense: two users link to 30 of 40 items
    items = make_shaped.degree_sequence(40, int(users.sum()), 1, 5, 1.0, rng)
    u, i = make_shaped.bipartite_edges(users, items, rng)
    assert len(set(zip(u.tolist(), i.tolist()))) == len(u)
    assert np.array_equal(np.bincount(u, minlength=5), users)
    assert np.array_equal(np.bincount(i, minlength=40), items)


def test_generated_set_has_the_shape_layout_and_split(tiny):
    folder = tiny / make_shaped.ELECTRONICS_NAME
    table = files.read_mmrec_inter(str(folder / f"{make_shaped.ELECTRONICS_NAME}.inter"), "userID", "itemID")
    assert len(table) == SHAPE["interactions"]
    assert not table.duplicated(["userID", "itemID"]).any()
    user_degree = table.groupby("userID").size()
    item_degree = table.groupby("itemID").size()
    assert list(user_degree.index) == list(range(SHAPE["users"])) and user_degree.min() >= 5
    assert list(item_degree.index) == list(range(SHAPE["items"])) and item_degree.min() >= 5
    assert item_degree.max() > 4 * item_degree.median()
    counts = table.groupby(["userID", "x_label"]).size().unstack(fill_value=0)
    n = counts.sum(axis=1)
    held = np.where(n < 10, 2, (0.2 * n).astype(int))
    assert np.array_equal(counts[1], np.where(n < 10, 1, held // 2))
    assert np.array_equal(counts[2], held - counts[1])
    assert (counts[0] > 0).all()
    image, _ = files.open_feature_file(str(folder / "image_feat.npy"), "image", SHAPE["items"])
    text, _ = files.open_feature_file(str(folder / "text_feat.npy"), "text", SHAPE["items"])
    assert image.shape == (100, 16) and image.dtype == np.float64 and (np.asarray(image) >= 0).all()
    assert text.shape == (100, 8) and text.dtype == np.float32
    label = (folder / "GENERATED.txt").read_text()
    assert label.startswith("GENERATED") and "Written by: python benchmarks/make_shaped.py ROOT" in label
    again = tiny / "again"
    make_shaped.write_electronics(again, **SHAPE, seed=3)
    same = (again / make_shaped.ELECTRONICS_NAME / f"{make_shaped.ELECTRONICS_NAME}.inter").read_bytes()
    assert same == (folder / f"{make_shaped.ELECTRONICS_NAME}.inter").read_bytes()  # seeded


@pytest.mark.slow
def test_benchmark_writes_its_rows_and_keeps_other_sections(tiny):
    out = tiny / "scale.md"
    out.write_text("# Scale\n\n<!-- scale.py: kNN graph building (begin) -->\nknn rows\n"
                   "<!-- scale.py: kNN graph building (end) -->\n")
    electronics.main(["--data-path", str(tiny), "--batches", "1", "--models", "GUME", "GUME freeze_features",
                      "--out", str(out)])
    entries = {e["label"]: e for e in json.loads((tiny / "scale-electronics.json").read_text())}
    assert set(entries) == {"GUME", "GUME freeze_features"}
    for entry in entries.values():
        assert "failed" not in entry, entry.get("failed")
        assert entry["torch_threads"] == 1 and entry["batches_timed"] == 1
        assert (entry["users"], entry["items"], entry["interactions"]) == (300, 100, 3000)
        assert entry["valid_users"] == 300
        assert entry["batches_per_epoch"] == -(-entry["train_interactions"] // 2048)
        for name in ("load", "build", "first_batch", "train", "eval"):
            assert entry["phases"][name]["wall"] > 0 and entry["phases"][name]["cpu"] >= 0
        assert entry["peak_rss_mib"] >= entry["phases"]["build"]["peak_rss_mib"] > 0
        assert 0 <= entry["valid"]["recall@20"] <= 1
    # Freezing removes exactly the two trainable raw-feature tables.
    removed = entries["GUME"]["trainable_parameters"] - entries["GUME freeze_features"]["trainable_parameters"]
    assert removed == (100 + 1) * (16 + 8)  # item rows include RecBole's padding row 0
    text = out.read_text()
    assert "knn rows" in text and text.count(electronics.BEGIN) == 1
    assert "| GUME freeze_features | 300 | 100 | 3,000 | 1 |" in text
    assert "extrapolated, not measured" in text and "shared with other jobs" in text
    assert "`freeze_features: True` on this shape:" in text and f"{removed:,} fewer trainable" in text
    assert "python benchmarks/make_shaped.py ROOT" in text  # the data's command
    # Rewriting replaces the section; a failed model keeps its row with the reason.
    entries["VBPR"] = {**entries["GUME"], "label": "VBPR", "failed": "killed by SIGKILL (out of memory?)"}
    electronics.scale.write_section(out, electronics.render(entries), electronics.BEGIN, electronics.END)
    text = out.read_text()
    assert text.count(electronics.BEGIN) == 1 and "knn rows" in text
    assert "| VBPR | | | | 1 | **failed**: killed by SIGKILL (out of memory?) |" in text


@pytest.mark.slow
def test_memory_phases_prints_each_phase_of_the_same_cell(tiny):
    """benchmarks/memory_phases.py runs electronics.cell_phases: one line per phase, in order, with the memory
    fields and the CPU seconds per timed batch; a key=value setting reaches the config (a bad one fails)."""
    script = REPO / "benchmarks" / "memory_phases.py"
    done = subprocess.run([sys.executable, str(script), "GUME", "--data-path", str(tiny), "--batches", "1",
                           "reuse_freed_memory=False"], capture_output=True, text=True, cwd=REPO)
    assert done.returncode == 0, done.stderr[-2000:]
    lines = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    assert [line["phase"] for line in lines] == ["dataset", "features", "loaders", "build", "first batch",
                                                 "1 batches", "validation pass"]
    for line in lines:
        assert line["VmHWM"] >= line["VmRSS"] > 0 and {"RssAnon", "RssFile"} <= set(line)
    assert lines[5]["cpu_seconds_per_batch"] > 0
    bad = subprocess.run([sys.executable, str(script), "GUME", "--data-path", str(tiny), "--batches", "1",
                          "n_layers=-1"], capture_output=True, text=True, cwd=REPO)
    assert bad.returncode != 0 and "n_layers" in bad.stderr

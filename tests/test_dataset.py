"""Tests of recbole_mm's data layer: MMRec-layout interaction files, per-modality .npy item features,
their alignment to RecBole's internal item ids, and the errors that bad input gives.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

import recbole_mm  # noqa: F401  (installs the compatibility shims; must precede any recbole import)

import numpy as np
import pandas as pd
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from recbole.data import data_preparation

from recbole_mm.data import files
from recbole_mm.errors import DataError
from recbole_mm.quick_start import create_dataset, make_config

MAIN = Path(__file__).resolve().parent.parent
TIKTOK = MAIN / "dataset" / "tiktok"
HEADER = ("userID", "itemID", "x_label")
NAME = "toy"

# (user, item, x_label), deliberately not grouped by split. Users are non-contiguous ids; item 4 has
# a feature row but no interaction; user 0 has no training row (a cold-start user).
TOY_ROWS = [
    (7, 1, 1), (3, 0, 2), (7, 0, 0), (12, 0, 2), (0, 2, 1), (3, 1, 0), (7, 3, 0),
    (12, 5, 0), (3, 2, 0), (0, 1, 2), (7, 5, 2), (12, 2, 2), (12, 3, 1), (3, 5, 1),
]
TOY_ITEM_ROWS = 6  # max itemID + 1


@pytest.fixture(autouse=True)
def _in_tmp_cwd(tmp_path, monkeypatch):
    """RecBole may write log/ or saved/ relative to cwd: keep that inside the test's tmp folder.

    RecBole's Config also reads ``--key=value`` from sys.argv: hide pytest's own options from it.
    """
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", sys.argv[:1])


def write_inter(folder: Path, rows, header=HEADER, name=NAME) -> Path:
    """Write an MMRec .inter file (tab-separated, untyped header) and return its path."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.inter"
    lines = ["\t".join(header)] + ["\t".join(map(str, row)) for row in rows]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def write_dataset(root: Path, rows=TOY_ROWS, features=None, name=NAME) -> Path:
    """Write ``root/name/`` with the .inter file and one .npy per entry of ``features`` ({file: array})."""
    folder = root / name
    write_inter(folder, rows, name=name)
    if features is None:
        features = {"image_feat.npy": toy_features(TOY_ITEM_ROWS, 4)}
    for file, array in features.items():
        np.save(folder / file, array)
    return folder


def toy_features(n_rows: int, dim: int, seed: int = 0) -> np.ndarray:
    """Float64 features with distinct rows."""
    return np.random.default_rng(seed).normal(size=(n_rows, dim)) + np.arange(n_rows)[:, None]


def load(root: Path, name=NAME, **config):
    """(config, dataset) for model VBPR on ``root/name``; ``config`` overrides the defaults below."""
    config_dict = {
        "data_path": str(root),
        "USER_ID_FIELD": "userID",
        "ITEM_ID_FIELD": "itemID",
        "modalities": {"image": "image_feat.npy"},
        "checkpoint_dir": str(root / "saved"),
        "show_progress": False,
    }
    config_dict.update(config)
    cfg = make_config(model="VBPR", dataset=name, config_dict=config_dict)
    return cfg, create_dataset(cfg)


def pairs(dataset) -> Counter:
    """Multiset of (user token, item token) of a dataset's interactions."""
    users = dataset.id2token(dataset.uid_field, dataset.inter_feat[dataset.uid_field].numpy())
    items = dataset.id2token(dataset.iid_field, dataset.inter_feat[dataset.iid_field].numpy())
    return Counter(zip(map(str, users), map(str, items)))


def expected_pairs(rows, label: int, drop_cold: bool = False) -> Counter:
    warm = {u for u, _, x in rows if x == 0}
    return Counter(
        (str(u), str(i)) for u, i, x in rows if x == label and (not drop_cold or x == 0 or u in warm)
    )


def feature_row(dataset, modality: str, item_token) -> torch.Tensor:
    """The aligned feature row of the item whose MMRec id is ``item_token``."""
    return dataset.item_features[modality][dataset.token2id(dataset.iid_field, str(item_token))]


# ---- 1. the given split is honoured --------------------------------------------------------------
def test_mmrec_split_is_honoured_exactly(tmp_path):
    """train/valid/test after data_preparation hold exactly the x_label 0/1/2 rows of the file."""
    write_dataset(tmp_path)
    cfg, ds = load(tmp_path)
    assert ds.inter_num == len(TOY_ROWS)
    parts = data_preparation(cfg, ds)
    for label, loader in enumerate(parts):
        got = pairs(loader._dataset)
        assert got == expected_pairs(TOY_ROWS, label), f"split {files.SPLITS[label]}"
        assert sum(got.values()) == sum(1 for row in TOY_ROWS if row[2] == label)


# ---- 2. feature alignment (property) -------------------------------------------------------------
@st.composite
def mmrec_datasets(draw):
    """Random small MMRec dataset: rows in random order, random item ids, two modalities of float64."""
    used = draw(st.lists(st.integers(0, 25), min_size=3, max_size=10, unique=True))
    n_users = draw(st.integers(1, 4))
    rows = []
    for k, item in enumerate(used):  # every used item interacts; the first three cover every split
        label = k if k < 3 else draw(st.integers(0, 2))
        rows.append((draw(st.integers(0, n_users - 1)) * 5 + 1, item, label))
    extra = draw(st.lists(st.tuples(st.integers(0, n_users - 1), st.sampled_from(used), st.integers(0, 2)),
                          max_size=8))
    rows += [(u * 5 + 1, i, x) for u, i, x in extra]
    rows = draw(st.permutations(rows))
    n_rows = max(used) + 1
    dim = draw(st.integers(1, 5))
    seed = draw(st.integers(0, 2**31 - 1))
    rng = np.random.default_rng(seed)
    image = rng.normal(scale=10.0 ** draw(st.integers(-3, 3)), size=(n_rows, dim))
    text = rng.uniform(-1, 1, size=(n_rows, dim + draw(st.integers(1, 4))))
    return rows, image, text


@settings(max_examples=15, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(data=mmrec_datasets())
def test_item_features_align_to_internal_ids(tmp_path, data):
    """item_features[m][j] is row int(token(j)) of the .npy as float32; row 0 is zero padding."""
    rows, image, text = data
    root = Path(tempfile.mkdtemp(dir=tmp_path))
    write_dataset(root, rows, {"image_feat.npy": image, "text_feat.npy": text})
    _, ds = load(root, modalities={"image": "image_feat.npy", "text": "text_feat.npy"})
    feats = ds.item_features
    assert set(feats) == {"image", "text"}
    tokens = ds.field2id_token[ds.iid_field]
    assert sorted(int(t) for t in tokens[1:]) == sorted({i for _, i, _ in rows})
    for name, npy in (("image", image), ("text", text)):
        tensor = feats[name]
        assert tensor.dtype == torch.float32
        assert tuple(tensor.shape) == (ds.item_num, npy.shape[1])
        assert torch.equal(tensor[0], torch.zeros(npy.shape[1]))
        expected = np.stack([npy[int(tokens[j])] for j in range(1, ds.item_num)]).astype(np.float32)
        assert np.array_equal(tensor[1:].numpy(), expected)


# ---- 3. cold-start users -------------------------------------------------------------------------
@pytest.mark.parametrize("drop_cold", [True, False])
def test_filter_cold_start_users(tmp_path, drop_cold):
    """True drops the valid/test rows of users without training rows (user 0 here); False keeps them."""
    write_dataset(tmp_path)
    cfg, ds = load(tmp_path, filter_cold_start_users=drop_cold)
    parts = data_preparation(cfg, ds)
    for label, loader in enumerate(parts):
        assert pairs(loader._dataset) == expected_pairs(TOY_ROWS, label, drop_cold)
    cold_rows = sum(1 for u, _, _ in TOY_ROWS if u == 0)
    assert ds.inter_num == len(TOY_ROWS) - (cold_rows if drop_cold else 0)


# ---- 4. items without features -------------------------------------------------------------------
def _with_missing_item(tmp_path, missing_item=2):
    image = toy_features(TOY_ITEM_ROWS, 3)
    image[4] = 1000.0  # item 4 has no interaction: its row still counts towards the file's mean
    image[missing_item] = np.nan
    write_dataset(tmp_path, features={"image_feat.npy": image})
    return image


def test_missing_feature_default_is_error(tmp_path):
    """An all-NaN row is refused by default, with a message naming the file and 'missing_feature'."""
    _with_missing_item(tmp_path)
    _, ds = load(tmp_path)
    with pytest.raises(DataError) as exc:
        _ = ds.item_features
    assert "missing_feature" in str(exc.value)
    assert str(tmp_path / NAME / "image_feat.npy") in str(exc.value)


def test_missing_feature_mean(tmp_path):
    """missing_feature: mean fills the item's row with the mean of the file's other (non-NaN) rows."""
    image = _with_missing_item(tmp_path)
    _, ds = load(tmp_path, missing_feature="mean")
    expected_mean = np.delete(image, 2, axis=0).mean(axis=0).astype(np.float32)
    np.testing.assert_allclose(feature_row(ds, "image", 2).numpy(), expected_mean, rtol=1e-6)
    for item in (0, 1, 3, 5):
        assert np.array_equal(feature_row(ds, "image", item).numpy(), image[item].astype(np.float32))
    assert not torch.isnan(ds.item_features["image"]).any()


def test_missing_feature_zero(tmp_path):
    """missing_feature: zero fills the item's row with zeros and leaves the others as in the file."""
    image = _with_missing_item(tmp_path)
    _, ds = load(tmp_path, missing_feature="zero")
    assert torch.equal(feature_row(ds, "image", 2), torch.zeros(3))
    for item in (0, 1, 3, 5):
        assert np.array_equal(feature_row(ds, "image", item).numpy(), image[item].astype(np.float32))


# ---- 5. bad input → DataError naming the file ----------------------------------------------------
def _good_image():
    return toy_features(TOY_ITEM_ROWS, 4)


def _nan_in_row():
    a = _good_image()
    a[3, 1] = np.nan
    return a


def _inf(sign):
    def make():
        a = _good_image()
        a[5, 0] = sign * np.inf
        return a
    return make


BAD_FEATURES = {
    "too_few_rows": lambda: toy_features(TOY_ITEM_ROWS - 1, 4),
    "too_many_rows": lambda: toy_features(TOY_ITEM_ROWS + 1, 4),
    "one_d": lambda: np.arange(TOY_ITEM_ROWS, dtype=np.float64),
    "three_d": lambda: np.ones((TOY_ITEM_ROWS, 2, 2)),
    "nan_in_part_of_row": _nan_in_row,
    "inf": _inf(1),
    "minus_inf": _inf(-1),
}


@pytest.mark.parametrize("case", sorted(BAD_FEATURES))
def test_bad_feature_file_raises_data_error(tmp_path, case):
    """A malformed .npy raises a one-line DataError naming it when item_features is read."""
    write_dataset(tmp_path, features={"image_feat.npy": BAD_FEATURES[case]()})
    _, ds = load(tmp_path)
    with pytest.raises(DataError) as exc:
        _ = ds.item_features
    message = str(exc.value)
    assert str(tmp_path / NAME / "image_feat.npy") in message
    assert "\n" not in message


def test_wrong_row_count_message(tmp_path):
    """The wrong-row-count error states the rows found and the rows needed (max itemID + 1)."""
    write_dataset(tmp_path, features={"image_feat.npy": toy_features(TOY_ITEM_ROWS + 3, 4)})
    _, ds = load(tmp_path)
    with pytest.raises(DataError, match=rf"wrong row count: {TOY_ITEM_ROWS + 3} rows.* {TOY_ITEM_ROWS} rows"):
        _ = ds.item_features


def test_missing_feature_file_raises_data_error(tmp_path):
    """A declared modality whose file is absent raises DataError naming the file and its folder."""
    write_dataset(tmp_path)
    _, ds = load(tmp_path, modalities={"image": "image_feat.npy", "audio": "audio_feat.npy"},
                 feature_source="download them from EXAMPLE")
    with pytest.raises(DataError) as exc:
        _ = ds.item_features
    message = str(exc.value)
    assert "audio_feat.npy" in message and "image_feat.npy" not in message
    assert str(tmp_path / NAME) in message
    assert "download them from EXAMPLE" in message
    assert "\n" not in message


def _replace(rows, index, row):
    rows = list(rows)
    rows[index] = row
    return rows


BAD_INTER = {
    "negative_item": _replace(TOY_ROWS, 0, (7, -1, 1)),
    "non_integer_item": _replace(TOY_ROWS, 0, (7, "abc", 1)),
    "fractional_user": _replace(TOY_ROWS, 0, ("7.5", 1, 1)),
    "x_label_3": _replace(TOY_ROWS, 0, (7, 1, 3)),
    "empty_valid_split": [r for r in TOY_ROWS if r[2] != 1],
    "empty_train_split": [r for r in TOY_ROWS if r[2] != 0],
    "item_id_beyond_int64": _replace(TOY_ROWS, 0, (7, "99999999999999999999", 1)),
}


@pytest.mark.parametrize("case", sorted(BAD_INTER))
def test_bad_inter_file_raises_data_error(tmp_path, case):
    """Malformed MMRec rows raise a one-line DataError naming the .inter file, from the reader and the dataset."""
    path = write_inter(tmp_path / NAME, BAD_INTER[case])
    with pytest.raises(DataError) as exc:
        files.read_mmrec_inter(str(path), "userID", "itemID")
    assert str(path) in str(exc.value) and "\n" not in str(exc.value)
    with pytest.raises(DataError) as exc:
        load(tmp_path)
    assert str(path) in str(exc.value)


@pytest.mark.parametrize("header", [("userID", "item", "x_label"), ("user", "itemID", "x_label"),
                                    ("userID", "itemID", "split"), ("userID", "itemID")],
                         ids=["no_itemID", "no_userID", "no_x_label", "no_x_label_two_columns"])
def test_missing_header_column_raises_data_error(tmp_path, header):
    """A header without userID, itemID or x_label raises DataError naming the .inter file and the column."""
    rows = [row[: len(header)] for row in TOY_ROWS]
    path = write_inter(tmp_path / NAME, rows, header=header)
    lacking = next(c for c in HEADER if c not in header)
    with pytest.raises(DataError) as exc:
        files.read_mmrec_inter(str(path), "userID", "itemID")
    assert str(path) in str(exc.value) and lacking in str(exc.value)
    # Through the dataset (data_format auto): still a DataError naming the file, not a RecBole crash.
    with pytest.raises(DataError) as exc:
        load(tmp_path)
    assert str(path) in str(exc.value)


def test_missing_inter_file_raises_data_error(tmp_path):
    """data_format: mmrec with no .inter file names the missing file."""
    (tmp_path / NAME).mkdir()
    with pytest.raises(DataError, match="interaction file not found") as exc:
        load(tmp_path, data_format="mmrec")
    assert str(tmp_path / NAME / f"{NAME}.inter") in str(exc.value)


def test_missing_dataset_folder_raises_data_error(tmp_path):
    """A data_path without the dataset's folder raises DataError naming that folder (no download attempt)."""
    with pytest.raises(DataError, match="dataset folder not found") as exc:
        load(tmp_path, name="nowhere")
    assert str(tmp_path / "nowhere") in str(exc.value)
    assert not (tmp_path / "nowhere").exists()


# ---- 6. bad input on the command line ------------------------------------------------------------
@pytest.mark.slow
def test_cli_wrong_row_count_exits_2_without_writing(tmp_path):
    """run_recbole_mm.py on a bad feature file: exit 2, one 'recbole_mm: error:' line naming it, no files."""
    data = tmp_path / "data"
    write_dataset(data, features={"image_feat.npy": toy_features(TOY_ITEM_ROWS + 2, 4)})
    work = tmp_path / "work"
    work.mkdir()
    proc = subprocess.run(
        [sys.executable, str(MAIN / "run_recbole_mm.py"), "--model=VBPR", f"--dataset={NAME}",
         f"--data_path={data}", "--USER_ID_FIELD=userID", "--ITEM_ID_FIELD=itemID",
         "--modalities={'image': 'image_feat.npy'}", "--show_progress=False"],
        cwd=work, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("recbole_mm: error:")]
    assert len(errors) == 1, proc.stderr
    assert str(data / NAME / "image_feat.npy") in errors[0]
    assert "wrong row count" in errors[0]
    assert "Traceback" not in proc.stderr
    assert os.listdir(work) == []  # no log/, saved/ or anything else half-written
    assert sorted(os.listdir(data / NAME)) == ["image_feat.npy", f"{NAME}.inter"]


# ---- 7. float64 → float32, memory-mapped reading -------------------------------------------------
def test_float64_features_are_memory_mapped_and_cast(tmp_path):
    """open_feature_file memory-maps the .npy without copying; item_features holds its float32 cast."""
    image = toy_features(TOY_ITEM_ROWS, 4) + 0.1  # values not exactly representable in float32
    folder = write_dataset(tmp_path, features={"image_feat.npy": image})
    array, missing = files.open_feature_file(str(folder / "image_feat.npy"), "image", TOY_ITEM_ROWS)
    assert isinstance(array, np.memmap)
    assert array.dtype == np.float64 and array.shape == image.shape
    assert missing.size == 0
    _, ds = load(tmp_path)
    feats = ds.item_features["image"]
    assert feats.dtype == torch.float32
    for item in (0, 1, 2, 3, 5):
        row = feature_row(ds, "image", item).numpy()
        assert np.array_equal(row, image[item].astype(np.float32))
        assert not np.array_equal(row.astype(np.float64), image[item])


# ---- 8. the shipped TikTok dataset ---------------------------------------------------------------
def test_tiktok_loads_with_published_split(tmp_path):
    """Shipped tiktok: image/audio [item_num, 128] aligned to ids; split sizes after dropping cold users."""
    inter = pd.read_csv(TIKTOK / "tiktok.inter", sep="\t")
    warm = set(inter.loc[inter.x_label == 0, "userID"])
    expected = [int(((inter.x_label == label) & inter.userID.isin(warm)).sum()) for label in range(3)]
    assert expected[0] == 59541
    assert expected[1] < int((inter.x_label == 1).sum()) and expected[2] < int((inter.x_label == 2).sum())

    cfg = make_config(model="VBPR", dataset="tiktok",
                      config_dict={"checkpoint_dir": str(tmp_path / "saved"), "show_progress": False})
    assert cfg["filter_cold_start_users"]
    ds = create_dataset(cfg)
    feats = ds.item_features
    assert set(feats) == {"image", "audio"}
    for name in ("image", "audio"):
        assert tuple(feats[name].shape) == (ds.item_num, 128)
        assert feats[name].dtype == torch.float32
        npy = np.load(TIKTOK / f"{name}_feat.npy", mmap_mode="r")
        for j in (1, ds.item_num // 2, ds.item_num - 1):
            token = int(ds.field2id_token[ds.iid_field][j])
            assert np.array_equal(feats[name][j].numpy(), np.asarray(npy[token], dtype=np.float32))
    train, valid, test = data_preparation(cfg, ds)
    assert [len(part._dataset) for part in (train, valid, test)] == expected


def test_align_features_in_row_blocks_equals_the_whole_table_cast(monkeypatch, tmp_path):
    """align_features copies a float64 file block by block (never the whole table in float64): the
    result equals the one-shot cast for any block size, rows in any order, a block boundary included."""
    rng = np.random.default_rng(0)
    table = rng.standard_normal((23, 5))
    path = tmp_path / "f.npy"
    np.save(path, table)
    array, missing = files.open_feature_file(str(path), "image", 23)
    rows = rng.permutation(23)
    expected = np.concatenate([np.zeros((1, 5), np.float32), table[rows].astype(np.float32)])
    for chunk in (1, 4, 7, 4096):
        monkeypatch.setattr(files, "_ROW_CHUNK", chunk)
        out = files.align_features(array, rows, missing, "error", str(path))
        assert out.dtype == torch.float32 and np.array_equal(out.numpy(), expected)

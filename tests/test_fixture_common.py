"""scripts/fixture_common.py, the fidelity fixture makers' shared set-up: it still draws the committed fixtures' data
and batches (the makers themselves need the reference code and are not run here), and its stand-ins behave."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import REPO

# Loaded from its file: scripts/ is not a package, and putting it on sys.path would reach every other test.
_spec = importlib.util.spec_from_file_location("fixture_common", REPO / "scripts" / "fixture_common.py")
common = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(common)
FakeDataset, draw_batches, feature_folder = common.FakeDataset, common.draw_batches, common.feature_folder
generated_dataset, mmrec_config = common.generated_dataset, common.mmrec_config

DATA = REPO / "tests" / "data"


@pytest.mark.parametrize("folder, seed, n_users, n_items, per_user, dims", [
    ("mmrec_fidelity", 13, 10, 9, (4, 7), {"image": 6, "text": 5}),  # make_mmrec_fidelity_fixture.py
    ("pgl_fidelity", 22, 40, 30, (5, 9), {"image": 6, "text": 5}),  # make_pgl_fidelity_fixture.py
])
def test_generated_dataset_is_the_committed_fixture_data(folder, seed, n_users, n_items, per_user, dims):
    inter, features = generated_dataset(np.random.default_rng(seed), n_users, n_items, per_user, dims)
    assert inter.equals(pd.read_csv(DATA / folder / f"{folder}.inter", sep="\t"))
    for m, x in features.items():
        assert np.array_equal(x, np.load(DATA / folder / f"{m}_feat.npy")), m


def test_generated_dataset_numbers_items_by_first_appearance_train_then_held_out():
    inter, features = generated_dataset(np.random.default_rng(0), 6, 8, (4, 7), {"image": 2})
    by_split = inter.sort_values("x_label", kind="stable")["itemID"]
    assert list(pd.unique(by_split)) == list(range(8)) and features["image"].shape == (8, 2)
    # Every user: one validation and one test row, after its training rows.
    assert inter.groupby("userID")["x_label"].apply(lambda x: list(x)[-2:]).tolist() == [[1, 2]] * 6


def test_draw_batches_are_the_committed_batches_and_negatives_are_unseen():
    committed = torch.load(DATA / "mmrec_fidelity" / "freedom.pt")["batches"]  # seed 7, 8 rows (the maker's)
    inter = pd.read_csv(DATA / "mmrec_fidelity" / "mmrec_fidelity.inter", sep="\t")
    train = inter[inter["x_label"] == 0]
    batches = draw_batches(train, 9, 8, seed=7)
    assert all(torch.equal(a, b) for a, b in zip(batches, committed)) and len(batches) == len(committed) == 2
    seen = set(zip(train.userID, train.itemID))
    for batch in batches:
        users, pos, neg = batch.tolist()
        assert len(set(zip(users, pos))) == 8  # distinct training rows
        assert all((u, p) in seen and (u, n) not in seen for u, p, n in zip(users, pos, neg))
    pairs = draw_batches(train, 9, 8, seed=7, negatives=False)
    assert [p.shape for p in pairs] == [(2, 8)] * 2
    assert torch.equal(pairs[0], batches[0][:2])  # the same first rows; later ones differ (no negatives drawn)


def test_fake_dataset_and_config_stand_in_for_mmrecs():
    train = pd.DataFrame({"userID": [2, 0, 0], "itemID": [1, 3, 0]})
    dataset = FakeDataset(train, n_users=3, n_items=4)
    assert dataset.dataset is dataset and (dataset.get_user_num(), dataset.get_item_num()) == (3, 4)
    expected = np.zeros((3, 4), dtype=np.float32)
    expected[[2, 0, 0], [1, 3, 0]] = 1.0
    for form in ("coo", "csr"):
        matrix = dataset.inter_matrix(form=form)
        assert matrix.format == form and np.array_equal(matrix.toarray(), expected)
    config = mmrec_config("/data", dataset="kwai", neg_prefix="neg_", embedding_size=8, text_feature_file="x.npy")
    assert (config["data_path"], config["dataset"], config["NEG_PREFIX"]) == ("/data/", "kwai", "neg_")
    assert config["embedding_size"] == 8 and config["text_feature_file"] == "x.npy"
    assert config["degree_ratio"] is None  # MMRec's Config answers None for a key it does not hold


def test_feature_folder_holds_the_files_and_goes_away():
    features = {"image": np.arange(6, dtype=np.float32).reshape(3, 2)}
    with feature_folder(features, dataset="kwai", extra={"graph.npy": {1: [2]}}) as root:
        folder = Path(root) / "kwai"
        assert np.array_equal(np.load(folder / "image_feat.npy"), features["image"])
        assert np.load(folder / "graph.npy", allow_pickle=True).item() == {1: [2]}
    assert not folder.exists()

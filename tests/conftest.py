"""Shared fixtures: a small generated MMRec-layout dataset with planted structure."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import recbole_mm  # noqa: F401  (shims + registration before any recbole import in the tests)

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def _no_pytest_arguments_in_argv(monkeypatch):
    """RecBole's Config reads ``--key=value`` words of sys.argv as settings: pytest's own options
    (``--durations=50``, ``-k ...``) must not reach the runs a test makes."""
    monkeypatch.setattr(sys, "argv", sys.argv[:1])


def write_planted_dataset(root: Path, name: str = "planted", n_users: int = 120, n_items: int = 60,
                          n_clusters: int = 4, per_user: int = 8, seed: int = 0) -> Path:
    """Users and items fall into clusters (id % n_clusters); a user only picks items of its cluster,
    and item features are the cluster's centroid plus noise, in two modalities. Each user has
    per_user - 2 training rows, 1 valid and 1 test row. Popularity is flat, so only a model that
    learns the clusters (from interactions or features) ranks well.
    """
    rng = np.random.default_rng(seed)
    rows = []
    for user in range(n_users):
        cluster_items = np.arange(user % n_clusters, n_items, n_clusters)
        picked = rng.choice(cluster_items, size=per_user, replace=False)
        labels = [0] * (per_user - 2) + [1, 2]
        rows += [(user, int(item), label) for item, label in zip(picked, labels)]
    folder = root / name
    folder.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows, columns=["userID", "itemID", "x_label"]).to_csv(folder / f"{name}.inter", sep="\t", index=False)
    for modality, dim in (("image", 8), ("text", 6)):
        centroids = rng.normal(size=(n_clusters, dim))
        features = centroids[np.arange(n_items) % n_clusters] + 0.1 * rng.normal(size=(n_items, dim))
        np.save(folder / f"{modality}_feat.npy", features.astype(np.float32))
    return folder


def planted_config(root: Path, name: str = "planted", **overrides) -> dict:
    """config_dict for the planted dataset: MMRec fields and modalities, small and quiet."""
    config = {
        "data_path": str(root),
        "USER_ID_FIELD": "userID",
        "ITEM_ID_FIELD": "itemID",
        "modalities": {"image": "image_feat.npy", "text": "text_feat.npy"},
        "checkpoint_dir": str(root / "saved"),
        "show_progress": False,
        "state": "WARNING",
        "epochs": 1,
        "train_batch_size": 256,
        "eval_batch_size": 100000,
        "metrics": ["Recall", "NDCG"],
        "topk": [10],
        "valid_metric": "Recall@10",
        "seed": 2020,
        "reproducibility": True,
        "embedding_size": 16,
    }
    config.update(overrides)
    return config


@pytest.fixture
def planted(tmp_path, monkeypatch):
    """(data root, config_dict) of a fresh planted dataset; cwd is tmp_path (RecBole writes log/ there)."""
    monkeypatch.chdir(tmp_path)
    root = tmp_path / "data"
    write_planted_dataset(root)
    return root, planted_config(root)

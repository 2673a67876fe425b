"""The set-up that the fidelity fixture makers (scripts/make_*fixture*.py) share: stand-ins for MMRec's config and
dataset, the temporary data folder a reference model reads its features from, a generated MMRec-layout dataset,
the seeded training batches, and the recording of losses and gradients.

Nothing here comes from a reference implementation: each maker imports the reference from the path it is given.
Every helper keeps the order of its random draws, so a maker that uses it writes the same fixture as before.
"""

from __future__ import annotations

import importlib.util
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "tests" / "data"


def load_module(name: str, path: Path):
    """A file as a module (a sibling script, or tests/data/mmrec_reference.py's tiny dataset)."""
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def as_lists(tensors: dict) -> dict:
    """Tensors as nested lists of float64, for a JSON fixture."""
    return {k: v.detach().double().tolist() for k, v in tensors.items()}


class Config(dict):
    """MMRec's Config answers None for keys it does not hold (FREEDOM reads an unused ``degree_ratio``)."""

    def __missing__(self, key):
        return None


class FakeDataset:
    """What MMRec's GeneralRecommender and its models read from their dataset or dataloader: the user and item
    counts and the training interactions (``userID``, ``itemID`` rows, kept sorted by user, then item)."""

    def __init__(self, train: pd.DataFrame, n_users: int, n_items: int):
        self.dataset = self
        self.train = train.sort_values(["userID", "itemID"])
        self.n_users, self.n_items = n_users, n_items

    def get_user_num(self) -> int:
        return self.n_users

    def get_item_num(self) -> int:
        return self.n_items

    def inter_matrix(self, form: str = "coo"):
        data = np.ones(len(self.train), dtype=np.float32)
        matrix = sp.coo_matrix((data, (self.train["userID"].values, self.train["itemID"].values)),
                               shape=(self.n_users, self.n_items))
        return matrix.asformat(form)


def mmrec_config(data_path: str, dataset: str = "tiny", neg_prefix: str = "neg__", **settings) -> Config:
    """MMRec's config for a model on ``<data_path>/<dataset>`` (image and text features in MMRec's vision and text
    slots, CPU), with the model's ``settings`` on top."""
    return Config({"USER_ID_FIELD": "userID", "ITEM_ID_FIELD": "itemID", "NEG_PREFIX": neg_prefix, "device": "cpu",
                   "end2end": False, "is_multimodal_model": True, "data_path": data_path + "/", "dataset": dataset,
                   "vision_feature_file": "image_feat.npy", "text_feature_file": "text_feat.npy", **settings})


@contextmanager
def feature_folder(features: dict[str, np.ndarray], dataset: str = "tiny",
                   extra: dict[str, object] | None = None) -> Iterator[str]:
    """A temporary MMRec data root holding ``<dataset>/<modality>_feat.npy`` and the ``extra`` files (NumPy
    objects, e.g. a user graph dict), removed on exit: the reference models read their features there and cache
    their item graphs next to them, so no run sees another's cache."""
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / dataset
        folder.mkdir()
        for m, x in features.items():
            np.save(folder / f"{m}_feat.npy", x)
        for file, value in (extra or {}).items():
            np.save(folder / file, value, allow_pickle=True)
        yield tmp


def generated_dataset(rng: np.random.Generator, n_users: int, n_items: int, per_user: tuple[int, int],
                      dims: dict[str, int]) -> tuple[pd.DataFrame, dict[str, np.ndarray]]:
    """A random MMRec-layout dataset: users 0.. in file order, each with ``rng.integers(*per_user)`` distinct items
    (the last two for validation and test); items numbered by first appearance in the train, then valid, then test
    rows (the order recbole_mm hands MMRec-layout rows to RecBole), so RecBole's ids are these + 1. Features:
    standard normal, ``dims`` wide per modality."""
    rows = []
    for user in range(n_users):
        picked = rng.choice(n_items, size=int(rng.integers(*per_user)), replace=False)
        labels = [0] * (len(picked) - 2) + [1, 2]
        rows += [(user, int(item), label) for item, label in zip(picked, labels)]
    inter = pd.DataFrame(rows, columns=["userID", "itemID", "x_label"])
    order = {item: new for new, item in enumerate(pd.unique(inter.sort_values("x_label", kind="stable")["itemID"]))}
    assert len(order) == n_items
    inter["itemID"] = inter["itemID"].map(order)
    features = {m: rng.normal(size=(n_items, d)).astype(np.float32) for m, d in dims.items()}
    return inter, features


def write_dataset(folder: Path, name: str, inter: pd.DataFrame, features: dict[str, np.ndarray]) -> None:
    """``<folder>/<name>.inter`` and ``<modality>_feat.npy``: the files recbole_mm's tests read."""
    folder.mkdir(parents=True, exist_ok=True)
    inter.to_csv(folder / f"{name}.inter", sep="\t", index=False)
    for m, x in features.items():
        np.save(folder / f"{m}_feat.npy", x)


def draw_batches(train: pd.DataFrame, n_items: int, size: int, seed: int, count: int = 2,
                 negatives: bool = True) -> list[torch.Tensor]:
    """``count`` batches of ``size`` distinct training rows each (NumPy generator ``seed``): ``[3, size]`` tensors
    of users, positives and one negative per row, drawn uniformly among the items the user has no training row
    with (``negatives=False``: ``[2, size]``, users and positives)."""
    rng = np.random.default_rng(seed)
    batches = []
    for _ in range(count):
        picked = train.iloc[rng.choice(len(train), size=size, replace=False)]
        rows = [picked.userID.values, picked.itemID.values]
        if negatives:
            rows.append([int(rng.choice(np.setdiff1d(np.arange(n_items), train.itemID[train.userID == u])))
                         for u in picked.userID])
        batches.append(torch.tensor(np.stack(rows)))
    return batches


def gradients(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Each tensor's gradient (zeros where none reached it)."""
    return {k: torch.zeros_like(t) if t.grad is None else t.grad.clone() for k, t in tensors.items()}


def record_steps(model, batches: list[torch.Tensor], record: dict, scalar: bool = False,
                 tensors: Callable[[], dict[str, torch.Tensor]] | None = None, clone_batch: bool = False) -> None:
    """For each batch b, from no gradient: the model's loss (``loss_b``; ``scalar``: reshaped to a 0-d tensor) and
    the gradients of ``tensors()`` (``grads_b``; default: the named parameters), with no optimiser step between
    batches. ``clone_batch``: the model gets a copy (some references shift the item rows of a batch in place)."""
    for b, batch in enumerate(batches):
        model.zero_grad()
        for t in (tensors() if tensors else {}).values():
            t.grad = None  # tensors the model differentiates without registering them
        loss = model.calculate_loss(batch.clone() if clone_batch else batch)
        loss.backward()
        record[f"loss_{b}"] = loss.detach().reshape(()) if scalar else loss.detach()
        record[f"grads_{b}"] = gradients(tensors() if tensors else dict(model.named_parameters()))

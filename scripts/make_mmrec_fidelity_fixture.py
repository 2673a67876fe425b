"""Write tests/data/mmrec_fidelity/: a tiny MMRec-layout dataset and, for FREEDOM, LATTICE and GRCN, the outputs
of MMRec's own model classes on it (weights, a batch, full-ranking scores, losses and gradients).

    python scripts/make_mmrec_fidelity_fixture.py /path/to/MMRec/src [MODEL ...]

(all models when none is named; the dataset files are rewritten identically each time).

MMRec (GPL) is imported from the path given, never copied: the fixture holds only numbers. Not run in CI;
tests/test_freedom.py, tests/test_lattice.py and tests/test_grcn.py load the fixture into recbole_mm's models and compare.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch

OUT = Path(__file__).resolve().parent.parent / "tests" / "data" / "mmrec_fidelity"
N_USERS, N_ITEMS, DIMS = 10, 9, {"image": 6, "text": 5}
COMMON = {"embedding_size": 8, "feat_embed_dim": 8, "knn_k": 3, "train_batch_size": 8}
MODELS = {
    "FREEDOM": {"n_mm_layers": 1, "n_ui_layers": 2, "mm_image_weight": 0.1, "dropout": 0.5, "reg_weight": 0.1,
                "lambda_coeff": 0.9, "cf_model": "lightgcn"},
    "LATTICE": {"weight_size": [8, 8], "lambda_coeff": 0.9, "cf_model": "lightgcn", "n_layers": 1,
                "reg_weight": 0.01, "mess_dropout": [0.1, 0.1]},
    "GRCN": {"latent_embedding": 4, "n_layers": 2, "reg_weight": 0.1},
}


def tiny_dataset(rng: np.random.Generator) -> tuple[pd.DataFrame, dict[str, np.ndarray]]:
    """Users 0.. in file order; items numbered by first appearance in the train, then valid, then test rows
    (the order recbole_mm hands MMRec-layout rows to RecBole), so RecBole's ids are these + 1."""
    rows = []
    for user in range(N_USERS):
        picked = rng.choice(N_ITEMS, size=int(rng.integers(4, 7)), replace=False)
        labels = [0] * (len(picked) - 2) + [1, 2]
        rows += [(user, int(item), label) for item, label in zip(picked, labels)]
    inter = pd.DataFrame(rows, columns=["userID", "itemID", "x_label"])
    by_split = inter.sort_values("x_label", kind="stable")["itemID"]
    order = {item: new for new, item in enumerate(pd.unique(by_split))}
    assert len(order) == N_ITEMS
    inter["itemID"] = inter["itemID"].map(order)
    features = {m: rng.normal(size=(N_ITEMS, d)).astype(np.float32) for m, d in DIMS.items()}
    return inter, features


class Config(dict):
    """MMRec's Config answers None for keys it does not hold (FREEDOM reads an unused ``degree_ratio``)."""

    def __missing__(self, key):
        return None


class FakeDataset:
    """What MMRec's GeneralRecommender and the two models read from their dataset/dataloader."""

    def __init__(self, train: pd.DataFrame):
        self.dataset = self
        self.train = train.sort_values(["userID", "itemID"])

    def get_user_num(self):
        return N_USERS

    def get_item_num(self):
        return N_ITEMS

    def inter_matrix(self, form="coo"):
        data = np.ones(len(self.train), dtype=np.float32)
        return sp.coo_matrix((data, (self.train["userID"].values, self.train["itemID"].values)),
                             shape=(N_USERS, N_ITEMS))


def main(mmrec_src: str, *names: str) -> None:
    sys.path.insert(0, mmrec_src)
    torch.Tensor.cuda = lambda self, *args, **kwargs: self  # LATTICE moves its graphs with .cuda(); CPU here
    if not hasattr(sp.dok_matrix, "_update"):  # FREEDOM uses a private scipy method that newer scipy dropped
        sp.dok_matrix._update = lambda self, data: [self.__setitem__(key, value) for key, value in data.items()]
    from models.freedom import FREEDOM
    from models.lattice import LATTICE
    from models.grcn import GRCN  # needs torch_geometric (its message passing)

    rng = np.random.default_rng(13)
    inter, features = tiny_dataset(rng)
    OUT.mkdir(parents=True, exist_ok=True)
    inter.to_csv(OUT / "mmrec_fidelity.inter", sep="\t", index=False)
    for m, x in features.items():
        np.save(OUT / f"{m}_feat.npy", x)
    train = inter[inter["x_label"] == 0]
    batch_rng = np.random.default_rng(7)
    batches = []
    for _ in range(2):
        picked = train.iloc[batch_rng.choice(len(train), size=COMMON["train_batch_size"], replace=False)]
        negatives = [int(batch_rng.choice(np.setdiff1d(np.arange(N_ITEMS), train.itemID[train.userID == u])))
                     for u in picked.userID]
        batches.append(torch.tensor(np.stack([picked.userID.values, picked.itemID.values, negatives])))

    for name, cls in (("FREEDOM", FREEDOM), ("LATTICE", LATTICE), ("GRCN", GRCN)):
        if names and name not in names:
            continue
        with tempfile.TemporaryDirectory() as tmp:  # MMRec caches its item graphs next to the data
            folder = Path(tmp) / "tiny"
            folder.mkdir()
            np.save(folder / "image_feat.npy", features["image"])
            np.save(folder / "text_feat.npy", features["text"])
            config = Config({"USER_ID_FIELD": "userID", "ITEM_ID_FIELD": "itemID", "NEG_PREFIX": "neg__",
                      "device": "cpu", "end2end": False, "is_multimodal_model": True, "data_path": tmp + "/",
                      "dataset": "tiny", "vision_feature_file": "image_feat.npy", "text_feature_file": "text_feat.npy",
                      **COMMON, **MODELS[name]})
            torch.manual_seed(0)
            model = cls(config, FakeDataset(train))
        record = {"config": {**COMMON, **MODELS[name]},
                  "state": {k: v.detach().clone() for k, v in model.state_dict().items()},
                  "batches": batches}
        torch.manual_seed(1)
        model.pre_epoch_processing()  # FREEDOM: draws the pruned graph; LATTICE: rebuild on the next batch; GRCN: none
        model.train()
        for b, batch in enumerate(batches):
            model.zero_grad()
            loss = model.calculate_loss(batch)
            loss.backward()
            record[f"loss_{b}"] = loss.detach()
            record[f"grads_{b}"] = {k: (torch.zeros_like(p) if p.grad is None else p.grad.clone())
                                    for k, p in model.named_parameters()}
        if name == "FREEDOM":
            record["pruned_adj"] = model.masked_adj.coalesce().to_dense()
        model.eval()
        with torch.no_grad():
            if name == "GRCN":  # scores the representation of its last forward: make it the current weights'
                model.forward()
            record["scores"] = model.full_sort_predict(torch.arange(N_USERS).unsqueeze(0))
        torch.save(record, OUT / f"{name.lower()}.pt")
        print(name, {k: float(v) for k, v in record.items() if k.startswith("loss")})


if __name__ == "__main__":
    main(*sys.argv[1:])

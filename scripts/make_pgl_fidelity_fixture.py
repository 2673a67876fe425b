"""Write tests/data/pgl_fidelity/: a small MMRec-layout dataset (40 users, 30 items) and pgl.pt, the outputs of
MMRec's own PGL class (src/models/pgl.py, the authors' code) on it in both of its modes (weights, batches, losses,
gradients, the principal graph, scores).

    python scripts/make_pgl_fidelity_fixture.py /path/to/MMRec/src

PGL imports ``sparsesvd`` (SVDLIBC), which its global mode calls; it is not in the reference venv: install it
into a venv of its own (its 2013 setup.py needs ``pip install "setuptools<60" "cython<3" "wheel<0.41"`` first,
then ``pip install --no-build-isolation sparsesvd``). Made with torch 2.13 CPU, SciPy, pandas and sparsesvd 0.2.2.

A sibling of make_mmrec_fidelity_fixture.py (its fake MMRec config and dataset) on a larger dataset than that
one's 10 users and 9 items: SVDLIBC's Lanczos finds only 2 of the 8 singular values asked for on that graph (and
1.018 for the first, which is 1), so the global mode needs a graph where it converges (here all 8, equal to a
dense SVD's to 1e-5). MMRec (GPL) is imported from the path given, never copied: the
fixture holds only numbers. Not run in CI; tests/test_pgl.py compares.

PGL draws random numbers while training (the local mode its degree-sensitive edge sample in
``pre_epoch_processing``, both modes four dropout masks per batch), so the fixture records the seed set before
each step; recbole_mm's PGL draws the same numbers in the same order from the same seed.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from make_mmrec_fidelity_fixture import Config, FakeDataset  # noqa: E402
from run_mmrec_reference import alias_models_common, install_shims  # noqa: E402

OUT = Path(__file__).resolve().parent.parent / "tests" / "data" / "pgl_fidelity"
N_USERS, N_ITEMS, DIMS = 40, 30, {"image": 6, "text": 5}
COMMON = {"embedding_size": 8, "feat_embed_dim": 8, "knn_k": 3, "train_batch_size": 16}
BASE = {"n_mm_layers": 1, "n_ui_layers": 2, "mm_image_weight": 0.1, "lambda_coeff": 0.9}
CASES = {"local": {**BASE, "mode": "local", "dropout": 0.2, "reg_weight": 0.05},
         "global": {**BASE, "mode": "global", "dropout": 0.1, "reg_weight": 0.1}}
SEEDS = {"init": 0, "train": 1, "scores": 2}


def small_dataset(rng: np.random.Generator) -> tuple[pd.DataFrame, dict[str, np.ndarray]]:
    """Users 0.. in file order, 5-8 items each (the last two for validation and test); items numbered by first
    appearance in the train, then valid, then test rows (the order recbole_mm hands MMRec-layout rows to RecBole),
    so RecBole's ids are these + 1."""
    rows = []
    for user in range(N_USERS):
        picked = rng.choice(N_ITEMS, size=int(rng.integers(5, 9)), replace=False)
        labels = [0] * (len(picked) - 2) + [1, 2]
        rows += [(user, int(item), label) for item, label in zip(picked, labels)]
    inter = pd.DataFrame(rows, columns=["userID", "itemID", "x_label"])
    order = {item: new for new, item in enumerate(pd.unique(inter.sort_values("x_label", kind="stable")["itemID"]))}
    assert len(order) == N_ITEMS
    inter["itemID"] = inter["itemID"].map(order)
    features = {m: rng.normal(size=(N_ITEMS, d)).astype(np.float32) for m, d in DIMS.items()}
    return inter, features


class SmallDataset(FakeDataset):
    def get_user_num(self):
        return N_USERS

    def get_item_num(self):
        return N_ITEMS

    def inter_matrix(self, form="coo"):
        data = np.ones(len(self.train), dtype=np.float32)
        return sp.coo_matrix((data, (self.train["userID"].values, self.train["itemID"].values)),
                             shape=(N_USERS, N_ITEMS))


def main(mmrec_src: str) -> None:
    install_shims()
    sys.path.insert(0, mmrec_src)
    alias_models_common()
    from models.pgl import PGL

    inter, features = small_dataset(np.random.default_rng(22))
    OUT.mkdir(parents=True, exist_ok=True)
    inter.to_csv(OUT / "pgl_fidelity.inter", sep="\t", index=False)
    for m, x in features.items():
        np.save(OUT / f"{m}_feat.npy", x)
    train = inter[inter["x_label"] == 0]
    batch_rng = np.random.default_rng(7)
    batches = []
    for _ in range(2):
        picked = train.iloc[batch_rng.choice(len(train), size=COMMON["train_batch_size"], replace=False)]
        negatives = [int(batch_rng.choice(np.setdiff1d(np.arange(features["image"].shape[0]),
                                                       train.itemID[train.userID == u])))
                     for u in picked.userID]
        batches.append(torch.tensor(np.stack([picked.userID.values, picked.itemID.values, negatives])))

    records = {}
    for case, settings in CASES.items():
        with tempfile.TemporaryDirectory() as tmp:  # PGL caches its item graph next to the data
            folder = Path(tmp) / "tiny"
            folder.mkdir()
            np.save(folder / "image_feat.npy", features["image"])
            np.save(folder / "text_feat.npy", features["text"])
            config = Config({"USER_ID_FIELD": "userID", "ITEM_ID_FIELD": "itemID", "NEG_PREFIX": "neg__",
                             "device": "cpu", "end2end": False, "is_multimodal_model": True, "data_path": tmp + "/",
                             "dataset": "tiny", "vision_feature_file": "image_feat.npy",
                             "text_feature_file": "text_feat.npy", **COMMON, **settings})
            torch.manual_seed(SEEDS["init"])
            model = PGL(config, SmallDataset(train))
        record = {"config": {**COMMON, **settings}, "seeds": SEEDS,
                  "state": {k: v.detach().clone() for k, v in model.named_parameters()},
                  "batches": batches}
        torch.manual_seed(SEEDS["train"])
        model.pre_epoch_processing()  # local: draws the degree-sensitive sub-graph; global: nothing
        model.train()
        for b, batch in enumerate(batches):
            model.zero_grad()
            loss = model.calculate_loss(batch)
            loss.backward()
            record[f"loss_{b}"] = loss.detach().reshape(())
            record[f"grads_{b}"] = {k: (torch.zeros_like(p) if p.grad is None else p.grad.clone())
                                    for k, p in model.named_parameters()}
        record["principal_adj"] = model.sub_graph.coalesce().to_dense()
        model.eval()
        torch.manual_seed(SEEDS["scores"])
        with torch.no_grad():
            record["scores"] = model.full_sort_predict(torch.arange(N_USERS).unsqueeze(0))
        records[case] = record
        print(case, {k: float(v) for k, v in record.items() if k.startswith("loss")})
    torch.save(records, OUT / "pgl.pt")


if __name__ == "__main__":
    main(sys.argv[1])

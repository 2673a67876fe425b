"""Make the BM3 / MGCN fidelity fixtures (tests/data/{bm3,mgcn}_reference.json) by running MMRec's own
model classes on a tiny generated dataset. Not run in CI; the fixtures hold only numbers.

    git clone https://github.com/enoche/MMRec /tmp/MMRec   # any checkout; tested at e775373
    python tests/data/mmrec_reference.py /tmp/MMRec/src

Each fixture holds the data (training interactions; validation/test rows only so that RecBole can split),
the reference's initial weights (seeded construction), one batch, the reference's full score matrix
(users × items), its training loss on that batch and (MGCN) the loss's gradients; BM3's also holds the dropout masks the reference drew,
in the order it drew them (users, items, text, image), so tests can replay them.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

N_USERS, N_ITEMS, DIM = 6, 8, 4
FEATURE_DIMS = {"text": 4, "image": 5}  # MMRec's t_feat and v_feat
OUT = Path(__file__).resolve().parent


class FakeDataset:
    """What MMRec's GeneralRecommender and the two models read from their ``dataloader`` argument."""

    def __init__(self, users, items):
        import scipy.sparse as sp
        self.matrix = sp.coo_matrix((np.ones(len(users), dtype=np.float32), (users, items)), shape=(N_USERS, N_ITEMS))
        self.dataset = self

    def get_user_num(self):
        return N_USERS

    def get_item_num(self):
        return N_ITEMS

    def inter_matrix(self, form="coo"):
        return self.matrix.copy()


def tiny_data(seed: int = 0):
    """Every item has a training user; every user 2-3 training items, one valid and one test item."""
    rng = np.random.default_rng(seed)
    train = [(u, i) for i, u in enumerate(list(range(N_USERS)) + [0, 3])]  # items 0..7 each get a user
    for u in range(N_USERS):
        taken = {i for uu, i in train if uu == u}
        extra = rng.choice([i for i in range(N_ITEMS) if i not in taken], size=3, replace=False)
        train.append((u, int(extra[0])))
        train.append((u, int(extra[1])))  # keeps 2-3 rows per user distinct
    train = sorted(set(train))
    held = []
    for u in range(N_USERS):
        free = [i for i in range(N_ITEMS) if (u, i) not in train]
        held += [(u, free[0], 1), (u, free[1], 2)]
    features = {m: rng.normal(size=(N_ITEMS, d)).astype(np.float32) for m, d in FEATURE_DIMS.items()}
    return train, held, features


def as_lists(tensors: dict) -> dict:
    return {k: v.detach().double().tolist() for k, v in tensors.items()}


def main(src: str) -> None:
    sys.path.insert(0, src)
    torch.Tensor.cuda = lambda self, *args, **kwargs: self  # MGCN moves its item graphs with .cuda()
    import scipy.sparse as sp
    if not hasattr(sp.dok_matrix, "_update"):  # BM3 calls dok_matrix._update, gone from recent SciPy
        sp.dok_matrix._update = lambda self, entries: [self.__setitem__(k, v) for k, v in entries.items()]
    if "torch_scatter" not in sys.modules:  # MGCN's graph normalisation imports torch_scatter.scatter_add
        import types
        scatter = types.ModuleType("torch_scatter")
        scatter.scatter_add = lambda src, index, dim=0, dim_size=None: torch.zeros(
            dim_size, dtype=src.dtype).index_add_(0, index, src)
        sys.modules["torch_scatter"] = scatter
    import models.bm3 as bm3
    import models.mgcn as mgcn

    train, held, features = tiny_data()
    users = np.array([u for u, _ in train])
    items = np.array([i for _, i in train])
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "tiny"
        folder.mkdir()
        np.save(folder / "text_feat.npy", features["text"])
        np.save(folder / "image_feat.npy", features["image"])
        config = {
            "USER_ID_FIELD": "userID", "ITEM_ID_FIELD": "itemID", "NEG_PREFIX": "neg_",
            "train_batch_size": 4, "device": "cpu", "end2end": False, "is_multimodal_model": True,
            "data_path": tmp + "/", "dataset": "tiny",
            "vision_feature_file": "image_feat.npy", "text_feature_file": "text_feat.npy",
            "embedding_size": DIM,
        }
        batch_users = torch.tensor([0, 2, 3, 5])
        batch_pos = torch.tensor([int(items[users == u][0]) for u in batch_users])
        batch_neg = torch.tensor([7, 0, 1, 4])
        common = {
            "train": [[int(u), int(i)] for u, i in train], "held_out": held,
            "features": {m: f.tolist() for m, f in features.items()},
            "batch": {"users": batch_users.tolist(), "pos": batch_pos.tolist(), "neg": batch_neg.tolist()},
        }

        # ---- BM3 ---------------------------------------------------------------------------------
        bm3_config = {**config, "n_layers": 2, "reg_weight": 0.1, "cl_weight": 2.0, "dropout": 0.5}
        torch.manual_seed(0)
        model = bm3.BM3(bm3_config, FakeDataset(users, items))
        weights = as_lists(model.state_dict())
        masks = []
        generator = torch.Generator().manual_seed(1)

        def recording_dropout(x, p=0.5, training=True, inplace=False):
            mask = (torch.rand(x.shape, generator=generator) >= p).float()
            masks.append(mask)
            return x * mask / (1 - p)

        bm3.F.dropout = recording_dropout
        model.train()
        loss = model.calculate_loss(torch.stack([batch_users, batch_pos]))
        model.eval()
        with torch.no_grad():
            scores = model.full_sort_predict(torch.arange(N_USERS).unsqueeze(0))
        fixture = {**common, "config": {k: bm3_config[k] for k in ("n_layers", "reg_weight", "cl_weight", "dropout")},
                   "weights": weights, "dropout_masks": [m.tolist() for m in masks],
                   "loss": loss.item(), "scores": scores.double().tolist()}
        (OUT / "bm3_reference.json").write_text(json.dumps(fixture))

        # ---- MGCN --------------------------------------------------------------------------------
        mgcn_config = {**config, "cl_loss": 0.1, "n_ui_layers": 2, "knn_k": 3, "n_layers": 1, "reg_weight": 1e-4}
        torch.manual_seed(0)
        model = mgcn.MGCN(mgcn_config, FakeDataset(users, items))
        weights = as_lists(model.state_dict())
        model.train()
        loss = model.calculate_loss(torch.stack([batch_users, batch_pos, batch_neg]))
        loss.backward()
        grads = as_lists({name: p.grad for name, p in model.named_parameters()})
        model.eval()
        with torch.no_grad():
            scores = model.full_sort_predict(torch.arange(N_USERS).unsqueeze(0))
        fixture = {**common, "config": {k: mgcn_config[k] for k in ("cl_loss", "n_ui_layers", "knn_k", "n_layers",
                                                                     "reg_weight", "train_batch_size")},
                   "weights": weights, "grads": grads, "loss": loss.item(), "scores": scores.double().tolist()}
        (OUT / "mgcn_reference.json").write_text(json.dumps(fixture))
    print("wrote", OUT / "bm3_reference.json", OUT / "mgcn_reference.json")


if __name__ == "__main__":
    main(sys.argv[1])

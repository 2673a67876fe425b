"""Make the DA-MRS fidelity fixture (tests/data/damrs_reference.json) by running MMRec's own DAMRS class on a small
generated dataset (12 users × 24 items, text and image features; DA-MRS draws 2 × 10 pseudo-positive neighbours per
item, so it needs at least 20 items). Not run in CI; MMRec (GPL) is not vendored: its source folder is given on the
command line. The fixture holds only numbers.

    git clone https://github.com/enoche/MMRec /tmp/MMRec   # any checkout; made at e775373
    <reference venv>/bin/python scripts/make_damrs_fidelity_fixture.py /tmp/MMRec/src   # a venv with torch, scipy

The reference reads its item-item behaviour graph from ``item_graph_dict_2.npy``, which the authors' script
(XMUDM/DA-MRS build_iib_graph.py --topk=2) writes: each item's items sharing at least two training users, the top 2
by that count. :func:`item_graph_dict` writes the same lists here, equal counts to the item with the lower
RecBole id (our rule; the script's ``torch.topk`` leaves their order open). The fixture holds the data, the reference's initial weights
(seeded construction), one batch, the loss on it, every parameter's gradient, the reference's three item graphs
(dense) and the full score matrix (users × items, eval mode). Shims as in scripts/run_mmrec_reference.py
(``install_shims``: ``.cuda()`` is the identity); the model code itself is unchanged.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fixture_common import DATA, FakeDataset, as_lists, feature_folder, mmrec_config  # noqa: E402
from run_mmrec_reference import install_shims  # noqa: E402

OUT = DATA / "damrs_reference.json"
N_USERS, N_ITEMS, DIM = 12, 24, 8
FEATURE_DIMS = {"text": 4, "image": 5}  # MMRec's t_feat and v_feat
SETTINGS = {"knn_k": 4, "n_mm_layers": 1, "n_ui_layers": 2, "kl_weight": 0.5, "neighbor_weight": 0.3}
ITEM_GRAPH_K, ITEM_GRAPH_MIN_COUNT = 2, 2


def tiny_data(seed: int = 0):
    """Users and items in 3 clusters (id % 3); each user 6 training items of its cluster (so items share users),
    every item at least one training user, one valid and one test item per user. Features: the cluster's
    centroid plus noise, shifted positive (every similarity mean above zero, as with real CNN features)."""
    rng = np.random.default_rng(seed)
    train = set()
    for u in range(N_USERS):
        cluster = np.arange(u % 3, N_ITEMS, 3)
        train |= {(u, int(i)) for i in rng.choice(cluster, size=6, replace=False)}
    for i in range(N_ITEMS):
        if not any(ii == i for _, ii in train):
            train.add((int(rng.choice(np.arange(i % 3, N_USERS, 3))), i))
    train = sorted(train)
    held = []
    for u in range(N_USERS):
        free = [i for i in range(N_ITEMS) if (u, i) not in train]
        held += [(u, free[0], 1), (u, free[1], 2)]
    features = {}
    for m, d in FEATURE_DIMS.items():
        centroids = rng.normal(size=(3, d))
        features[m] = (centroids[np.arange(N_ITEMS) % 3] + 0.7 * rng.normal(size=(N_ITEMS, d)) + 1.5).astype(np.float32)
    return train, held, features


def item_graph_dict(train, held, k: int, min_count: int) -> dict[int, list[list]]:
    """``{item: [neighbour ids, counts]}``: the items sharing at least ``min_count`` training users with it, the
    top ``k`` by that count (written here from the definition, a dense count matrix). Equal counts go to the item
    that recbole_mm numbers lower: RecBole numbers the items of tests/builders.py's file (training rows, then the
    held-out ones) by first appearance, and recbole_mm breaks ties towards the lower internal id."""
    order = {}
    for _, i, *_ in [*train, *held]:
        order.setdefault(i, len(order))
    r = np.zeros((N_USERS, N_ITEMS))
    for u, i in train:
        r[u, i] = 1.0
    counts = r.T @ r
    np.fill_diagonal(counts, 0)
    lists = {}
    for i in range(N_ITEMS):
        candidates = [j for j in range(N_ITEMS) if counts[i, j] >= min_count]
        top = sorted(candidates, key=lambda j: (-counts[i, j], order[j]))[:k]
        lists[i] = [top, [float(counts[i, j]) for j in top]]
    return lists


def pick_batch(model, batch_users, users, items) -> tuple[torch.Tensor, torch.Tensor]:
    """Positives and negatives for ``batch_users`` (NumPy seed 1): the first of a few draws in which the reference
    weights at least one pair's reverse BPR direction (w- > 0: the pair's positive scores below the batch's
    negatives on average), so that the fixture exercises both directions. Negatives are any items, the user's own
    training items included (they score like positives)."""
    rng = np.random.default_rng(1)
    with torch.no_grad():
        user_embeddings, _, h_t, h_v, h_s = model.forward()
    for _ in range(200):
        pos = torch.tensor([int(rng.choice(items[users == u])) for u in batch_users])
        neg = torch.tensor([int(rng.choice([i for i in range(N_ITEMS) if i != int(p)])) for p in pos])
        pos_weight, neg_weight = model.get_weight_modal(batch_users, pos, neg, user_embeddings, h_t, h_v, h_s)
        if (neg_weight > 0).any():
            return pos, neg
    raise SystemExit("no batch with a reverse BPR pair in 200 draws")


def main(src: str) -> None:
    sys.path.insert(0, str(Path(src).resolve()))
    install_shims()
    import models.damrs as damrs

    train, held, features = tiny_data()
    users = np.array([u for u, _ in train])
    items = np.array([i for _, i in train])
    behaviour = item_graph_dict(train, held, ITEM_GRAPH_K, ITEM_GRAPH_MIN_COUNT)
    with feature_folder(features, extra={"item_graph_dict_2.npy": behaviour}) as tmp:
        config = mmrec_config(tmp, neg_prefix="neg_", item_graph_dict_file="item_graph_dict_2.npy",
                              train_batch_size=6, embedding_size=DIM, lambda_coeff=None, cf_model=None,
                              reg_weight=0.0, **SETTINGS)
        batch_users = torch.tensor([0, 1, 4, 5, 7, 10])
        torch.manual_seed(0)
        dataset = FakeDataset(pd.DataFrame({"userID": users, "itemID": items}), N_USERS, N_ITEMS)
        model = damrs.DAMRS(config, dataset)
        batch_pos, batch_neg = pick_batch(model, batch_users, users, items)
        weights = as_lists({k: v for k, v in model.state_dict().items() if not k.startswith(("image_", "text_"))})
        graphs = {"image": model.image_adj.to_dense(), "text": model.text_adj.to_dense(),
                  "behaviour": model.session_adj.to_dense()}
        model.train()
        loss = model.calculate_loss(torch.stack([batch_users, batch_pos, batch_neg]))
        loss.backward()
        grads = as_lists({name: p.grad for name, p in model.named_parameters() if p.grad is not None})
        model.eval()
        with torch.no_grad():
            scores = model.full_sort_predict(torch.arange(N_USERS).unsqueeze(0))
    ours = {**SETTINGS, "item_graph_k": ITEM_GRAPH_K, "item_graph_min_count": ITEM_GRAPH_MIN_COUNT,
            "train_batch_size": config["train_batch_size"]}
    fixture = {
        "train": [[int(u), int(i)] for u, i in train], "held_out": held,
        "features": {m: f.tolist() for m, f in features.items()},
        "batch": {"users": batch_users.tolist(), "pos": batch_pos.tolist(), "neg": batch_neg.tolist()},
        "config": ours, "weights": weights, "grads": grads, "loss": loss.item(),
        "graphs": as_lists(graphs), "scores": scores.double().tolist(),
    }
    OUT.write_text(json.dumps(fixture))
    print("wrote", OUT, "loss", loss.item())


if __name__ == "__main__":
    main(sys.argv[1])

"""Make the SMORE fidelity fixture (tests/data/smore_reference.json) by running MMRec's own SMORE class on the
tiny generated dataset of tests/data/mmrec_reference.py (6 users × 8 items, text and image features). Not run in
CI; MMRec (GPL) is not vendored: its source folder is given on the command line. The fixture holds only numbers.

    git clone https://github.com/enoche/MMRec /tmp/MMRec   # any checkout; made at e775373
    python scripts/make_smore_fidelity_fixture.py /tmp/MMRec/src

The fixture holds the data, the reference's initial weights (seeded construction), one batch, the loss on it, every
parameter's gradient and the full score matrix (users × items, eval mode). Settings: embedding_size 6 (an even width
with a Nyquist bin), a different k per modality (image 3, text 2) so that the max-pooled fusion graph has edges
only one modality has, dropout_rate 0 (no random draws in the forward pass). Shims as in
scripts/run_mmrec_reference.py (``install_shims``: ``.cuda()`` is the identity, SMORE moves its item graphs with it;
``torch_scatter.scatter_add`` an ``index_add_``, for MMRec's graph normalisation); the model code itself is unchanged.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fixture_common import DATA, ROOT, as_lists, feature_folder, load_module, mmrec_config  # noqa: E402
from run_mmrec_reference import install_shims  # noqa: E402

OUT = DATA / "smore_reference.json"
DIM = 6
SETTINGS = {"n_ui_layers": 2, "n_layers": 1, "image_knn_k": 3, "text_knn_k": 2, "reg_weight": 1e-3,
            "cl_loss": 0.1, "dropout_rate": 0.0, "train_batch_size": 4}


def main(src: str) -> None:
    sys.path.insert(0, str(Path(src).resolve()))
    install_shims()
    import models.smore as smore

    tiny = load_module("mmrec_reference", ROOT / "tests" / "data" / "mmrec_reference.py")
    train, held, features = tiny.tiny_data()
    users = np.array([u for u, _ in train])
    items = np.array([i for _, i in train])
    with feature_folder(features) as tmp:
        config = mmrec_config(tmp, neg_prefix="neg_", embedding_size=DIM, **SETTINGS)
        batch_users = torch.tensor([0, 2, 3, 5])
        batch_pos = torch.tensor([int(items[users == u][0]) for u in batch_users])
        batch_neg = torch.tensor([7, 0, 1, 4])
        torch.manual_seed(0)
        model = smore.SMORE(config, tiny.FakeDataset(users, items))
        weights = as_lists(model.state_dict())
        model.train()
        loss = model.calculate_loss(torch.stack([batch_users, batch_pos, batch_neg]))
        loss.backward()
        grads = as_lists({name: p.grad for name, p in model.named_parameters()})
        model.eval()
        with torch.no_grad():
            scores = model.full_sort_predict(torch.arange(tiny.N_USERS).unsqueeze(0))
    ours = {"n_ui_layers": SETTINGS["n_ui_layers"], "n_layers": SETTINGS["n_layers"],
            "knn_k": SETTINGS["text_knn_k"], "modality_knn_k": {"image": SETTINGS["image_knn_k"]},
            "reg_weight": SETTINGS["reg_weight"], "cl_loss": SETTINGS["cl_loss"],
            "dropout_rate": SETTINGS["dropout_rate"], "train_batch_size": SETTINGS["train_batch_size"]}
    fixture = {
        "train": [[int(u), int(i)] for u, i in train], "held_out": held,
        "features": {m: f.tolist() for m, f in features.items()},
        "batch": {"users": batch_users.tolist(), "pos": batch_pos.tolist(), "neg": batch_neg.tolist()},
        "config": ours, "weights": weights, "grads": grads, "loss": loss.item(), "scores": scores.double().tolist(),
    }
    OUT.write_text(json.dumps(fixture))
    print("wrote", OUT, "loss", loss.item())


if __name__ == "__main__":
    main(sys.argv[1])

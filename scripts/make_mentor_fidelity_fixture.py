"""Write tests/data/mmrec_fidelity/mentor.pt: the authors' own MENTOR (github Jinfeng-Xu/MENTOR, its
``src/models/mentor.py`` on its bundled MMRec framework) on the tiny dataset of that folder (made by
scripts/make_mmrec_fidelity_fixture.py): its initial weights, two batches, each batch's loss and gradients, the
random parts it drew (the perturbation noise of every hop of the noisy tables, feature masking's dropout masks),
and the full-ranking scores.

    python scripts/make_mentor_fidelity_fixture.py /path/to/MENTOR

(the checkout's root: its src/ is imported from there, never copied; needs torch_geometric; the fixture holds only
numbers). The latent width the reference hard-codes (64) is narrowed to 8 through its ``GCN`` constructor
argument, and ``embedding_size`` is 8 (its feature-masking projection is 2 · embedding_size wide), to keep the file
small. Not run in CI; tests/test_mentor.py loads the fixture into recbole_mm's MENTOR.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fixture_common import FakeDataset, draw_batches, feature_folder, gradients, mmrec_config  # noqa: E402
from make_mmrec_fidelity_fixture import OUT  # noqa: E402
from run_mmrec_reference import install_shims, user_graph_dict  # noqa: E402

DIM = 8
CONFIG = {"embedding_size": DIM, "feat_embed_dim": DIM, "train_batch_size": 8, "n_mm_layers": 1, "knn_k": 3,
          "mm_image_weight": 0.1, "reg_weight": 0.1, "align_weight": 0.3, "mask_weight_g": 0.2, "mask_weight_f": 1.5,
          "temp": 0.4, "dropout": 0.5}
OURS = {"n_layers": 2, "noise_eps": 0.1}  # keys of ours that the reference hard-codes (two hops, eps 0.1)
GCNS = {"v_gcn": "image", "v_gcn_n1": "image_n1", "v_gcn_n2": "image_n2", "t_gcn": "text", "t_gcn_n1": "text_n1",
        "t_gcn_n2": "text_n2", "id_gcn": "id"}


def names() -> dict[str, str]:
    """The reference's parameters that its forward pass or loss reads → ours."""
    table = {"weight_u": "user_fusion", "id_feat": "item_ids", "mlp.weight": "mask_projection.weight",
             "mlp.bias": "mask_projection.bias"}
    for theirs, ours in GCNS.items():
        table[f"{theirs}.preference"] = f"preferences.{ours}"
        for layer, index in (("MLP", 0), ("MLP_1", 2)):
            for kind in ("weight", "bias"):
                table[f"{theirs}.{layer}.{kind}"] = f"encoders.{ours}.{index}.{kind}"
    return table


def main(mentor_root: str) -> None:
    install_shims()
    sys.path.insert(0, str(Path(mentor_root) / "src"))
    import models.mentor as reference

    gcn_init = reference.GCN.__init__

    def narrow_gcn_init(self, *args, **kwargs):
        gcn_init(self, *args, **{**kwargs, "dim_latent": DIM})

    reference.GCN.__init__ = narrow_gcn_init

    inter = pd.read_csv(OUT / "mmrec_fidelity.inter", sep="\t")
    train = inter[inter["x_label"] == 0]
    n_users, n_items = inter["userID"].nunique(), inter["itemID"].nunique()
    batches = draw_batches(train, n_items, CONFIG["train_batch_size"], seed=11)

    features = {m: np.load(OUT / f"{m}_feat.npy") for m in ("image", "text")}
    # The user graph is read in its __init__ and never used by its forward pass (docs/mentor.md §2).
    users = user_graph_dict(OUT / "mmrec_fidelity.inter")
    with feature_folder(features, extra={"user_graph_dict.npy": users}) as tmp:  # it caches its item graph there
        np.random.seed(0)
        torch.manual_seed(0)
        model = reference.MENTOR(mmrec_config(tmp, user_graph_dict_file="user_graph_dict.npy", **CONFIG),
                                 FakeDataset(train, n_users, n_items))
    assert model.n_users == n_users and model.n_items == n_items
    table = names()
    params = dict(model.named_parameters(remove_duplicate=False))
    record = {"config": {**CONFIG, **OURS}, "names": table,
              "state": {k: params[k].detach().clone() for k in table}, "batches": batches}

    # Record the random parts: rand_like (the noise of each perturbed hop, in call order) and dropout's masks.
    noise, masks = [], []
    rand_like = torch.rand_like

    def recording_rand_like(x, *args, **kwargs):
        noise.append(rand_like(x, *args, **kwargs))
        return noise[-1]

    def recording_dropout(x, p=0.5, training=True, inplace=False):
        mask = torch.bernoulli(torch.full_like(x, 1 - p)) / (1 - p)
        masks.append(mask)
        return x * mask

    torch.rand_like, F.dropout = recording_rand_like, recording_dropout
    torch.manual_seed(1)
    model.train()
    for b, batch in enumerate(batches):
        noise.clear()
        masks.clear()
        model.zero_grad()
        loss = model.calculate_loss(batch.clone())  # its forward shifts the item rows in place
        loss.backward()
        record[f"loss_{b}"] = loss.detach()
        params = dict(model.named_parameters(remove_duplicate=False))
        record[f"grads_{b}"] = gradients({k: params[k] for k in table})
        assert len(noise) == 8 and len(masks) == 2, (len(noise), len(masks))
        record[f"noise_{b}"] = [n.clone() for n in noise]  # v_n1 hop 1, hop 2, t_n1 …, v_n2 …, t_n2 …
        record[f"masks_{b}"] = [m.clone() for m in masks]  # users, items
    model.eval()
    with torch.no_grad():  # its scores are the fused view of the last training forward (no step taken since)
        record["scores"] = model.full_sort_predict(torch.arange(n_users).unsqueeze(0))
    torch.save(record, OUT / "mentor.pt")
    print({k: float(v) for k, v in record.items() if k.startswith("loss")})


if __name__ == "__main__":
    main(sys.argv[1])

"""Write tests/data/mmrec_fidelity/mmgcn.pt: MMRec's own MMGCN on the tiny dataset of
scripts/make_mmrec_fidelity_fixture.py (its files in tests/data/mmrec_fidelity are reused, not rewritten): the
initial weights drawn after ``torch.manual_seed(0)``, two batches, the loss and the gradient of every tensor
the model differentiates (its parameters and its fixed ID embeddings / user preferences), and the
full-ranking scores.

    python scripts/make_mmrec_mmgcn_fixture.py /path/to/MMRec/src

MMRec (GPL) is imported from the path given, never copied: the fixture holds only numbers. MMRec's MMGCN
needs torch_geometric (MessagePassing). Not run in CI; tests/test_mmgcn.py loads the fixture.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fixture_common import FakeDataset, draw_batches, feature_folder, mmrec_config, record_steps  # noqa: E402
from make_mmrec_fidelity_fixture import OUT  # noqa: E402

CONFIG = {"embedding_size": 8, "n_layers": 3, "reg_weight": 0.1, "train_batch_size": 8}
# MMRec hard-codes the visual branch's latent width (256); a narrower one keeps the fixture small. Passed
# through the constructor argument that MMRec's MMGCN sets, so no line of its code changes.
LATENT = 16


def main(mmrec_src: str) -> None:
    sys.path.insert(0, mmrec_src)
    import models.mmgcn
    from models.mmgcn import MMGCN

    original_init = models.mmgcn.GCN.__init__

    def narrow_init(self, *args, **kwargs):
        if kwargs.get("dim_latent"):
            kwargs["dim_latent"] = LATENT
        original_init(self, *args, **kwargs)

    models.mmgcn.GCN.__init__ = narrow_init

    inter = pd.read_csv(OUT / "mmrec_fidelity.inter", sep="\t")
    train = inter[inter["x_label"] == 0]
    n_users, n_items = inter["userID"].nunique(), inter["itemID"].nunique()
    batches = draw_batches(train, n_items, CONFIG["train_batch_size"], seed=11)

    with feature_folder({m: np.load(OUT / f"{m}_feat.npy") for m in ("image", "text")}) as tmp:
        torch.manual_seed(0)
        model = MMGCN(mmrec_config(tmp, **CONFIG), FakeDataset(train, n_users, n_items))
    # The tensors MMRec's MMGCN differentiates: its parameters and three plain tensors it never registers.
    free = {"id_embedding": model.id_embedding, "v_gcn.preference": model.v_gcn.preference,
            "t_gcn.preference": model.t_gcn.preference}
    tensors = {**dict(model.named_parameters()), **free}
    record = {"config": {**CONFIG, "latent_dims": {"image": LATENT}}, "n_users": model.n_users, "n_items": model.n_items,
              "state": {k: v.detach().clone() for k, v in tensors.items()}, "batches": batches}
    model.train()
    record_steps(model, batches, record, tensors=lambda: tensors)
    model.eval()
    with torch.no_grad():
        model.forward()  # MMRec scores with the representation of the last forward pass
        record["scores"] = model.full_sort_predict(torch.arange(model.n_users).unsqueeze(0))
    torch.save(record, OUT / "mmgcn.pt")
    print("MMGCN", {k: float(v) for k, v in record.items() if k.startswith("loss")})


if __name__ == "__main__":
    main(sys.argv[1])

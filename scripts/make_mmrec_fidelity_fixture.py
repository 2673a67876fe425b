"""Write tests/data/mmrec_fidelity/: a tiny MMRec-layout dataset and, for FREEDOM, LATTICE, GRCN and VBPR, the outputs
of MMRec's own model classes on it (weights, a batch, full-ranking scores, losses and gradients).

    python scripts/make_mmrec_fidelity_fixture.py /path/to/MMRec/src [MODEL ...]

(all models when none is named; the dataset files are rewritten identically each time).

MMRec (GPL) is imported from the path given, never copied: the fixture holds only numbers. Not run in CI;
tests/test_freedom.py, tests/test_lattice.py, tests/test_grcn.py and tests/test_vbpr.py load the fixture into recbole_mm's models and compare.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fixture_common import (DATA, FakeDataset, draw_batches, feature_folder, generated_dataset,  # noqa: E402
                            mmrec_config, record_steps, write_dataset)

OUT = DATA / "mmrec_fidelity"
N_USERS, N_ITEMS, DIMS = 10, 9, {"image": 6, "text": 5}
COMMON = {"embedding_size": 8, "feat_embed_dim": 8, "knn_k": 3, "train_batch_size": 8}
MODELS = {
    "FREEDOM": {"n_mm_layers": 1, "n_ui_layers": 2, "mm_image_weight": 0.1, "dropout": 0.5, "reg_weight": 0.1,
                "lambda_coeff": 0.9, "cf_model": "lightgcn"},
    "LATTICE": {"weight_size": [8, 8], "lambda_coeff": 0.9, "cf_model": "lightgcn", "n_layers": 1,
                "reg_weight": 0.01, "mess_dropout": [0.1, 0.1]},
    "GRCN": {"latent_embedding": 4, "n_layers": 2, "reg_weight": 0.1},
    "VBPR": {"reg_weight": 0.1},
}


def tiny_dataset(rng: np.random.Generator) -> tuple[pd.DataFrame, dict[str, np.ndarray]]:
    """The fixture's dataset (:func:`fixture_common.generated_dataset`): 10 users of 4-6 items each, 9 items."""
    return generated_dataset(rng, N_USERS, N_ITEMS, (4, 7), DIMS)


def tiny_batches(train: pd.DataFrame) -> list[torch.Tensor]:
    """The two training batches of this fixture and of its siblings on the same data (NumPy seed 7)."""
    return draw_batches(train, N_ITEMS, COMMON["train_batch_size"], seed=7)


def main(mmrec_src: str, *names: str) -> None:
    sys.path.insert(0, mmrec_src)
    torch.Tensor.cuda = lambda self, *args, **kwargs: self  # LATTICE moves its graphs with .cuda(); CPU here
    if not hasattr(sp.dok_matrix, "_update"):  # FREEDOM uses a private scipy method that newer scipy dropped
        sp.dok_matrix._update = lambda self, data: [self.__setitem__(key, value) for key, value in data.items()]
    from models.freedom import FREEDOM
    from models.lattice import LATTICE
    from models.grcn import GRCN  # needs torch_geometric (its message passing)
    from models.vbpr import VBPR

    inter, features = tiny_dataset(np.random.default_rng(13))
    write_dataset(OUT, "mmrec_fidelity", inter, features)
    train = inter[inter["x_label"] == 0]
    batches = tiny_batches(train)

    for name, cls in (("FREEDOM", FREEDOM), ("LATTICE", LATTICE), ("GRCN", GRCN), ("VBPR", VBPR)):
        if names and name not in names:
            continue
        with feature_folder(features) as tmp:  # MMRec caches its item graphs next to the data
            torch.manual_seed(0)
            model = cls(mmrec_config(tmp, **COMMON, **MODELS[name]), FakeDataset(train, N_USERS, N_ITEMS))
        record = {"config": {**COMMON, **MODELS[name]},
                  "state": {k: v.detach().clone() for k, v in model.state_dict().items()},
                  "batches": batches}
        torch.manual_seed(1)
        model.pre_epoch_processing()  # FREEDOM: draws the pruned graph; LATTICE: rebuild on the next batch; GRCN: none
        model.train()
        record_steps(model, batches, record)
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

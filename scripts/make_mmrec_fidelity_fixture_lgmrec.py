"""Write tests/data/mmrec_fidelity/{layergcn,lgmrec}.pt: the outputs of MMRec's own LayerGCN and LGMRec classes on
the tiny dataset of scripts/make_mmrec_fidelity_fixture.py (weights, batches, losses, gradients, scores).

    /work/refvenv/bin/python scripts/make_mmrec_fidelity_fixture_lgmrec.py /path/to/MMRec/src

A sibling of make_mmrec_fidelity_fixture.py (same dataset, rebuilt from the same seed and checked against the
files there; the fake MMRec config and dataset of scripts/fixture_common.py). MMRec (GPL) is imported from the path given, never copied:
the fixture holds only numbers. Not run in CI; tests/test_layergcn.py and tests/test_lgmrec.py compare.

Both models draw random numbers while training (LayerGCN its pruned graph, LGMRec its Gumbel noise and
hyperedge dropout; LGMRec also draws Gumbel noise when it scores), so the fixture records the seed set
before each step; recbole_mm's models draw the same numbers in the same order from the same seed.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fixture_common import FakeDataset, feature_folder, mmrec_config, record_steps  # noqa: E402
from make_mmrec_fidelity_fixture import COMMON, N_ITEMS, N_USERS, OUT, tiny_batches, tiny_dataset  # noqa: E402
from run_mmrec_reference import alias_models_common, install_shims  # noqa: E402

MODELS = {
    "LayerGCN": {"n_layers": 3, "reg_weight": 0.01, "dropout": 0.5},
    "LGMRec": {"cf_model": "lightgcn", "n_ui_layers": 2, "n_mm_layers": 2, "n_hyper_layer": 2, "hyper_num": 3,
               "keep_rate": 0.5, "alpha": 0.3, "cl_weight": 0.1, "reg_weight": 0.01},
}
SEEDS = {"init": 0, "train": 1, "scores": 2}


def main(mmrec_src: str) -> None:
    install_shims()
    sys.path.insert(0, mmrec_src)
    alias_models_common()
    from models.layergcn import LayerGCN
    from models.lgmrec import LGMRec

    inter, features = tiny_dataset(np.random.default_rng(13))
    # The same data as the fixture already there (its .inter and features are what recbole_mm reads).
    assert inter.equals(pd.read_csv(OUT / "mmrec_fidelity.inter", sep="\t"))
    for m, x in features.items():
        assert np.array_equal(x, np.load(OUT / f"{m}_feat.npy")), m
    train = inter[inter["x_label"] == 0]
    batches = tiny_batches(train)

    for name, cls in (("LayerGCN", LayerGCN), ("LGMRec", LGMRec)):
        with feature_folder(features) as tmp:
            torch.manual_seed(SEEDS["init"])
            model = cls(mmrec_config(tmp, **COMMON, **MODELS[name]), FakeDataset(train, N_USERS, N_ITEMS))
        record = {"config": {**COMMON, **MODELS[name]}, "seeds": SEEDS,
                  "state": {k: v.detach().clone() for k, v in model.named_parameters()},
                  "batches": batches}
        torch.manual_seed(SEEDS["train"])
        model.pre_epoch_processing()  # LayerGCN: draws the (degree-sensitively) pruned graph
        model.train()
        record_steps(model, batches, record, scalar=True)
        if name == "LayerGCN":
            record["pruned_adj"] = model.masked_adj.coalesce().to_dense()
        model.eval()
        torch.manual_seed(SEEDS["scores"])
        with torch.no_grad():
            record["scores"] = model.full_sort_predict(torch.arange(N_USERS).unsqueeze(0))
        torch.save(record, OUT / f"{name.lower()}.pt")
        print(name, {k: float(v) for k, v in record.items() if k.startswith("loss")})


if __name__ == "__main__":
    main(sys.argv[1])

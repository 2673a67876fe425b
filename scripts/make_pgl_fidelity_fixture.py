"""Write tests/data/pgl_fidelity/: a small MMRec-layout dataset (40 users, 30 items) and pgl.pt, the outputs of
MMRec's own PGL class (src/models/pgl.py, the authors' code) on it in both of its modes (weights, batches, losses,
gradients, the principal graph, scores).

    python scripts/make_pgl_fidelity_fixture.py /path/to/MMRec/src

PGL imports ``sparsesvd`` (SVDLIBC), which its global mode calls; it is not in the reference venv: install it
into a venv of its own (its 2013 setup.py needs ``pip install "setuptools<60" "cython<3" "wheel<0.41"`` first,
then ``pip install --no-build-isolation sparsesvd``). Made with torch 2.13 CPU, SciPy, pandas and sparsesvd 0.2.2.

A sibling of make_mmrec_fidelity_fixture.py (the fake MMRec config and dataset of scripts/fixture_common.py) on a
larger dataset than that one's 10 users and 9 items: SVDLIBC's Lanczos finds only 2 of the 8 singular values asked
for on that graph (and 1.018 for the first, which is 1), so the global mode needs a graph where it converges (here
all 8, equal to a dense SVD's to 1e-5). MMRec (GPL) is imported from the path given, never copied: the fixture holds
only numbers. Not run in CI; tests/test_pgl.py compares.

PGL draws random numbers while training (the local mode its degree-sensitive edge sample in
``pre_epoch_processing``, both modes four dropout masks per batch), so the fixture records the seed set before
each step; recbole_mm's PGL draws the same numbers in the same order from the same seed.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fixture_common import (DATA, FakeDataset, draw_batches, feature_folder, generated_dataset,  # noqa: E402
                            mmrec_config, record_steps, write_dataset)
from run_mmrec_reference import alias_models_common, install_shims  # noqa: E402

OUT = DATA / "pgl_fidelity"
N_USERS, N_ITEMS, DIMS = 40, 30, {"image": 6, "text": 5}
COMMON = {"embedding_size": 8, "feat_embed_dim": 8, "knn_k": 3, "train_batch_size": 16}
BASE = {"n_mm_layers": 1, "n_ui_layers": 2, "mm_image_weight": 0.1, "lambda_coeff": 0.9}
CASES = {"local": {**BASE, "mode": "local", "dropout": 0.2, "reg_weight": 0.05},
         "global": {**BASE, "mode": "global", "dropout": 0.1, "reg_weight": 0.1}}
SEEDS = {"init": 0, "train": 1, "scores": 2}


def main(mmrec_src: str) -> None:
    install_shims()
    sys.path.insert(0, mmrec_src)
    alias_models_common()
    from models.pgl import PGL

    # 40 users of 5-8 items each (:func:`fixture_common.generated_dataset`).
    inter, features = generated_dataset(np.random.default_rng(22), N_USERS, N_ITEMS, (5, 9), DIMS)
    write_dataset(OUT, "pgl_fidelity", inter, features)
    train = inter[inter["x_label"] == 0]
    batches = draw_batches(train, N_ITEMS, COMMON["train_batch_size"], seed=7)

    records = {}
    for case, settings in CASES.items():
        with feature_folder(features) as tmp:  # PGL caches its item graph next to the data
            torch.manual_seed(SEEDS["init"])
            model = PGL(mmrec_config(tmp, **COMMON, **settings), FakeDataset(train, N_USERS, N_ITEMS))
        record = {"config": {**COMMON, **settings}, "seeds": SEEDS,
                  "state": {k: v.detach().clone() for k, v in model.named_parameters()},
                  "batches": batches}
        torch.manual_seed(SEEDS["train"])
        model.pre_epoch_processing()  # local: draws the degree-sensitive sub-graph; global: nothing
        model.train()
        record_steps(model, batches, record, scalar=True)
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

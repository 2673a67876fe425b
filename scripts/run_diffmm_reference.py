"""Run the DiffMM authors' code (github HKUDS/DiffMM, made at fae20e6) on CPU, on a dataset of ours in MMRec layout:
the TikTok side by side of docs/diffmm.md. Not run in CI; the authors' code (no licence) is not vendored: its
checkout is given on the command line and imported from there, unchanged.

    git clone https://github.com/HKUDS/DiffMM /tmp/DiffMM
    OMP_NUM_THREADS=1 /work/refvenv/bin/python scripts/run_diffmm_reference.py /tmp/DiffMM --epochs 3 -- \\
        --reg 1e-4 --ssl_reg 1e-2 --trans 1 --e_loss 0.1 --cl_method 1

Everything after ``--`` goes to the authors' ``Params.py``. The script writes the authors' input files into a
temporary folder (``trnMat.pkl``/``tstMat.pkl``: the train (x_label 0) and test (x_label 2) rows of
``dataset/<dataset>/<dataset>.inter`` as scipy COO matrices; the dataset config's first modality as
``image_feat.npy``, the second as ``text_feat.npy``: on TikTok image and audio, our copy having no text), and runs
their ``Coach`` under their dataset name ``baby`` (two modalities; their ``tiktok`` branch hard-codes three).
Shims, none in the model code: ``.cuda()`` is the identity (tensors and modules), a stand-in ``setproctitle``
module, and scipy's removed ``coo_matrix.A`` (``toarray()``). Each training epoch prints one JSON line: the
authors' loss components (their per-epoch means) and the CPU seconds of ``trainEpoch`` (``time.process_time``,
one process; their test pass is not timed).
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import sys
import tempfile
import time
import types
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch
import yaml

ROOT = Path(__file__).resolve().parent.parent


def install_shims() -> None:
    """CPU stand-ins for the authors' CUDA calls and the modules/attributes their environment had."""
    torch.Tensor.cuda = lambda self, *args, **kwargs: self
    torch.nn.Module.cuda = lambda self, *args, **kwargs: self
    sys.modules.setdefault("setproctitle", types.ModuleType("setproctitle"))
    if not hasattr(sp.coo_matrix, "A"):
        sp.coo_matrix.A = property(lambda self: self.toarray())


def write_inputs(dataset: str, folder: Path) -> None:
    """The authors' files for ``dataset`` (ours, MMRec layout) under ``folder``."""
    config = yaml.safe_load((ROOT / "dataset_configs" / f"{dataset}.yaml").read_text())
    source = ROOT / "dataset" / dataset
    inter = pd.read_csv(source / f"{dataset}.inter", sep="\t")
    users, items = config["USER_ID_FIELD"], config["ITEM_ID_FIELD"]
    shape = (int(inter[users].max()) + 1, int(inter[items].max()) + 1)
    for label, name in ((0, "trnMat.pkl"), (2, "tstMat.pkl")):
        rows = inter[inter["x_label"] == label]
        matrix = sp.coo_matrix((np.ones(len(rows), dtype=np.float32), (rows[users], rows[items])), shape=shape)
        with open(folder / name, "wb") as f:
            pickle.dump(matrix, f)
    files = list(config["modalities"].values())
    for name, file in zip(("image_feat.npy", "text_feat.npy"), files):
        np.save(folder / name, np.load(source / file).astype(np.float32))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("src", help="checkout of HKUDS/DiffMM")
    parser.add_argument("--dataset", default="tiktok")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--seed", type=int, default=999)
    args, rest = parser.parse_known_args()
    rest = [a for a in rest if a != "--"]
    torch.set_num_threads(1)
    install_shims()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "Datasets" / "baby"
        folder.mkdir(parents=True)
        write_inputs(args.dataset, folder)
        os.chdir(tmp)
        sys.argv = [sys.argv[0], "--data", "baby", "--epoch", str(args.epochs), "--seed", str(args.seed), *rest]
        sys.path.insert(0, str(Path(args.src).resolve()))
        import Main  # the authors' entry module: parses sys.argv into Params.args on import

        original = Main.Coach.trainEpoch

        def train_epoch(self):
            cpu, wall = time.process_time(), time.perf_counter()
            result = original(self)
            record = {"side": "authors", "epoch": len(self.metrics["TrainLoss"]),
                      **{k: float(v) for k, v in result.items()},
                      "cpu_seconds": round(time.process_time() - cpu, 3),
                      "wall_seconds": round(time.perf_counter() - wall, 3)}
            print(json.dumps(record), flush=True)
            return result

        Main.Coach.trainEpoch = train_epoch
        Main.seed_it(Main.args.seed)
        Main.logger.saveDefault = False
        handler = Main.DataHandler()
        handler.LoadData()
        Main.Coach(handler).run()


if __name__ == "__main__":
    main()

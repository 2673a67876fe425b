"""Write tests/data/mmrec_fidelity/dualgnn.pt and dragon.pt: MMRec's own DualGNN and DRAGON on the tiny dataset
of that folder (made by scripts/make_mmrec_fidelity_fixture.py), fed the user-user lists that MMRec's
preprocessing script (``preprocessing/dualgnn-gen-u-u-matrix.py``) writes, with their weights, one epoch's sampled
user graph, two batches' losses and gradients, and the full-ranking scores.

    python scripts/make_mmrec_dualgnn_fixture.py /path/to/MMRec

(the MMRec checkout's root: its src/ and preprocessing/ are imported from there, never copied; the fixture
holds only numbers). Not run in CI; tests/test_dualgnn.py and tests/test_dragon.py load the fixtures into
recbole_mm's models.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fixture_common import FakeDataset, draw_batches, feature_folder, mmrec_config, record_steps  # noqa: E402
from make_mmrec_fidelity_fixture import OUT  # noqa: E402
from run_mmrec_reference import install_shims, user_graph_dict  # noqa: E402

# Parameters the references create but never read in the forward pass (MLP_v, MLP_t, MLP_user; DRAGON's
# feature tables and projections, read only to build its item graph), and second names of the
# preference tables (the forward stores them as attributes, which registers them again): not recorded.
UNUSED = ("MLP_v.", "MLP_t.", "MLP_user.", "v_preference", "t_preference", "image_embedding.", "text_embedding.",
          "image_trs.", "text_trs.")
CONFIG = {"embedding_size": 64, "train_batch_size": 8, "reg_weight": 0.1, "aggr_mode": "add"}
MODELS = {"DualGNN": {}, "DRAGON": {"feat_embed_dim": 64, "knn_k": 3, "n_mm_layers": 1, "mm_image_weight": 0.1}}
# Keys of ours that the references hard-code (the two propagations, k = 40, softmax).
OURS = {"n_layers": 2, "user_graph_k": 40, "user_aggr": "softmax"}


def script_lists(mmrec_root: Path, inter: pd.DataFrame) -> dict[int, list[list]]:
    """The lists as MMRec's preprocessing script computes them: its own gen_user_matrix for the counts (run
    on the training rows, as its __main__ does), then each user's nonzero entries by torch.topk, at most 200."""
    spec = importlib.util.spec_from_file_location(
        "dualgnn_gen_u_u_matrix", mmrec_root / "preprocessing" / "dualgnn-gen-u-u-matrix.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    n_users = inter["userID"].nunique()
    train = inter[inter["x_label"] == 0][["userID", "itemID"]].to_numpy()
    matrix = module.gen_user_matrix(train, n_users)
    lists = {}
    for user in range(n_users):
        top = torch.topk(matrix[user], min(int((matrix[user] != 0).sum()), 200))
        lists[user] = [top.indices.numpy().tolist(), top.values.numpy().tolist()]
    return lists


def parameters(model, value) -> dict[str, torch.Tensor]:
    """``value(p)`` of every parameter the reference's forward pass reads, under its state_dict name."""
    return {k: value(p) for k, p in model.named_parameters(remove_duplicate=False) if not k.startswith(UNUSED)}


def main(mmrec_root: str) -> None:
    root = Path(mmrec_root)
    install_shims()
    sys.path.insert(0, str(root / "src"))
    from models.dragon import DRAGON
    from models.dualgnn import DualGNN

    inter = pd.read_csv(OUT / "mmrec_fidelity.inter", sep="\t")
    lists = script_lists(root, inter)
    assert lists == user_graph_dict(OUT / "mmrec_fidelity.inter"), "run_mmrec_reference.user_graph_dict differs"
    train = inter[inter["x_label"] == 0]
    n_users, n_items = inter["userID"].nunique(), inter["itemID"].nunique()
    batches = draw_batches(train, n_items, CONFIG["train_batch_size"], seed=11)
    features = {m: np.load(OUT / f"{m}_feat.npy") for m in ("image", "text")}

    for name, cls in (("DualGNN", DualGNN), ("DRAGON", DRAGON)):
        settings = {**CONFIG, **MODELS[name]}
        # DRAGON caches its item graph next to the data.
        with feature_folder(features, extra={"user_graph_dict.npy": lists}) as tmp:
            np.random.seed(0)
            torch.manual_seed(0)
            model = cls(mmrec_config(tmp, user_graph_dict_file="user_graph_dict.npy", **settings),
                        FakeDataset(train, n_users, n_items))
        assert model.n_users == n_users and model.n_items == n_items and model.k == OURS["user_graph_k"]
        record = {"config": {**settings, **OURS}, "state": parameters(model, lambda p: p.detach().clone()),
                  "user_graph_dict": lists, "batches": batches}
        np.random.seed(1)
        model.pre_epoch_processing()
        # torch reads a nested list of fewer than 32 rows as a tuple of indices (a real dataset's thousands of
        # users make it one index array); as a tensor it is that array here too.
        model.epoch_user_graph = torch.tensor(model.epoch_user_graph)
        record["epoch_user_graph"] = model.epoch_user_graph.clone()
        record["user_weight_matrix"] = model.user_weight_matrix.clone()
        model.train()
        record_steps(model, batches, record, clone_batch=True,  # its forward shifts the item rows in place
                     tensors=lambda: parameters(model, lambda p: p))
        model.eval()
        with torch.no_grad():
            record["scores"] = model.full_sort_predict(torch.arange(n_users).unsqueeze(0))
        torch.save(record, OUT / f"{name.lower()}.pt")
        print(name, {k: float(v) for k, v in record.items() if k.startswith("loss")})


if __name__ == "__main__":
    main(sys.argv[1])

"""Train MMRec's own implementation of a model on recbole_mm's TikTok copy, for side-by-side numbers
(docs/bm3.md, docs/mgcn.md). Not part of the package or of CI; MMRec (GPL) is not vendored.

    git clone https://github.com/enoche/MMRec /tmp/MMRec
    OMP_NUM_THREADS=1 python scripts/run_mmrec_reference.py /tmp/MMRec/src BM3 n_layers=1 dropout=0.5 reg_weight=0.1
    OMP_NUM_THREADS=1 python scripts/run_mmrec_reference.py /tmp/MMRec/src MGCN cl_loss=0.01
    OMP_NUM_THREADS=1 python scripts/run_mmrec_reference.py /tmp/MMRec/src SLMRec learning_rate=0.001 \
        ssl_alpha=0.1 ssl_temp=0.2 reg=0.0001 epochs=3
    OMP_NUM_THREADS=1 python scripts/run_mmrec_reference.py /tmp/MMRec/src DualGNN epochs=3 reg_weight=0.001
    OMP_NUM_THREADS=1 python scripts/run_mmrec_reference.py /tmp/MMRec/src LayerGCN epochs=3 n_layers=4 \
        dropout=0.1 reg_weight=0.001
    OMP_NUM_THREADS=1 python scripts/run_mmrec_reference.py /tmp/MMRec/src DAMRS epochs=3

One grid point, seed 999, on the CPU: MMRec's settings of the function recbole_mm trains on TikTok by default
(:data:`TIKTOK_SETTINGS`, the one table of them; benchmarks/speed.py ``--mmrec`` reads it too), then each key=value
(it replaces the list of MMRec's model yaml; a key that is not one of its hyper-parameters, e.g. ``epochs=3``, is
set as it is). A grid key left with more than one value is an error (MMRec would train every point).
At the end it prints each training epoch's loss at full precision and the process's CPU seconds in it
(one-thread side-by-side timing: ``time.process_time`` around MMRec's ``Trainer._train_epoch`` and its model's
``pre_epoch_processing``). MMRec reads configs/ from its working directory and MGCN writes its item graphs next
to the data, so both live in a temporary folder (dataset files linked, MMRec's configs copied). Shims, none of
which changes a model: ``.cuda()`` is the identity, ``torch_scatter.scatter_add`` an ``index_add_``, SciPy's
removed ``dok_matrix._update`` and NumPy's removed ``np.float`` are restored, ``sparsesvd`` (PGL's import) raises
when called if it is not installed, ``models.common`` (LayerGCN's import) is MMRec's ``common``, and the
image-loading helpers (torchvision, lmdb; only used with raw images) and, when absent, matplotlib (the trainer's
loss plot) are stubbed. MMRec's protocol: test masks training items only.

DualGNN and DRAGON read a user-user file (``user_graph_dict.npy``) that MMRec's
``preprocessing/dualgnn-gen-u-u-matrix.py`` writes: it is written into the temporary data folder with the same
lists (:func:`user_graph_dict`), and their CPU-only crash (a ``Parameter`` reassigned a tensor) is avoided as a
GPU run avoids it (:func:`install_shims`). DAMRS reads an item-item file (``item_graph_dict_2.npy``) that the
DA-MRS authors' ``build_iib_graph.py`` writes: it is written the same way (:func:`item_graph_dict`).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
import tempfile
import time
import types
from pathlib import Path

import numpy as np
import scipy.sparse as sp
import torch

TIKTOK = Path(__file__).resolve().parent.parent / "dataset" / "tiktok"
DATASET_YAML = """USER_ID_FIELD: userID
ITEM_ID_FIELD: itemID
filter_out_cod_start_users: True
inter_file_name: 'tiktok.inter'
vision_feature_file: 'image_feat.npy'
text_feature_file: 'audio_feat.npy'   # TikTok's second modality in MMRec's text slot
field_separator: "\\t"
"""


def install_shims() -> None:
    np.float = float
    torch.Tensor.cuda = lambda self, *args, **kwargs: self
    if not hasattr(sp.dok_matrix, "_update"):
        sp.dok_matrix._update = lambda self, entries: [self.__setitem__(k, v) for k, v in entries.items()]
    sys.modules.setdefault("lmdb", types.ModuleType("lmdb"))
    # Imported by MMRec's trainer for a plot it never draws here. A stub of an earlier call (a second call of
    # this function in one process) has no __spec__, which find_spec refuses: look in sys.modules first.
    if "matplotlib" not in sys.modules and importlib.util.find_spec("matplotlib") is None:
        sys.modules["matplotlib"] = types.ModuleType("matplotlib")
        sys.modules["matplotlib.pyplot"] = types.ModuleType("matplotlib.pyplot")
    data_utils = types.ModuleType("utils.data_utils")
    for name in ("ImageResize", "ImagePad", "image_to_tensor", "load_decompress_img_from_lmdb_value"):
        setattr(data_utils, name, None)
    sys.modules["utils.data_utils"] = data_utils
    scatter = types.ModuleType("torch_scatter")
    scatter.scatter_add = lambda src, index, dim=0, dim_size=None: torch.zeros(
        dim_size, dtype=src.dtype).index_add_(0, index, src)
    # scatter(src, index, reduce="sum" | "mean"): imported by SLMRec (its unused TikTok word-embedding path)
    def scatter_reduce(src, index, dim=0, dim_size=None, reduce="sum"):
        size = int(index.max()) + 1 if dim_size is None else dim_size
        total = torch.zeros((size, *src.shape[1:]), dtype=src.dtype).index_add_(0, index, src)
        if reduce == "mean":
            total = total / torch.bincount(index, minlength=size).clamp_min(1).unsqueeze(-1).to(src.dtype)
        return total
    scatter.scatter = scatter_reduce
    sys.modules["torch_scatter"] = scatter
    # PGL imports sparsesvd; only its global mode calls it.
    if "sparsesvd" not in sys.modules and importlib.util.find_spec("sparsesvd") is None:
        def sparsesvd(*args, **kwargs):
            raise SystemExit("PGL's global mode needs sparsesvd (SVDLIBC): see scripts/make_pgl_fidelity_fixture.py")
        sys.modules["sparsesvd"] = types.ModuleType("sparsesvd")
        sys.modules["sparsesvd"].sparsesvd = sparsesvd
    # DualGNN/DRAGON: ``self.result_embed = nn.Parameter(...).to(device)`` is a plain (non-leaf) tensor after a
    # move to the GPU, so their forward may later assign a tensor to it; on the CPU ``.to`` returns the
    # Parameter itself and the assignment raises. Returning a copy, as the GPU move does, restores that.
    original_to = torch.nn.Parameter.to if "to" in vars(torch.nn.Parameter) else None

    def parameter_to(self, *args, **kwargs):
        moved = torch.Tensor.to(self, *args, **kwargs)
        return moved.clone() if moved is self else moved

    if original_to is None:
        torch.nn.Parameter.to = parameter_to


def user_graph_dict(inter_file: Path, max_neighbours: int = 200) -> dict[int, list[list]]:
    """The ``{user: [neighbour ids, shared-item counts]}`` lists that MMRec's
    ``preprocessing/dualgnn-gen-u-u-matrix.py`` saves: the training rows' (x_label 0) user-user counts of
    shared items, each user's nonzero entries by ``torch.topk`` on its dense row, at most 200. The counts are
    one sparse product here instead of the script's pairwise Python loop (hours on TikTok); the rows handed to
    ``torch.topk`` are the same float32 values, so equal counts come out in the same order.
    scripts/make_mmrec_dualgnn_fixture.py checks this against the script's own function on its tiny data."""
    import pandas as pd

    inter = pd.read_csv(inter_file, sep="\t")
    n_users = inter["userID"].nunique()
    train = inter[inter["x_label"] == 0]
    r = sp.csr_matrix((np.ones(len(train)), (train["userID"].values, train["itemID"].values)),
                      shape=(n_users, int(inter["itemID"].max()) + 1))
    r.data[:] = 1.0
    counts = (r @ r.T).tolil()
    counts.setdiag(0)
    lists = {}
    for user in range(n_users):
        row = torch.zeros(n_users)
        cols = counts.rows[user]
        row[cols] = torch.tensor(counts.data[user], dtype=torch.float32)
        top = torch.topk(row, min(int((row != 0).sum()), max_neighbours))
        lists[user] = [top.indices.numpy().tolist(), top.values.numpy().tolist()]
    return lists


def item_graph_dict(inter_file: Path, top_k: int = 2, min_count: int = 2) -> dict[int, list[list]]:
    """The ``{item: [neighbour ids, shared-user counts]}`` lists that DA-MRS's ``item_graph_dict_2.npy`` holds
    (the authors' XMUDM/DA-MRS ``build_iib_graph.py --topk=2``; MMRec reads the file but has no script for it):
    the training rows' (x_label 0) item-item counts of shared users, kept where at least ``min_count``, each item's
    nonzero entries by ``torch.topk`` on its dense float32 row, at most ``top_k``. One sparse product instead of
    the script's pairwise Python loop; the rows handed to ``torch.topk`` hold the same values, so equal counts come
    out in the same order."""
    import pandas as pd

    inter = pd.read_csv(inter_file, sep="\t")
    n_items = inter["itemID"].nunique()
    train = inter[inter["x_label"] == 0]
    r = sp.csr_matrix((np.ones(len(train)), (train["userID"].values, train["itemID"].values)),
                      shape=(int(inter["userID"].max()) + 1, n_items))
    r.data[:] = 1.0
    counts = (r.T @ r).tolil()
    counts.setdiag(0)
    lists = {}
    for item in range(n_items):
        row = torch.zeros(n_items)
        cols, values = counts.rows[item], np.asarray(counts.data[item], dtype=np.float32)
        keep = values >= min_count
        row[np.asarray(cols, dtype=np.int64)[keep]] = torch.from_numpy(values[keep])
        top = torch.topk(row, min(int((row != 0).sum()), top_k))
        lists[item] = [top.indices.numpy().tolist(), top.values.numpy().tolist()]
    return lists


# MMRec settings under which MMRec's implementation computes what recbole_mm trains on TikTok by default
# (properties/model/<model>.yaml, dataset_configs/tiktok.yaml and its model_overrides; RecBole's own yaml for BPR and
# LightGCN): a value for every key of MMRec's model yaml that holds a grid of several, the rest left as MMRec has
# them. These are the settings of each docs/<model>.md's side-by-side loss comparison. In the order of
# benchmarks/speed.py's ratio table. Where no setting of MMRec's gives our function, the entry says so.
TIKTOK_SETTINGS: dict[str, dict] = {
    "BPR": {"reg_weight": 0.0},  # RecBole's BPR has no L2 term (MMRec's still computes it, times 0)
    "LightGCN": {"n_layers": 2, "reg_weight": 1e-05},
    # Ours l2-normalises the features first (feature_norm: l2, docs/vbpr.md); MMRec has no such step: the
    # same cost, a different function (ours at feature_norm=none is MMRec's).
    "VBPR": {"reg_weight": 0.0001},
    "FREEDOM": {"dropout": 0.8, "reg_weight": 0.0001},
    "LATTICE": {"reg_weight": 1e-05, "learning_rate": 0.001},
    "BM3": {"n_layers": 1, "dropout": 0.5, "reg_weight": 0.1},
    "MGCN": {"cl_loss": 0.001},  # dataset_configs/tiktok.yaml's override (the model yaml's is 0.01)
    "MMGCN": {"reg_weight": 0.0001, "learning_rate": 0.001},
    "GRCN": {"reg_weight": 1e-05, "learning_rate": 0.001},
    "DualGNN": {"reg_weight": 0.001, "learning_rate": 0.001},
    "SLMRec": {"learning_rate": 0.001, "ssl_alpha": 0.1, "ssl_temp": 0.2, "reg": 0.0001},  # reg: read by no code
    "DRAGON": {"reg_weight": 0.001, "learning_rate": 0.001},
    "SMORE": {"n_ui_layers": 3, "image_knn_k": 10, "text_knn_k": 10, "reg_weight": 1e-05, "dropout_rate": 0.0},
    "LayerGCN": {"n_layers": 4, "dropout": 0.1, "reg_weight": 0.001},
    "LGMRec": {},  # MMRec's yaml holds one value per key, ours
    "PGL": {},  # MMRec's yaml: local mode, dropout 0.2, reg_weight 0, ours
    "DAMRS": {},  # MMRec's yaml holds one value per key, ours
}


def open_grid_keys(model_yaml: dict, settings: dict) -> list[str]:
    """The grid keys (``hyper_parameters`` of MMRec's model yaml) that ``settings`` leaves with more than one
    value: MMRec's quick start would train once per combination of them."""
    return [key for key in model_yaml.get("hyper_parameters", [])
            if key not in settings and isinstance(model_yaml.get(key), list) and len(model_yaml[key]) > 1]


def grid_point(work: Path, model: str, settings: dict) -> dict:
    """MMRec's ``config_dict`` of one run: :func:`base_config`, :data:`TIKTOK_SETTINGS` of ``model``, then
    ``settings``; a grid key's value becomes a one-value list, as MMRec's quick start expects. Raises SystemExit
    when a grid key is left with several values."""
    import yaml

    model_yaml = yaml.safe_load((work / "configs" / "model" / f"{model}.yaml").read_text()) or {}
    grid = set(model_yaml.get("hyper_parameters", [])) | {"seed"}
    merged = {**TIKTOK_SETTINGS.get(model, {}), **settings}
    left = open_grid_keys(model_yaml, merged)
    if left:
        raise SystemExit(f"run_mmrec_reference: {model}: MMRec's grid keys {', '.join(left)} hold several values; "
                         f"give one each (key=value) or add them to TIKTOK_SETTINGS")
    config = base_config(work)
    config.update({k: [v] if k in grid and not isinstance(v, list) else v for k, v in merged.items()})
    return config


def parse(value: str):
    """A number when it reads as one, else the string (PGL's ``mode=global``)."""
    for kind in (int, float):
        try:
            return kind(value)
        except ValueError:
            pass
    return value


# Models whose reference reads MMRec's user-user file (MENTOR's reads it and never uses it).
USER_GRAPH_MODELS = ("DualGNN", "DRAGON", "MENTOR")


def prepare(src: str, model: str | None = None) -> Path:
    """Shims installed, MMRec's ``src`` importable and a temporary working folder (MMRec's configs, the
    TikTok files linked) made the current directory; returns that folder (benchmarks/speed.py uses it too)."""
    install_shims()
    work = Path(tempfile.mkdtemp(prefix="mmrec-"))
    shutil.copytree(Path(src) / "configs", work / "configs")
    (work / "configs" / "dataset" / "tiktok.yaml").write_text(DATASET_YAML)
    (work / "data" / "tiktok").mkdir(parents=True)
    for name in ("tiktok.inter", "image_feat.npy", "audio_feat.npy"):
        (work / "data" / "tiktok" / name).symlink_to(TIKTOK / name)
    if model in USER_GRAPH_MODELS:
        np.save(work / "data" / "tiktok" / "user_graph_dict.npy", user_graph_dict(TIKTOK / "tiktok.inter"),
                allow_pickle=True)
        with open(work / "configs" / "dataset" / "tiktok.yaml", "a") as f:
            f.write("user_graph_dict_file: 'user_graph_dict.npy'\n")
    if model == "DAMRS":  # its model yaml names the file: item_graph_dict_file: 'item_graph_dict_2.npy'
        np.save(work / "data" / "tiktok" / "item_graph_dict_2.npy", item_graph_dict(TIKTOK / "tiktok.inter"),
                allow_pickle=True)
    os.chdir(work)
    sys.path.insert(0, str(Path(src).resolve()))
    alias_models_common()
    return work


def alias_models_common() -> None:
    """MMRec's layergcn.py imports ``models.common.*``, a package MMRec does not have (its shared code is
    ``common``): alias the one to the other so the model imports. Needs MMRec's src on sys.path."""
    import common
    import common.abstract_recommender
    import common.loss

    sys.modules.setdefault("models.common", common)
    sys.modules.setdefault("models.common.abstract_recommender", common.abstract_recommender)
    sys.modules.setdefault("models.common.loss", common.loss)


def base_config(work: Path) -> dict:
    """MMRec settings of every reference run: CPU, seed 999, the TikTok copy under ``work``."""
    return {"use_gpu": False, "gpu_id": 0, "data_path": str(work / "data") + "/", "seed": [999]}


def main(src: str, model: str, *overrides: str) -> None:
    torch.set_num_threads(1)
    work = prepare(src, model)
    from common.trainer import Trainer
    from utils.quick_start import quick_start

    epochs: list[tuple[float, float]] = []  # (train loss, CPU seconds) per training epoch
    train_epoch = Trainer._train_epoch

    pre_epoch = [0.0]  # CPU seconds of the model's pre_epoch_processing before the coming epoch
    fit = Trainer.fit

    def timed_train_epoch(self, *args, **kwargs):
        start = time.process_time()
        result = train_epoch(self, *args, **kwargs)
        loss = result[0]
        cpu = time.process_time() - start + pre_epoch[0]
        pre_epoch[0] = 0.0
        epochs.append((float(sum(loss) if isinstance(loss, tuple) else loss), cpu))
        return result

    def timed_fit(self, *args, **kwargs):
        # MMRec's fit calls pre_epoch_processing outside _train_epoch (DualGNN and DRAGON re-draw their user
        # graph there, FREEDOM its pruned graph); recbole_mm's models do it inside the epoch, so it is counted.
        process = self.model.pre_epoch_processing

        def timed_pre_epoch():
            start = time.process_time()
            process()
            pre_epoch[0] += time.process_time() - start

        self.model.pre_epoch_processing = timed_pre_epoch
        return fit(self, *args, **kwargs)

    Trainer._train_epoch = timed_train_epoch
    Trainer.fit = timed_fit
    config = grid_point(work, model, {k: parse(v) for k, v in (kv.split("=", 1) for kv in overrides)})
    quick_start(model=model, dataset="tiktok", config_dict=config, save_model=False)
    for epoch, (loss, cpu) in enumerate(epochs):
        print(f"epoch {epoch}: train loss {loss!r}, {cpu:.2f} CPU s")
    print("MMRec's log is under", work / "log")


if __name__ == "__main__":
    main(*sys.argv[1:])

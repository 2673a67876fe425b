"""recbole_mm's MGCN against MMRec's own MGCN on the whole TikTok set, without training (docs/mgcn.md,
"TikTok gap"). The fidelity fixture checks the two on a 6 × 8 toy graph; this checks what it cannot: the
graphs each builds from TikTok's data and features, and one training step of each from the same weights.

    git clone https://github.com/enoche/MMRec /tmp/MMRec
    OMP_NUM_THREADS=1 python benchmarks/mgcn_tiktok_vs_mmrec.py /tmp/MMRec/src [saved/MGCN-….pth]

Builds both models (MMRec's with the shims and the temporary layout of scripts/run_mmrec_reference.py, seed
999), copies MMRec's initial weights into ours (rows mapped from MMRec's raw ids to RecBole's internal
ids), then prints the largest differences of: the item kNN graphs, the normalised user-item graph, the
loss and every parameter's gradient on MMRec's first training batch, and the full-ranking scores. MMRec
keeps the 2 items and 10 users that appear only in rows dropped as cold-start users (isolated nodes; its
kNN graphs are built over all 6,710 feature rows); RecBole drops them, so those nodes are left out of the
comparison. Given a checkpoint of a trained recbole_mm MGCN, it also copies the trained weights into MMRec's
model and scores them with MMRec's own evaluator on its validation split, next to RecBole's number for the
same weights (the two evaluators and data paths on one model).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))
from builders import MGCN_NAMES  # noqa: E402  (the fidelity test's table: MMRec parameter name → ours)

# MMRec's "text" slot holds TikTok's audio, as in run_mmrec_reference.py.
NAMES = {ref: ours.replace(".text.", ".audio.") for ref, ours in MGCN_NAMES.items()}


def ours():
    """recbole_mm's MGCN on TikTok (cl_loss 0.01, seed 999), its training dataset, and a function scoring the
    model with RecBole's evaluator (recbole_mm's trainer) on the validation split."""
    import recbole_mm  # noqa: F401  (registers the plugin models)
    from recbole.utils import get_model, init_seed

    from recbole_mm.quick_start import create_dataset, data_preparation, make_config
    from recbole_mm.trainer import Trainer

    # MMRec's side runs the authors' cl_loss 0.01; TikTok's dataset config sets 0.001 (chosen on validation).
    config = make_config("MGCN", "tiktok", config_dict={"state": "WARNING", "show_progress": False, "cl_loss": 0.01})
    train, valid, _ = data_preparation(config, create_dataset(config))
    init_seed(config["seed"], True)
    model = get_model("MGCN")(config, train._dataset)
    return model, train._dataset, lambda: Trainer(config, model).evaluate(valid, load_best_model=False)


def reference(src: str):
    """MMRec's MGCN on the same files (seed 999, cl_loss 0.01), its first training batch, and a function
    scoring the model with MMRec's own evaluator on its validation split."""
    spec = importlib.util.spec_from_file_location("run_mmrec_reference", HERE.parent / "scripts" / "run_mmrec_reference.py")
    runner = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(runner)
    runner.install_shims()
    work = Path(tempfile.mkdtemp(prefix="mmrec-"))
    shutil.copytree(Path(src) / "configs", work / "configs")
    (work / "configs" / "dataset" / "tiktok.yaml").write_text(runner.DATASET_YAML)
    (work / "data" / "tiktok").mkdir(parents=True)
    for name in ("tiktok.inter", "image_feat.npy", "audio_feat.npy"):
        (work / "data" / "tiktok" / name).symlink_to(runner.TIKTOK / name)
    os.chdir(work)
    sys.path.insert(0, str(Path(src).resolve()))
    from common.trainer import Trainer
    from models.mgcn import MGCN
    from utils.configurator import Config
    from utils.dataloader import EvalDataLoader, TrainDataLoader
    from utils.dataset import RecDataset
    from utils.utils import init_seed

    config = Config("MGCN", "tiktok", {"use_gpu": False, "gpu_id": 0, "data_path": str(work / "data") + "/"})
    config["seed"], config["cl_loss"] = 999, 0.01  # what MMRec's quick_start sets from its one-point grid
    train_dataset, valid_dataset, _ = RecDataset(config).split()
    for split in (train_dataset, valid_dataset):
        str(split)  # MMRec's quick_start logs them, and __str__ sets inter_num, which its loaders read
    loader = TrainDataLoader(config, train_dataset, batch_size=config["train_batch_size"], shuffle=True)
    init_seed(999)
    loader.pretrain_setup()
    model = MGCN(config, loader)
    valid = EvalDataLoader(config, valid_dataset, additional_dataset=train_dataset,
                           batch_size=config["eval_batch_size"])
    return model, next(iter(loader)), lambda: Trainer(config, model).evaluate(valid)


def id_maps(dataset, sizes: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Raw id → RecBole internal id (-1 where RecBole dropped the id), for users and items; ``sizes``:
    MMRec's user and item counts (raw ids are 0..size-1)."""
    maps = []
    for field, size in zip(("userID", "itemID"), sizes):
        tokens = dataset.field2id_token[field][1:].astype(int)
        to_ours = np.full(max(size, tokens.max() + 1), -1, dtype=np.int64)
        to_ours[tokens] = np.arange(1, len(tokens) + 1)
        maps.append(to_ours)
    return maps[0], maps[1]


def mapped_sparse(graph: torch.Tensor, node_map: np.ndarray, n: int) -> torch.Tensor:
    """MMRec's sparse graph over raw node ids as a sparse [n, n] graph over ours (dropped nodes left out)."""
    graph = graph.coalesce()
    rows, cols = graph.indices()
    node_map = torch.from_numpy(node_map)
    r, c = node_map[rows], node_map[cols]
    keep = (r >= 0) & (c >= 0)
    return torch.sparse_coo_tensor(torch.stack([r[keep], c[keep]]), graph.values()[keep], (n, n)).coalesce()


def largest(a: torch.Tensor, b: torch.Tensor) -> str:
    diff = (a - b).abs().max().item()
    return f"max |diff| {diff:.3g} (max |value| {b.abs().max().item():.3g})"


def copy_weights(source: dict, target: dict, names: dict, user_rows, item_rows) -> None:
    """``target[names[k]][rows] = source[k][rows]`` for the user/item tables (``user_rows``/``item_rows``:
    (source rows, target rows)), whole tensors for the layers."""
    for source_name, target_name in names.items():
        value = source[source_name]
        if "user_embedding" in target_name:
            target[target_name][user_rows[1]] = value[user_rows[0]]
        elif any(key in target_name for key in ("item_embedding", "item_id_embedding", "raw_features",
                                                  "image_embedding", "text_embedding")):
            target[target_name][item_rows[1]] = value[item_rows[0]]
        else:
            target[target_name] = value.clone()


def main(src: str, checkpoint: str | None = None) -> None:
    torch.set_num_threads(1)
    checkpoint = checkpoint and os.path.abspath(checkpoint)  # MMRec's set-up changes the working directory
    model, dataset, evaluate = ours()
    theirs, batch, reference_evaluate = reference(src)
    user_map, item_map = id_maps(dataset, (theirs.n_users, theirs.n_items))
    n_users, n_items = model.n_users, model.n_items
    print(f"ours: {n_users - 1} users, {n_items - 1} items (+ padding); MMRec: {theirs.n_users} users, "
          f"{theirs.n_items} items")

    # MMRec's weights into ours: tables row by row through the id maps, the layers as they are.
    users = np.flatnonzero(user_map[: theirs.n_users] >= 0)
    items = np.flatnonzero(item_map[: theirs.n_items] >= 0)
    state = model.state_dict()
    copy_weights(theirs.state_dict(), state, NAMES, (users, user_map[users]), (items, item_map[items]))
    model.load_state_dict(state)

    # Graphs: built by each from the data (ours from the dataset's features, MMRec's from its files).
    for m, ref in (("image", "image_original_adj"), ("audio", "text_original_adj")):
        expected = mapped_sparse(getattr(theirs, ref), item_map, n_items)
        mine = getattr(model, f"item_graph_{m}").coalesce()
        mine_dense, expected_dense = mine.to_dense(), expected.to_dense()
        rows = ((mine_dense - expected_dense).abs() > 1e-6).any(dim=1)
        neighbours = ((mine_dense > 0) != (expected_dense > 0)).any(dim=1)
        print(f"item kNN graph {m}: {mine._nnz()} edges (MMRec {expected._nnz()} on common items), "
              f"{largest(mine_dense, expected_dense)}; rows that differ: {int(rows.sum())} of {n_items - 1}, "
              f"{int(neighbours.sum())} of them in their neighbour sets")
    node_map = np.concatenate([user_map[: theirs.n_users],
                               np.where(item_map[: theirs.n_items] >= 0, item_map[: theirs.n_items] + n_users, -1)])
    expected = mapped_sparse(theirs.norm_adj, node_map, n_users + n_items)
    diff = (model.norm_adj.coalesce() - expected).coalesce().values().abs().max().item()
    print(f"user-item graph: {model.norm_adj._nnz()} entries (MMRec {expected._nnz()}), max |diff| {diff:.3g}")

    # One training step's loss and gradients on MMRec's first batch.
    from recbole.data.interaction import Interaction

    theirs.train()
    reference_loss = theirs.calculate_loss(batch)
    reference_loss.backward()
    model.train()
    interaction = Interaction({"userID": torch.from_numpy(user_map[batch[0].numpy()]),
                               "itemID": torch.from_numpy(item_map[batch[1].numpy()]),
                               "neg_itemID": torch.from_numpy(item_map[batch[2].numpy()])})
    reference_parameters = dict(theirs.named_parameters())
    reference_state = {"loss": reference_loss}

    def compare_step(label: str) -> None:
        reference_loss = reference_state["loss"]
        model.zero_grad()
        loss = model.calculate_loss(interaction)
        loss.backward()
        relatives = {}
        for ref_name, name in NAMES.items():
            grad, expected = dict(model.named_parameters())[name].grad, reference_parameters[ref_name].grad
            if name.startswith("user_embedding"):
                grad, expected = grad[user_map[users]], expected[users]
            elif name.startswith(("item_embedding", "raw_features")):
                grad, expected = grad[item_map[items]], expected[items]
            relatives[name] = ((grad - expected).abs().max() / expected.abs().max().clamp_min(1e-30)).item()
        worst = sorted(relatives.items(), key=lambda t: -t[1])[:4]
        print(f"{label}: loss ours {loss.item():.7f}, MMRec {reference_loss.item():.7f}; gradients, largest "
              "difference relative to the parameter's largest gradient: "
              + ", ".join(f"{name} {value:.2g}" for name, value in worst))

    compare_step("one step on MMRec's first batch")
    # The same step with MMRec's item kNN graphs put into ours: what is left is the rest of the computation.
    own_graphs = {m: getattr(model, f"item_graph_{m}") for m in ("image", "audio")}
    for m, ref in (("image", "image_original_adj"), ("audio", "text_original_adj")):
        model.register_graph(f"item_graph_{m}", mapped_sparse(getattr(theirs, ref), item_map, n_items))
    compare_step("the same with MMRec's item graphs in ours")
    # ... and with the ID embeddings of the items RecBole dropped zeroed in MMRec's model, so that its graph
    # edges to them carry nothing (those edges are the only ones the mapped graphs leave out).
    dropped = torch.from_numpy(np.flatnonzero(item_map[: theirs.n_items] < 0))
    kept = theirs.item_id_embedding.weight[dropped].detach().clone()
    with torch.no_grad():
        theirs.item_id_embedding.weight[dropped] = 0
    theirs.zero_grad()
    reference_state["loss"] = theirs.calculate_loss(batch)
    reference_state["loss"].backward()
    compare_step(f"the same with the {len(dropped)} dropped items' ID embeddings zeroed in MMRec's")
    for m, graph in own_graphs.items():
        model.register_graph(f"item_graph_{m}", graph)
    with torch.no_grad():
        theirs.item_id_embedding.weight[dropped] = kept

    # Full-ranking scores of every common user over every common item.
    theirs.eval()
    model.eval()
    with torch.no_grad():
        reference_users, reference_items = theirs.forward(theirs.norm_adj)
        mine_users, mine_items = model.user_item_vectors()
        expected = reference_users[users] @ reference_items[items].T
        mine = mine_users[user_map[users]] @ mine_items[item_map[items]].T
    print(f"scores ({len(users)} users × {len(items)} items): {largest(mine, expected)}")
    if checkpoint is None:
        return

    # A trained recbole_mm model scored by both evaluators.
    from recbole_mm.checkpoint import load_checkpoint

    trained = load_checkpoint(checkpoint, map_location="cpu")["state_dict"]
    model.load_state_dict(trained, strict=False)  # the checkpoint leaves out the data buffers
    state = theirs.state_dict()
    copy_weights(trained, state, {v: k for k, v in NAMES.items()}, (user_map[users], users), (item_map[items], items))
    theirs.load_state_dict(state)
    print(f"trained checkpoint {checkpoint}: validation Recall@20 by RecBole's evaluator "
          f"{evaluate()['recall@20']:.4f}, by MMRec's {reference_evaluate()['recall@20']:.4f}")


if __name__ == "__main__":
    main(*sys.argv[1:])

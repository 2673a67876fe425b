"""Long-tail analysis of saved checkpoints (any RecBole or recbole_mm model).

    python -m recbole_mm.analysis longtail saved/GUME-x.pth saved/LightGCN-y.pth --out saved/tiktok-longtail

Items with training interactions are split into groups of about equal size by their training
degree (group 1 = the most popular fifth with 5 groups, as in GUME's study), cut only where the degree
changes, so that an item's group depends on its degree alone, never on its id; items without any
training interaction form a group of their own. For each group, test items are restricted to the
group and Recall@K / NDCG@K are computed over the users that have at least one such test item, with
the number of hits (the group's test items ranked in the top K) behind each value. Ranking and masking
are those of RecBole's full-sort test evaluation, and the metrics are RecBole's own evaluators fed
with the group's hits. Writes ``<out>.md`` (a table) and ``<out>.png`` (bar charts).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np
import torch

from recbole_mm import storage
from recbole_mm.errors import RecBoleMMError


def degree_groups(item_degree: np.ndarray, n_groups: int = 5) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """Group index per item id and each group's ``(lowest, highest)`` training degree.

    Items with training interactions go into at most ``n_groups`` groups (0 = most popular), cut at the
    degree boundaries nearest to equal sizes: items of equal degree always share a group, so fewer
    groups come out when few degrees are distinct. Items of degree 0 form one more group after them,
    ``(0, 0)``, when there are any. Item 0 (RecBole's padding) gets -1.
    """
    if n_groups < 1:
        raise RecBoleMMError(f"--groups {n_groups}: need at least 1 group")
    degree = np.asarray(item_degree)[1:]
    groups = np.full(len(item_degree), -1)
    seen = np.sort(degree[degree > 0])[::-1]  # degrees of items with training interactions, descending
    if len(seen) == 0:
        raise RecBoleMMError("long-tail analysis: no item has a training interaction")
    values, first = np.unique(-seen, return_index=True)  # distinct degrees (descending) and where they start
    ends = np.append(first[1:], len(seen))  # cutting after degree values[j] puts ends[j] items above the cut
    candidates = ends[ends < len(seen)]
    cuts = []  # for each equal-size target, the nearest degree boundary (ties: the fewer items above)
    for target in (np.arange(1, n_groups) * len(seen) / n_groups if len(candidates) else []):
        best = int(candidates[np.argmin(np.abs(candidates - target))])
        if not cuts or best > cuts[-1]:
            cuts.append(best)
    bounds = []
    for g, (lo, hi) in enumerate(zip([0, *cuts], [*cuts, len(seen)])):
        top, bottom = int(seen[lo]), int(seen[hi - 1])
        groups[1:][(degree <= top) & (degree >= bottom)] = g
        bounds.append((bottom, top))
    if (degree == 0).any():
        groups[1:][degree == 0] = len(bounds)
        bounds.append((0, 0))
    return groups, bounds


def group_topk(scores: torch.Tensor, positives: torch.Tensor, groups: torch.Tensor, n_groups: int,
               k: int) -> list[torch.Tensor]:
    """RecBole's ``rec.topk`` rows (top-k hit flags, then the number of positives) per group, for
    users with at least one positive in that group. ``scores``: [users, items] with masked items at
    -inf; ``positives``: bool [users, items]."""
    top = torch.topk(scores, k, dim=1).indices
    out = []
    for g in range(n_groups):
        in_group = positives & (groups == g).unsqueeze(0)
        counts = in_group.sum(dim=1, keepdim=True)
        hits = torch.gather(in_group, 1, top)
        keep = counts.squeeze(1) > 0
        out.append(torch.cat([hits[keep].long(), counts[keep]], dim=1))
    return out


def evaluate_groups(rows: list[torch.Tensor], config, k: int) -> list[dict]:
    """Recall@k and NDCG@k per group through RecBole's Evaluator, with the group's ``users`` and
    ``hits`` (its test items in the users' top k: the count behind the values)."""
    from recbole.evaluator import Evaluator
    from recbole.evaluator.collector import DataStruct

    saved = config["metrics"], config["topk"]
    config["metrics"], config["topk"] = ["Recall", "NDCG"], [k]
    try:
        evaluator = Evaluator(config)
        results = []
        for topk in rows:
            if len(topk) == 0:
                results.append({"users": 0, "hits": 0})
                continue
            struct = DataStruct()
            struct.set("rec.topk", topk)
            results.append({"users": len(topk), "hits": int(topk[:, :k].sum()), **evaluator.evaluate(struct)})
        return results
    finally:
        config["metrics"], config["topk"] = saved


@torch.no_grad()
def longtail(model_file: str, n_groups: int = 5, k: int = 20, label: str | None = None,
             log_dir: str | None = None) -> dict:
    """Per-group test Recall@k / NDCG@k of one checkpoint (``label`` names it in reports; default: the model;
    ``log_dir``: where RecBole's log of loading it goes, default the working directory)."""
    from recbole.data.dataloader import FullSortEvalDataLoader
    from recbole.trainer import Trainer

    from recbole_mm.quick_start import load_data_and_model

    asked = n_groups
    config, model, dataset, train_data, _, test_data = load_data_and_model(model_file, log_dir=log_dir)
    if not isinstance(test_data, FullSortEvalDataLoader):
        raise RecBoleMMError(f"{model_file}: long-tail analysis needs full-sort evaluation (eval_args mode: full)")
    degree = np.bincount(train_data._dataset.inter_feat[dataset.iid_field].numpy(), minlength=dataset.item_num)
    groups_np, bounds = degree_groups(degree, n_groups)
    n_groups = len(bounds)  # the degrees may allow fewer groups; plus the no-interaction group
    groups = torch.from_numpy(groups_np).to(config["device"])
    model.eval()
    trainer = Trainer(config, model)
    trainer.tot_item_num = dataset.item_num
    trainer.item_tensor = test_data._dataset.get_item_feature().to(config["device"])
    rows = [[] for _ in range(n_groups)]
    for batch in test_data:
        interaction, scores, positive_u, positive_i = trainer._full_sort_batch_eval(batch)
        positives = torch.zeros_like(scores, dtype=torch.bool)
        positives[positive_u, positive_i] = True
        for g, part in enumerate(group_topk(scores, positives, groups, n_groups, k)):
            rows[g].append(part.cpu())
    per_group = evaluate_groups([torch.cat(r) for r in rows], config, k)
    return {"model": label or config["model"], "dataset": config["dataset"], "file": model_file, "k": k,
            "groups": per_group, "group_items": np.bincount(groups_np[1:], minlength=n_groups).tolist(),
            "group_degrees": [list(b) for b in bounds], "asked_groups": asked}


def group_names(result: dict) -> list[str]:
    """``group 1`` … ``group n`` for the degree groups, then ``no training interaction`` if present."""
    degrees = result["group_degrees"]
    return [f"group {g + 1}" if tuple(d) != (0, 0) else "no training interaction" for g, d in enumerate(degrees)]


_OUT_FIX = "give --out a path in a folder you can write to"


def write_report(results: list[dict], out: str) -> tuple[Path, Path]:
    """``<out>.md`` table and ``<out>.png`` chart comparing checkpoints group by group."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    first = results[0]
    k, n_groups, names = first["k"], len(first["groups"]), group_names(first)
    other = [r["file"] for r in results if r["group_degrees"] != first["group_degrees"]]
    if other:
        raise RecBoleMMError(f"long-tail report: {other[0]} has other item degrees than {first['file']} "
                             "(another dataset or training split); compare checkpoints of one split")
    metrics = [f"recall@{k}", f"ndcg@{k}"]
    n_degree = sum(1 for d in first["group_degrees"] if tuple(d) != (0, 0))
    fewer = (f" (the degrees allow {n_degree} of the {first['asked_groups']} asked for)"
             if n_degree < first.get("asked_groups", n_degree) else "")
    lines = [f"Long-tail analysis on {first['dataset']}: items with training interactions in {n_degree} groups "
             f"of about equal size by training degree{fewer}, cut where the degree changes (group 1 = most "
             "popular), and items without any training interaction in a group of their own; test items "
             f"restricted to the group. In parentheses: the hits behind each recall@{k} (the group's test "
             f"items ranked in the top {k}, summed over the group's users).", "",
             "| model | metric | " + " | ".join(names) + " |",
             "|---|---|" + "---:|" * n_groups,
             "| training degree | | " + " | ".join(f"{lo}" if lo == hi else f"{lo}-{hi}"
                                                   for lo, hi in first["group_degrees"]) + " |",
             "| items | | " + " | ".join(str(n) for n in first["group_items"]) + " |",
             "| users | | " + " | ".join(str(g["users"]) for g in first["groups"]) + " |"]
    for r in results:
        for m in metrics:
            cells = [(f"{grp[m]:.4f}" + (f" ({grp['hits']})" if m == metrics[0] else "")) if m in grp else "-"
                     for grp in r["groups"]]
            lines.append(f"| {r['model']} | {m} | " + " | ".join(cells) + " |")
    lines += ["", "Checkpoints: " + ", ".join(f"`{r['file']}`" for r in results)]
    md, png = Path(f"{out}.md"), Path(f"{out}.png")
    storage.make_folder(md.parent, "--out's folder", _OUT_FIX)
    storage.write_text(md, "\n".join(lines) + "\n", "long-tail report", _OUT_FIX)

    # Head and tail get their own y-scales: tail values are an order of magnitude smaller.
    columns = [[0], list(range(1, n_groups))] if n_groups > 1 else [[0]]
    fig, axes = plt.subplots(len(metrics), len(columns), figsize=(10, 3.2 * len(metrics)), squeeze=False,
                             gridspec_kw={"width_ratios": [len(c) for c in columns]})
    width = 0.8 / len(results)
    for row, m in enumerate(metrics):
        for col, groups_shown in enumerate(columns):
            ax = axes[row][col]
            x = np.arange(len(groups_shown))
            for i, r in enumerate(results):
                values = [r["groups"][g].get(m, 0.0) for g in groups_shown]
                ax.bar(x + i * width - 0.4 + width / 2, values, width, label=r["model"])
            ax.set_xticks(x, [names[g].replace("no training interaction", "no training\ninteraction")
                              + (" (head)" if g == 0 else "") for g in groups_shown])
            ax.set_title(f"{m}, " + ("head" if groups_shown == [0] else "tail"), fontsize=9)
    axes = axes.ravel()
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="center right", fontsize=8)
    fig.suptitle(f"Per-group test metrics on {first['dataset']} (groups by training degree; 1 = most popular)")
    fig.tight_layout(rect=(0, 0, 0.85, 1))
    try:
        with storage.atomic_write(png, "long-tail chart", _OUT_FIX) as tmp:
            fig.savefig(tmp.file, format="png", dpi=120)
    finally:
        plt.close(fig)
    return md, png


def main(argv: list[str] | None = None, prog: str = "python -m recbole_mm.analysis") -> None:
    """Entry point of ``python -m recbole_mm.analysis`` and ``recbole-mm analysis`` (``prog`` for usage lines)."""
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    tail = sub.add_parser("longtail", help="per-group Recall/NDCG of checkpoints by item popularity")
    tail.add_argument("checkpoints", nargs="+",
                      help="best-epoch checkpoints (a run's .last.pth given with its .pth is skipped)")
    tail.add_argument("--groups", type=int, default=5)
    tail.add_argument("--k", type=int, default=20)
    tail.add_argument("--out", default="longtail", help="output path without extension (.md and .png)")
    tail.add_argument("--labels", nargs="*", help="one name per checkpoint for the table and chart")
    args = parser.parse_args(argv)
    labels = args.labels or [None] * len(args.checkpoints)
    if len(labels) != len(args.checkpoints):
        raise RecBoleMMError(f"--labels: {len(labels)} labels for {len(args.checkpoints)} checkpoints; give one each")
    # A run's <name>.last.pth (its latest epoch, for resuming) next to its <name>.pth (the best epoch, the
    # one a result describes), as `saved/GUME-*.pth` gives both: analyse the best one only.
    given = set(args.checkpoints)
    kept = [(path, label) for path, label in zip(args.checkpoints, labels)
            if not (path.endswith(".last.pth") and path[: -len(".last.pth")] + ".pth" in given)]
    # Checked before the checkpoints load (minutes on a large dataset); RecBole's log of loading them goes
    # next to the report, not into the working directory.
    folder = os.path.dirname(os.path.abspath(args.out))
    storage.check_folder(folder, "--out's folder", _OUT_FIX)
    results = [longtail(path, args.groups, args.k, label, log_dir=folder) for path, label in kept]
    md, png = write_report(results, args.out)
    print(md.read_text())
    print(f"wrote {md} and {png}")


if __name__ == "__main__":
    from recbole_mm.errors import exit_on_user_error

    exit_on_user_error(main)

"""One-command comparison of models on datasets over seeds, through run_recbole's protocol.

    python -m recbole_mm.benchmark --datasets tiktok --models BPR LightGCN VBPR GUME MMGEF --seeds 999 1000 1001
    python -m recbole_mm.benchmark --plan benchmarks/tiktok.yaml

A plan (yaml) names ``datasets``, ``seeds`` and ``runs``: label → ``{model: NAME, <config overrides>,
grid: {key: [values, ...]}}``. Each cell (dataset, label, grid point, seed) runs in a fresh process,
its result is cached in ``<out>/<dataset>.cells.json`` (a rerun skips finished cells; a failed cell is
recorded with its error, not dropped). A grid is searched with the first seed and its point chosen by
the best **validation** score; the remaining seeds then run that point. Writes
``<out>/<dataset>.md`` / ``.csv`` (test metrics at the best-validation epoch, mean ± std over seeds,
best epoch, seconds per training epoch and per evaluation, peak memory, parameter count, the exact
config of every run), ``<dataset>-curves.png`` (loss and valid score per epoch) and, with
``--longtail``, ``<dataset>-longtail.png`` (per-popularity-group metrics of each run's first seed).
"""

from __future__ import annotations

import argparse
import csv
import fcntl
import itertools
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

import yaml

from recbole_mm.errors import RecBoleMMError

METRICS = ["recall@10", "recall@20", "ndcg@10", "ndcg@20", "precision@10", "precision@20", "map@10", "map@20"]


# ---- plan -----------------------------------------------------------------------------------------
def load_plan(args: argparse.Namespace) -> dict:
    """The plan from --plan (yaml) and/or --datasets/--models/--seeds (command line wins)."""
    plan: dict = {}
    if args.plan:
        with open(args.plan, encoding="utf-8") as f:
            plan = yaml.safe_load(f) or {}
    if args.datasets:
        plan["datasets"] = args.datasets
    if args.seeds:
        plan["seeds"] = args.seeds
    if args.models:
        plan["runs"] = {name: {"model": name} for name in args.models}
    if args.epochs:
        plan.setdefault("config", {})["epochs"] = args.epochs
    for key in ("datasets", "runs"):
        if not plan.get(key):
            raise RecBoleMMError(f"benchmark plan has no {key}; give --{'models' if key == 'runs' else key} or a --plan yaml")
    plan.setdefault("seeds", [999])
    for label, run in plan["runs"].items():
        if not isinstance(run, dict) or "model" not in run:
            raise RecBoleMMError(f"benchmark plan: run '{label}' needs a model, e.g. {{model: GUME}}")
    return plan


def grid_points(run: dict) -> list[dict]:
    """The cartesian product of a run's grid (one empty point without a grid)."""
    grid = run.get("grid") or {}
    keys = sorted(grid)
    return [dict(zip(keys, values)) for values in itertools.product(*(grid[k] for k in keys))]


def cell_config(plan: dict, run: dict, point: dict, seed: int) -> dict:
    config = {**(plan.get("config") or {}), **{k: v for k, v in run.items() if k not in ("model", "grid")}}
    return {**config, **point, "seed": seed, "show_progress": False}


def cell_key(label: str, point: dict, seed: int) -> str:
    return json.dumps([label, point, seed], sort_keys=True)


# ---- one cell, in a fresh process -------------------------------------------------------------------
def run_cell(model: str, dataset: str, config: dict) -> dict:
    """Train and test one configuration; returns plain data for the cache."""
    import recbole_mm
    from recbole_mm.checkpoint import config_to_plain
    from recbole_mm.trainer import median_epoch_seconds

    result = recbole_mm.run_recbole(model=model, dataset=dataset, config_dict=config)
    history = result["history"]
    train_seconds, eval_seconds = median_epoch_seconds(history)
    return {
        "valid": {k: float(v) for k, v in (result["best_valid_result"] or {}).items()},
        "test": {k: float(v) for k, v in (result["test_result"] or {}).items()},
        "best_valid_score": float(result["best_valid_score"]),
        "best_epoch": result["best_epoch"],
        "epochs": len(history),
        "train_seconds": train_seconds,
        "eval_seconds": eval_seconds,
        "peak_memory_mb": result["peak_memory_mb"],
        "parameters": result["n_parameters"],
        "history": history,
        "checkpoint": result["saved_model_file"],
        "config": config_to_plain(result["config"]),
    }


def _run_in_subprocess(model: str, dataset: str, config: dict, workdir: Path) -> dict:
    request = json.dumps({"model": model, "dataset": dataset, "config": config})
    out = subprocess.run([sys.executable, "-m", "recbole_mm.benchmark", "--cell", request],
                         capture_output=True, text=True, cwd=workdir)
    if out.returncode != 0:
        lines = [line for line in out.stderr.strip().splitlines() if line.strip()]
        return {"failed": lines[-1] if lines else f"exit status {out.returncode}"}
    return json.loads(out.stdout.strip().splitlines()[-1])


# ---- the cache ------------------------------------------------------------------------------------
def update_cache(path: Path, key: str | None = None, value: dict | None = None) -> dict:
    """Read (and optionally add one cell to) a cache that parallel benchmark processes may share."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        cells = json.loads(path.read_text()) if path.exists() else {}
        if key is not None:
            cells[key] = value
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps(cells, indent=1) + "\n")
            os.replace(tmp, path)
        return cells


def run_dataset(plan: dict, dataset: str, out: Path, workdir: Path) -> dict:
    """Run every missing cell of one dataset; returns label → {point, cells by seed}."""
    cache = out / f"{dataset}.cells.json"
    seeds = plan["seeds"]
    chosen = {}
    for label, run in plan["runs"].items():
        points = grid_points(run)
        for point in points:
            _ensure(cache, label, run, point, seeds[0], plan, dataset, workdir)
        cells = update_cache(cache)
        scores = {json.dumps(p, sort_keys=True): cells[cell_key(label, p, seeds[0])] for p in points}
        ok = {p: c for p, c in scores.items() if "failed" not in c}
        # Grid selection on the validation score only (MMRec selects on test: its issue #64).
        best = max(ok, key=lambda p: ok[p]["best_valid_score"]) if ok else json.dumps(points[0], sort_keys=True)
        point = json.loads(best)
        for seed in seeds[1:]:
            _ensure(cache, label, run, point, seed, plan, dataset, workdir)
        cells = update_cache(cache)
        chosen[label] = {"point": point, "grid": run.get("grid"), "model": run["model"],
                         "cells": [cells[cell_key(label, point, s)] for s in seeds]}
    return chosen


def _ensure(cache: Path, label: str, run: dict, point: dict, seed: int, plan: dict, dataset: str,
            workdir: Path) -> None:
    key = cell_key(label, point, seed)
    if key in update_cache(cache):
        return
    print(f"[{dataset}] {label} {point or ''} seed {seed}", flush=True)
    result = _run_in_subprocess(run["model"], dataset, cell_config(plan, run, point, seed), workdir)
    update_cache(cache, key, result)


# ---- reports --------------------------------------------------------------------------------------
def summarize(cells: list[dict]) -> dict:
    """Mean ± std of test metrics over the successful seeds, and the other columns."""
    ok = [c for c in cells if "failed" not in c]
    if not ok:
        return {"failed": cells[0]["failed"] if cells else "no run"}
    row = {"seeds": len(ok), "failed_seeds": len(cells) - len(ok)}
    for metric in METRICS:
        values = [c["test"][metric] for c in ok if metric in c["test"]]
        if values:
            row[metric] = (statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0)
    row["best_epoch"] = statistics.mean(c["best_epoch"] or 0 for c in ok)
    row["train_seconds"] = statistics.median(c["train_seconds"] for c in ok if c["train_seconds"] is not None)
    evals = [c["eval_seconds"] for c in ok if c["eval_seconds"] is not None]
    row["eval_seconds"] = statistics.median(evals) if evals else None
    row["peak_rss_mb"] = max(c["peak_memory_mb"]["rss"] for c in ok)
    row["parameters"] = ok[0].get("parameters")
    return row


def _cell(value, digits: int = 4) -> str:
    if value is None:
        return "-"
    if isinstance(value, tuple):
        mean, std = value
        return f"{mean:.{digits}f} ± {std:.{digits}f}"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def write_tables(dataset: str, chosen: dict, seeds: list[int], out: Path, images: list[str]) -> tuple[Path, Path]:
    """``<dataset>.md`` and ``<dataset>.csv``; a failed run appears as failed with its error."""
    header = ["model", *[f"test {m}" for m in METRICS], "best epoch", "s/train epoch", "s/eval",
              "peak RSS MiB", "parameters", "seeds"]
    md = [f"# Benchmark on {dataset}", "",
          f"Test metrics at the best-validation epoch, mean ± std over seeds {seeds}; generated by "
          "`python -m recbole_mm.benchmark`. Grids are chosen on validation only.", "",
          "| " + " | ".join(header) + " |", "|---|" + "---:|" * (len(header) - 1)]
    rows = []
    for label, entry in chosen.items():
        row = summarize(entry["cells"])
        if "failed" in row:
            md.append(f"| {label} | failed: {row['failed']} |" + " |" * (len(header) - 2))
            rows.append([label, "failed: " + row["failed"]])
            continue
        values = [row.get(m) for m in METRICS] + [row["best_epoch"], row["train_seconds"], row["eval_seconds"],
                                                  row["peak_rss_mb"], row["parameters"],
                                                  f"{row['seeds']}" + (f" ({row['failed_seeds']} failed)" if row["failed_seeds"] else "")]
        md.append(f"| {label} | " + " | ".join(_cell(v) for v in values[:len(METRICS)])
                  + f" | {row['best_epoch']:.1f} | {_cell(row['train_seconds'], 2)} | {_cell(row['eval_seconds'], 2)}"
                  + f" | {row['peak_rss_mb']:.0f} | {row['parameters'] or '-'} | {values[-1]} |")
        rows.append([label, *[_cell(v) for v in values]])
    md += ["", *[f"![{Path(i).stem}]({Path(i).name})" for i in images], "", "## Runs", ""]
    for label, entry in chosen.items():
        grid = f", grid {entry['grid']} → chose {entry['point']} on validation" if entry["grid"] else ""
        md.append(f"- **{label}** (model {entry['model']}{grid})")
        for seed, cell in zip(seeds, entry["cells"]):
            if "failed" in cell:
                md.append(f"  - seed {seed}: failed: {cell['failed']}")
            else:
                md.append(f"  - seed {seed}: config `{json.dumps(cell['config'], sort_keys=True, default=str)}`")
    md_path, csv_path = out / f"{dataset}.md", out / f"{dataset}.csv"
    md_path.write_text("\n".join(md) + "\n")
    with open(csv_path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
    return md_path, csv_path


def plot_curves(dataset: str, chosen: dict, out: Path) -> Path | None:
    """Training loss and valid score per epoch, one panel per run, seeds overlaid."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = {label: [c for c in e["cells"] if "failed" not in c] for label, e in chosen.items()}
    runs = {label: cells for label, cells in runs.items() if cells}
    if not runs:
        return None
    fig, axes = plt.subplots(2, len(runs), figsize=(3.2 * len(runs), 5.2), squeeze=False)
    for j, (label, cells) in enumerate(runs.items()):
        for cell in cells:
            epochs = [h["epoch"] for h in cell["history"]]
            seed = f"seed {cell['config'].get('seed')}"
            axes[0][j].plot(epochs, [h["train_loss"] for h in cell["history"]], lw=1, label=seed)
            axes[1][j].plot(epochs, [h.get("valid_score") for h in cell["history"]], lw=1, label=seed)
        axes[0][j].set_title(label, fontsize=9)
        axes[1][j].set_xlabel("epoch")
    axes[0][0].legend(fontsize=7)
    axes[0][0].set_ylabel("training loss")
    axes[1][0].set_ylabel("valid score")
    fig.tight_layout()
    path = out / f"{dataset}-curves.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m recbole_mm.benchmark", description=__doc__.split("\n\n")[0])
    parser.add_argument("--plan", help="yaml with datasets, seeds, runs (label → {model, overrides, grid})")
    parser.add_argument("--datasets", nargs="*")
    parser.add_argument("--models", nargs="*", help="shorthand: one run per model, no overrides")
    parser.add_argument("--seeds", nargs="*", type=int)
    parser.add_argument("--epochs", type=int, help="cap epochs (smoke runs)")
    parser.add_argument("--out", default="results")
    parser.add_argument("--longtail", action="store_true", help="also chart per-popularity-group metrics")
    parser.add_argument("--cell", help=argparse.SUPPRESS)  # internal: run one cell, print its JSON
    args = parser.parse_args(argv)
    if args.cell:
        request = json.loads(args.cell)
        print(json.dumps(run_cell(request["model"], request["dataset"], request["config"]), default=str))
        return
    plan = load_plan(args)
    out = Path(args.out).resolve()
    workdir = Path.cwd()
    for dataset in plan["datasets"]:
        chosen = run_dataset(plan, dataset, out, workdir)
        images = [p for p in [plot_curves(dataset, chosen, out)] if p]
        if args.longtail:
            from recbole_mm.analysis import longtail, write_report

            first = {label: e["cells"][0] for label, e in chosen.items() if "failed" not in e["cells"][0]}
            if first:
                report = [longtail(cell["checkpoint"], label=label) for label, cell in first.items()]
                images.append(write_report(report, str(out / f"{dataset}-longtail"))[1])
        md, _ = write_tables(dataset, chosen, plan["seeds"], out, [str(i) for i in images])
        print(f"wrote {md}")


if __name__ == "__main__":
    import recbole_mm  # noqa: F401  (shims before anything imports recbole)
    from recbole_mm.cli import exit_on_user_error

    exit_on_user_error(main)

"""A benchmark's report: ``<name>.md``/``.csv``/``.configs.json`` (and ``.tex``) from the chosen cells, and
the training-curve chart."""

from __future__ import annotations

import csv
import io
import json
import os
import statistics
from pathlib import Path

from recbole_mm import storage
from recbole_mm.benchmark.cache import OUT_FIX
from recbole_mm.benchmark import cells as benchmark_cells  # by module: tests replace its functions
from recbole_mm.benchmark.cells import RUN_DERIVED

METRICS = ["recall@10", "recall@20", "ndcg@10", "ndcg@20", "precision@10", "precision@20", "map@10", "map@20"]


def summarize(cells: list[dict]) -> dict:
    """Mean ± std of test metrics (and beyond-accuracy metrics, where every seed has them) over the
    successful seeds, and the other columns."""
    from recbole_mm.rigour import BEYOND_COLUMNS

    ok = [c for c in cells if "failed" not in c]
    if not ok:
        return {"failed": cells[0]["failed"] if cells else "no run"}
    row = {"seeds": len(ok), "failed_seeds": len(cells) - len(ok)}
    for metric in METRICS + BEYOND_COLUMNS:
        values = [c["test"][metric] if metric in c["test"] else (c.get("beyond_accuracy") or {})[metric]
                  for c in ok if metric in c["test"] or metric in (c.get("beyond_accuracy") or {})]
        if values and (metric in METRICS or len(values) == len(ok)):
            # One seed has no spread: its value alone, not a misleading "± 0".
            row[metric] = (statistics.mean(values), statistics.stdev(values)) if len(values) > 1 else values[0]
    row["best_epoch"] = statistics.mean(c["best_epoch"] or 0 for c in ok)
    trains = [c["train_seconds"] for c in ok if c["train_seconds"] is not None]
    row["train_seconds"] = statistics.median(trains) if trains else None  # None: nothing to train (Pop)
    evals = [c["eval_seconds"] for c in ok if c["eval_seconds"] is not None]
    row["eval_seconds"] = statistics.median(evals) if evals else None
    row["peak_rss_mb"] = max(c["peak_memory_mb"]["rss"] for c in ok)
    row["parameters"] = ok[0].get("parameters")
    return row


def valid_metric(cells: list[dict]) -> str:
    """The valid_metric the cells chose their epoch with (as their resolved config names it)."""
    names = {str((c.get("config") or {}).get("valid_metric") or "score").lower() for c in cells if "failed" not in c}
    return " / ".join(sorted(names)) or "score"


def _cell(value, digits: int = 4) -> str:
    if value is None:
        return "-"
    if isinstance(value, tuple):
        mean, std = value
        return f"{mean:.{digits}f} ± {std:.{digits}f}"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def wall_time(chosen: dict) -> tuple[float, float] | None:
    """(elapsed from the first cell's start to the last cell's end, sum of the cells' times), seconds;
    the grid points that were not chosen count too."""
    cells = [c for e in chosen.values() for c in e["cells"] + e.get("grid_cells", []) if "started" in c]
    if not cells:
        return None
    elapsed = max(c["finished"] for c in cells) - min(c["started"] for c in cells)
    return elapsed, sum(c["finished"] - c["started"] for c in cells)


def _duration(seconds: float) -> str:
    hours, rest = divmod(round(seconds), 3600)
    return f"{hours} h {rest // 60:02d} min" if hours else f"{rest // 60} min {rest % 60:02d} s"


def config_changes(config: dict, defaults: dict | None) -> dict:
    """What a run's resolved config sets differently from the dataset's and model's defaults (its seed aside)."""
    if defaults is None:  # defaults unknown (the model did not resolve): the whole config
        return {k: v for k, v in config.items() if k != "seed"}
    return {k: v for k, v in sorted(config.items())
            if k != "seed" and k not in RUN_DERIVED and defaults.get(k, object()) != v}


def code_summary(chosen: dict) -> str:
    """Which code the cells ran and which of them came from the cache, for the report's header."""
    cells = [c for e in chosen.values() for c in e["cells"] + e.get("grid_cells", []) if "failed" not in c]
    runs: dict[tuple, list[int]] = {}
    for cell in cells:
        code = cell.get("code") or {}
        counts = runs.setdefault((code.get("commit") or "unknown commit", code.get("hash") or "unknown"), [0, 0])
        counts[bool(cell.get("from_cache"))] += 1
    parts = [f"{fresh + cached} at commit {commit} (package hash {digest}; {fresh} ran in this invocation, "
             f"{cached} from the cache)" for (commit, digest), (fresh, cached) in sorted(runs.items())]
    return "Code: the cells ran " + "; ".join(parts) + "." if parts else ""


def ranking_scope(chosen: dict) -> str:
    """What the test metrics rank, for the report's header: all items, or a cold-start run's held-out items."""
    configs = [c.get("config") or {} for e in chosen.values() for c in e["cells"] if "failed" not in c]
    cold = [c.get("cold_start_candidates") or "cold" for c in configs if c.get("cold_start_items")]
    if not cold:
        return "full ranking over all items"
    among = {"cold": "among themselves (`cold_start_candidates: cold`)",
             "all": "among all items (`cold_start_candidates: all`)"}
    kinds = set(cold)
    scope = "the held-out items ranked " + (among[kinds.pop()] if len(kinds) == 1
                                            else "as each run's `cold_start_candidates` says")
    if len(cold) == len(configs):
        return f"cold start (`cold_start_items`): {scope}"
    return f"full ranking over all items, and for the cold-start runs {scope}"


def write_tables(dataset: str, chosen: dict, seeds: list[int], out: Path, images: list[str],
                 command: str = "python -m recbole_mm.benchmark", name: str | None = None,
                 reference: str | None = None, latex: bool = False) -> tuple[Path, Path]:
    """``<name>.md``, ``<name>.csv`` and ``<name>.configs.json`` (name: the dataset's unless given); a
    failed run appears as failed with its error. ``latex``: also ``<name>.tex`` (:mod:`recbole_mm.latex`).
    Significance (against the column's best and ``reference``), beyond-accuracy columns and the leakage
    screen come from :mod:`recbole_mm.rigour`.

    ``<out>/<name>.notes.md``, when it exists, is appended to the markdown (hand-written reading of
    the numbers; the numbers themselves all come from the cells)."""
    from recbole_mm import rigour

    name = name or dataset
    summaries = {label: summarize(entry["cells"]) for label, entry in chosen.items()}
    checks = rigour.analyse(chosen, seeds, out, reference, summaries)
    header = ["model", *[f"test {m}" for m in METRICS], *[f"test {m}" for m in rigour.BEYOND_COLUMNS], "best epoch",
              "s/train epoch", "s/eval", "peak RSS MiB", "parameters", "seeds"]
    shown = METRICS + rigour.BEYOND_COLUMNS
    md = [f"# Benchmark on {dataset}", "",
          (f"Test metrics at the best-validation epoch (RecBole's early stopping: the latest epoch whose valid "
           "score, rounded to 4 decimals, ties or beats the best so far), mean ± std over seeds "
           f"{seeds} (a row's own seeds where "
          f"it lists fewer); {ranking_scope(chosen)}, RecBole's evaluators. Grids are chosen on validation "
          f"only. Generated by `{command}`; what each run changes from the dataset's and model's defaults is "
          f"listed under Runs, every run's full config is in `{name}.configs.json`.")]
    code = code_summary(chosen)
    if code:
        md += ["", code]
    timing = wall_time(chosen)
    if timing:
        threads = sorted({c.get("threads") for e in chosen.values() for c in e["cells"] if "started" in c},
                         key=str)
        md += ["", (f"Wall time: {_duration(timing[0])} from the first run's start to the last run's end "
                   f"({_duration(timing[1])} of runs in all; threads per run: "
                   f"{', '.join('all' if t is None else str(t) for t in threads)}; {os.cpu_count()}-core machine). "
                   "s/train epoch and s/eval are medians over epochs; peak RSS is the run's whole process.")]
    md += ["", "| " + " | ".join(header) + " |", "|---|" + "---:|" * (len(header) - 1)]
    rows = []
    for label, entry in chosen.items():
        row = summaries[label]
        if "failed" in row:
            md.append(f"| {label} | failed: {row['failed']} |" + " |" * (len(header) - 2))
            rows.append([label, "failed: " + row["failed"]])
            continue
        values = [row.get(m) for m in shown] + [row["best_epoch"], row["train_seconds"], row["eval_seconds"],
                                                row["peak_rss_mb"], row["parameters"],
                                                f"{row['seeds']}" + (f" ({row['failed_seeds']} failed)" if row["failed_seeds"] else "")]
        md.append(f"| {label} | " + " | ".join(rigour.decorate(label, m, _cell(v, rigour.DIGITS.get(m, 4)), checks)
                                               for m, v in zip(shown, values))
                  + f" | {row['best_epoch']:.1f} | {_cell(row['train_seconds'], 2)} | {_cell(row['eval_seconds'], 2)}"
                  + f" | {row['peak_rss_mb']:.0f} | {row['parameters'] or '-'} | {values[-1]} |")
        rows.append([label, *[_cell(v, rigour.DIGITS.get(m, 4)) + checks.marks.get((label, m), "")
                              for m, v in zip(shown, values)], *[_cell(v) for v in values[len(shown):]]])
    md += ["", rigour.beyond_note(chosen), "", *rigour.significance_lines(checks)]
    md += ["", *[f"![{Path(i).stem}]({Path(i).name})" for i in images]]
    notes = out / f"{name}.notes.md"
    if notes.exists():
        md += ["", notes.read_text().rstrip()]
    md += ["", *rigour.leakage_lines(chosen)]
    md += ["", "## Runs", "", "Per seed: the validation score and best epoch, the config keys that differ from "
           "the dataset's and the model's defaults, and whether the cell ran in this invocation or came from the cache.",
           ""]
    configs: dict = {}
    for label, entry in chosen.items():
        # How the point was chosen is the runner's words (runner.grid_choice: also a partial grid's).
        how = f": {entry['chosen_by']}" if entry.get("chosen_by") else ""
        grid = f", grid {entry['grid']} → {entry['point']}{how}" if entry["grid"] else ""
        if entry.get("search"):
            grid = f", search {json.dumps(entry['search'], sort_keys=True)} → {entry['point']}{how}"
        md.append(f"- **{label}** (model {entry['model']}{grid})")
        defaults = benchmark_cells.resolve_config(entry["model"], dataset, {})
        for seed, cell in zip(entry.get("seeds", seeds), entry["cells"]):
            if "failed" in cell:
                md.append(f"  - seed {seed}: failed: {cell['failed']}")
                continue
            configs.setdefault(label, {})[str(seed)] = cell["config"]
            changes = config_changes(cell["config"], defaults)
            source = "cache" if cell.get("from_cache") else "ran now"
            commit = (cell.get("code") or {}).get("commit")
            md.append(f"  - seed {seed}: valid {cell['best_valid_score']:.4f}, best epoch {cell['best_epoch']} "
                      f"of {cell['epochs']}; changes `{json.dumps(changes, sort_keys=True, default=str)}`; "
                      f"{source}{f', commit {commit}' if commit else ''}")
    md_path, csv_path = out / f"{name}.md", out / f"{name}.csv"
    storage.write_text(md_path, "\n".join(md) + "\n", "benchmark report", OUT_FIX)
    storage.write_text(out / f"{name}.configs.json", json.dumps(configs, indent=1, sort_keys=True, default=str) + "\n",
                       "benchmark configs", OUT_FIX)
    table = io.StringIO(newline="")
    writer = csv.writer(table)
    writer.writerow(header)
    writer.writerows(rows)
    storage.write_text(csv_path, table.getvalue(), "benchmark table", OUT_FIX)
    if latex:
        rigour.write_latex(out / f"{name}.tex", dataset, chosen, summaries, seeds, checks, command)
    return md_path, csv_path


def plot_curves(name: str, chosen: dict, out: Path) -> Path | None:
    """Training loss and valid score per epoch, one panel per run, seeds overlaid."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = {label: [c for c in e["cells"] if "failed" not in c] for label, e in chosen.items()}
    runs = {label: cells for label, cells in runs.items() if cells}
    if not runs:
        return None
    # Wrapped into lines of at most 5 runs, each run a loss panel above its valid-score panel.
    cols = min(5, len(runs))
    lines = -(-len(runs) // cols)
    fig, axes = plt.subplots(2 * lines, cols, figsize=(3.2 * cols, 2.7 * 2 * lines), squeeze=False)
    for j, (label, cells) in enumerate(runs.items()):
        loss_ax, valid_ax = axes[2 * (j // cols)][j % cols], axes[2 * (j // cols) + 1][j % cols]
        for cell in cells:
            epochs = [h["epoch"] for h in cell["history"]]
            seed = f"seed {cell['config'].get('seed')}"
            loss_ax.plot(epochs, [h["train_loss"] for h in cell["history"]], lw=1, label=seed)
            valid_ax.plot(epochs, [h.get("valid_score") for h in cell["history"]], lw=1, label=seed)
        loss_ax.set_title(label, fontsize=9)
        valid_ax.set_xlabel("epoch")
        if j % cols == 0:
            loss_ax.set_ylabel("training loss")
            valid_ax.set_ylabel("valid score")
    for j in range(len(runs), lines * cols):  # the empty places of the last line
        axes[2 * (j // cols)][j % cols].set_visible(False)
        axes[2 * (j // cols) + 1][j % cols].set_visible(False)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    path = out / f"{name}-curves.png"
    try:
        with storage.atomic_write(path, "benchmark chart", OUT_FIX) as tmp:
            fig.savefig(tmp.file, format="png", dpi=110)
    finally:
        plt.close(fig)
    return path


"""``recbole-mm benchmark`` / ``python -m recbole_mm.benchmark``: the command line (see :mod:`recbole_mm.benchmark`)."""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
from pathlib import Path

import recbole_mm.benchmark
from recbole_mm import storage
from recbole_mm.benchmark.cache import OUT_FIX, annotate_cell
from recbole_mm.benchmark.cells import run_cell
from recbole_mm.benchmark.plan import check_plans, load_plan
from recbole_mm.benchmark.report import plot_curves, write_tables
from recbole_mm.benchmark.runner import Runner
from recbole_mm.errors import RecBoleMMError


def main(argv: list[str] | None = None, prog: str = "python -m recbole_mm.benchmark") -> None:
    """Entry point of ``python -m recbole_mm.benchmark`` and ``recbole-mm benchmark`` (``prog`` for usage lines)."""
    parser = argparse.ArgumentParser(prog=prog, description=recbole_mm.benchmark.__doc__.split("\n\n")[0])
    parser.add_argument("--plan", nargs="*", help="yaml files with datasets, seeds, runs (label → {model, overrides, grid, seeds})")
    parser.add_argument("--datasets", nargs="*")
    parser.add_argument("--models", nargs="*", help="shorthand: one run per model, no overrides")
    parser.add_argument("--seeds", nargs="*", type=int)
    parser.add_argument("--epochs", type=int, help="cap epochs (smoke runs)")
    parser.add_argument("--jobs", type=int, default=1, help="cells run at a time, each with cores/jobs threads")
    parser.add_argument("--out", default="results")
    parser.add_argument("--longtail", action="store_true", help="also chart per-popularity-group metrics")
    parser.add_argument("--report-only", action="store_true",
                        help="run nothing: report the cached cells matching each cell's settings, from whatever "
                             "code they ran (each cell's commit is named), and missing cells as not run")
    parser.add_argument("--fill-missing", action="store_true",
                        help="reuse the cached cells matching each cell's settings from whatever code (as "
                             "--report-only), and run the missing cells and those without per-user metrics")
    parser.add_argument("--format", choices=["markdown", "latex"], default="markdown",
                        help="latex: also write <name>.tex, the main table for a paper (markdown is always written)")
    parser.add_argument("--cell", help=argparse.SUPPRESS)  # internal: run one cell, print its JSON
    args = parser.parse_args(argv)
    if args.report_only and args.fill_missing:
        raise RecBoleMMError("--report-only runs nothing and --fill-missing runs what is missing: give one of them")
    if args.cell:
        request = json.loads(args.cell)
        print(json.dumps(run_cell(request["model"], request["dataset"], request["config"]), default=str))
        return
    plans = [load_plan(args, path) for path in args.plan] if args.plan else [load_plan(args)]
    check_plans(plans, args.plan or [None], run_cells=not args.report_only)
    # The command as it can be rerun from the checkout: paths below the working directory made relative.
    cwd = Path.cwd().resolve()
    words = [os.path.relpath(w, cwd) if os.path.isabs(w) and Path(w).resolve().is_relative_to(cwd) else w
             for w in (sys.argv[1:] if argv is None else argv)]
    command = shlex.join(["python", "-m", "recbole_mm.benchmark", *words])
    out = Path(args.out).resolve()
    storage.make_folder(out, "--out", OUT_FIX)
    runner = Runner(out, Path.cwd(), args.jobs, report_only=args.report_only, fill_missing=args.fill_missing)
    runner.run_plans(plans)
    for (i, dataset), chosen in runner.by_plan.items():
        plan = plans[i]
        # A plan's ``report: NAME`` gives a second plan on a dataset (e.g. cold-start) its own files.
        report = plan.get("report")
        name = dataset if not report else report if len(plan["datasets"]) == 1 else f"{report}-{dataset}"
        images = [p for p in [plot_curves(name, chosen, out)] if p]
        if args.longtail:
            from recbole_mm.analysis import write_report

            charted = plan.get("longtail") or list(chosen)  # a plan may chart a subset of its runs
            first = {label: chosen[label]["cells"][0] for label in charted
                     if label in chosen and "failed" not in chosen[label]["cells"][0]}
            cache = out / f"{dataset}.cells.json"
            report = [r for label, cell in first.items() if (r := _longtail_of(cell, label, cache))]
            if report:
                images.append(write_report(report, str(out / f"{name}-longtail"))[1])
        md, _ = write_tables(dataset, chosen, plan["seeds"], out, [str(i) for i in images], command, name,
                             reference=plan.get("reference"), latex=args.format == "latex")
        print(f"wrote {md}" + (f" and {md.with_suffix('.tex')}" if args.format == "latex" else ""))


def _longtail_of(cell: dict, label: str, cache: Path) -> dict | None:
    """A charted cell's long-tail groups: stored in its cached cell once computed from its checkpoint, so the
    chart can be redrawn where the checkpoint is not (a cache committed and read on another machine); None,
    with a line saying so, when neither is there."""
    from recbole_mm.analysis import longtail

    if cell.get("longtail"):
        return {**cell["longtail"], "model": label}
    if not Path(cell["checkpoint"]).exists():
        print(f"long-tail chart: {label} left out (its checkpoint {cell['checkpoint']} is gone and its cached cell "
              "has no long-tail groups; delete the cell from the cache to run it again)", flush=True)
        return None
    result = longtail(cell["checkpoint"], label=label, log_dir=str(cache.parent))
    annotate_cell(cache, cell["key"], "longtail", result)
    return result

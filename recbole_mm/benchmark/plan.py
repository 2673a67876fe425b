"""Benchmark plans: read from yaml and the command line, checked before anything runs, and the cells
(dataset, run, grid point, seed) they describe."""

from __future__ import annotations

import argparse
import itertools
import os
import sys

import yaml

from recbole_mm.errors import RecBoleMMError


def load_plan(args: argparse.Namespace, path: str | None = None) -> dict:
    """The plan from a yaml file and/or --datasets/--models/--seeds (command line wins)."""
    plan: dict = {}
    if path:
        try:
            with open(path, encoding="utf-8") as f:
                plan = yaml.safe_load(f) or {}
        except (OSError, yaml.YAMLError) as err:
            raise RecBoleMMError(f"benchmark plan {path}: {err}") from err
        check_plan_shape(plan, path)
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
            raise RecBoleMMError(f"benchmark plan {path or ''} has no {key}; "
                                 f"give --{'models' if key == 'runs' else key} or a --plan yaml")
    plan.setdefault("seeds", [999])
    for label, run in plan["runs"].items():
        if not isinstance(run, dict) or "model" not in run:
            raise RecBoleMMError(f"benchmark plan {path or ''}: run '{label}' needs a model, e.g. {{model: GUME}}")
    unknown = [label for label in plan.get("longtail") or [] if label not in plan["runs"]]
    if unknown:
        raise RecBoleMMError(f"benchmark plan {path or ''}: longtail names {unknown}, which are not among its runs "
                             f"{list(plan['runs'])}")
    check_rigour_keys(plan, path)
    return plan


PLAN_KEYS = ("datasets", "seeds", "runs", "config", "report", "longtail", "reference")
_PLAN_EXAMPLE = "e.g. {datasets: [tiktok], seeds: [999], runs: {GUME: {model: GUME}}}"


def _seeds_problem(seeds) -> str | None:
    if not isinstance(seeds, list) or not seeds:
        return f"{seeds!r} is not a list of seeds, e.g. [999, 1000]"
    bad = [s for s in seeds if not isinstance(s, int) or isinstance(s, bool) or not 0 <= s < 2**32]
    return f"{bad[0]!r} is not a seed (an integer from 0 to 2**32 - 1)" if bad else None


def _grid_problem(grid) -> str | None:
    if isinstance(grid, dict):
        bad = [k for k, v in grid.items() if not isinstance(v, list) or not v]
        return f"grid key '{bad[0]}' needs a non-empty list of values, e.g. {{{bad[0]}: [0.1, 0.01]}}" if bad else None
    if isinstance(grid, list):
        return None if grid and all(isinstance(p, dict) for p in grid) else \
            "a grid list needs one mapping per point, e.g. [{fusion: mean}, {fusion: concat}]"
    return "grid must map keys to lists of values, e.g. {reg_weight: [0.0, 0.001]}, or list points"


def check_plan_shape(plan, path: str) -> None:
    """A plan file's structure, before anything runs: a mapping of the known keys, ``datasets`` a list of
    names, ``seeds`` a list of integers, ``runs`` a mapping of label to ``{model: NAME, ...}`` with a
    well-formed ``grid`` and ``seeds``; the first problem is one line naming the file, the key and the fix."""
    where = f"benchmark plan {path}"
    if not isinstance(plan, dict):
        raise RecBoleMMError(f"{where} holds a yaml {type(plan).__name__}, not a mapping of datasets, seeds and "
                             f"runs; write it as {_PLAN_EXAMPLE}")
    unknown = [str(key) for key in plan if key not in PLAN_KEYS]
    if unknown:
        raise RecBoleMMError(f"{where}: unknown key(s) {', '.join(unknown)}; a plan has {', '.join(PLAN_KEYS)}")
    datasets = plan.get("datasets")
    if datasets is not None and not (isinstance(datasets, list) and datasets
                                     and all(isinstance(d, str) and d for d in datasets)):
        raise RecBoleMMError(f"{where}: datasets: {datasets!r} is not a list of dataset names, e.g. [tiktok]")
    if "seeds" in plan and _seeds_problem(plan["seeds"]):
        raise RecBoleMMError(f"{where}: seeds: {_seeds_problem(plan['seeds'])}")
    if plan.get("config") is not None and not isinstance(plan["config"], dict):
        raise RecBoleMMError(f"{where}: config: {plan['config']!r} is not a mapping of settings, e.g. {{epochs: 5}}")
    if plan.get("report") is not None and not (isinstance(plan["report"], str) and plan["report"]
                                               and "/" not in plan["report"] and not plan["report"].startswith(".")):
        raise RecBoleMMError(f"{where}: report: {plan['report']!r} is not a file name, e.g. tiktok-coldstart")
    if plan.get("longtail") is not None and not isinstance(plan["longtail"], list):
        raise RecBoleMMError(f"{where}: longtail: {plan['longtail']!r} is not a list of run labels")
    runs = plan.get("runs")
    if runs is None:
        return
    if not isinstance(runs, dict):
        raise RecBoleMMError(f"{where}: runs must map a label to a run, e.g. {{GUME: {{model: GUME}}}}, "
                             f"not a {type(runs).__name__}")
    for label, run in runs.items():
        if not isinstance(run, dict) or not isinstance(run.get("model"), str) or not run["model"]:
            raise RecBoleMMError(f"{where}: run '{label}' needs a model, e.g. {{model: GUME}}")
        if "grid" in run and run["grid"] is not None and _grid_problem(run["grid"]):
            raise RecBoleMMError(f"{where}: run '{label}': {_grid_problem(run['grid'])}")
        if "seeds" in run and _seeds_problem(run["seeds"]):
            raise RecBoleMMError(f"{where}: run '{label}': seeds: {_seeds_problem(run['seeds'])}")


def check_plan_models(plan: dict, path: str | None) -> None:
    """Every run's model exists (RecBole's or recbole_mm's; aliases allowed), before any cell runs: a
    misspelt model was a failed row in the report and exit status 0."""
    from recbole_mm.errors import UnknownModelError
    from recbole_mm.registry import canonical_model_name

    for label, run in plan["runs"].items():
        try:
            canonical_model_name(run["model"])
        except (UnknownModelError, ImportError, ValueError) as exc:
            raise RecBoleMMError(f"benchmark plan {path or '(command line)'}: run '{label}': {exc}") from exc


def check_plan_configs(plan: dict, path: str | None) -> None:
    """Every run's settings, at each grid point, resolve to a valid config on each dataset whose folder
    exists (values, metrics, checkpoint folder...), before any cell runs: one line naming the run."""
    from recbole_mm.quick_start import make_config

    where = f"benchmark plan {path or '(command line)'}"
    for dataset in plan["datasets"]:
        for label, run in plan["runs"].items():
            for point in grid_points(run):
                config = cell_config(plan, run, point, run_seeds(plan, run)[0])
                at = f" at grid point {point}" if point else ""
                argv, sys.argv = sys.argv, sys.argv[:1]  # the benchmark's own arguments are not a cell's config
                try:
                    resolved = make_config(run["model"], dataset, None, dict(config))
                except RecBoleMMError as exc:
                    raise RecBoleMMError(f"{where}: run '{label}' on {dataset}{at}: {exc}") from exc
                finally:
                    sys.argv = argv
                folder = resolved["data_path"]
                if not os.path.isdir(folder):
                    from recbole_mm.data.files import available_datasets

                    found = available_datasets(os.path.dirname(folder)) or ["none"]
                    raise RecBoleMMError(f"{where}: dataset '{dataset}': folder {folder} not found (datasets there: "
                                         f"{', '.join(found)}; names are case-sensitive); fix datasets or data_path")


def check_plans(plans: list[dict], paths: list[str | None], run_cells: bool = True) -> None:
    """Every plan's models (and, when cells will run, their resolved configs and dataset folders), before
    any cell runs; ``--report-only`` builds no config for this."""
    for plan, path in zip(plans, paths):
        check_plan_models(plan, path)
        if run_cells:
            check_plan_configs(plan, path)


def check_rigour_keys(plan: dict, path: str | None) -> None:
    """A plan's ``reference`` names one of its runs, and a run's ``search`` is well-formed and not beside a grid."""
    from recbole_mm.search import check_search

    reference = plan.get("reference")
    if reference is not None and reference not in plan["runs"]:
        raise RecBoleMMError(f"benchmark plan {path or ''}: reference {reference!r} is not among its runs "
                             f"{list(plan['runs'])}; name one of them, e.g. reference: {next(iter(plan['runs']))}")
    for label, run in plan["runs"].items():
        if "search" in run:
            if run.get("grid"):
                raise RecBoleMMError(f"benchmark plan {path or ''}: run '{label}' has both a grid and a search; "
                                     "keep one of them")
            check_search(run["search"], f"benchmark plan {path or ''}: run '{label}'")


def run_seeds(plan: dict, run: dict) -> list[int]:
    """A run's seeds: its own ``seeds`` or the plan's."""
    return list(run.get("seeds") or plan["seeds"])


def grid_points(run: dict) -> list[dict]:
    """A run's grid points: the cartesian product of ``{key: [values]}``, or a list of points as given
    (``[{key: value, ...}, ...]``, for settings that only make sense together); one empty point without a grid."""
    grid = run.get("grid") or {}
    if isinstance(grid, list):
        return [dict(point) for point in grid]
    keys = sorted(grid)
    return [dict(zip(keys, values)) for values in itertools.product(*(grid[k] for k in keys))]


def cell_config(plan: dict, run: dict, point: dict, seed: int) -> dict:
    config = {**(plan.get("config") or {}),
              **{k: v for k, v in run.items() if k not in ("model", "grid", "search", "seeds")}}
    return {**config, **point, "seed": seed, "show_progress": False}


"""One-command comparison of models on datasets over seeds, through run_recbole's protocol.

    python -m recbole_mm.benchmark --datasets tiktok --models BPR LightGCN VBPR GUME MMGEF --seeds 999 1000 1001
    python -m recbole_mm.benchmark --plan benchmarks/tiktok.yaml benchmarks/amazon-baby.yaml --jobs 2

A plan (yaml) names ``datasets``, ``seeds`` and ``runs``: label → ``{model: NAME, <config overrides>,
grid: {key: [values, ...]}, seeds: [...]}`` (a run's own ``seeds`` replace the plan's, e.g. one seed for
ablations). Each cell (dataset, label, grid point, seed) runs in a fresh process, its result is cached
in ``<out>/<dataset>.cells.json`` under a key made of the cell's **resolved** RecBole config and a hash
of the code it runs (the package, its model and dataset yaml files): a rerun skips finished cells of the
same config and code, runs again what a change to either touched, and tries failed cells again (a
failed cell is reported with its error, not dropped); the report says which cells came from the cache
and from which commit. A grid is searched with the first seed and its point chosen by the best
**validation** score; the remaining seeds then run that point. ``--jobs N`` runs N cells at a time,
each with cores/N threads (full-seed runs before single-seed extras). Writes
``<out>/<name>.md`` / ``.csv`` (``<name>``: the dataset's, or the plan's ``report: NAME``, e.g. for a
cold-start plan beside a dataset's main one; test metrics at the best-validation epoch, mean ± std over seeds,
best epoch, seconds per training epoch and per evaluation, peak memory, parameter count, and per run
what its config changes from the dataset's and model's defaults), ``<name>.configs.json`` (every
run's full resolved config), ``<name>-curves.png`` (loss and valid score per epoch) and, with
``--longtail``, ``<name>-longtail.png`` (per-popularity-group metrics of each run's first seed; a
plan's ``longtail: [label, ...]`` charts only those runs).

Rigour (docs/benchmarks.md): each cell screens its split for leakage before training
(:mod:`recbole_mm.leakage`) and stores its per-user test metrics, from RecBole's evaluator, beside the cache
(``<out>/<dataset>.per-user/<key>.npz``, :mod:`recbole_mm.evaluation`) with RecBole's beyond-accuracy metrics
(ItemCoverage, GiniIndex, AveragePopularity, TailPercentage @20, tail = the long-tail charts' groups 2-5). The
report compares every run with the column's best and with the plan's ``reference: LABEL`` over the same users
(:mod:`recbole_mm.stats`: bootstrap interval, paired t and Wilcoxon, Holm) and marks significant differences. A
run may carry ``search: {algo: random|tpe|exhaustive, max_evals: N, space: {...}}`` instead of a grid
(:mod:`recbole_mm.search`, RecBole's HyperTuning on validation). ``--format latex`` also writes
``<name>.tex`` (:mod:`recbole_mm.latex`). ``--fill-missing`` reuses cached cells of matching settings from any code,
as ``--report-only`` does, and runs the missing ones and those without per-user metrics.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import fcntl
import hashlib
import heapq
import io
import itertools
import json
import os
import shlex
import statistics
import subprocess
import sys
import threading
import time
from functools import lru_cache
from pathlib import Path

import yaml

from recbole_mm import storage
from recbole_mm.errors import RecBoleMMError

METRICS = ["recall@10", "recall@20", "ndcg@10", "ndcg@20", "precision@10", "precision@20", "map@10", "map@20"]


# ---- plan -----------------------------------------------------------------------------------------
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


# ---- what a cell is: its resolved config and the code that runs it ---------------------------------
# Keys that name where things are on this machine, or only how a run reports progress: they neither change
# a result nor belong in a committed report.
_MACHINE_KEYS = ("data_path", "checkpoint_dir", "show_progress", "log_wandb", "wandb_project", "state", "log_dir")


def portable_config(config: dict) -> dict:
    """A resolved config without machine-specific values: the keys of :data:`_MACHINE_KEYS` are dropped
    (a ``data_path`` inside recbole_mm's own ``dataset/`` folder is then named by ``dataset`` alone; one
    outside it is kept as a marker, so that a cell on other data never shares a key with it)."""
    from recbole_mm.resources import bundled_data_root

    plain = {k: v for k, v in config.items() if k not in _MACHINE_KEYS}
    data_path = config.get("data_path")
    if data_path:
        try:
            Path(data_path).resolve().relative_to(bundled_data_root().resolve())
        except ValueError:
            plain["data_path"] = "<outside recbole_mm's dataset/>"  # the dataset name still keys it
    return plain


# Keys a run rewrites from its data (the split actually used), so a cell's recorded value is not the resolved one.
_RUN_DERIVED = ("eval_args", "use_gpu")


@lru_cache(maxsize=1)
def code_version() -> dict:
    """The code a cell runs: a hash of the package's sources and the model/dataset yaml files (so that
    any change to them makes new cells), and the git commit when recbole_mm runs from a checkout."""
    from recbole_mm.resources import resource_root

    root, digest = resource_root(), hashlib.sha256()
    package = Path(__file__).resolve().parent
    files = sorted([*package.rglob("*.py"), *(root / "properties").rglob("*.yaml"),
                    *(root / "dataset_configs").glob("*.yaml")])
    for path in files:
        name = path.relative_to(package.parent if path.is_relative_to(package) else root)
        digest.update(str(name).encode() + b"\0" + path.read_bytes() + b"\0")
    commit = None
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out = subprocess.run(["git", "-C", str(root), "rev-parse", "--short=12", "HEAD"], capture_output=True,
                             text=True, timeout=10)
        if out.returncode == 0:
            dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--", "recbole_mm",
                                    "properties", "dataset_configs"], capture_output=True, text=True, timeout=10)
            commit = out.stdout.strip() + ("+uncommitted changes" if dirty.stdout.strip() else "")
    return {"hash": digest.hexdigest()[:16], "commit": commit}


def resolve_config(model: str, dataset: str, config: dict) -> dict | None:
    """The config RecBole will run a cell with (dataset and model yaml files merged, values checked),
    as portable plain data; None when it cannot be resolved (the cell then runs and fails with the reason)."""
    try:
        import recbole_mm  # noqa: F401  (shims before recbole)
        from recbole_mm.checkpoint import config_to_plain
        from recbole_mm.quick_start import make_config

        # RecBole's Config also reads ``--key=value`` words of sys.argv: the benchmark's own arguments
        # are not a cell's config (and would each print a "will not be used" line).
        argv, sys.argv = sys.argv, sys.argv[:1]
        try:
            return portable_config(config_to_plain(make_config(model, dataset, None, dict(config))))
        finally:
            sys.argv = argv
    except Exception:  # noqa: BLE001 - any reason it cannot resolve is reported by the cell's own run
        return None


def cell_key(model: str, dataset: str, config: dict) -> str:
    """Cache key: the resolved config (or, when it cannot be resolved, the plan's inputs) and the code."""
    resolved = resolve_config(model, dataset, config)
    identity = {"resolved": resolved} if resolved is not None else {"unresolved": [model, dataset, config]}
    identity["code"] = code_version()["hash"]
    return hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:24]


# ---- one cell, in a fresh process -------------------------------------------------------------------
def run_cell(model: str, dataset: str, config: dict) -> dict:
    """Train and test one configuration; returns plain data for the cache."""
    import recbole_mm
    from recbole_mm.checkpoint import config_to_plain
    from recbole_mm.evaluation import cell_fields
    from recbole_mm.trainer import median_epoch_seconds

    # The split is screened for leakage before training; per-user test metrics come back for the report's tests.
    result = recbole_mm.run_recbole(model=model, dataset=dataset, config_dict=config, screen_leakage=True,
                                    test_details=True)
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
        "config": portable_config(config_to_plain(result["config"])),
        "code": code_version(),
        "leakage": result["leakage"],
        **cell_fields(result["test_details"]),
    }


class Slots:
    """At most ``n`` cells at once; queued cells start in priority order (lowest first).

    Queueing (``enqueue``) is separate from waiting for a slot (``hold``), so that a driver can queue
    all of a run's cells before it tells lower-priority work that the run has nothing more to queue."""

    def __init__(self, n: int):
        self.free, self.waiting, self.cond = n, [], threading.Condition()
        self.counter = itertools.count()

    def enqueue(self, priority: tuple) -> tuple:
        """A ticket in the queue, to be passed to :meth:`hold`."""
        ticket = (priority, next(self.counter))
        with self.cond:
            heapq.heappush(self.waiting, ticket)
            self.cond.notify_all()
        return ticket

    @contextlib.contextmanager
    def hold(self, ticket: tuple):
        """Wait until the ticket is first in the queue and a slot is free; hold the slot meanwhile."""
        with self.cond:
            self.cond.wait_for(lambda: self.free > 0 and self.waiting[0] == ticket)
            heapq.heappop(self.waiting)
            self.free -= 1
            self.cond.notify_all()
        try:
            yield
        finally:
            with self.cond:
                self.free += 1
                self.cond.notify_all()


def _run_in_subprocess(model: str, dataset: str, config: dict, workdir: Path, threads: int | None = None) -> dict:
    request = json.dumps({"model": model, "dataset": dataset, "config": config})
    env = dict(os.environ)
    if threads:
        # Parallel cells each get their share of the cores; oversubscribed OpenMP makes every cell slower.
        env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    started = time.time()
    out = subprocess.run([sys.executable, "-m", "recbole_mm.benchmark", "--cell", request], check=False,
                         capture_output=True, text=True, cwd=workdir, env=env)
    # Threads a cell had: its share, else what the environment pins (None: torch's default, all cores).
    pinned = env.get("OMP_NUM_THREADS", "")
    timing = {"started": started, "finished": time.time(),
              "threads": threads or (int(pinned) if pinned.isdigit() else None)}
    if out.returncode != 0:
        lines = [line for line in out.stderr.strip().splitlines() if line.strip()]
        return {"failed": lines[-1] if lines else f"exit status {out.returncode}", **timing}
    return {**json.loads(out.stdout.strip().splitlines()[-1]), **timing}


# ---- the cache ------------------------------------------------------------------------------------
_OUT_FIX = "give --out a folder you can write to"


def update_cache(path: Path, key: str | None = None, value: dict | None = None) -> dict:
    """Read (and optionally add one cell to) a cache that parallel benchmark processes may share."""
    storage.make_folder(path.parent, "--out", _OUT_FIX)
    try:
        lock = open(path.with_suffix(".lock"), "w")
    except OSError as exc:
        raise storage.write_error(exc, "benchmark cache lock", path.with_suffix(".lock"), _OUT_FIX) from exc
    with lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        cells = _read_cache(path)
        if key is not None:
            cells[key] = value
            # atomic: a full disk leaves the cache as it was; the .tmp of earlier versions is removed
            with storage.atomic_write(path, "benchmark cache", _OUT_FIX, stale=[path.with_suffix(".tmp").name]) as tmp:
                tmp.file.write((json.dumps(cells, indent=1) + "\n").encode())
        return cells


def _read_cache(path: Path) -> dict:
    if not path.exists():
        return {}
    try:
        cells = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RecBoleMMError(f"benchmark cache {path} cannot be read ({' '.join(str(exc).split())}); delete it "
                             "(its cells run again) or restore it") from exc
    if not isinstance(cells, dict):
        raise RecBoleMMError(f"benchmark cache {path} holds a {type(cells).__name__}, not cells by key; delete it "
                             "(its cells run again)")
    return cells


class Runner:
    """Runs the missing cells of benchmark plans, ``jobs`` at a time, into the per-dataset caches."""

    def __init__(self, out: Path, workdir: Path, jobs: int = 1, report_only: bool = False,
                 fill_missing: bool = False):
        self.out, self.workdir, self.jobs = out, workdir, max(1, jobs)
        # report_only: run nothing; report the cached cells that match each cell's settings, whatever code
        # they ran (the report names each cell's commit), and missing cells as not run.
        self.report_only = report_only
        # fill_missing: as report_only, but run the cells that are missing and the chosen cells that have no
        # per-user metrics (cached before they existed).
        self.fill_missing = fill_missing and not report_only
        self.threads = max(1, (os.cpu_count() or 1) // self.jobs) if self.jobs > 1 else None
        self.slots = Slots(self.jobs)
        self.print_lock = threading.Lock()
        self.keys: dict[str, str] = {}  # (dataset, label, point, seed) → cache key
        self.ran_now: set[str] = set()
        self.key_lock = threading.Lock()
        self.by_plan: dict[tuple[int, str], dict] = {}  # (plan index, dataset) → label → chosen entry
        self.aborted = False  # a worker thread failed: the others queue nothing more

    def run_label(self, plan: dict, dataset: str, label: str, priority: tuple) -> dict:
        """Grid on the first seed, choose on validation, then the other seeds; the chosen entry."""
        run, cache = plan["runs"][label], self.out / f"{dataset}.cells.json"
        seeds, points = run_seeds(plan, run), grid_points(run)
        if run.get("search"):
            return self._search_label(plan, dataset, label, priority)
        if len(points) == 1:  # nothing to choose: every seed can start at once
            self._ensure_all(cache, [(label, run, points[0], s) for s in seeds], plan, dataset, priority, last=True,
                             need_per_user=True)
        else:
            self._ensure_all(cache, [(label, run, p, seeds[0]) for p in points], plan, dataset, priority)
        cells = update_cache(cache)
        scores = {json.dumps(p, sort_keys=True): self._cell(cells, plan, dataset, label, p, seeds[0]) for p in points}
        ok = {p: c for p, c in scores.items() if "failed" not in c}
        # Grid selection on the validation score only (MMRec selects on test: its issue #64).
        best = max(ok, key=lambda p: ok[p]["best_valid_score"]) if ok else json.dumps(points[0], sort_keys=True)
        point = json.loads(best)
        if len(points) > 1:
            # --fill-missing: the chosen point's first seed may lack per-user metrics too.
            self._ensure_all(cache, [(label, run, point, s) for s in (seeds if self.fill_missing else seeds[1:])],
                             plan, dataset, priority, last=True, need_per_user=True)
        cells = update_cache(cache)
        tried = [self._cell(cells, plan, dataset, label, p, seeds[0]) for p in points if p != point]
        final = [self._cell(cells, plan, dataset, label, point, s) for s in seeds]
        return {"point": point, "grid": run.get("grid"), "model": run["model"], "seeds": seeds,
                "cells": final, "grid_cells": tried,
                "chosen_by": f"best valid {_valid_metric(final + tried)} of seed {seeds[0]} among {len(points)} grid points"
                if len(points) > 1 else None}

    def _search_label(self, plan: dict, dataset: str, label: str, priority: tuple) -> dict:
        """A run's ``search`` (RecBole's HyperTuning) on the first seed, scored on validation; then the
        chosen point's other seeds."""
        from recbole_mm.search import search_point

        run, cache = plan["runs"][label], self.out / f"{dataset}.cells.json"
        seeds = run_seeds(plan, run)

        def score(point: dict) -> float | None:
            self._ensure_all(cache, [(label, run, point, seeds[0])], plan, dataset, priority)
            cell = self._cell(update_cache(cache), plan, dataset, label, point, seeds[0])
            return None if "failed" in cell else cell["best_valid_score"]

        point, tried_points = search_point(run["search"], label, score)
        point = point if point is not None else (tried_points[0] if tried_points else {})
        self._ensure_all(cache, [(label, run, point, s) for s in (seeds if self.fill_missing else seeds[1:])],
                         plan, dataset, priority, last=True, need_per_user=True)
        cells = update_cache(cache)
        others = {json.dumps(p, sort_keys=True): p for p in tried_points if p != point}
        tried = [self._cell(cells, plan, dataset, label, p, seeds[0]) for p in others.values()]
        final = [self._cell(cells, plan, dataset, label, point, s) for s in seeds]
        search = run["search"]
        return {"point": point, "grid": None, "search": search, "model": run["model"], "seeds": seeds,
                "cells": final, "grid_cells": tried, "trials": len(tried_points),
                "chosen_by": f"best valid {_valid_metric(final + tried)} of seed {seeds[0]} over "
                             f"{len(tried_points)} {search['algo']} search trials (RecBole's HyperTuning)"}

    def key(self, plan: dict, dataset: str, label: str, point: dict, seed: int) -> str:
        """The cache key of a cell (resolved once per benchmark process)."""
        ident = json.dumps([dataset, label, point, seed], sort_keys=True)
        with self.key_lock:  # RecBole's Config is not made for concurrent construction
            if ident not in self.keys:
                run = plan["runs"][label]
                self.keys[ident] = cell_key(run["model"], dataset, cell_config(plan, run, point, seed))
            return self.keys[ident]

    def _cell(self, cells: dict, plan: dict, dataset: str, label: str, point: dict, seed: int) -> dict:
        """A finished cell, marked with whether this process ran it or found it in the cache."""
        if self.report_only:
            return self._matching(cells, plan, dataset, label, point, seed)
        key = self.key(plan, dataset, label, point, seed)
        cell = cells.get(key, {"failed": "not run yet"})
        if self.fill_missing and "failed" in cell:  # a cached cell of these settings from other code, if any
            with self.key_lock:
                matching = self._matching(cells, plan, dataset, label, point, seed)
            if "failed" not in matching:
                return matching
        return cell if "failed" in cell else {**cell, "from_cache": key not in self.ran_now}

    def _ensure_all(self, cache: Path, todo: list, plan: dict, dataset: str, priority: tuple,
                    last: bool = False, need_per_user: bool = False) -> None:
        """Run the cells of ``todo`` that are not finished (a failed cell is tried again: its error may
        have been transient or fixed). ``last``: these are the run's final cells. ``need_per_user``: with
        --fill-missing, a cached cell without per-user metrics counts as missing."""
        from recbole_mm.evaluation import has_per_user

        cached = update_cache(cache)
        if self.fill_missing:
            found = {id(item): self._cell(cached, plan, dataset, item[0], item[2], item[3]) for item in todo}
            missing = [item for item in todo if "failed" in found[id(item)]
                       or (need_per_user and not has_per_user(found[id(item)]))]
        else:
            missing = [] if self.report_only else [
                item for item in todo if "failed" in cached.get(self.key(plan, dataset, item[0], item[2], item[3]),
                                                                {"failed": ""})]
        extra = bool(priority[0])
        with self.slots.cond:
            if extra:  # not before every full-seed run has queued all its cells
                self.slots.cond.wait_for(lambda: self.mains_left == 0 or self.aborted)
            if self.aborted:
                return
            tickets = [self.slots.enqueue(priority) for _ in missing]
            if last and not extra:
                self.mains_left -= 1
                self.slots.cond.notify_all()
        self._in_threads([lambda ticket=ticket, item=item: self._run(cache, ticket, *item, plan, dataset)
                          for ticket, item in zip(tickets, missing)])

    def _run(self, cache: Path, ticket: tuple, label: str, run: dict, point: dict, seed: int, plan: dict,
             dataset: str) -> None:
        with self.slots.hold(ticket):
            with self.print_lock:
                print(f"[{dataset}] {label} {point or ''} seed {seed}", flush=True)
            # RecBole's log/ and log_tensorboard/ of a cell go under --out (log_dir), not the working directory.
            result = _run_in_subprocess(run["model"], dataset, {**cell_config(plan, run, point, seed),
                                                                "log_dir": str(self.out)}, self.workdir, self.threads)
        key = self.key(plan, dataset, label, point, seed)
        from recbole_mm.evaluation import store_per_user

        result = store_per_user(result, self.out, f"{dataset}.per-user/{key}.npz")
        self.ran_now.add(key)
        update_cache(cache, key, result)

    def _in_threads(self, jobs: list) -> None:
        """Run ``jobs`` (callables) in threads and wait for all; the first exception of any is raised here as
        one line (in a thread it was printed as a traceback and lost, and the missing result became a
        KeyError), after the other threads have stopped queueing work."""
        errors: list[BaseException] = []

        def guarded(job) -> None:
            try:
                job()
            except BaseException as exc:  # noqa: BLE001 - re-raised below, in the calling thread
                errors.append(exc)
                with self.slots.cond:
                    self.aborted = True
                    self.slots.cond.notify_all()

        threads = [threading.Thread(target=guarded, args=(job,)) for job in jobs]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if errors:
            exc = errors[0]
            if isinstance(exc, OSError):  # a write under --out that no check caught (e.g. the disk filled up)
                raise storage.write_error(exc, "benchmark output", exc.filename or self.out, _OUT_FIX) from exc
            raise exc

    def _matching(self, cells: dict, plan: dict, dataset: str, label: str, point: dict, seed: int) -> dict:
        """The latest cached cell of this model and dataset whose config holds every setting the plan gives
        the cell (its overrides, grid point and seed), from whichever code; otherwise "not run"."""
        from recbole_mm.errors import UnknownModelError
        from recbole_mm.registry import canonical_model_name

        run = plan["runs"][label]
        want = {k: v for k, v in cell_config(plan, run, point, seed).items() if k != "show_progress"}
        try:
            model = canonical_model_name(run["model"])
        except UnknownModelError:  # an unknown model has no cells; it is reported as not run
            model = run["model"]
        # Today's resolution of those settings: a cached cell must agree on every key both know (keys added
        # since it ran are not held against it), so a plain run never matches its shuffled-features twin.
        resolved = resolve_config(model, dataset, want) or {}
        wanted = {**resolved, **want}
        found = [c for c in cells.values() if "failed" not in c and c["config"].get("model") == model
                 and c["config"].get("dataset") == dataset and all(c["config"].get(k) == v for k, v in want.items())
                 and all(c["config"][k] == wanted[k] if k in wanted else c["config"][k] in (None, False)
                         for k in c["config"] if k not in _RUN_DERIVED and k not in _MACHINE_KEYS)]
        if not found:
            return {"failed": "not run yet, or run with other settings (report-only)"}
        return {**max(found, key=lambda c: c.get("finished", 0)), "from_cache": True}

    def run_plans(self, plans: list[dict]) -> dict:
        """Every (dataset, label) of every plan; returns dataset → label → chosen entry, in plan order."""
        tasks = []
        for i, plan in enumerate(plans):
            for dataset in plan["datasets"]:
                for j, (label, run) in enumerate(plan["runs"].items()):
                    # Runs with the plan's full seeds first; single-seed extras (ablations) after them.
                    extra = len(run_seeds(plan, run)) < len(plan["seeds"])
                    tasks.append((plan, dataset, label, (int(extra), i, j)))
        self.mains_left = sum(1 for task in tasks if not task[3][0])
        results: dict = {}

        def work(task):
            plan, dataset, label, priority = task
            results[(priority[1], dataset, label)] = self.run_label(plan, dataset, label, priority)

        self._in_threads([lambda task=task: work(task) for task in tasks])
        chosen: dict = {}
        for plan, dataset, label, priority in tasks:
            entry = results[(priority[1], dataset, label)]
            chosen.setdefault(dataset, {})[label] = entry
            self.by_plan.setdefault((priority[1], dataset), {})[label] = entry
        return chosen


def run_dataset(plan: dict, dataset: str, out: Path, workdir: Path, jobs: int = 1) -> dict:
    """Run every missing cell of one dataset; returns label → {point, cells by seed}."""
    return Runner(out, workdir, jobs).run_plans([{**plan, "datasets": [dataset]}])[dataset]


# ---- reports --------------------------------------------------------------------------------------
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


def _valid_metric(cells: list[dict]) -> str:
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
            if k != "seed" and k not in _RUN_DERIVED and defaults.get(k, object()) != v}


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
        grid = f", grid {entry['grid']} → chose {entry['point']} on validation" if entry["grid"] else ""
        if entry.get("search"):
            grid = (f", search {json.dumps(entry['search'], sort_keys=True)} ({entry.get('trials')} trials) → chose "
                    f"{entry['point']} on validation")
        md.append(f"- **{label}** (model {entry['model']}{grid})")
        defaults = resolve_config(entry["model"], dataset, {})
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
    storage.write_text(md_path, "\n".join(md) + "\n", "benchmark report", _OUT_FIX)
    storage.write_text(out / f"{name}.configs.json", json.dumps(configs, indent=1, sort_keys=True, default=str) + "\n",
                       "benchmark configs", _OUT_FIX)
    table = io.StringIO(newline="")
    writer = csv.writer(table)
    writer.writerow(header)
    writer.writerows(rows)
    storage.write_text(csv_path, table.getvalue(), "benchmark table", _OUT_FIX)
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
        with storage.atomic_write(path, "benchmark chart", _OUT_FIX) as tmp:
            fig.savefig(tmp.file, format="png", dpi=110)
    finally:
        plt.close(fig)
    return path


def main(argv: list[str] | None = None, prog: str = "python -m recbole_mm.benchmark") -> None:
    """Entry point of ``python -m recbole_mm.benchmark`` and ``recbole-mm benchmark`` (``prog`` for usage lines)."""
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0])
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
    storage.make_folder(out, "--out", _OUT_FIX)
    runner = Runner(out, Path.cwd(), args.jobs, report_only=args.report_only, fill_missing=args.fill_missing)
    runner.run_plans(plans)
    for (i, dataset), chosen in runner.by_plan.items():
        plan = plans[i]
        # A plan's ``report: NAME`` gives a second plan on a dataset (e.g. cold-start) its own files.
        report = plan.get("report")
        name = dataset if not report else report if len(plan["datasets"]) == 1 else f"{report}-{dataset}"
        images = [p for p in [plot_curves(name, chosen, out)] if p]
        if args.longtail:
            from recbole_mm.analysis import longtail, write_report

            charted = plan.get("longtail") or list(chosen)  # a plan may chart a subset of its runs
            first = {label: chosen[label]["cells"][0] for label in charted
                     if label in chosen and "failed" not in chosen[label]["cells"][0]}
            if first:
                report = [longtail(cell["checkpoint"], label=label, log_dir=str(out)) for label, cell in first.items()]
                images.append(write_report(report, str(out / f"{name}-longtail"))[1])
        md, _ = write_tables(dataset, chosen, plan["seeds"], out, [str(i) for i in images], command, name,
                             reference=plan.get("reference"), latex=args.format == "latex")
        print(f"wrote {md}" + (f" and {md.with_suffix('.tex')}" if args.format == "latex" else ""))

if __name__ == "__main__":
    from recbole_mm.errors import exit_on_user_error

    exit_on_user_error(main)

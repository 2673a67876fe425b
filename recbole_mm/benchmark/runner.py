"""Runs the missing cells of benchmark plans, each in a fresh process, ``--jobs`` at a time: grids chosen on
validation, full-seed runs before single-seed extras, results into the cache."""

from __future__ import annotations

import contextlib
import heapq
import itertools
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

from recbole_mm import storage
from recbole_mm.benchmark.cache import OUT_FIX, update_cache
from recbole_mm.benchmark import cells as benchmark_cells  # by module: tests replace its functions
from recbole_mm.benchmark.cells import MACHINE_KEYS, RUN_DERIVED
from recbole_mm.benchmark.plan import cell_config, grid_points, run_seeds
from recbole_mm.benchmark.report import valid_metric


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



def grid_choice(metric: str, seed: int, ran: int, size: int) -> str:
    """How a grid point was chosen, saying so when some points have not run (a report from a partial cache)."""
    if ran == size:
        return f"best valid {metric} of seed {seed} among {size} grid points"
    if ran == 0:
        return f"none yet: no grid point of {size} has run (the first is shown)"
    return f"best valid {metric} of seed {seed} among the {ran} of {size} grid points that ran ({size - ran} not run or failed)"


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
                "cells": final, "grid_cells": tried, "grid_ran": len(ok), "grid_size": len(points),
                "chosen_by": grid_choice(valid_metric(final + tried), seeds[0], len(ok), len(points))
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
                "chosen_by": f"best valid {valid_metric(final + tried)} of seed {seeds[0]} over "
                             f"{len(tried_points)} {search['algo']} search trials (RecBole's HyperTuning)"}

    def key(self, plan: dict, dataset: str, label: str, point: dict, seed: int) -> str:
        """The cache key of a cell (resolved once per benchmark process)."""
        ident = json.dumps([dataset, label, point, seed], sort_keys=True)
        with self.key_lock:  # RecBole's Config is not made for concurrent construction
            if ident not in self.keys:
                run = plan["runs"][label]
                self.keys[ident] = benchmark_cells.cell_key(run["model"], dataset, cell_config(plan, run, point, seed))
            return self.keys[ident]

    def _cell(self, cells: dict, plan: dict, dataset: str, label: str, point: dict, seed: int) -> dict:
        """A finished cell, marked with whether this process ran it or found it in the cache."""
        if self.report_only:
            return self._matching(cells, plan, dataset, label, point, seed)
        key = self.key(plan, dataset, label, point, seed)
        cell = cells.get(key, {"failed": "not run yet"})
        if "failed" not in cell and not benchmark_cells.is_current(cell):
            cell = {"failed": "not run yet with today's code (its cached cell ran code that has changed since)"}
        if self.fill_missing and "failed" in cell:  # a cached cell of these settings from other code, if any
            with self.key_lock:
                matching = self._matching(cells, plan, dataset, label, point, seed)
            if "failed" not in matching:
                return matching
        return cell if "failed" in cell else {**cell, "key": key, "from_cache": key not in self.ran_now}

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
                item for item in todo if "failed" in self._cell(cached, plan, dataset, item[0], item[2], item[3])]
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
            key = self.key(plan, dataset, label, point, seed)
            config = cell_config(plan, run, point, seed)
            # RecBole's log/ and log_tensorboard/ of a cell go under --out (log_dir), not the working directory;
            # its checkpoints into a folder of its own, so that a cell killed part-way resumes from its last
            # epoch when the benchmark runs again (benchmark_cells.interrupted_checkpoint).
            checkpoints = Path(self.workdir) / config.get("checkpoint_dir", "saved") / f"benchmark-{key}"
            result = _run_in_subprocess(run["model"], dataset, {**config, "log_dir": str(self.out),
                                                                "checkpoint_dir": str(checkpoints)},
                                        self.workdir, self.threads)
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
                raise storage.write_error(exc, "benchmark output", exc.filename or self.out, OUT_FIX) from exc
            raise exc

    def _matching(self, cells: dict, plan: dict, dataset: str, label: str, point: dict, seed: int) -> dict:
        """The latest cached cell of this model and dataset whose config holds every setting the plan gives
        the cell (its overrides, grid point and seed), from whichever code; otherwise "not run"."""
        from recbole_mm.errors import UnknownModelError
        from recbole_mm.registry import canonical_model_name

        run = plan["runs"][label]
        # Where things are on this machine is no setting of a cell (a cell records none of it).
        want = {k: v for k, v in cell_config(plan, run, point, seed).items() if k not in MACHINE_KEYS}
        try:
            model = canonical_model_name(run["model"])
        except UnknownModelError:  # an unknown model has no cells; it is reported as not run
            model = run["model"]
        # Today's resolution of those settings: a cached cell must agree on every key both know (keys added
        # since it ran are not held against it), so a plain run never matches its shuffled-features twin.
        resolved = benchmark_cells.resolve_config(model, dataset, want) or {}
        wanted = {**resolved, **want}
        found = [(found_key, c) for found_key, c in cells.items()
                 if "failed" not in c and c["config"].get("model") == model and c["config"].get("dataset") == dataset
                 and all(c["config"].get(k) == v for k, v in want.items())
                 and all(c["config"][k] == wanted[k] if k in wanted else c["config"][k] in (None, False)
                         for k in c["config"] if k not in RUN_DERIVED and k not in MACHINE_KEYS)]
        if not found:
            return {"failed": "not run yet, or run with other settings (report-only)"}
        key, cell = max(found, key=lambda item: item[1].get("finished", 0))
        return {**cell, "key": key, "from_cache": True}

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


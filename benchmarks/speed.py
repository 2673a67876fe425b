"""Speed benchmark: seconds per training epoch and per evaluation pass, and peak memory, per model.

    python benchmarks/speed.py                                  # this checkout, defaults below
    python benchmarks/speed.py --against 4ebc365                # the same cells on an older commit too
    python benchmarks/speed.py --repo HEAD --against main       # a committed snapshot against main
    python benchmarks/speed.py --models GUME VBPR --datasets tiktok --threads 1 --epochs 2
    python benchmarks/speed.py --report results/speed.json      # rewrite results/speed.md from saved cells

Each cell (checkout, dataset, model, threads) trains ``--epochs`` epochs (validation after each) with
recbole_mm's own quick-start and trainer in a fresh process, so its peak RSS is the whole process's;
seconds per epoch and per evaluation are medians over the epochs of the trainer's history
(``recbole_mm.trainer.median_epoch_seconds``), the evaluation being the full-sort validation pass.
Threads are pinned: ``OMP_NUM_THREADS``/``MKL_NUM_THREADS``, ``torch.set_num_threads`` and, for the
one-thread cells, ``taskset -c 0``. ``all`` means every core of the machine.

``--against REV_OR_PATH`` (repeatable) adds checkouts: an existing folder, or a git revision checked out
with ``git worktree add --detach`` into a temporary folder (removed afterwards). Cells alternate between
the checkouts, so a before/after pair is measured back to back; the report then has a ratio table
(this checkout / the other) and the largest relative difference of the per-epoch training losses, which
must be ~0 for a change that keeps the function.

``--mmrec SRC`` adds MMRec's own implementation of each model MMRec has (``MMREC_MODELS``: BPR, LightGCN,
VBPR, FREEDOM, LATTICE, BM3, MGCN, MMGCN, GRCN, DualGNN, SLMRec, DRAGON, SMORE, LayerGCN, LGMRec, PGL, DAMRS;
``--models mmrec`` names them all), run from the ``src`` folder of a copy of MMRec the user names (GPL: never
vendored; ``--mmrec-python`` runs it: by default this interpreter, which the peak-RSS columns need, since
resident shared-library pages differ between installations of the same torch, docs/benchmarks.md; MMGCN, GRCN,
DualGNN and DRAGON need torch_geometric in it), with the shims, temporary layout and
graph files (DualGNN's and DRAGON's user graph, DAMRS's item graph) of ``scripts/run_mmrec_reference.py`` and
the MMRec settings that compute our TikTok default of each model (``MMREC_SETTINGS``: that script's
``TIKTOK_SETTINGS``, the settings of each docs/<model>.md's loss comparison). TikTok cells only. Its cells
alternate with ours, cell by cell, and the report gains one table ours / MMRec's, a row per model in
``MMREC_MODELS`` order: CPU seconds per training epoch and per validation pass and peak RSS (each side and the
ratio), the first epoch's loss difference, the best epochs. MMRec's epoch is its ``_train_epoch`` plus its
``pre_epoch_processing`` (FREEDOM's graph pruning, DualGNN's user-graph draw, which our models do inside the
epoch); its validation pass is the first of the two ``_valid_epoch`` calls after each epoch (the second is its
test). The full table (hours of one core: MMRec's LATTICE and DAMRS epochs alone take 1-2 minutes each,
docs/lattice.md, docs/damrs.md):

    OMP_NUM_THREADS=1 python benchmarks/speed.py --models mmrec --datasets tiktok --threads 1 --epochs 3 \
        --mmrec <MMRec>/src --mmrec-python <reference venv>/bin/python --out results/speed.md

``--check RTOL``: after the run, one line per model and pair of recbole_mm checkouts: the largest
relative difference of the per-epoch training losses and the best epochs; exit status 1 when a loss
differs by more than RTOL or the best epochs differ (the before/after check of a change that must keep
the function: ``--repo HEAD --against main --check 1e-5``).

Datasets: ``tiktok`` (shipped, with its features) and ``baby``: the shipped ``dataset/amazon-baby``
interactions with **generated** features shaped as MMRec's (4096-d float64 image, 384-d float32 text;
random, seeded), written to ``benchmarks/generated/`` (gitignored, or ``--generated DIR``). Baby
numbers measure cost, not accuracy.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import importlib.util
import json
import os
import platform
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve()
REPO = HERE.parent.parent
MODELS = ["GUME", "MMGEF", "VBPR", "LightGCN"]
DATASETS = ["tiktok", "baby"]
BABY_ITEMS = 7050
BABY_FEATURES = {"image": (4096, "float64"), "text": (384, "float32")}  # MMRec's Baby files


def _load_reference():
    """scripts/run_mmrec_reference.py as a module (MMRec's shims, temporary layout and settings table); one
    module object per process, whichever way it is imported."""
    if "run_mmrec_reference" not in sys.modules:
        spec = importlib.util.spec_from_file_location("run_mmrec_reference",
                                                      REPO / "scripts" / "run_mmrec_reference.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules["run_mmrec_reference"] = module
        spec.loader.exec_module(module)
    return sys.modules["run_mmrec_reference"]


# Models MMRec has, and the MMRec settings that make each of its runs compute ours on TikTok: the table lives
# with the shims in scripts/run_mmrec_reference.py (TIKTOK_SETTINGS), the one home of those settings; its order
# is the order of the report's ours / MMRec table.
MMREC_SETTINGS: dict[str, dict] = _load_reference().TIKTOK_SETTINGS
MMREC_MODELS = list(MMREC_SETTINGS)

# Settings of every timed cell: validation after each epoch, no early stop, no checkpoint writes.
CELL_CONFIG = {"eval_step": 1, "stopping_step": 10**6, "seed": 999, "show_progress": False, "state": "WARNING"}


# ---- inputs ---------------------------------------------------------------------------------------
def generate_baby(root: Path, repo: Path = REPO, seed: int = 0) -> Path:
    """``root/amazon-baby/``: the shipped Baby interactions plus generated, seeded random features of
    MMRec's shapes (image 7050x4096 float64, non-negative like CNN activations; text 7050x384 float32).
    Returns the data root (``data_path``). Kept when already there with the right shapes."""
    import numpy as np

    folder = root / "amazon-baby"
    folder.mkdir(parents=True, exist_ok=True)
    inter = folder / "baby.inter"
    if not inter.exists():
        shutil.copyfile(repo / "dataset" / "amazon-baby" / "baby.inter", inter)
    (folder / "GENERATED.txt").write_text(
        "Features in this folder are random (numpy seed %d), generated by benchmarks/speed.py with the\n"
        "shapes of MMRec's Baby files. They measure cost, not accuracy.\n" % seed)
    rng = np.random.default_rng(seed)
    for name, (dim, dtype) in BABY_FEATURES.items():
        path = folder / f"{name}_feat.npy"
        if path.exists():
            existing = np.load(path, mmap_mode="r")
            if existing.shape == (BABY_ITEMS, dim) and existing.dtype == np.dtype(dtype):
                continue
        values = rng.standard_normal((BABY_ITEMS, dim))
        if name == "image":
            values = np.abs(values)
        np.save(path, values.astype(dtype))
    return root


# Per-dataset model settings the shipped dataset configs do not give: MM-GEF's paper fusion (mean)
# needs modalities of equal width, which Baby's 4096-d and 384-d are not.
MODEL_SETTINGS = {("baby", "MMGEF"): {"fusion": "concat"}}


def dataset_request(dataset: str, generated: Path) -> tuple[str, dict]:
    """(RecBole dataset name, extra config) of a benchmark dataset."""
    if dataset == "tiktok":
        return "tiktok", {}
    if dataset == "baby":
        return "amazon-baby", {"data_path": str(generated)}
    raise SystemExit(f"--datasets: unknown dataset {dataset!r}; choose from {', '.join(DATASETS)}")


# ---- checkouts --------------------------------------------------------------------------------------
def git_state(repo: Path) -> dict:
    """The commit, subject and dirty flag (tracked files modified) of a checkout."""
    def git(*args: str) -> str:
        try:
            out = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, check=False)
        except OSError:  # no git on this machine (a copied tree on a GPU host): "unknown"
            return ""
        return out.stdout.strip() if out.returncode == 0 else ""

    commit = git("rev-parse", "HEAD")
    return {"path": str(repo), "commit": commit or "unknown", "subject": git("log", "-1", "--format=%s"),
            "dirty": bool(git("status", "--porcelain", "--untracked-files=no")) if commit else None}


@contextlib.contextmanager
def checkout(spec: str):
    """A checkout for ``spec``: an existing folder as is, else a git revision of this repository
    checked out (detached) into a temporary worktree that is removed afterwards."""
    if Path(spec).is_dir():
        yield Path(spec).resolve()
        return
    tmp = Path(tempfile.mkdtemp(prefix="speed-checkout-"))
    path = tmp / "repo"
    out = subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", str(path), spec],
                         capture_output=True, text=True, check=False)
    if out.returncode != 0:
        shutil.rmtree(tmp, ignore_errors=True)
        raise SystemExit(f"--against {spec}: neither a folder nor a revision git can check out: {out.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(path)], check=False,
                       capture_output=True)
        shutil.rmtree(tmp, ignore_errors=True)


# ---- one cell ---------------------------------------------------------------------------------------
def thread_count(threads: str) -> int:
    """``all`` → every core; otherwise the number."""
    return len(os.sched_getaffinity(0)) if threads == "all" else int(threads)


def pythonpath(repo: Path) -> str:
    """``repo`` first, then an outer PYTHONPATH (packages installed with --target, as on a machine whose
    site-packages cannot be written), never ahead of the checkout's recbole_mm."""
    outer = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    return os.pathsep.join([str(repo), *outer])


def cell_command(request: dict, repo: Path) -> tuple[list[str], dict]:
    """The command line and environment of one cell: this script's ``--cell`` mode, importing
    ``recbole_mm`` from ``repo``, threads pinned."""
    n = request["threads"]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(PYTHONPATH=pythonpath(repo), OMP_NUM_THREADS=str(n), MKL_NUM_THREADS=str(n),
               OPENBLAS_NUM_THREADS=str(n))
    command = [sys.executable, str(HERE), "--cell", json.dumps(request)]
    if n == 1 and shutil.which("taskset"):
        command = ["taskset", "-c", str(sorted(os.sched_getaffinity(0))[0]), *command]
    return command, env


def run_cell_process(request: dict, repo: Path) -> dict:
    """Run one cell in a fresh process (cwd: a temporary folder for RecBole's log/ and saved/)."""
    command, env = cell_command(request, repo)
    with tempfile.TemporaryDirectory(prefix="speed-cell-") as cwd:
        out = subprocess.run(command, capture_output=True, text=True, cwd=cwd, env=env, check=False)
    if out.returncode != 0:
        lines = [line for line in out.stderr.strip().splitlines() if line.strip()]
        return {**request, "failed": lines[-1] if lines else f"exit status {out.returncode}"}
    return json.loads(out.stdout.strip().splitlines()[-1])


def cell_main(request: dict) -> dict:
    """Inside the cell's process: train and evaluate with recbole_mm's quick start; plain-data result."""
    import resource

    import torch

    torch.set_num_threads(request["threads"])
    import recbole_mm
    from recbole_mm.trainer import Trainer, median_epoch_seconds

    # CPU seconds of this process per epoch and per validation pass next to the trainer's wall seconds:
    # on a machine shared with other work, a one-thread cell's CPU time is what it would take alone.
    cpu: dict[str, list[float]] = {"train": [], "valid": []}

    def timed(name: str, method):
        def wrapper(self, *args, **kwargs):
            start = time.process_time()
            try:
                return method(self, *args, **kwargs)
            finally:
                cpu[name].append(time.process_time() - start)
        return wrapper

    Trainer._train_epoch = timed("train", Trainer._train_epoch)
    Trainer._valid_epoch = timed("valid", Trainer._valid_epoch)
    config = {**CELL_CONFIG, "epochs": request["epochs"], **request.get("config", {})}
    result = recbole_mm.run_recbole(model=request["model"], dataset=request["dataset"], config_dict=config,
                                    saved=bool(request.get("saved", False)))
    history = result["history"]
    train, valid = median_epoch_seconds(history)
    device = result["config"]["device"]
    cell = {
        **request,
        "recbole_mm": str(Path(recbole_mm.__file__).resolve().parent.parent),
        "torch_threads": torch.get_num_threads(),
        "device": str(device),
        "train_seconds": train,
        "eval_seconds": valid,
        "train_seconds_all": [h["train_seconds"] for h in history],
        "eval_seconds_all": [h.get("valid_seconds") for h in history],
        "train_cpu_seconds": statistics.median(cpu["train"]) if cpu["train"] else None,
        "eval_cpu_seconds": statistics.median(cpu["valid"]) if cpu["valid"] else None,
        "train_loss": [h["train_loss"] for h in history],
        "valid_score": [h.get("valid_score") for h in history],
        "best_epoch": result["best_epoch"],
        "test": {k: float(v) for k, v in (result["test_result"] or {}).items()},
        "checkpoint": result["saved_model_file"],
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,  # Linux: KiB
    }
    if getattr(device, "type", str(device)) == "cuda":
        cell["device_name"] = torch.cuda.get_device_name(device)
        cell["peak_cuda_mib"] = torch.cuda.max_memory_allocated(device) / 2**20
    return cell


def mmrec_cell_command(request: dict, src: Path, python: str) -> tuple[list[str], dict]:
    """Command line and environment of one MMRec cell: this script's ``--mmrec-cell`` mode under ``python``."""
    n = request["threads"]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(OMP_NUM_THREADS=str(n), MKL_NUM_THREADS=str(n), OPENBLAS_NUM_THREADS=str(n))
    command = [python, str(HERE), "--mmrec-cell", json.dumps({**request, "mmrec_src": str(src)})]
    if n == 1 and shutil.which("taskset"):
        command = ["taskset", "-c", str(sorted(os.sched_getaffinity(0))[0]), *command]
    return command, env


def mmrec_cell_main(request: dict) -> dict:
    """Inside an MMRec cell's process: train MMRec's implementation with its own quick start, timing its
    trainer's epochs and validation passes in CPU seconds (as :func:`cell_main` times ours)."""
    import resource

    reference = _load_reference()
    import torch

    torch.set_num_threads(request["threads"])
    work = reference.prepare(request["mmrec_src"], request["model"])
    import utils.quick_start as mmrec_quick_start
    from common.trainer import Trainer as MMRecTrainer

    record: dict[str, list] = {"train": [], "valid": [], "pre": [], "loss": [], "score": [], "wall": [],
                               "valid_wall": []}
    original_train, original_valid = MMRecTrainer._train_epoch, MMRecTrainer._valid_epoch

    def train_epoch(self, *args, **kwargs):
        start, wall = time.process_time(), time.perf_counter()
        out = original_train(self, *args, **kwargs)
        record["train"].append(time.process_time() - start)
        record["wall"].append(time.perf_counter() - wall)
        loss = out[0]
        record["loss"].append(float(sum(loss) if isinstance(loss, tuple) else loss))
        return out

    calls = []

    def valid_epoch(self, *args, **kwargs):
        start, wall = time.process_time(), time.perf_counter()
        out = original_valid(self, *args, **kwargs)
        calls.append(None)
        if len(calls) % 2 == 1:  # after each epoch: validation, then the test split
            record["valid"].append(time.process_time() - start)
            record["valid_wall"].append(time.perf_counter() - wall)
            record["score"].append(float(out[0]))
        return out

    MMRecTrainer._train_epoch, MMRecTrainer._valid_epoch = train_epoch, valid_epoch
    original_get_model = mmrec_quick_start.get_model

    def get_model(name):
        cls = original_get_model(name)
        pre = cls.pre_epoch_processing

        def timed_pre(self, *args, **kwargs):
            start = time.process_time()
            try:
                return pre(self, *args, **kwargs)
            finally:
                record["pre"].append(time.process_time() - start)

        cls.pre_epoch_processing = timed_pre
        return cls

    mmrec_quick_start.get_model = get_model
    config = reference.grid_point(work, request["model"], {"epochs": request["epochs"], "eval_step": 1,
                                                           "stopping_step": 10**6})
    mmrec_quick_start.quick_start(model=request["model"], dataset="tiktok", config_dict=config, save_model=False)
    shutil.rmtree(work, ignore_errors=True)
    pre = record["pre"] + [0.0] * (len(record["train"]) - len(record["pre"]))
    train_cpu = [t + p for t, p in zip(record["train"], pre)]
    scores = record["score"]
    return {
        **request,
        "recbole_mm": None,
        "torch_threads": torch.get_num_threads(),
        "device": "cpu",
        "train_seconds": statistics.median(record["wall"]) if record["wall"] else None,
        "eval_seconds": statistics.median(record["valid_wall"]) if record["valid_wall"] else None,
        "train_seconds_all": record["wall"],
        "eval_seconds_all": record["valid_wall"],
        "train_cpu_seconds": statistics.median(train_cpu) if train_cpu else None,
        "eval_cpu_seconds": statistics.median(record["valid"]) if record["valid"] else None,
        "train_loss": record["loss"],
        "valid_score": scores,
        "best_epoch": scores.index(max(scores)) if scores else None,
        "test": {},
        "checkpoint": None,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def run_mmrec_cell_process(request: dict, src: Path, python: str) -> dict:
    """Run one MMRec cell in a fresh process."""
    command, env = mmrec_cell_command(request, src, python)
    with tempfile.TemporaryDirectory(prefix="speed-mmrec-") as cwd:
        out = subprocess.run(command, capture_output=True, text=True, cwd=cwd, env=env, check=False)
    if out.returncode != 0:
        lines = [line for line in out.stderr.strip().splitlines() if line.strip()]
        return {**request, "failed": lines[-1] if lines else f"exit status {out.returncode}"}
    return json.loads(out.stdout.strip().splitlines()[-1])


# ---- report -----------------------------------------------------------------------------------------
def cell_id(cell: dict) -> tuple:
    return (cell["bench_dataset"], cell["model"], cell["threads"])


def _num(value, digits: int = 2) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def _diff(value: float | None) -> str:
    return "—" if value is None else f"{value:.1e}"


def max_relative_difference(a: list, b: list) -> float | None:
    """Largest |a_i - b_i| / |b_i| over the epochs both have; None when there is nothing to compare."""
    pairs = [(x, y) for x, y in zip(a, b) if x is not None and y is not None]
    if not pairs:
        return None
    return max(abs(x - y) / max(abs(y), 1e-12) for x, y in pairs)


def _ratio(new: float | None, old: float | None) -> float | None:
    return new / old if new is not None and old else None


def ratios(after: list[dict], before: list[dict]) -> list[dict]:
    """Per cell present (and not failed) in both: after/before of epoch and eval seconds and peak RSS,
    and the largest relative difference of training losses and validation scores."""
    old = {cell_id(c): c for c in before if "failed" not in c}
    rows = []
    for new in after:
        key = cell_id(new)
        if "failed" in new or key not in old:
            continue
        ref = old[key]
        rows.append({
            "id": key,
            "epoch": _ratio(new["train_seconds"], ref["train_seconds"]),
            "eval": _ratio(new["eval_seconds"], ref["eval_seconds"]),
            "epoch_cpu": _ratio(new.get("train_cpu_seconds"), ref.get("train_cpu_seconds")),
            "eval_cpu": _ratio(new.get("eval_cpu_seconds"), ref.get("eval_cpu_seconds")),
            "rss": new["peak_rss_mib"] / ref["peak_rss_mib"],
            "loss_diff": max_relative_difference(new["train_loss"], ref["train_loss"]),
            "best_epochs": (new.get("best_epoch"), ref.get("best_epoch")),
            "valid_diff": max_relative_difference(new["valid_score"], ref["valid_score"]),
            "before": ref, "after": new,
        })
    return rows


def mmrec_rows(ours: list[dict], mmrec: list[dict]) -> list[dict]:
    """One row per cell of MMRec's that ours also ran, in ``MMREC_MODELS`` order (then dataset, threads): each
    side's CPU seconds per training epoch and per validation pass and peak RSS with their ratio ours / MMRec's,
    the relative difference of the first epoch's training loss (the two draw different initial weights and
    batches, so later epochs drift apart even for the same function) and the best epochs; a failed side is
    named in ``failed``."""
    mine = {cell_id(cell): cell for cell in ours}
    order = {model: i for i, model in enumerate(MMREC_MODELS)}
    rows = []
    for ref in sorted(mmrec, key=lambda c: (order.get(c["model"], len(order)), c["bench_dataset"], c["threads"])):
        new = mine.get(cell_id(ref))
        if new is None:
            continue
        row = {"id": cell_id(ref), "ours": new, "mmrec": ref}
        failed = [f"{side} failed: {cell['failed']}" for side, cell in (("ours", new), ("MMRec", ref))
                  if "failed" in cell]
        if failed:
            rows.append({**row, "failed": "; ".join(failed)})
            continue
        for key, field in (("epoch_cpu", "train_cpu_seconds"), ("eval_cpu", "eval_cpu_seconds"),
                           ("rss", "peak_rss_mib")):
            row[key] = (new.get(field), ref.get(field), _ratio(new.get(field), ref.get(field)))
        row["first_loss_diff"] = max_relative_difference(new["train_loss"][:1], ref["train_loss"][:1])
        row["best_epochs"] = (new.get("best_epoch"), ref.get("best_epoch"))
        rows.append(row)
    return rows


def mmrec_pairs(runs: list[dict]) -> list[tuple[dict, dict]]:
    """(recbole_mm run, MMRec run) pairs for the ours / MMRec table: every measured (not ``--against``) checkout
    against every MMRec run it shares cells with."""
    refs = [run for run in runs if run.get("mmrec")]
    return [(run, ref) for run in runs if not run.get("against") and not run.get("mmrec") for ref in refs
            if mmrec_rows(run["cells"], ref["cells"])]


def format_mmrec_table(run: dict, ref: dict, on: str = "") -> list[str]:
    """Markdown lines of the ours / MMRec table of ``run`` against ``ref`` (:func:`mmrec_rows`)."""
    lines = [f"## Ours ({run['checkout']['commit'][:12]}) / MMRec's own implementation{on}", "",
             "CPU seconds (one-thread cells: the cost without the machine's other work): ours, MMRec's and the ratio "
             "ours / MMRec's (below 1 = ours cheaper). MMRec's epoch is its `_train_epoch` plus its "
             "`pre_epoch_processing`; its validation pass the first `_valid_epoch` after the epoch. Peak RSS: the "
             "whole cell process (MMRec's includes the user/item graph files scripts/run_mmrec_reference.py writes "
             "for DualGNN, DRAGON and DAMRS). Loss diff: relative difference of the first epoch's training loss "
             "(each side draws its own initial weights, batches and negatives, and MMRec draws negatives among "
             "training items only, docs/mmrec-protocol.md: a few percent does not mean another function; VBPR's "
             "differs, ours normalises features, `feature_norm: l2`). Best epochs: of the validation score, "
             "ours / MMRec's "
             "(0-based). MMRec's settings: `TIKTOK_SETTINGS` in scripts/run_mmrec_reference.py.", "",
             "| model | threads | CPU s/epoch ours | MMRec | ratio | CPU s/valid ours | MMRec | ratio "
             "| peak RSS MiB ours | MMRec | ratio | epoch-1 loss diff | best epochs |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for row in mmrec_rows(run["cells"], ref["cells"]):
        dataset, model, threads = row["id"]
        name = model if dataset == "tiktok" else f"{model} ({dataset})"
        if "failed" in row:
            lines.append(f"| {name} | {threads} | {row['failed']} | | | | | | | | | | |")
            continue
        cells = []
        for key, digits in (("epoch_cpu", 2), ("eval_cpu", 3), ("rss", 0)):
            mine, theirs, ratio = row[key]
            cells += [_num(mine, digits), _num(theirs, digits), _num(ratio)]
        best = row["best_epochs"]
        lines.append(f"| {name} | {threads} | {' | '.join(cells)} | {_diff(row['first_loss_diff'])} | "
                     f"{best[0]} / {best[1]} |")
    return lines + [""]


def _checkout_line(run: dict) -> str:
    state = run["checkout"]
    dirty = " (dirty: uncommitted changes to tracked files)" if state.get("dirty") else ""
    return f"`{state['commit'][:12]}`{dirty} — {state.get('subject', '')}"


def format_report(runs: list[dict], command: str, note: str = "") -> str:
    """Markdown: one table per checkout, then (with two or more) the ratio table first vs each other."""
    lines = ["# Speed: seconds per training epoch and per evaluation pass, peak memory", "",
             f"Made by `{command}`", ""]
    # One line per machine: a report merged from several files may come from more than one.
    machines: dict[tuple, list[str]] = {}
    for run in runs:
        meta = run.get("machine", {})
        if meta:
            key = tuple(meta.get(k, "?") for k in ("cpu", "cores", "python", "torch"))
            machines.setdefault(key, []).append(f"{run['checkout']['commit'][:12]} run {meta.get('date', '?')}")
    for (cpu, cores, python, torch_version), which in machines.items():
        runs_on = "; ".join(which) if len(machines) > 1 else which[0].split(" run ", 1)[1]
        lines += [f"Machine: {cpu}, {cores} cores, Python {python}, torch {torch_version}; "
                  f"{runs_on if len(machines) > 1 else 'run ' + runs_on}.", ""]
    if note:
        lines += [note, ""]
    lines += ["s/epoch and s/eval: medians over the cell's epochs (recbole_mm's trainer history; the evaluation "
              "is the full-sort validation pass after each epoch); CPU s: the process's CPU time over the same spans "
              "(a one-thread cell's cost without the other work on a shared machine). Peak RSS: the whole cell process "
              "(one process per cell: data loading, model, training, evaluation, test). `baby` = the shipped "
              "Amazon-Baby interactions with **generated** 4096-d/384-d features (cost only, not accuracy).", ""]
    for run in runs:
        on = f" (on {run.get('machine', {}).get('cpu', '?')})" if len(machines) > 1 else ""
        lines += [f"## {_checkout_line(run)}{on}", "",
                  "| dataset | model | threads | s/epoch | s/eval | CPU s/epoch | CPU s/eval | peak RSS MiB | epochs "
                  "| epoch-1 loss |",
                  "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for cell in run["cells"]:
            if "failed" in cell:
                lines.append(f"| {cell['bench_dataset']} | {cell['model']} | {cell['threads']} | failed: "
                             f"{cell['failed']} | | | | | | |")
                continue
            loss = cell["train_loss"][0] if cell["train_loss"] else None
            lines.append(f"| {cell['bench_dataset']} | {cell['model']} | {cell['threads']} | "
                         f"{_num(cell['train_seconds'])} | {_num(cell['eval_seconds'], 3)} | "
                         f"{_num(cell.get('train_cpu_seconds'))} | {_num(cell.get('eval_cpu_seconds'), 3)} | "
                         f"{_num(cell['peak_rss_mib'], 0)} | {len(cell['train_loss'])} | {_num(loss, 4)} |")
        lines.append("")
    for run, other in ratio_pairs(runs):
        rows = ratios(run["cells"], other["cells"])
        on = f" (on {run.get('machine', {}).get('cpu', '?')})" if len(machines) > 1 else ""
        lines += [f"## Ratios: {run['checkout']['commit'][:12]} / {other['checkout']['commit'][:12]}{on}", "",
                  "Below 1 = faster / smaller now. Loss and valid diff: largest relative difference over the "
                  "epochs of the per-epoch training loss and validation score (same function ⇒ ~0); best epochs: "
                  "the epoch of the best validation score, this run / the other (0-based).", "",
                  "| dataset | model | threads | epoch | eval | CPU epoch | CPU eval | peak RSS | loss diff | valid diff "
                  "| best epochs |",
                  "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for row in rows:
            dataset, model, threads = row["id"]
            best = row.get("best_epochs", (None, None))
            lines.append(f"| {dataset} | {model} | {threads} | {_num(row['epoch'])} | {_num(row['eval'])} | "
                         f"{_num(row['epoch_cpu'])} | {_num(row['eval_cpu'])} | {_num(row['rss'])} | "
                         f"{_diff(row['loss_diff'])} | {_diff(row['valid_diff'])} | {best[0]} / {best[1]} |")
        lines.append("")
    for run, ref in mmrec_pairs(runs):
        on = f" (on {run.get('machine', {}).get('cpu', '?')})" if len(machines) > 1 else ""
        lines += format_mmrec_table(run, ref, on)
    return "\n".join(lines)


def loss_check(runs: list[dict], rtol: float) -> tuple[list[str], bool]:
    """Lines of the before/after check (every ratio pair of recbole_mm checkouts, MMRec's cells left out)
    and whether every model kept its losses within ``rtol`` and its best epoch."""
    lines, ok = [], True
    for run, other in ratio_pairs(runs):
        if run.get("mmrec") or other.get("mmrec"):
            continue
        for row in ratios(run["cells"], other["cells"]):
            dataset, model, threads = row["id"]
            after, before = row["best_epochs"]
            passed = row["loss_diff"] is not None and row["loss_diff"] <= rtol and after == before
            ok &= passed
            losses = ", ".join(f"{a!r}/{b!r}" for a, b in zip(row["after"]["train_loss"], row["before"]["train_loss"]))
            lines.append(f"{'PASS' if passed else 'FAIL'} {dataset} {model} {threads} thread(s): loss diff "
                         f"{_diff(row['loss_diff'])} (rtol {rtol:g}), best epoch {after} / {before}; "
                         f"losses {run['checkout']['commit'][:7]}/{other['checkout']['commit'][:7]}: {losses}")
    return lines, ok


def ratio_pairs(runs: list[dict]) -> list[tuple[dict, dict]]:
    """(measured, baseline) pairs for the ratio tables: every ``--repo`` run against every ``--against``
    run it shares cells with (runs without the mark: the first against the others)."""
    runs = [run for run in runs if not run.get("mmrec")]  # MMRec's cells have their own table (mmrec_pairs)
    if not any("against" in run for run in runs):
        return [(runs[0], other) for other in runs[1:]]
    bases = [run for run in runs if run.get("against")]
    pairs = [(run, base) for run in runs if not run.get("against") for base in bases]
    return [(run, base) for run, base in pairs if ratios(run["cells"], base["cells"])]


def merge_runs(runs: list[dict]) -> list[dict]:
    """Runs of the same checkout (commit and dirty flag) on the same machine from several files as one,
    in first-seen order; a checkout that was an ``--against`` baseline in any file stays one. Runs on
    different machines stay apart (their seconds are not comparable)."""
    merged: dict[tuple, dict] = {}
    for run in runs:
        key = (run["checkout"]["commit"], run["checkout"].get("dirty"), run.get("machine", {}).get("cpu"))
        if key in merged:
            merged[key]["cells"] = merged[key]["cells"] + run["cells"]
            merged[key]["against"] = merged[key]["against"] or run["against"]
        else:
            merged[key] = {**run, "cells": list(run["cells"])}
    return list(merged.values())


def machine() -> dict:
    import torch

    cpu = platform.processor() or "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__,
            "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}


# ---- driver -----------------------------------------------------------------------------------------
def plan_cells(args: argparse.Namespace, generated: Path) -> list[dict]:
    """The cells to run, in order; ``mmrec`` among ``--models`` stands for every model of ``MMREC_MODELS``."""
    models = list(dict.fromkeys(m for name in args.models for m in (MMREC_MODELS if name == "mmrec" else [name])))
    cells = []
    for dataset in args.datasets:
        name, extra = dataset_request(dataset, generated)
        for threads in args.threads:  # every model at one thread count before the next count
            for model in models:
                config = {**extra, **MODEL_SETTINGS.get((dataset, model), {})}
                cells.append({"bench_dataset": dataset, "dataset": name, "model": model,
                              "threads": thread_count(threads), "epochs": args.epochs, "config": config})
    return cells


def run_all(args: argparse.Namespace, save=None) -> list[dict]:
    """Every cell on every checkout, alternating checkouts cell by cell (back to back); ``save(runs)``
    after each cell, so an interrupted run keeps what it measured."""
    generated = Path(args.generated).resolve()
    if "baby" in args.datasets:
        generate_baby(generated)
    with contextlib.ExitStack() as stack:
        first = REPO if args.repo is None else stack.enter_context(checkout(args.repo))
        repos = [first] + [stack.enter_context(checkout(spec)) for spec in args.against]
        runs = [{"checkout": git_state(repo), "machine": machine(), "cells": [], "against": i > 0}
                for i, repo in enumerate(repos)]
        mmrec = Path(args.mmrec).resolve() if args.mmrec else None
        if mmrec is not None:
            repos.append(mmrec)
            runs.append({"checkout": {"path": str(mmrec), "commit": "MMRec", "dirty": None,
                                      "subject": f"MMRec's own implementation ({mmrec}, run by {args.mmrec_python})"},
                         "machine": machine(), "cells": [], "against": True, "mmrec": True})
        for cell in plan_cells(args, generated):
            for repo, run in zip(repos, runs):
                if run.get("mmrec") and (cell["model"] not in MMREC_MODELS or cell["bench_dataset"] != "tiktok"):
                    continue
                print(f"{run['checkout']['commit'][:12]} {cell['bench_dataset']} {cell['model']} "
                      f"{cell['threads']} thread(s)", flush=True)
                result = (run_mmrec_cell_process(cell, repo, args.mmrec_python) if run.get("mmrec")
                          else run_cell_process(cell, repo))
                run["cells"].append(result)
                if save:
                    save(runs)
                print("  " + (f"failed: {result['failed']}" if "failed" in result else
                              f"{result['train_seconds']:.2f} s/epoch, {result['eval_seconds']:.3f} s/eval, "
                              f"{result['peak_rss_mib']:.0f} MiB"), flush=True)
    return runs


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=MODELS,
                        help="model names; 'mmrec': every model MMRec has (MMREC_MODELS)")
    parser.add_argument("--datasets", nargs="+", default=["tiktok"], choices=DATASETS)
    parser.add_argument("--threads", nargs="+", default=["1", "all"], help="thread counts, or 'all'")
    parser.add_argument("--epochs", type=int, default=3, help="epochs per cell (each followed by validation)")
    parser.add_argument("--repo", metavar="REV_OR_PATH",
                        help="the checkout to time first (default: this one, as it is on disk)")
    parser.add_argument("--against", action="append", default=[], metavar="REV_OR_PATH",
                        help="another checkout to time back to back (a folder or a git revision)")
    parser.add_argument("--generated", default=str(REPO / "benchmarks" / "generated"),
                        help="folder for the generated Baby-shaped features")
    parser.add_argument("--out", default=str(REPO / "results" / "speed.md"))
    parser.add_argument("--json", help="where to keep the raw cells (default: --out with .json)")
    parser.add_argument("--note", default="", help="a line for the report, e.g. what else ran on the machine")
    parser.add_argument("--report", nargs="+", metavar="JSON", help="only rewrite --out from saved cells")
    parser.add_argument("--mmrec", metavar="SRC", help="also time MMRec's implementation from this src folder")
    parser.add_argument("--mmrec-python", default=sys.executable,
                        help="the Python that runs MMRec's cells (its torch and torch_geometric)")
    parser.add_argument("--check", type=float, metavar="RTOL",
                        help="print the before/after loss check; exit 1 when a model's losses differ by more "
                             "than RTOL or its best epoch moved")
    parser.add_argument("--cell", help=argparse.SUPPRESS)  # internal: one cell, its JSON on stdout
    parser.add_argument("--mmrec-cell", help=argparse.SUPPRESS)  # internal: one MMRec cell
    args = parser.parse_args(argv)
    if args.cell:
        print(json.dumps(cell_main(json.loads(args.cell)), default=str))
        return
    if args.mmrec_cell:
        print(json.dumps(mmrec_cell_main(json.loads(args.mmrec_cell)), default=str))
        return
    # A terminated run still removes the temporary worktrees it made (their finally blocks run).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    command = "python benchmarks/speed.py " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
    if args.report:
        saved = [json.loads(Path(path).read_text()) for path in args.report]
        # Files written before runs were marked: their first run was --repo, the others --against.
        runs = merge_runs([{**run, "against": run.get("against", i > 0)}
                           for data in saved for i, run in enumerate(data["runs"])])
        commands = list(dict.fromkeys(data.get("command", command) for data in saved))
        command = "`; then `".join(commands)
        note = args.note or " ".join(dict.fromkeys(data.get("note", "") for data in saved))
    else:
        note = args.note
        json_path = Path(args.json or Path(args.out).with_suffix(".json"))
        json_path.parent.mkdir(parents=True, exist_ok=True)

        def save(runs: list[dict]) -> None:
            json_path.write_text(json.dumps({"command": command, "note": note, "runs": runs}, indent=1,
                                            default=str) + "\n")

        runs = run_all(args, save)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(format_report(runs, command, note) + "\n")
    print(f"wrote {out}")
    if args.check is not None:
        lines, ok = loss_check(runs, args.check)
        print("\n".join(lines))
        if not ok:
            sys.exit(1)


if __name__ == "__main__":
    main()

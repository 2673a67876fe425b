"""Electronics-sized training on one machine: load, graph-build, training and evaluation cost per model.

    python benchmarks/make_shaped.py /tmp/elec --shape electronics      # the GENERATED data set (~27 s, 2.2 GB)
    python benchmarks/electronics.py --data-path /tmp/elec             # every model, one after another

On the GENERATED Electronics-shaped set of ``benchmarks/make_shaped.py`` (192,403 users, 63,001 items,
1.69 M interactions, 4096-d float64 image + 384-d float32 text features; random, so cost only), each
model runs in ONE fresh process (``--cell``), one model after another, and measures with recbole_mm's own
pieces (``recbole_mm.quick_start``: config, dataset, data loaders, trainer):

- *load*: config, the MMRec-layout interactions and feature files, RecBole's data loaders;
- *build*: the model's construction (``Model(config, dataset)``): kNN item graphs, co-occurrence and
  user-item graphs, parameter tables;
- *first batch*: the trainer's own ``_train_epoch`` over one batch (one-off costs: optimizer state,
  first allocations);
- *s/batch*: then ``_train_epoch`` over the first ``--batches`` training batches of a new pass (negative
  sampling, forward, backward, optimizer step), divided by their number; the *epoch* column is the first batch plus that
  times the loader's remaining batches per epoch: **extrapolated, not measured**;
- *eval*: one full-sort evaluation pass over the validation users (``trainer.evaluate``: RecBole's
  evaluator, MMRec's metrics and 4096-user eval batches);
- *peak RSS*: the whole process's peak resident memory (``ru_maxrss``), also read after each phase
  (it only grows, so the phase where it jumps is where the peak is).

Wall and CPU (process user+sys) seconds are both kept: on a shared machine a one-thread process's CPU
time is what it would take alone. Threads: ``--threads`` (default 1) for OpenMP/MKL and torch.
A model that fails (out of memory, an error) is recorded with the reason, not dropped.

Cells accumulate in ``results/scale-electronics.json`` (latest per model wins) and are written into
``results/scale.md`` between this script's markers only; other sections are left as they are.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator

import yaml

HERE = Path(__file__).resolve()
REPO = HERE.parent.parent
sys.path.insert(0, str(HERE.parent))  # the sibling benchmark scripts, whose helpers are reused

import make_shaped  # noqa: E402
import scale  # noqa: E402
import speed  # noqa: E402

BEGIN = "<!-- electronics.py: Electronics-shaped training (begin) -->"
END = "<!-- electronics.py: Electronics-shaped training (end) -->"
# The MMRec protocol as the shipped Amazon config states it; the data-set specific keys are replaced.
PROTOCOL_SOURCE = REPO / "dataset_configs" / "amazon-baby.yaml"
_AMAZON_OVERRIDES = yaml.safe_load(PROTOCOL_SOURCE.read_text())["model_overrides"]
# label → (model, config). GUME: the Electronics row of the authors' per-dataset values (docs/gume.md
# §2.7). MM-GEF: its paper's mean fusion needs modalities of equal width (4096 ≠ 384), as on Baby.
CELLS = {
    "GUME": ("GUME", {"n_layers": 1, "bm_temp": 0.2, "um_loss": 0.1, "um_temp": 0.2, "vt_loss": 0.1}),
    "GUME freeze_features": ("GUME", {"n_layers": 1, "bm_temp": 0.2, "um_loss": 0.1, "um_temp": 0.2, "vt_loss": 0.1,
                                      "freeze_features": True}),
    "MMGEF": ("MMGEF", {**speed.MODEL_SETTINGS[("baby", "MMGEF")]}),
    "VBPR": ("VBPR", {}),
    "LightGCN": ("LightGCN", {}),
    # The other models with the shipped Amazon config's values for them (amazon-baby.yaml's model_overrides: the
    # authors' Amazon settings, BM3's and SLMRec's training without sampled negatives), else their defaults.
    **{model: (model, _AMAZON_OVERRIDES.get(model, {})) for model in (
        "BM3", "LayerGCN", "SLMRec", "MMGCN", "GRCN", "DualGNN", "FREEDOM", "MGCN", "PGL", "SMORE", "LGMRec",
        "LATTICE", "DRAGON", "DAMRS", "MENTOR", "DiffMM")},
}
DATASET_SPECIFIC = ("inter_file_name", "feature_source", "model_overrides", "eval_batch_size")
EVAL_USERS_PER_BATCH = 4096  # MMRec's full-sort eval batch; RecBole counts it in scores (users × items)


def dataset_config(data_path: Path, name: str = make_shaped.ELECTRONICS_NAME) -> dict:
    """The run's data-set config: the shipped Amazon protocol keys, this folder, MMRec's eval batch."""
    import numpy as np

    protocol = yaml.safe_load(PROTOCOL_SOURCE.read_text())
    config = {k: v for k, v in protocol.items() if k not in DATASET_SPECIFIC}
    n_items = np.load(data_path / name / protocol["modalities"]["image"], mmap_mode="r").shape[0]
    config.update(data_path=str(data_path), eval_batch_size=EVAL_USERS_PER_BATCH * (n_items + 1),
                  show_progress=False, state="WARNING")
    return config


class FirstBatches:
    """The first ``n`` batches of a RecBole training loader (what the trainer's epoch loop iterates)."""

    def __init__(self, loader, n: int):
        self.loader, self.n, self.shuffle = loader, n, getattr(loader, "shuffle", False)

    def __iter__(self):
        for index, batch in enumerate(self.loader):
            if index >= self.n:
                return
            yield batch

    def __len__(self) -> int:
        return min(self.n, len(self.loader))


# ---- one cell (its own process) --------------------------------------------------------------------
def cell_phases(model_name: str, config_dict: dict, batches: int, evaluate: bool = True,
                dataset: str = make_shaped.ELECTRONICS_NAME) -> Iterator[tuple[str, dict]]:
    """The steps of one cell, in this process, yielding ``(phase, state)`` after each of dataset, features,
    loaders, build, first_batch, train and eval (``eval`` only with ``evaluate``), so that a caller measures what
    it needs between them (this script: seconds and peak after load, build, first batch, train, eval;
    ``memory_phases.py``: resident memory after each).
    ``state`` holds what exists so far: config, dataset, train_data, valid_data, model, trainer, batches (the
    timed ``FirstBatches``), loss, result."""
    from recbole.utils import get_model, init_logger, init_seed

    from recbole_mm.quick_start import create_dataset, make_config, make_trainer, needs_item_features, prepare_data

    state: dict = {"config": make_config(model_name, dataset, config_dict=config_dict)}
    config = state["config"]
    init_seed(config["seed"], config["reproducibility"])
    state["dataset"] = create_dataset(config)
    yield "dataset", state
    if needs_item_features(config):
        _ = state["dataset"].item_features  # read and check the feature files now (as run_recbole does)
    yield "features", state
    init_logger(config)
    state["train_data"], state["valid_data"], _ = prepare_data(config, state["dataset"])
    yield "loaders", state

    init_seed(config["seed"], config["reproducibility"])
    state["model"] = get_model(config["model"])(config, state["train_data"]._dataset).to(config["device"])
    yield "build", state

    trainer = state["trainer"] = make_trainer(config, state["model"])
    # One batch first, timed on its own: it pays one-off costs (optimizer state, first allocations)
    # that an epoch of hundreds of batches pays once, and would inflate a per-batch mean over few.
    trainer._train_epoch(FirstBatches(state["train_data"], 1), 0, show_progress=False)
    yield "first_batch", state
    state["batches"] = FirstBatches(state["train_data"], batches)
    state["loss"] = trainer._train_epoch(state["batches"], 1, show_progress=False)
    yield "train", state
    if evaluate:
        state["result"] = trainer.evaluate(state["valid_data"], load_best_model=False, show_progress=False)
        yield "eval", state


def cell_main(request: dict) -> dict:
    """Inside the cell's process: load, build, train ``batches`` batches, evaluate once; plain data."""
    import resource

    import torch

    torch.set_num_threads(request["threads"])
    phases: dict[str, dict] = {}
    mark = [time.perf_counter(), time.process_time()]
    state: dict = {}
    for name, state in cell_phases(request["model"], request["config"], request["batches"],
                                   request.get("evaluate", True), request["dataset"]):
        if name in ("dataset", "features"):
            continue  # timed with the loaders, as "load"
        wall, cpu = time.perf_counter(), time.process_time()
        phases["load" if name == "loaders" else name] = {
            "wall": wall - mark[0], "cpu": cpu - mark[1],
            "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}  # KiB
        mark[:] = [wall, cpu]
    dataset, model, loss = state["dataset"], state["model"], state["loss"]
    return {
        **request,
        "phases": phases,
        "batches_timed": len(state["batches"]),
        "batches_per_epoch": len(state["train_data"]),
        "train_interactions": len(state["train_data"].dataset),
        "valid_users": len(getattr(state["valid_data"], "uid_list", [])),
        "users": dataset.user_num - 1, "items": dataset.item_num - 1, "interactions": len(dataset.inter_feat),
        "trainable_parameters": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "train_loss": float(sum(loss) if isinstance(loss, tuple) else loss),
        "valid": {k: float(v) for k, v in state.get("result", {}).items()},
        "torch_threads": torch.get_num_threads(),
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def run_cell(request: dict, timeout: float | None = None) -> dict:
    """One cell in a fresh process (cwd: a temporary folder for RecBole's log/ and saved/), its threads
    pinned by the environment ``speed.cell_command`` gives one of speed's cells."""
    _, env = speed.cell_command({"threads": request["threads"]}, REPO)
    command = [sys.executable, str(HERE), "--cell", json.dumps(request)]
    with tempfile.TemporaryDirectory(prefix="electronics-cell-") as cwd:
        try:
            out = subprocess.run(command, capture_output=True, text=True, cwd=cwd, env=env, timeout=timeout,
                                 check=False)
        except subprocess.TimeoutExpired:
            return {**request, "failed": f"stopped after the --cell-timeout of {timeout:.0f} s"}
    if out.returncode != 0:
        lines = [line for line in out.stderr.strip().splitlines() if line.strip()]
        reason = lines[-1] if lines else ""
        if out.returncode < 0:
            name = signal.Signals(-out.returncode).name
            reason = f"killed by {name}" + (" (out of memory?)" if name == "SIGKILL" else "") + \
                     (f"; last output: {reason}" if reason else "")
        return {**request, "failed": reason or f"exit status {out.returncode}"}
    return json.loads(out.stdout.strip().splitlines()[-1])


# ---- report -----------------------------------------------------------------------------------------
def _seconds(entry: dict, name: str) -> str:
    p = entry["phases"][name]
    return f"{p['wall']:.1f} ({p['cpu']:.1f})"


def _gib(mib: float) -> str:
    return f"{mib / 1024:.2f}"


def freeze_saving(entries: dict) -> str:
    """The measured peak-RSS difference GUME − GUME freeze_features, when both ran on the same shape."""
    full, frozen = entries.get("GUME"), entries.get("GUME freeze_features")
    if not full or not frozen or "failed" in full or "failed" in frozen:
        return ""
    if (full["users"], full["items"]) != (frozen["users"], frozen["items"]):
        return ""
    saved = full["peak_rss_mib"] - frozen["peak_rss_mib"]
    less = f"**{saved / 1024:.2f} GiB less**" if saved >= 0 else f"{-saved / 1024:.2f} GiB more"
    params = full["trainable_parameters"] - frozen["trainable_parameters"]
    return (f"**`freeze_features: True` on this shape:** peak RSS {_gib(frozen['peak_rss_mib'])} GiB against "
            f"{_gib(full['peak_rss_mib'])} GiB faithful, {less} (measured, whole process); "
            f"{params:,} fewer trainable parameters (the raw feature tables: {params * 4 * 4 / 2**30:.2f} GiB of "
            "float32 table, gradient and two Adam moments). Its accuracy price on TikTok: docs/gume.md "
            "(`freeze_features`).")


def render(entries: dict) -> str:
    order = {label: i for i, label in enumerate(CELLS)}
    rows = sorted(entries.values(), key=lambda e: order.get(e["label"], len(order)))
    lines = [
        BEGIN,
        "## Electronics-shaped training",
        "",
        "A **GENERATED** data set of MMRec's Amazon Electronics shape (`benchmarks/make_shaped.py --shape "
        "electronics`: random long-tailed interactions, MMRec's per-user split, random 4096-d float64 image and "
        "384-d float32 text features; cost only, never accuracy), each model in one fresh process "
        "(`benchmarks/electronics.py`). Seconds are wall (CPU = process user+sys in brackets). *Load*: "
        "interactions, feature files and RecBole's data loaders; *build*: the model's construction (kNN item "
        "graphs and the other graphs); *first batch*: the trainer's epoch loop over one batch (one-off costs); "
        "*s/batch*: then over the first *timed* batches of a new pass (2048 interactions each, negative sampling "
        "to optimizer step); **epoch = first batch + s/batch × (batches per epoch − 1), extrapolated, not "
        "measured**; *eval*: one full-sort pass over the validation users (RecBole's evaluator, "
        "4096 users per batch); *peak RSS*: the whole process, and after each phase (it only grows).",
        "",
        "| model | users | items | interactions | threads | load s | build s | first batch s | s/batch | timed "
        "| batches/epoch "
        "| epoch s (extrapolated) | eval s | valid users | peak RSS GiB | after load / build / train | trainable "
        "params | commit | load at start |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---|---:|",
    ]
    for e in rows:
        if "failed" in e:
            lines.append(f"| {e['label']} | | | | {e['threads']} | **failed**: {e['failed']} | | | | | | | | | | | "
                         f"| {e['commit']} | {e['load']} |")
            continue
        train = e["phases"]["train"]
        per_wall, per_cpu = train["wall"] / e["batches_timed"], train["cpu"] / e["batches_timed"]
        first = e["phases"]["first_batch"]
        # The epoch: its first batch as measured, every other batch at the timed mean.
        epoch_wall = first["wall"] + per_wall * (e["batches_per_epoch"] - 1)
        epoch_cpu = first["cpu"] + per_cpu * (e["batches_per_epoch"] - 1)
        after = " / ".join(_gib(e["phases"][p]["peak_rss_mib"]) for p in ("load", "build", "train"))
        lines.append(
            f"| {e['label']} | {e['users']:,} | {e['items']:,} | {e['interactions']:,} | {e['threads']} "
            f"| {_seconds(e, 'load')} | {_seconds(e, 'build')} | {_seconds(e, 'first_batch')} "
            f"| {per_wall:.3f} ({per_cpu:.3f}) | {e['batches_timed']} "
            f"| {e['batches_per_epoch']:,} | {epoch_wall:,.0f} ({epoch_cpu:,.0f}) | {_seconds(e, 'eval')} "
            f"| {e['valid_users']:,} | {_gib(e['peak_rss_mib'])} | {after} | {e['trainable_parameters']:,} "
            f"| {e['commit']} | {e['load']} |")
    commands = sorted({e["command"] for e in rows})
    machines = sorted({e["machine"] for e in rows})
    saving = freeze_saving(entries)
    lines += ["", "Made by: " + "; ".join(f"`{c}`" for c in commands) + f" (data: `{rows[0]['generate']}`)."
              if rows else "", "",
              f"Machine: {'; '.join(machines)}. *Load at start* is the 1-minute load average when the model's "
              "process began: the machine was **shared with other jobs** (other sessions' tests and trainings on "
              "its two cores), so wall times are pessimistic; the CPU seconds (all the process's threads) are its cost "
              "without them.",
              ""]
    if saving:
        lines += [saving, ""]
    # Anything unusual about how a row was obtained, kept with the row in the store.
    lines += [f"- *{e['label']}*: {e['note']}" for e in rows if e.get("note")]
    if any(e.get("note") for e in rows):
        lines.append("")
    lines.append(END)
    return "\n".join(lines) + "\n"


# ---- driver -----------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-path", type=Path, default=Path("/tmp/elec"),
                        help="the data root make_shaped.py --shape electronics wrote (it holds electronics-shaped/)")
    parser.add_argument("--models", nargs="+", default=list(CELLS), choices=list(CELLS), metavar="LABEL",
                        help=f"cells to run, in order (default all: {', '.join(CELLS)})")
    parser.add_argument("--batches", type=int, default=100, help="training batches timed per model")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--cell-timeout", type=float, default=None, help="seconds before a cell is stopped")
    parser.add_argument("--out", type=Path, default=REPO / "results" / "scale.md")
    parser.add_argument("--cell", help=argparse.SUPPRESS)  # internal: one cell, its JSON on stdout
    args = parser.parse_args(argv)
    if args.cell:
        print(json.dumps(cell_main(json.loads(args.cell))), flush=True)
        return
    data_path = args.data_path.resolve()
    folder = data_path / make_shaped.ELECTRONICS_NAME
    if not (folder / "GENERATED.txt").is_file():
        raise SystemExit(f"{folder}: no generated data set there; write it first with "
                         f"python benchmarks/make_shaped.py {data_path} --shape electronics")
    written = [line for line in (folder / "GENERATED.txt").read_text().splitlines() if line.startswith("Written by: ")]
    generated = written[0].removeprefix("Written by: ") if written else f"see {folder / 'GENERATED.txt'}"
    command = "python benchmarks/electronics.py " + shlex.join(argv if argv is not None else sys.argv[1:])
    store = args.out.with_name("scale-electronics.json")
    base = dataset_config(data_path)
    for label in args.models:
        model, settings = CELLS[label]
        request = {"label": label, "model": model, "dataset": make_shaped.ELECTRONICS_NAME,
                   "config": {**base, **settings}, "batches": args.batches, "threads": args.threads}
        load, revision = f"{os.getloadavg()[0]:.1f}", scale.commit()
        print(f"{label}: started {datetime.now(timezone.utc):%H:%M:%S} UTC, load {load}", flush=True)
        result = run_cell(request, args.cell_timeout)
        result.update(command=command.strip(), commit=revision, machine=scale.machine(), load=load,
                      generate=generated,
                      date=datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"))
        if "failed" in result:
            print(f"  failed: {result['failed']}", flush=True)
        else:
            ph = result["phases"]
            print(f"  load {ph['load']['wall']:.1f} s, build {ph['build']['wall']:.1f} s, "
                  f"{ph['train']['wall'] / result['batches_timed']:.3f} s/batch, eval {ph['eval']['wall']:.1f} s, "
                  f"peak {result['peak_rss_mib'] / 1024:.2f} GiB", flush=True)
        # Read the store again before writing: keep rows other runs added meanwhile.
        entries = {e["label"]: e for e in (json.loads(store.read_text()) if store.exists() else [])}
        entries[label] = result
        store.write_text(json.dumps(list(entries.values()), indent=1) + "\n")
        scale.write_section(args.out, render(entries), BEGIN, END)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

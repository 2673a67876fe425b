"""GPU check: GUME, MM-GEF, VBPR and LightGCN on TikTok on CUDA to early stopping (seed 999), their
checkpoints reloaded and tested on CPU, and a Baby-shaped epoch time per model; writes ``results/gpu.md``.

    python benchmarks/gpu.py                      # on a machine with a CUDA GPU: ~5-10 min on an H100/H200
    python benchmarks/gpu.py --models GUME --no-baby --budget-minutes 4

Every cell runs in its own process through ``benchmarks/speed.py``'s cell (recbole_mm's quick start and
trainer, RecBole's ``gpu_id``), so peak GPU memory (``torch.cuda.max_memory_allocated``) and peak RSS are
per run. The TikTok cells keep the dataset's protocol (dataset_configs/tiktok.yaml: patience 20 on valid
Recall@20) and save the best checkpoint; each checkpoint is then loaded in a CPU-only process
(``CUDA_VISIBLE_DEVICES=``) and tested again, which checks that GPU checkpoints load on CPU. The CPU
columns are results/tiktok.csv's three-seed means ± std (their command is in results/tiktok.md).
``baby`` = the shipped Amazon-Baby interactions with generated 4096-d/384-d features (cost, not accuracy).
Without a GPU it exits with status 2 and writes nothing.

    python benchmarks/gpu.py --every-model --out results/gpu-models.md   # every model, one epoch, ~2 min

``--every-model`` instead trains every model recbole_mm registers (and RecBole's BPR and LightGCN) on TikTok on
CUDA for ``--epochs`` epochs with the dataset's settings, ``--jobs`` processes at once (so its seconds are
under contention: a check that each model runs on a GPU and what it costs there, not a timing table), and
writes one row per model: the epochs' losses, validation and test Recall@20, peak GPU memory, or the last
line of the error. ``--cpu`` runs either mode on the CPU instead (checks this script without a GPU; the
report says which device ran).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import csv
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import speed  # noqa: E402  (benchmarks/speed.py: cells, checkouts, machine description)

LABELS = {"GUME": "GUME", "MMGEF": "MM-GEF", "VBPR": "VBPR", "LightGCN": "LightGCN"}  # results/tiktok.csv rows


def reload_on_cpu(checkpoint: str) -> dict:
    """Inside a CPU-only process: load a checkpoint with its data and test it."""
    import recbole_mm  # noqa: F401
    from recbole_mm.quick_start import load_data_and_model, make_trainer

    config, model, _, train, _, test = load_data_and_model(checkpoint)
    trainer = make_trainer(config, model)
    trainer.eval_collector.data_collect(train)
    result = trainer.evaluate(test, load_best_model=False)
    return {"device": str(config["device"]), "test": {k: float(v) for k, v in result.items()}}


def run_reload(checkpoint: str) -> dict:
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": speed.pythonpath(speed.REPO)}
    with tempfile.TemporaryDirectory(prefix="gpu-reload-") as cwd:
        out = subprocess.run([sys.executable, __file__, "--reload", checkpoint], capture_output=True, text=True,
                             env=env, cwd=cwd, check=False)
    if out.returncode != 0:
        lines = [line for line in out.stderr.strip().splitlines() if line.strip()]
        return {"failed": lines[-1] if lines else f"exit status {out.returncode}"}
    return json.loads(out.stdout.strip().splitlines()[-1])


def cpu_reference(path: Path) -> dict:
    """model label -> row of results/tiktok.csv (CPU, three seeds)."""
    if not path.exists():
        return {}
    with open(path, encoding="utf-8") as f:
        return {row["model"]: row for row in csv.DictReader(f)}


def _mean_std(text: str | None) -> tuple[float, float] | None:
    """``0.1046 ± 0.0012`` (the significance marks ``*``/``†`` of the benchmark's csv dropped)."""
    if not text or "±" not in text:
        return None
    mean, std = text.rstrip("*† ").split("±")
    return float(mean), float(std)


def _n(value, digits: int = 2) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def format_report(cells: list[dict], baby: list[dict], reference: dict, command: str, meta: dict,
                  skipped: list[str]) -> str:
    gpu = next((c.get("device_name") or c.get("device") for c in cells + baby if "failed" not in c), "?")
    state = meta["checkout"]
    lines = ["# GPU runs", "", f"Made by `{command}` on **{gpu}** ({meta['torch']}, CUDA {meta['cuda']}), "
             f"{meta['date']}, commit `{state['commit'][:12]}`{' (dirty)' if state.get('dirty') else ''}."]
    if cells:
        lines += ["", "TikTok, seed 999, to early stopping (patience 20 on valid Recall@20). s/epoch, s/eval: medians "
             "over the run's epochs (recbole_mm's trainer history; eval = full-sort validation pass). Peak GPU: "
             "`torch.cuda.max_memory_allocated`. CPU columns: results/tiktok.csv (three seeds, mean ± std, "
             "one thread); \"within 2σ\" compares the GPU run's test Recall@20 with them. Reloaded on CPU: the "
             "GPU run's best checkpoint loaded and tested in a process without CUDA.", "",
             "| model | epochs | best epoch | s/epoch | s/eval | peak GPU MiB | peak RSS MiB | test recall@20 "
             "| test ndcg@20 | CPU recall@20 | CPU ndcg@20 | within 2σ | CPU s/epoch | reloaded on CPU recall@20 |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|"]
    for cell in cells:
        if "failed" in cell:
            lines.append(f"| {cell['model']} | failed: {cell['failed']} |" + " |" * 12)
            continue
        ref = reference.get(LABELS.get(cell["model"], cell["model"]), {})
        recall, ndcg = cell["test"].get("recall@20"), cell["test"].get("ndcg@20")
        cpu_recall = _mean_std(ref.get("test recall@20"))
        within = "—" if cpu_recall is None or recall is None else (
            "yes" if abs(recall - cpu_recall[0]) <= 2 * cpu_recall[1] else "**no**")
        reload = cell.get("reload", {})
        reloaded = f"failed: {reload['failed']}" if "failed" in reload else _n(reload.get("test", {}).get("recall@20"), 4)
        lines.append(
            f"| {cell['model']} | {len(cell['train_loss'])} | {cell['best_epoch']} | {_n(cell['train_seconds'])} | "
            f"{_n(cell['eval_seconds'], 3)} | {_n(cell.get('peak_cuda_mib'), 0)} | {_n(cell['peak_rss_mib'], 0)} | "
            f"{_n(recall, 4)} | {_n(ndcg, 4)} | {ref.get('test recall@20', '—')} | {ref.get('test ndcg@20', '—')} | "
            f"{within} | {ref.get('s/train epoch', '—')} | {reloaded} |")
    if baby:
        lines += ["", "Baby-shaped input (shipped Amazon-Baby interactions, **generated** features of MMRec's shapes: "
                  "cost, not accuracy), a few epochs each:", "",
                  "| model | epochs | s/epoch | s/eval | peak GPU MiB | peak RSS MiB |", "|---|---:|---:|---:|---:|---:|"]
        for cell in baby:
            if "failed" in cell:
                lines.append(f"| {cell['model']} | failed: {cell['failed']} | | | | |")
                continue
            lines.append(f"| {cell['model']} | {len(cell['train_loss'])} | {_n(cell['train_seconds'])} | "
                         f"{_n(cell['eval_seconds'], 3)} | {_n(cell.get('peak_cuda_mib'), 0)} | "
                         f"{_n(cell['peak_rss_mib'], 0)} |")
    if skipped:
        lines += ["", f"Not run (time budget): {', '.join(skipped)}."]
    return "\n".join(lines) + "\n"


def every_model() -> list[str]:
    """RecBole's BPR and LightGCN, then every model recbole_mm registers, in registry order."""
    sys.path.insert(0, str(speed.REPO))
    from recbole_mm.registry import PLUGIN_MODELS

    return ["BPR", "LightGCN", *PLUGIN_MODELS]


def run_every_model(models: list[str], epochs: int, jobs: int, gpu_id: str, done=None) -> list[dict]:
    """One TikTok cell per model, ``jobs`` fresh processes at once, the cores split between them;
    ``done(cells so far, in model order)`` after each."""
    threads = max(1, speed.thread_count("all") // jobs)
    requests = [{"bench_dataset": "tiktok", "dataset": "tiktok", "model": model, "threads": threads,
                 "epochs": epochs, "config": {"gpu_id": gpu_id}} for model in models]

    def run(request: dict) -> dict:
        cell = speed.run_cell_process(request, speed.REPO)
        print(f"  {request['model']}: " + (f"failed: {cell['failed']}" if "failed" in cell else
                                            f"loss {cell['train_loss']}, {cell.get('device')}"), flush=True)
        return cell

    cells: dict[int, dict] = {}
    with concurrent.futures.ThreadPoolExecutor(jobs) as pool:
        futures = {pool.submit(run, request): i for i, request in enumerate(requests)}
        for future in concurrent.futures.as_completed(futures):
            cells[futures[future]] = future.result()
            if done is not None:
                done([cells[i] for i in sorted(cells)])
    return [cells[i] for i in range(len(requests))]


def format_every_model(cells: list[dict], command: str, meta: dict, jobs: int, epochs: int,
                       total: int | None = None) -> str:
    total = len(cells) if total is None else total
    device = next((c.get("device_name") or c.get("device") for c in cells if "failed" not in c), "?")
    state = meta["checkout"]
    failed = [c["model"] for c in cells if "failed" in c]
    lines = ["# Every model on the GPU", "", f"Made by `{command}` on **{device}** ({meta['torch']}, CUDA "
             f"{meta['cuda']}), {meta['date']}, commit `{state['commit'][:12]}`"
             f"{' (dirty)' if state.get('dirty') else ''}.", "",
             f"TikTok with dataset_configs/tiktok.yaml's settings for each model, seed 999, {epochs} epoch(s), each "
             f"followed by a full-sort validation pass, then the test split. {jobs} processes ran at once, so the "
             "seconds are under contention (a check that each model runs here and what it costs, not a timing "
             "table: results/gpu.md times four models alone). Peak GPU: `torch.cuda.max_memory_allocated`.", "",
             f"{len(cells) - len(failed)} of {total} models ran" + (f"; failed: {', '.join(failed)}." if failed
                                                                          else "."), "",
             "| model | device | training loss per epoch | valid recall@20 | test recall@20 | s/epoch | s/eval "
             "| peak GPU MiB | peak RSS MiB |", "|---|---|---|---:|---:|---:|---:|---:|---:|"]
    for cell in cells:
        if "failed" in cell:
            lines.append(f"| {cell['model']} | failed: {cell['failed']} |" + " |" * 7)
            continue
        losses = ", ".join(f"{loss:.4f}" for loss in cell["train_loss"])
        valid = cell["valid_score"][-1] if cell["valid_score"] else None
        lines.append(f"| {cell['model']} | {cell['device']} | {losses} | {_n(valid, 4)} | "
                     f"{_n(cell['test'].get('recall@20'), 4)} | {_n(cell['train_seconds'])} | "
                     f"{_n(cell['eval_seconds'], 3)} | {_n(cell.get('peak_cuda_mib'), 0)} | "
                     f"{_n(cell['peak_rss_mib'], 0)} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=speed.MODELS)
    parser.add_argument("--baby-epochs", type=int, default=3)
    parser.add_argument("--no-baby", action="store_true", help="skip the Baby-shaped epoch times")
    parser.add_argument("--no-tiktok", action="store_true",
                        help="skip the TikTok runs (the Baby-shaped epoch times alone, e.g. in a second device call)")
    parser.add_argument("--budget-minutes", type=float, default=8.0,
                        help="start no new run after this many minutes (the report lists what was skipped)")
    parser.add_argument("--out", default=str(speed.REPO / "results" / "gpu.md"))
    parser.add_argument("--every-model", action="store_true",
                        help="train every registered model for --epochs epochs instead (a check, not a timing table)")
    parser.add_argument("--epochs", type=int, default=1, help="--every-model: epochs per model")
    parser.add_argument("--jobs", type=int, default=4, help="--every-model: processes at once")
    parser.add_argument("--commit", help="the commit a copied tree was copied from, for the report's header "
                        "(wins over the copy's own git state)")
    parser.add_argument("--cpu", action="store_true", help="run on the CPU (checks this script without a GPU)")
    parser.add_argument("--reload", help=argparse.SUPPRESS)  # internal: test a checkpoint on CPU
    args = parser.parse_args(argv)
    if args.reload:
        print(json.dumps(reload_on_cpu(args.reload)))
        return

    import torch

    if not args.cpu and not torch.cuda.is_available():
        print("benchmarks/gpu.py: no CUDA device (torch.cuda.is_available() is False; torch "
              f"{torch.__version__}); run it on a machine with an NVIDIA GPU and a CUDA build of torch",
              file=sys.stderr)
        sys.exit(2)
    start = time.monotonic()
    command = "python benchmarks/gpu.py " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
    meta = {**speed.machine(), "checkout": speed.git_state(speed.REPO), "cuda": torch.version.cuda}
    if args.commit:  # the device's copy may carry the .git of an older commit than the tree it runs
        meta["checkout"].update(commit=args.commit, dirty=False)
    gpu_id = "" if args.cpu else "0"
    if args.every_model:
        models = every_model() if args.models == speed.MODELS else args.models
        out = Path(args.out if args.out != parser.get_default("out") else speed.REPO / "results" / "gpu-models.md")

        def write(cells: list[dict]) -> None:  # after every cell: a run cut short still leaves its rows
            out.write_text(format_every_model(cells, command, meta, args.jobs, args.epochs, len(models)))

        write(run_every_model(models, args.epochs, args.jobs, gpu_id, done=write))
        print(f"wrote {out} in {(time.monotonic() - start) / 60:.1f} min")
        return
    threads = speed.thread_count("all")
    skipped: list[str] = []

    def over_budget(label: str) -> bool:
        if (time.monotonic() - start) / 60 > args.budget_minutes:
            skipped.append(label)
            return True
        return False

    cells, baby = [], []
    reference = cpu_reference(speed.REPO / "results" / "tiktok.csv")
    out = Path(args.out)

    def write() -> None:  # after every cell: a run cut short still leaves what it measured
        out.write_text(format_report(cells, baby, reference, command, meta, skipped))

    with tempfile.TemporaryDirectory(prefix="gpu-runs-") as work:
        for model in [] if args.no_tiktok else args.models:
            if over_budget(f"TikTok {model}"):
                continue
            request = {"bench_dataset": "tiktok", "dataset": "tiktok", "model": model, "threads": threads,
                       "epochs": 1000, "saved": True,
                       "config": {"gpu_id": gpu_id, "stopping_step": 20, "checkpoint_dir": str(Path(work) / "saved")}}
            print(f"TikTok {model} on {'CPU' if args.cpu else 'CUDA'} to early stopping", flush=True)
            cell = speed.run_cell_process(request, speed.REPO)
            if "failed" not in cell and cell.get("checkpoint"):
                cell["reload"] = run_reload(cell["checkpoint"])
            cells.append(cell)
            write()
            print("  " + json.dumps({k: cell.get(k) for k in ("failed", "train_seconds", "best_epoch", "test")}),
                  flush=True)
        if not args.no_baby:
            generated = speed.generate_baby(Path(work) / "generated")
            for model in args.models:
                if over_budget(f"Baby {model}"):
                    continue
                config = {"data_path": str(generated), "gpu_id": gpu_id, **speed.MODEL_SETTINGS.get(("baby", model), {})}
                request = {"bench_dataset": "baby", "dataset": "amazon-baby", "model": model, "threads": threads,
                           "epochs": args.baby_epochs, "config": config}
                print(f"Baby-shaped {model}, {args.baby_epochs} epochs", flush=True)
                baby.append(speed.run_cell_process(request, speed.REPO))
                write()
    write()
    print(f"wrote {out} in {(time.monotonic() - start) / 60:.1f} min")


if __name__ == "__main__":
    main()

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
"""

from __future__ import annotations

import argparse
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
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": str(speed.REPO)}
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
    if not text or "±" not in text:
        return None
    mean, std = text.split("±")
    return float(mean), float(std)


def _n(value, digits: int = 2) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def format_report(cells: list[dict], baby: list[dict], reference: dict, command: str, meta: dict,
                  skipped: list[str]) -> str:
    gpu = next((c.get("device_name") for c in cells + baby if c.get("device_name")), "?")
    state = meta["checkout"]
    lines = ["# GPU runs", "", f"Made by `{command}` on **{gpu}** ({meta['torch']}, CUDA {meta['cuda']}), "
             f"{meta['date']}, commit `{state['commit'][:12]}`{' (dirty)' if state.get('dirty') else ''}.", "",
             "TikTok, seed 999, to early stopping (patience 20 on valid Recall@20). s/epoch, s/eval: medians over "
             "the run's epochs (recbole_mm's trainer history; eval = full-sort validation pass). Peak GPU: "
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


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=speed.MODELS)
    parser.add_argument("--baby-epochs", type=int, default=3)
    parser.add_argument("--no-baby", action="store_true", help="skip the Baby-shaped epoch times")
    parser.add_argument("--budget-minutes", type=float, default=8.0,
                        help="start no new run after this many minutes (the report lists what was skipped)")
    parser.add_argument("--out", default=str(speed.REPO / "results" / "gpu.md"))
    parser.add_argument("--reload", help=argparse.SUPPRESS)  # internal: test a checkpoint on CPU
    args = parser.parse_args(argv)
    if args.reload:
        print(json.dumps(reload_on_cpu(args.reload)))
        return

    import torch

    if not torch.cuda.is_available():
        print("benchmarks/gpu.py: no CUDA device (torch.cuda.is_available() is False; torch "
              f"{torch.__version__}); run it on a machine with an NVIDIA GPU and a CUDA build of torch",
              file=sys.stderr)
        sys.exit(2)
    start = time.monotonic()
    command = "python benchmarks/gpu.py " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
    meta = {**speed.machine(), "checkout": speed.git_state(speed.REPO), "cuda": torch.version.cuda}
    threads = speed.thread_count("all")
    skipped: list[str] = []

    def over_budget(label: str) -> bool:
        if (time.monotonic() - start) / 60 > args.budget_minutes:
            skipped.append(label)
            return True
        return False

    cells, baby = [], []
    with tempfile.TemporaryDirectory(prefix="gpu-runs-") as work:
        for model in args.models:
            if over_budget(f"TikTok {model}"):
                continue
            request = {"bench_dataset": "tiktok", "dataset": "tiktok", "model": model, "threads": threads,
                       "epochs": 1000, "saved": True,
                       "config": {"gpu_id": "0", "stopping_step": 20, "checkpoint_dir": str(Path(work) / "saved")}}
            print(f"TikTok {model} on CUDA to early stopping", flush=True)
            cell = speed.run_cell_process(request, speed.REPO)
            if "failed" not in cell and cell.get("checkpoint"):
                cell["reload"] = run_reload(cell["checkpoint"])
            cells.append(cell)
            print("  " + json.dumps({k: cell.get(k) for k in ("failed", "train_seconds", "best_epoch", "test")}),
                  flush=True)
        if not args.no_baby:
            generated = speed.generate_baby(Path(work) / "generated")
            for model in args.models:
                if over_budget(f"Baby {model}"):
                    continue
                config = {"data_path": str(generated), "gpu_id": "0", **speed.MODEL_SETTINGS.get(("baby", model), {})}
                request = {"bench_dataset": "baby", "dataset": "amazon-baby", "model": model, "threads": threads,
                           "epochs": args.baby_epochs, "config": config}
                print(f"Baby-shaped {model} on CUDA, {args.baby_epochs} epochs", flush=True)
                baby.append(speed.run_cell_process(request, speed.REPO))
    reference = cpu_reference(speed.REPO / "results" / "tiktok.csv")
    out = Path(args.out)
    out.write_text(format_report(cells, baby, reference, command, meta, skipped))
    print(f"wrote {out} in {(time.monotonic() - start) / 60:.1f} min")


if __name__ == "__main__":
    main()

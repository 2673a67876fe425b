"""The ``recbole-mm`` command: train and test one model on one dataset, or run a subcommand.

``recbole-mm --model=GUME --dataset=tiktok`` trains (``python run_recbole_mm.py`` and ``python -m
recbole_mm`` are the same command); ``recbole-mm recommend|benchmark|analysis|download|features ...``
hands the rest of the line to that module's own ``main``. Modules are imported only when their
subcommand runs, and ``import recbole_mm`` loads neither torch nor RecBole (:mod:`recbole_mm.plugin`), so
``download`` and ``features`` start without them.
"""

from __future__ import annotations

import argparse
import importlib
import os
import re
import sys
import time

from recbole_mm.errors import RecBoleMMError, exit_on_user_error

_KEY_VALUE = re.compile(r"^--[A-Za-z_][\w.]*=")

# Subcommand → (module whose main(argv) runs it, the words put before the rest of the line, summary).
SUBCOMMANDS: dict[str, tuple[str, tuple[str, ...], str]] = {
    "recommend": ("recbole_mm.recommendations", (), "top-k unseen items per user from a trained checkpoint"),
    "benchmark": ("recbole_mm.benchmark.command", (), "compare models on datasets over seeds; writes reports"),
    "analysis": ("recbole_mm.analysis", (), "long-tail analysis of checkpoints (analysis longtail ...)"),
    "download": ("recbole_mm.download", ("download",), "fetch and verify MMRec's Amazon datasets"),
    "features": ("recbole_mm.features", (), "item feature files from raw text and images"),
}


def _subcommand_help() -> str:
    width = max(map(len, SUBCOMMANDS))
    lines = [f"  {name:<{width}}  {summary}" for name, (_, _, summary) in SUBCOMMANDS.items()]
    return "subcommands (each has its own --help):\n" + "\n".join(lines)


def parse_args(argv: list[str], prog: str = "run_recbole_mm.py") -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Train and test a RecBole or recbole_mm model. Any RecBole parameter can be given "
        "as --key=value (e.g. --epochs=5 --learning_rate=0.01); RecBole reads those itself.",
        epilog=_subcommand_help(), formatter_class=argparse.RawDescriptionHelpFormatter,
        # A model key that is a prefix of an option (PGL's reference calls its graph choice `mode`) must reach
        # RecBole as that key, not be read as an abbreviation of --model.
        allow_abbrev=False,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s (recbole_mm) {_version()}")
    parser.add_argument("--model", "-m", default="GUME", help="model name, e.g. GUME, MMGEF, VBPR, BPR, LightGCN")
    parser.add_argument("--dataset", "-d", default="tiktok", help="dataset name, e.g. tiktok, amazon-baby")
    parser.add_argument("--config_files", default=None,
                        help="extra yaml files, separated by spaces or commas (later ones win)")
    # RecBole's multi-process keys (RecBole's own run() takes them as arguments, not from the config).
    distributed = parser.add_argument_group("multi-process runs (torch.distributed: gloo on CPU, nccl on GPUs)")
    distributed.add_argument("--nproc", default="1", help="processes on this machine (default 1)")
    distributed.add_argument("--world_size", default="-1", help="processes on all machines (default: nproc)")
    distributed.add_argument("--ip", default="localhost", help="address of the machine that runs rank 0")
    distributed.add_argument("--port", default="5678", help="a free TCP port on that machine")
    distributed.add_argument("--offset", default="0", help="global rank of this machine's first process")
    parser.add_argument("--resume", default=None, metavar="CHECKPOINT",
                        help="continue a killed run from its checkpoint (saved/<Model>-….pth or its .last.pth), "
                        "given the run's other arguments")
    args, rest = parser.parse_known_args(argv)
    unusable = [a for a in rest if not _KEY_VALUE.match(a)]
    if unusable:
        parser.error(f"unrecognised argument(s) {' '.join(unusable)}; give RecBole parameters as --key=value")
    return args


def process_seconds() -> float | None:
    """Seconds since this process started (imports and start-up included), None if unknown."""
    try:
        import psutil

        return time.time() - psutil.Process().create_time()
    except (ImportError, OSError):
        return None


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("recbole_mm")
    except PackageNotFoundError:  # a checkout on sys.path without an install
        return "not installed"


def format_results(result: dict) -> str:
    """The best-valid epoch's valid and test metrics as an aligned text table, with median timings."""
    from recbole_mm.trainer import median_epoch_seconds

    valid, test = result["best_valid_result"] or {}, result["test_result"] or {}
    metrics = list(dict.fromkeys([*valid, *test]))
    width = max([len(m) for m in metrics] + [6])
    lines = [f"{'metric':<{width}}  {'valid':>8}  {'test':>8}"]
    for metric in metrics:
        cells = [f"{d[metric]:8.4f}" if metric in d else f"{'-':>8}" for d in (valid, test)]
        lines.append(f"{metric:<{width}}  {cells[0]}  {cells[1]}")
    history = result.get("history") or []
    train_s, eval_s = median_epoch_seconds(history)
    summary = [f"best valid epoch: {result.get('best_epoch')} ({len(history)} epochs trained)"]
    if train_s is not None:
        summary.append(f"{train_s:.2f} s per training epoch")
    if eval_s is not None:
        summary.append(f"{eval_s:.2f} s per validation pass")
    process = result.get("process_seconds")
    if process is not None:  # the whole process: interpreter, imports, config and data included
        start_up = max(process - result["wall_seconds"], 0.0)
        summary.append(f"wall time {process:.1f} s ({start_up:.1f} s start-up)")
    else:
        summary.append(f"wall time {result['wall_seconds']:.1f} s (start-up not included)")
    peak = result.get("peak_memory_mb") or {}
    if peak:
        summary.append("peak memory " + ", ".join(f"{kind} {mb:.0f} MiB" for kind, mb in peak.items()))
    out = [", ".join(summary), *lines]
    if result.get("saved_model_file"):
        out.append(f"checkpoint: {result['saved_model_file']}")
    return "\n".join(out)


def main(argv: list[str] | None = None, prog: str = "run_recbole_mm.py") -> None:
    """Train and test one model; RecBole reads the ``--key=value`` options from ``sys.argv`` itself."""
    from recbole_mm.quick_start import run

    args = parse_args(sys.argv[1:] if argv is None else argv, prog)
    config_files = re.split(r"[,\s]+", args.config_files.strip()) if args.config_files else None
    result = run(model=args.model, dataset=args.dataset, config_file_list=config_files, nproc=args.nproc,
                 world_size=args.world_size, ip=args.ip, port=args.port, group_offset=args.offset,
                 resume=args.resume)
    if result is None:
        raise RecBoleMMError("no process on this machine returned results; see the log of local rank 0")
    result["process_seconds"] = process_seconds()
    config = result["config"]
    processes = "" if config["single_spec"] else f" ({config['world_size']} processes)"
    print(f"\n{config['model']} on {config['dataset']}{processes} — test metrics at the best validation epoch")
    print(format_results(result))


def use_huge_pages() -> None:
    """Let torch's CPU allocator back large blocks with transparent huge pages (``THP_MEM_ALLOC_ENABLE=1``)
    unless the environment says otherwise. The full-graph temporaries of a training step are above glibc's
    mmap threshold, so without it each step faults in fresh 4 KiB pages for them; the numbers are the same
    bit for bit (results/thp.md). Read by torch at its first large allocation: called by the command's
    entry points before any model code runs."""
    os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")


def console_main(argv: list[str] | None = None, prog: str = "recbole-mm") -> None:
    """Entry point of the ``recbole-mm`` command (and of ``run_recbole_mm.py``, ``python -m recbole_mm``):
    a subcommand's name dispatches to its module, anything else trains. Bad input of either kind is one
    ``recbole_mm: error:`` line and exit status 2."""
    args = sys.argv[1:] if argv is None else list(argv)
    use_huge_pages()
    if args and args[0] in SUBCOMMANDS:
        module_name, prefix, _ = SUBCOMMANDS[args[0]]
        module = importlib.import_module(module_name)
        # Usage lines name the command as typed: "recbole-mm download ...", not the module.
        sub_prog = prog if prefix else f"{prog} {args[0]}"
        exit_on_user_error(lambda: module.main([*prefix, *args[1:]], prog=sub_prog))
        return
    exit_on_user_error(lambda: main(args, prog))

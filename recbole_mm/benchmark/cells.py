"""What a benchmark cell is (its resolved config without machine paths, the code it runs, its cache key)
and how one cell runs, in the fresh process that :mod:`recbole_mm.benchmark.runner` starts."""

from __future__ import annotations

import ast
import contextlib
import hashlib
import json
import subprocess
import sys
from functools import lru_cache
from pathlib import Path


# Keys that name where things are on this machine, or only how a run reports progress: they neither change
# a result nor belong in a committed report.
MACHINE_KEYS = ("data_path", "checkpoint_dir", "show_progress", "log_wandb", "wandb_project", "state", "log_dir")


def portable_config(config: dict) -> dict:
    """A resolved config without machine-specific values: the keys of :data:`MACHINE_KEYS` are dropped
    (a ``data_path`` inside recbole_mm's own ``dataset/`` folder is then named by ``dataset`` alone; one
    outside it is kept as a marker, so that a cell on other data never shares a key with it)."""
    from recbole_mm.resources import bundled_data_root

    plain = {k: v for k, v in config.items() if k not in MACHINE_KEYS}
    data_path = config.get("data_path")
    if data_path:
        try:
            Path(data_path).resolve().relative_to(bundled_data_root().resolve())
        except ValueError:
            plain["data_path"] = "<outside recbole_mm's dataset/>"  # the dataset name still keys it
    return plain


# Keys a run rewrites from its data (the split actually used), so a cell's recorded value is not the resolved one.
RUN_DERIVED = ("eval_args", "use_gpu")


@lru_cache(maxsize=1)
def code_version() -> dict:
    """The code a cell runs: a hash of the package's sources and the model/dataset yaml files (so that
    any change to them makes new cells), and the git commit when recbole_mm runs from a checkout."""
    from recbole_mm.resources import resource_root

    root, digest = resource_root(), hashlib.sha256()
    package = Path(__file__).resolve().parent.parent  # recbole_mm/, not only this sub-package
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


# The libraries whose version can move a cell's numbers: part of its key.
KEY_LIBRARIES = ("torch", "recbole", "numpy", "scipy", "pandas")


@lru_cache(maxsize=1)
def library_versions() -> dict:
    from importlib import metadata

    versions = {}
    for name in KEY_LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def cell_key(model: str, dataset: str, config: dict) -> str:
    """Cache key: the resolved config (or, when it cannot be resolved, the plan's inputs) and the library
    versions. The code is checked per cell instead (:func:`is_current`): a cell records the source files it
    ran, so a change elsewhere in the package (another model, the report, the command line) keeps it."""
    resolved = resolve_config(model, dataset, config)
    identity = {"resolved": resolved} if resolved is not None else {"unresolved": [model, dataset, config]}
    identity["libraries"] = library_versions()
    return hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:24]


# The benchmark's harness: modules a cell's process loads to be started and to report, whose code does not
# compute the cell (it hands the resolved config, which is in the key, to run_recbole and records what comes
# back). A change to them keeps the cached cells; every other package file a cell ran is part of its code.
HARNESS = ("recbole_mm/benchmark/", "recbole_mm/cli.py", "recbole_mm/latex.py",
           "recbole_mm/rigour.py", "recbole_mm/stats.py", "recbole_mm/search.py")


def _is_harness(name: str) -> bool:
    return name.startswith(HARNESS)


def code_digest(source: bytes) -> str:
    """A digest of what Python code does, not how it is written: the syntax tree without docstrings (comments,
    blank lines and line breaks are not in it), so a docstring or comment edit keeps the cells that ran it."""
    tree = ast.parse(source)
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if (isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and body
                and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant)
                and isinstance(body[0].value.value, str)):
            node.body = body[1:] or [ast.Pass()]
    return "ast:" + hashlib.sha256(ast.dump(tree).encode()).hexdigest()[:16]


def _file_digest(path: Path) -> str:
    return code_digest(path.read_bytes())


def files_ran(model_name: str) -> dict[str, str]:
    """The recbole_mm source files this process has run, by path under the package's parent, with their
    digests: every loaded module of the package except the benchmark's :data:`HARNESS` and the modules of
    the model layer (``recbole_mm.model.*``) that neither the cell's model class and its bases nor the rest
    of the package reach by reference (the plugin imports every model file, and each model's own building
    blocks, to find the models: a change to another model does not change this cell)."""
    from recbole.utils import get_model

    from recbole_mm.registry import canonical_model_name

    package = Path(__file__).resolve().parent.parent
    layer, catalogue = "recbole_mm.model.", "recbole_mm.model.general_recommender"
    loaded = {name: module for name, module in list(sys.modules.items())
              if getattr(module, "__file__", None) and (name == "recbole_mm" or name.startswith("recbole_mm."))}
    model_class = get_model(canonical_model_name(model_name))
    reached = {name for name in loaded if not name.startswith(layer)}
    reached |= {cls.__module__ for cls in model_class.__mro__ if cls.__module__ in loaded}
    todo = list(reached)
    while todo:
        name = todo.pop()
        if name == catalogue:  # the list of models refers to all of them
            continue
        targets = set(_imports_in(loaded[name]))  # imports inside functions too
        for value in vars(loaded[name]).values():
            target = value.__name__ if isinstance(value, type(sys)) else getattr(value, "__module__", None)
            if isinstance(value, type(sys)) and target.startswith(name + "."):
                continue  # a package's attribute for each submodule imported so far, not a use of it
            targets.add(target)
        for target in targets:
            if isinstance(target, str) and target.startswith(layer) and target in loaded and target not in reached:
                reached.add(target)
                todo.append(target)
    reached |= {name for name in ("recbole_mm.model", catalogue) if name in loaded}
    files = {}
    for name in reached:
        path = Path(loaded[name].__file__).resolve()
        relative = str(path.relative_to(package.parent))
        if not _is_harness(relative):
            files[relative] = _file_digest(path)
    return dict(sorted(files.items()))


def _imports_in(module) -> list[str]:
    """The modules (and ``module.name`` candidates) a module's source imports anywhere, functions included."""
    try:
        tree = ast.parse(Path(module.__file__).read_bytes())
    except (OSError, SyntaxError, ValueError):
        return []
    package = module.__name__ if hasattr(module, "__path__") else module.__name__.rpartition(".")[0]
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{parent}.{base}" if base else parent
            names += [base, *(f"{base}.{alias.name}" for alias in node.names)]
    return names


def is_current(cell: dict) -> bool:
    """Whether a cached cell still describes today's code: every source file it ran does the same today
    (:func:`code_digest`; a cell from before files were recorded: the whole package's hash is unchanged)."""
    code = cell.get("code") or {}
    if "files" not in code:
        return code.get("hash") == code_version()["hash"]
    parent = Path(__file__).resolve().parent.parent.parent
    return all(_same_code(parent, name, digest, code.get("commit")) for name, digest in code["files"].items()
               if not _is_harness(name))


def _same_code(parent: Path, name: str, digest: str, commit: str | None) -> bool:
    current = _current_digest(parent / name)
    if digest.startswith("ast:") or current is None:
        return current == digest
    # Recorded as the file's sha256 (cells of the first days of file records): read that version from git
    # at the cell's commit, and compare what it does, if it is the version the cell ran.
    if not commit or "+" in commit:
        return False
    return _committed_digest(str(parent), commit, name, digest) == current


@lru_cache(maxsize=None)
def _committed_digest(parent: str, commit: str, name: str, sha256: str) -> str | None:
    """:func:`code_digest` of ``name`` at ``commit`` if that version's sha256 starts with ``sha256``, else
    None (a commit's file never changes: asked once per process, not once per cell and report pass)."""
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out = subprocess.run(["git", "-C", parent, "show", f"{commit}:{name}"], capture_output=True, timeout=30)
        if out.returncode == 0 and hashlib.sha256(out.stdout).hexdigest()[:16] == sha256:
            return code_digest(out.stdout)
    return None


def _current_digest(path: Path) -> str | None:
    try:
        stat = path.stat()
    except OSError:  # the file is gone: the cell ran code that no longer exists
        return None
    return _digest_of_version(path, stat.st_mtime_ns, stat.st_size)


@lru_cache(maxsize=None)
def _digest_of_version(path: Path, mtime_ns: int, size: int) -> str | None:
    """The digest of one version of a file (a new modification time or size is a new version): every cell
    of a plan checks the same few dozen files, parsed once each."""
    try:
        return _file_digest(path)
    except OSError:
        return None


# ---- one cell, in a fresh process -------------------------------------------------------------------
def interrupted_checkpoint(checkpoint_dir: str | None) -> str | None:
    """The state a run killed in ``checkpoint_dir`` (a cell's own folder) left after its last finished epoch
    (``<name>.last.pth``): the cell resumes from there, exactly (docs/checkpoints.md). None for a folder
    without one (a new cell, or one killed in its first epoch)."""
    from recbole_mm.trainer import LAST_SUFFIX

    if not checkpoint_dir or not Path(checkpoint_dir).is_dir():
        return None
    last = sorted(Path(checkpoint_dir).glob(f"*{LAST_SUFFIX}"), key=lambda path: path.stat().st_mtime)
    return str(last[-1]) if last else None


def run_cell(model: str, dataset: str, config: dict) -> dict:
    """Train and test one configuration; returns plain data for the cache. A run killed part-way in the
    cell's checkpoint folder before is resumed from its last finished epoch (:func:`interrupted_checkpoint`)."""
    import recbole_mm
    from recbole_mm.checkpoint import config_to_plain
    from recbole_mm.evaluation import cell_fields
    from recbole_mm.trainer import median_epoch_seconds

    # The split is screened for leakage before training; per-user test metrics come back for the report's tests.
    resume = interrupted_checkpoint(config.get("checkpoint_dir"))
    result = recbole_mm.run_recbole(model=model, dataset=dataset, config_dict=config, screen_leakage=True,
                                    test_details=True, resume=resume)
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
        "resumed_from": resume,  # the killed run's checkpoint this one continued (its history holds all epochs)
        "config": portable_config(config_to_plain(result["config"])),
        "code": {**code_version(), "files": files_ran(model)},
        "leakage": result["leakage"],
        **cell_fields(result["test_details"]),
    }


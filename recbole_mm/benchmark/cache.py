"""The per-dataset cell cache ``<out>/<dataset>.cells.json``: shared by parallel benchmark processes under a
file lock, written atomically, and a damaged file is one error line."""

from __future__ import annotations

import contextlib
import fcntl
import json
from pathlib import Path

from recbole_mm import storage
from recbole_mm.errors import RecBoleMMError

OUT_FIX = "give --out a folder you can write to"


def update_cache(path: Path, key: str | None = None, value: dict | None = None) -> dict:
    """Read (and optionally add one cell to) a cache that parallel benchmark processes may share."""
    with _locked(path):
        cells = read_cache(path)
        if key is not None:
            cells[key] = value
            _write(path, cells)
        return cells


@contextlib.contextmanager
def _locked(path: Path):
    storage.make_folder(path.parent, "--out", OUT_FIX)
    try:
        lock = open(path.with_suffix(".lock"), "w")
    except OSError as exc:
        raise storage.write_error(exc, "benchmark cache lock", path.with_suffix(".lock"), OUT_FIX) from exc
    with lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _write(path: Path, cells: dict) -> None:
    # atomic: a full disk leaves the cache as it was; the .tmp of earlier versions is removed
    with storage.atomic_write(path, "benchmark cache", OUT_FIX, stale=[path.with_suffix(".tmp").name]) as tmp:
        tmp.file.write((json.dumps(cells, indent=1) + "\n").encode())


def annotate_cell(path: Path, key: str, field: str, value) -> None:
    """Add ``field: value`` to the cached cell ``key`` (a result derived from it later, e.g. its long-tail
    groups from its checkpoint, so that a report made elsewhere needs no checkpoint)."""
    with _locked(path):
        cells = read_cache(path)
        if key in cells:
            cells[key] = {**cells[key], field: value}
            _write(path, cells)


def read_cache(path: Path) -> dict:
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


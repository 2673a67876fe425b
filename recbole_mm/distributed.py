"""Checks of a multi-process launch's settings (RecBole's ``nproc``, ``world_size``, ``offset``, ``port``),
made before any process starts so that a bad value is one line, not a failure in every spawned process."""

from __future__ import annotations

import os
import re
from typing import Any

from recbole_mm.errors import RecBoleMMError, warn_user


def check_distributed_args(nproc: Any, world_size: Any = -1, group_offset: Any = 0,
                           port: Any = "5678") -> tuple[int, int, int]:
    """``(nproc, world_size, group_offset)`` as ints, or one-line :class:`RecBoleMMError` naming the bad key.

    RecBole's semantics: ``nproc`` processes start on this machine with global ranks ``group_offset`` …
    ``group_offset + nproc - 1`` out of ``world_size`` (-1: ``nproc``, a one-machine run).
    """
    def as_int(key: str, value: Any) -> int:
        integral = isinstance(value, (int, str)) and not isinstance(value, bool)
        if not integral or not re.fullmatch(r"-?\d+", str(value).strip()):
            raise RecBoleMMError(f"{key}: {value!r} is not an integer; give e.g. --{key}=2")
        return int(value)

    nproc, world_size, offset = as_int("nproc", nproc), as_int("world_size", world_size), as_int("offset", group_offset)
    if nproc < 1:
        raise RecBoleMMError(f"nproc: {nproc} must be at least 1 (processes on this machine); give e.g. --nproc=2")
    check_nproc_against_cores(nproc)
    if world_size != -1 and world_size < 1:
        raise RecBoleMMError(f"world_size: {world_size} must be -1 (= nproc) or the total number of processes")
    if offset < 0:
        raise RecBoleMMError(f"offset: {offset} must be >= 0 (the global rank of this machine's first process)")
    if world_size != -1 and offset + nproc > world_size:
        raise RecBoleMMError(f"offset + nproc = {offset + nproc} exceeds world_size = {world_size}; "
                             "this machine's ranks must lie in 0 … world_size - 1")
    if not str(port).isdigit() or not 0 < int(port) < 65536:
        raise RecBoleMMError(f"port: {port!r} is not a TCP port (1-65535); give e.g. --port=29500")
    return nproc, world_size, offset


# More processes than this many per core is a mistake, not an oversubscription (each process holds the
# dataset, the model and its torch threads).
NPROC_PER_CORE_LIMIT = 4


def available_cores() -> int:
    """CPU cores this process may run on (its affinity mask where the system has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def check_nproc_against_cores(nproc: int) -> None:
    """``nproc`` above the cores here is a warning (the processes share them, each slower); more than
    :data:`NPROC_PER_CORE_LIMIT` per core is an error (``--nproc=64`` on 2 cores started 66 processes)."""
    cores = available_cores()
    if nproc > NPROC_PER_CORE_LIMIT * cores:
        raise RecBoleMMError(f"nproc: {nproc} processes on a machine with {cores} CPU cores (more than "
                             f"{NPROC_PER_CORE_LIMIT} per core); give at most --nproc={cores}, or spread the run "
                             "over machines with --world_size and --offset")
    if nproc > cores:
        warn_user(f"nproc={nproc} is more than the {cores} CPU cores here; the processes share them and each "
                  f"runs slower (--nproc={cores} uses every core once)")

"""Fixes 13, 14 (torch 2 deprecations): ``torch.cuda.amp`` and the legacy ``torch.sparse.FloatTensor``
constructor, each a warning in every RecBole 1.2.1 run. Delete when RecBole uses ``torch.amp`` and
``torch.sparse_coo_tensor``."""

from __future__ import annotations

import types
from typing import Any

from recbole_mm.compat.callers import caller_is_recbole


# trainer.py:30 imports torch.cuda.amp, deprecated since torch 2.4: `amp.GradScaler(enabled=...)`
# (trainer.py:235, :1440) prints a FutureWarning at every training epoch's start, on CPU too, and
# `amp.autocast(enabled=...)` (:1453) another. torch.amp's device-generic API, with RecBole's
# device ("cuda"; both are disabled off CUDA), is the same object without the warning.
def _install_amp() -> None:
    import functools

    import recbole.trainer.trainer as trainer_module
    import torch

    trainer_module.amp = types.SimpleNamespace(
        GradScaler=functools.partial(torch.amp.GradScaler, "cuda"),
        autocast=functools.partial(torch.amp.autocast, "cuda"),
    )


# --- 14: torch.sparse.FloatTensor ------------------------------------------------------------
# RecBole's graph models build their adjacency with the legacy constructor
# `torch.sparse.FloatTensor(indices, values[, size])` (lightgcn.py:125, ngcf.py:125, sgl.py:179,
# ncl.py:146, gcmc.py, dmf.py, dgcf.py, spectralcf.py, kgat.py, kgin.py, mcclk.py, layers.py:1639),
# deprecated in torch 2: each such run prints "torch.sparse.SparseTensor(...) is deprecated". For
# RecBole's calls it is the constructor torch names instead, with the legacy one's semantics (the
# values' dtype, no invariant checks); anyone else, and isinstance checks, get the original class.
def _install_sparse_float_tensor() -> None:
    import torch

    original = torch.sparse.FloatTensor
    if getattr(original, "_recbole_mm", False):
        return

    class _LegacySparseConstructor(type):
        def __instancecheck__(cls, instance: Any) -> bool:
            return isinstance(instance, original)

        def __call__(cls, *args: Any, **kwargs: Any) -> Any:
            if 2 <= len(args) <= 3 and not kwargs and caller_is_recbole() and all(
                    isinstance(a, torch.Tensor) for a in args[:2]):
                return torch.sparse_coo_tensor(*args, check_invariants=False)
            return original(*args, **kwargs)

    class FloatTensor(metaclass=_LegacySparseConstructor):
        """``torch.sparse.FloatTensor`` that RecBole's calls construct without the deprecation warning."""

        _recbole_mm = True
        _original = original

    torch.sparse.FloatTensor = FloatTensor


def install() -> None:
    """Fixes 13 and 14."""
    _install_amp()
    _install_sparse_float_tensor()

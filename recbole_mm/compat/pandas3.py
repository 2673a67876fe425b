"""Fixes 8, 9, 12 (pandas 3): ``Series.agg(len)``, copy-on-write ``fillna(inplace=True)`` and read-only column
arrays in RecBole 1.2.1's dataset code. Delete when RecBole's dataset code is written for pandas 3."""

from __future__ import annotations

import sys
import types
from typing import Any

import numpy as np

from recbole_mm.compat.callers import caller_is_recbole


# 8. pandas 3 `Series.agg(len)` returns len(series) instead of per-element lengths; RecBole uses it
#    to split token_seq/float_seq columns (dataset.py:712,792,809,1217, kg_dataset.py:316,
#    sequential_dataset.py:165) — silently wrong item_length in sequential datasets.
# 9. pandas 3 Copy-on-Write: `df[field].fillna(..., inplace=True)` (dataset.py:501,648,650) fills a
#    temporary copy, so NaN floats stay NaN and NaN tokens stay NaN — silently wrong datasets.
def _install_series_methods() -> None:
    import pandas as pd

    if int(pd.__version__.split(".")[0]) < 3 or getattr(pd.Series.agg, "_recbole_mm", False):
        return
    original_agg = pd.Series.agg
    original_fillna = pd.Series.fillna

    def agg(self: pd.Series, func: Any = None, axis: Any = 0, *args: Any, **kwargs: Any) -> Any:
        if func is len and caller_is_recbole():
            return self.map(len)
        return original_agg(self, func, axis, *args, **kwargs)

    def fillna(self: pd.Series, *args: Any, **kwargs: Any) -> Any:
        if not (kwargs.get("inplace") and caller_is_recbole()):
            return original_fillna(self, *args, **kwargs)
        kwargs["inplace"] = False
        filled = original_fillna(self, *args, **kwargs)
        # RecBole's three call sites are all `<frame>[field].fillna(...)` with the frame held in a
        # local named `df` or `feat`; write the result back into that frame.
        caller = sys._getframe(1).f_locals
        frame = caller.get("df") if "df" in caller else caller.get("feat")
        if frame is None or self.name not in frame:
            raise RuntimeError("recbole_mm pandas shim: unexpected fillna call site in RecBole")
        frame[self.name] = filled
        return None

    agg._recbole_mm = True
    pd.Series.agg = agg
    pd.Series.fillna = fillna


# dataset.py:2199 `_dataframe_to_interaction` turns `data[k].values` into tensors; under pandas 3's
# Copy-on-Write that array is a read-only view, and torch.LongTensor/FloatTensor of it prints
# "The given NumPy array is not writable ..." in every run. RecBole only iterates the frame and reads
# `.values`, so it is handed writable copies of the columns (torch copies them again anyway).
class _WritableColumns:
    """A DataFrame seen through ``for k in frame`` and ``frame[k].values``, with writable arrays."""

    def __init__(self, frame: Any) -> None:
        self._frame = frame

    def __iter__(self) -> Any:
        return iter(self._frame)

    def __getitem__(self, key: str) -> Any:
        return types.SimpleNamespace(values=np.require(self._frame[key].to_numpy(), requirements="W"))


def _install_writable_columns() -> None:
    from recbole.data.dataset.dataset import Dataset

    original = Dataset._dataframe_to_interaction
    if getattr(original, "_recbole_mm", False):
        return

    def dataframe_to_interaction(self: Any, data: Any) -> Any:
        return original(self, _WritableColumns(data))

    dataframe_to_interaction._recbole_mm = True
    Dataset._dataframe_to_interaction = dataframe_to_interaction


def install() -> None:
    """Fixes 8 and 9 (only under pandas >= 3) and 12."""
    _install_series_methods()
    _install_writable_columns()

"""Fix 20 (RecBole 1.2.1, any stack): ``ItemCoverage``, ``GiniIndex``, ``AveragePopularity`` or
``TailPercentage`` in ``metrics`` end the first evaluation with ``AttributeError: 'int' object has no attribute
'cpu'``. ``Collector.get_data_struct`` (evaluator/collector.py:224) calls ``.cpu()`` on every collected entry,
and ``data_collect`` stores two that are not tensors: ``data.num_items`` (an int) and ``data.count_items``
(a Counter). Delete when RecBole moves only tensors."""

from __future__ import annotations

import copy
from typing import Any

# The entries RecBole's own get_data_struct clears after each evaluation (its list, unchanged).
_PER_EVALUATION = ("rec.topk", "rec.meanrank", "rec.score", "rec.items", "data.label")


def get_data_struct(self: Any) -> Any:
    """RecBole's ``get_data_struct`` with ``.cpu()`` applied to tensors only."""
    entries = self.data_struct._data_dict
    for key, value in entries.items():
        if hasattr(value, "cpu"):
            entries[key] = value.cpu()
    returned = copy.deepcopy(self.data_struct)
    for key in _PER_EVALUATION:
        if key in self.data_struct:
            del self.data_struct[key]
    return returned


def install() -> None:
    from recbole.evaluator.collector import Collector

    if getattr(Collector.get_data_struct, "_recbole_mm", False):
        return
    get_data_struct._recbole_mm = True
    Collector.get_data_struct = get_data_struct

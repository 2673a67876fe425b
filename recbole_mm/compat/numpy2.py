"""Fix 4 (numpy 2): RecBole 1.2.1's ``Config`` assigns and later reads numpy aliases that numpy 2 removed.
Delete when RecBole stops using ``np.float_``/``np.float``/``np.bool``/``np.str``."""

from __future__ import annotations

from typing import Any

import numpy as np


# recbole/config/configurator.py:630 compatibility_settings() assigns np.float_ etc., removed in
# numpy 2, in every Config(); RecBole itself later reads np.float (evaluator/metrics.py:90,...),
# np.bool (metrics.py:287) and np.str (hyper_tuning.py plot_hyper), so the aliases must exist.
_NUMPY_ALIASES = {
    "bool": "bool_",
    "int": "int_",
    "float": "float64",
    "complex": "complex128",
    "object": "object_",
    "str": "str_",
    "long": "int_",
    "unicode": "str_",
}


def _numpy_compatibility_settings(self: Any) -> None:
    """Replacement for ``Config.compatibility_settings`` that only uses names numpy 2 still has."""
    for alias, target in _NUMPY_ALIASES.items():
        setattr(np, alias, getattr(np, target))


def install() -> None:
    """Set the aliases now (RecBole reads some at import) and in every ``Config``."""
    from recbole.config import configurator

    _numpy_compatibility_settings(None)
    configurator.Config.compatibility_settings = _numpy_compatibility_settings

"""Who is calling: fixes that change a library's behaviour act only for RecBole's own code."""

from __future__ import annotations

import sys


def caller_is_recbole(depth: int = 2) -> bool:
    """True when the frame ``depth`` levels up belongs to a ``recbole.*`` module (not recbole_mm)."""
    frame = sys._getframe(depth)
    module = frame.f_globals.get("__name__", "")
    return module == "recbole" or module.startswith("recbole.")

"""Every fix that lets RecBole 1.2.1 run on today's numpy, scipy, pandas, torch and setuptools, one module per
fix or per RecBole area, each deletable on its own.

RecBole 1.2.1 (Feb 2025) is the last release and upstream carries no compatibility fixes after it
(docs/recbole-compat.md lists the fixes by number and what each is for). Each fix names the upstream cause,
never edits RecBole's files, and is guarded by a test in ``tests/test_compat.py`` (16-19:
``tests/test_security.py``). Fixes that change library behaviour act only when the caller is RecBole's own
code (:mod:`recbole_mm.compat.callers`), so other users of numpy/pandas/torch see no difference. The
plugin's own behaviour on RecBole (multi-process runs, checkpoint names) is not here but in
:mod:`recbole_mm.hooks`; :mod:`recbole_mm.plugin` installs both when RecBole is first imported.

========================  ==========================================================
module                    fixes
========================  ==========================================================
``ray_stub``              1-3: ray <= 2.6.3 on setuptools >= 82, numpy 2, Python 3.12
``numpy2``                4: numpy aliases RecBole's ``Config`` sets and reads
``scipy_dok``             5: ``dok_matrix._update``
``checkpoints``           6: torch >= 2.6 ``weights_only`` loading
``hyper_tuning``          7, 15, 16: HyperTuning's exhaustive search, log, params file
``pandas3``               8, 9, 12: pandas 3 ``agg(len)``, copy-on-write, read-only arrays
``torch_deprecations``    13, 14: ``torch.cuda.amp``, ``torch.sparse.FloatTensor``
``pickles``               17-19: pickled caches and arrays
``ensure_dir``            RecBole's check-then-create folder race
``collector``             20: beyond-accuracy metrics crash the evaluation collector
========================  ==========================================================
"""

from __future__ import annotations

import importlib

# In install order: ray first (recbole.quick_start imports it), numpy's aliases before any Config.
FIXES = ("ray_stub", "numpy2", "scipy_dok", "pandas3", "torch_deprecations", "hyper_tuning", "ensure_dir",
         "pickles", "checkpoints", "collector")
_installed = False


def install() -> None:
    """Install every fix once; safe to call repeatedly."""
    global _installed
    if _installed:
        return
    for name in FIXES:
        importlib.import_module(f"recbole_mm.compat.{name}").install()
    _installed = True

"""Fix 5 (scipy >= 1.13): RecBole 1.2.1's graph models call ``dok_matrix._update``, which scipy removed.
Delete when RecBole builds its adjacency without that private method."""

from __future__ import annotations

from typing import Any


# LightGCN/NGCF/NCL/GCMC/SpectralCF/KGIN/MCCLK call A._update(dict) (e.g. lightgcn.py:111);
# scipy 1.13 removed that private method, and numpy 2 forces scipy >= 1.13.
def install() -> None:
    import scipy.sparse as sp

    if not hasattr(sp.dok_matrix, "_update"):

        def _update(self: Any, data: dict) -> None:
            self._dict.update(data)  # exactly scipy 1.12's body; _dict exists in 1.13–1.18

        sp.dok_matrix._update = _update

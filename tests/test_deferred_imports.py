"""scikit-learn is imported on first use, not by RecBole's imports (recbole_mm.deferred_imports), and a ray
that cannot import is stubbed without trying (compat fix 1-3): the memory a RecBole process holds for neither."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

PROBE = r"""
import json, sys
import recbole_mm
from recbole.quick_start import run_recbole
from recbole.utils import get_model
get_model("BPR")  # imports every RecBole general model, SLIMElastic and NCEPLRec included
from recbole.evaluator import metrics
from recbole.model.general_recommender import nceplrec, slimelastic
out = {"sklearn_after_imports": "sklearn" in sys.modules,
       "ray_modules": sorted(m for m in sys.modules if m.startswith("ray."))}
import numpy as np
out["auc"] = float(metrics.sk_auc(np.array([0.0, 0.5, 1.0]), np.array([0.0, 1.0, 1.0])))
import sklearn.metrics, sklearn.exceptions, sklearn.linear_model, sklearn.utils.extmath
out["auc_is_real_now"] = metrics.sk_auc is sklearn.metrics.auc
out["mae_is_real_now"] = metrics.mean_absolute_error is sklearn.metrics.mean_absolute_error
out["other_import_is_real"] = sklearn.metrics.__file__.endswith(".py")
slimelastic.ElasticNet(alpha=1.0)
out["slim_real"] = (slimelastic.ElasticNet is sklearn.linear_model.ElasticNet
                    and slimelastic.ConvergenceWarning is sklearn.exceptions.ConvergenceWarning)
out["svd_deferred"] = nceplrec.randomized_svd is not sklearn.utils.extmath.randomized_svd
print(json.dumps(out))
"""


def _probe(prefix: str = "") -> dict:
    run = subprocess.run([sys.executable, "-c", prefix + PROBE], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    return json.loads(run.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_recbole_imports_no_sklearn_and_its_names_become_the_real_ones_on_first_call():
    out = _probe()
    assert out["sklearn_after_imports"] is False
    assert out["auc"] == pytest.approx(0.75)
    assert out["auc_is_real_now"] and out["mae_is_real_now"] and out["other_import_is_real"]
    # SLIMElastic's first ElasticNet(...) swaps its module's stand-ins, ConvergenceWarning (its warning
    # filter's category) included; NCEPLRec's stay deferred until it calls randomized_svd.
    assert out["slim_real"] and out["svd_deferred"]
    assert out["ray_modules"] == ["ray.tune"]  # the stub only: the broken ray was not half-imported


@pytest.mark.slow
def test_nothing_is_deferred_when_sklearn_came_first():
    out = _probe("import sklearn.metrics\n")
    assert out["sklearn_after_imports"] is True and out["auc_is_real_now"] and out["svd_deferred"] is False


def test_ray_that_needs_pkg_resources_is_known_broken_without_importing_it(monkeypatch):
    import importlib.util
    from importlib import metadata

    from recbole_mm.compat import ray_stub

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(metadata, "version", lambda name: "2.6.3")
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "pkg_resources" else real_find_spec(name, *a))
    assert "pkg_resources" in ray_stub._cannot_import()
    monkeypatch.setattr(metadata, "version", lambda name: "2.40.0")
    assert ray_stub._cannot_import() is None  # a newer ray: only trying tells

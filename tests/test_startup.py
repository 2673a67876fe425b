"""What `import recbole_mm` and the commands load: torch and RecBole only when they are used.

Each check runs in a fresh interpreter (this test process has long imported both).
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from conftest import REPO

HEAVY = ("torch", "recbole")


def _python(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env, cwd=REPO, timeout=300)


def _imported(importtime_stderr: str) -> set[str]:
    """Module names from ``python -X importtime``'s report (``import time: self | cumulative | name``)."""
    return {line.rsplit("|", 1)[1].strip() for line in importtime_stderr.splitlines()
            if line.startswith("import time:") and line.count("|") == 2}


@pytest.mark.parametrize("argv", [
    ["-m", "recbole_mm", "download", "--help"],
    ["-m", "recbole_mm", "features", "--help"],
    ["-m", "recbole_mm.download", "download", "--help"],
    ["-m", "recbole_mm.datasets", "download", "--help"],  # the old name
    ["-m", "recbole_mm.features", "--help"],
    ["run_recbole_mm.py", "download", "--help"],
])
def test_download_and_features_start_without_torch_or_recbole(argv):
    done = _python("-X", "importtime", *argv)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.startswith("usage: ")
    modules = _imported(done.stderr)
    assert "recbole_mm" in modules and "argparse" in modules  # the report was read
    assert not {m for m in modules if m.split(".")[0] in HEAVY}


def test_console_usage_lines_name_the_command():
    code = ("from recbole_mm.cli import console_main\n"
            "import sys\n"
            "try:\n    console_main([sys.argv[1], '--help'])\nexcept SystemExit:\n    pass\n"
            "print('HEAVY', sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'recbole')))")
    for sub in ("download", "features"):
        done = _python("-c", code, sub)
        assert done.returncode == 0, done.stderr[-2000:]
        assert done.stdout.startswith(f"usage: recbole-mm {sub} ")
        assert done.stdout.rstrip().endswith("HEAVY []")


# Each line imports something first; the rest must then see RecBole fixed and the plugin registered.
CHECK = ("import numpy as np, recbole.quick_start as q\n"
         "from recbole.utils import get_model\n"
         "from recbole.config import Config\n"
         "import recbole_mm.model.general_recommender.vbpr as vbpr\n"
         "assert get_model('VBPR') is vbpr.VBPR, get_model('VBPR')\n"
         "assert get_model('LightGCN').__module__.startswith('recbole.model.')\n"
         "assert q.load_data_and_model.__module__.startswith('recbole_mm.'), q.load_data_and_model\n"
         "assert np.float is np.float64\n"
         "print('OK')\n")


@pytest.mark.parametrize("first", [
    "import recbole_mm",
    pytest.param("import recbole_mm.quick_start", marks=pytest.mark.slow),
    "from recbole_mm.model.general_recommender.gume import GUME",
    pytest.param("import recbole_mm; import recbole.config", marks=pytest.mark.slow),
    pytest.param("import scipy, torch; import recbole_mm; from recbole.trainer import Trainer", marks=pytest.mark.slow),
])
def test_recbole_is_fixed_and_finds_the_models_whatever_is_imported_first(first):
    done = _python("-c", f"{first}\n{CHECK}")
    assert done.returncode == 0 and done.stdout.strip().endswith("OK"), done.stderr[-3000:]


def test_import_recbole_mm_alone_loads_neither_and_its_names_come_on_use():
    done = _python("-c", "import sys, recbole_mm\n"
                         "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'recbole')))\n"
                         "print(recbole_mm.run_recbole.__module__, recbole_mm.MultiModalDataset.__name__)\n"
                         "from recbole_mm import recommend\nprint(recommend.__module__)\n"
                         "print(recbole_mm.quick_start.run.__name__, recbole_mm.checkpoint.__name__)\n"
                         "print(hasattr(recbole_mm, 'no_such_thing'))")
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split("\n")[:5] == ["[]", "recbole_mm.quick_start MultiModalDataset",
                                           "recbole_mm.recommendations", "run recbole_mm.checkpoint", "False"]


def test_recbole_first_then_recbole_mm_installs_at_once():
    done = _python("-c", "import recbole\nimport recbole_mm\n" + CHECK)
    assert done.returncode == 0 and done.stdout.strip().endswith("OK"), done.stderr[-3000:]

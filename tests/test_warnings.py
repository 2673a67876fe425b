"""A run's log is quiet and true: no library warning the user cannot act on, and a wall time that
covers the whole process.

The warnings fixed here (numpy's non-writable array, torch's GradScaler and legacy sparse
constructor, the sparse-CSR beta note) are printed once per process, so an in-process test after any
other test would pass without proving anything: each case runs ``run_recbole_mm.py`` in a fresh
interpreter, with Python's default warning filters (what a user sees), and reads its output.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from conftest import REPO, planted_config, write_planted_dataset

from recbole_mm.compat import pandas3

WARNING_LINE = re.compile(r"\b\w*Warning: ")


def _cli(tmp_path: Path, model: str, *extra: str) -> tuple[subprocess.CompletedProcess, float]:
    root = tmp_path / "data"
    if not root.exists():
        write_planted_dataset(root)
    config = {k: v for k, v in planted_config(root).items() if k not in ("state", "show_progress")}
    (tmp_path / "planted.yaml").write_text(yaml.safe_dump(config))
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    env.pop("PYTHONWARNINGS", None)
    command = [sys.executable, str(REPO / "run_recbole_mm.py"), f"--model={model}",
               "--dataset=planted", "--config_files=planted.yaml", *extra]
    start = time.perf_counter()
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    return done, time.perf_counter() - start


@pytest.mark.slow
@pytest.mark.parametrize("model", ["GUME", "LightGCN"])
def test_a_short_run_prints_no_library_warnings(model, tmp_path):
    """GUME: numpy's non-writable array (RecBole's dataframe conversion), torch.cuda.amp.GradScaler
    (RecBole's training loop), the sparse-CSR beta note (the propagation's CSR copies); LightGCN:
    torch.sparse.FloatTensor (RecBole's adjacency). None may reach the log."""
    done, _ = _cli(tmp_path, model)
    assert done.returncode == 0, done.stderr[-3000:]
    warned = [line for line in (done.stdout + done.stderr).splitlines() if WARNING_LINE.search(line)]
    assert not warned, warned


@pytest.mark.slow
def test_printed_wall_time_covers_the_whole_process(tmp_path):
    """The summary's wall time counts from the process start (imports, config, data) to the results,
    not from the start of run_recbole: it is most of what the caller measured around the process."""
    done, elapsed = _cli(tmp_path, "BPR")
    assert done.returncode == 0, done.stderr[-3000:]
    match = re.search(r"wall time (\d+\.\d) s \((\d+\.\d) s start-up\)", done.stdout)
    assert match, done.stdout[-2000:]
    wall, start_up = float(match.group(1)), float(match.group(2))
    assert 0 < start_up < wall <= elapsed + 0.1
    # Start-up (imports alone take seconds) outweighs training one epoch on the tiny set: a wall time
    # from run_recbole's start, as printed before, came to well under 70% of the process.
    assert wall >= 0.7 * elapsed, (wall, elapsed)


# ---- the shims, one by one (in-process: what they hand RecBole) ---------------------------------
def test_recbole_gets_writable_column_arrays():
    frame = pd.DataFrame({"a": np.arange(5), "b": np.ones(5)})
    view = pandas3._WritableColumns(frame)
    assert list(view) == ["a", "b"]
    for key in view:
        assert view[key].values.flags.writeable
        np.testing.assert_array_equal(view[key].values, frame[key].to_numpy())


def test_recbole_trainer_amp_is_the_device_generic_api(recwarn):
    import recbole.trainer.trainer as trainer_module

    scaler = trainer_module.amp.GradScaler(enabled=False)
    assert isinstance(scaler, torch.amp.GradScaler) and not scaler.is_enabled()
    with trainer_module.amp.autocast(enabled=False):
        pass
    assert not [w for w in recwarn if issubclass(w.category, FutureWarning)]


def test_legacy_sparse_constructor_keeps_its_semantics_for_recbole():
    indices, values = torch.tensor([[0, 1], [1, 0]]), torch.tensor([1.0, 2.0], dtype=torch.float64)
    # Called as RecBole does (from a recbole.* module): the non-deprecated constructor, same result.
    namespace = {"__name__": "recbole.model.general_recommender.fake", "torch": torch,
                 "indices": indices, "values": values}
    built = eval("torch.sparse.FloatTensor(indices, values, torch.Size([2, 3]))", namespace)
    assert built.layout == torch.sparse_coo and built.dtype == torch.float64 and built.shape == (2, 3)
    torch.testing.assert_close(built.to_dense(), torch.tensor([[0, 1.0, 0], [2.0, 0, 0]], dtype=torch.float64))
    # Anyone else gets torch's own class, and isinstance checks still see it.
    mine = torch.sparse.FloatTensor(indices, values.float(), torch.Size([2, 3]))
    assert type(mine) is torch.Tensor and isinstance(mine, torch.sparse.FloatTensor._original)
    assert isinstance(mine, torch.sparse.FloatTensor) == isinstance(mine, torch.sparse.FloatTensor._original)

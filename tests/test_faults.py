"""Faults of disk, folder and input: each is one ``recbole_mm: error:`` line with exit status 2, and nothing
half-written is left behind (temporary files are removed on failure, and a killed run's by the next run).

Most cases run in this process on tiny generated data. A full disk and a read-only folder are real in
:func:`test_full_disk_and_read_only_folders_for_real`, which mounts two tiny tmpfs file systems (one full,
one read-only) in a private mount namespace (``unshare``; skipped where the machine does not allow one):
``chmod`` cannot make a folder read-only for root, and a full disk cannot be simulated faithfully (a
memory-mapped write into it dies of SIGBUS, not of an exception).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import io
import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from conftest import REPO, planted_config, write_planted_dataset

from recbole_mm import analysis, checkpoint, cli, encoders, features, storage
from recbole_mm.benchmark import command as bench_command
from recbole_mm.benchmark import runner as bench_runner
from recbole_mm import download
from recbole_mm.errors import RecBoleMMError, exit_on_user_error

ENOSPC_TEXT = "No space left on device: the disk is full"


def one_line(main, *args: str) -> str:
    """Run an entry point's ``main`` as its ``__main__`` does; assert exit status 2 and exactly one error
    line on stderr; return it. ``sys.argv`` is set too: RecBole's Config reads ``--key=value`` from it."""
    err, argv = io.StringIO(), sys.argv
    sys.argv = ["prog", *args]
    try:
        with contextlib.redirect_stderr(err), pytest.raises(SystemExit) as stop:
            exit_on_user_error(lambda: main(list(args)))
    finally:
        sys.argv = argv
    lines = err.getvalue().strip().splitlines()
    assert stop.value.code == 2, lines
    assert len(lines) == 1 and lines[0].startswith("recbole_mm: error: "), lines
    return lines[0]


def tree(folder: Path) -> list[str]:
    """Every path under ``folder``, hidden ones included, relative to it."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def planted_args(root: Path, *extra: str, name: str = "planted", model: str = "BPR") -> tuple[str, ...]:
    return (f"--model={model}", f"--dataset={name}", f"--data_path={root}", "--USER_ID_FIELD=userID",
            "--ITEM_ID_FIELD=itemID", "--epochs=1", "--show_progress=False", "--topk=[10]",
            "--valid_metric=Recall@10", "--state=WARNING", *extra)


@contextlib.contextmanager
def held_lock(path: Path):
    """Hold the lock a live writer holds on its temporary file (another process, as far as flock cares)."""
    fd = os.open(path, os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        yield
    finally:
        os.close(fd)


# ---- 1. checkpoint writes ---------------------------------------------------------------------------
def test_torch_write_failure_is_one_line_and_leaves_the_old_checkpoint(tmp_path, monkeypatch):
    """torch hides a full disk behind ``RuntimeError: [enforce fail at inline_container.cc:672]``; only
    OSError was caught, so the run ended in that traceback with a .pth.tmp left behind."""
    path = tmp_path / "BPR.pth"
    checkpoint.save_atomically({"epoch": 1}, str(path))
    real_save = torch.save

    def full_disk(state, f, *args, **kwargs):
        f.write(b"PK\x03\x04 the first bytes")
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")

    monkeypatch.setattr(checkpoint.torch, "save", full_disk)
    with pytest.raises(storage.StorageError) as exc:
        checkpoint.save_atomically({"epoch": 2}, str(path))
    line = str(exc.value)
    assert f"cannot write checkpoint {path}" in line and "--checkpoint_dir" in line and "\n" not in line
    assert tree(tmp_path) == ["BPR.pth"]  # no temporary file, and the previous checkpoint ...
    monkeypatch.setattr(checkpoint.torch, "save", real_save)
    assert torch.load(path, weights_only=True) == {"epoch": 1}  # ... unchanged

    def no_space(state, f, *args, **kwargs):  # the OSError torch's writer met, as our file object records it
        f.write(b"PK")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(checkpoint.torch, "save", no_space)
    with pytest.raises(storage.StorageError, match=f"{ENOSPC_TEXT}\\); free space on that disk"):
        checkpoint.save_atomically({"epoch": 2}, str(path))
    assert tree(tmp_path) == ["BPR.pth"]


@pytest.mark.slow
def test_a_killed_writers_temporary_files_are_removed_by_the_next_run(tmp_path, monkeypatch, capsys):
    """A temporary checkpoint nobody holds (a killed run's, in today's and in the old naming) is removed by
    the next checkpoint write into the folder; one a live writer holds (a parallel run) is kept."""
    root = tmp_path / "data"
    write_planted_dataset(root)
    saved = tmp_path / "saved"
    saved.mkdir()
    killed = saved / ".BPR-Jan-01-2025_00-00-00-abcdef.last.pth.0a1b2c3d.tmp"
    old_naming = saved / "BPR-Jan-01-2025_00-00-00.pth.tmp"
    live = saved / ".GUME-Jan-01-2025_00-00-00-123456.pth.4e5f6a7b.tmp"
    for path in (killed, old_naming, live):
        path.write_bytes(b"PK\x03\x04 half a checkpoint")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["run_recbole_mm.py", *planted_args(root, f"--checkpoint_dir={saved}")])
    with held_lock(live):
        cli.main()
    names = tree(saved)
    assert live.name in names and killed.name not in names and old_naming.name not in names
    assert len([n for n in names if n.endswith(".pth")]) == 2  # the run's best and last checkpoints


# ---- 2. RecBole's log folders ----------------------------------------------------------------------
def test_log_folders_follow_log_dir_and_are_checked_first(tmp_path, monkeypatch):
    """RecBole writes ./log and ./log_tensorboard into the working directory; log_dir moves both, and a
    log_dir that cannot be written is one line before the data loads."""
    root = tmp_path / "data"
    write_planted_dataset(root)
    monkeypatch.chdir(tmp_path)
    blocker = tmp_path / "afile"
    blocker.write_text("")
    before = tree(tmp_path)
    line = one_line(cli.main, *planted_args(root, f"--log_dir={blocker}/logs"))
    assert line == (f"recbole_mm: error: log_dir: RecBole's log/ folder cannot be written under "
                    f"--log_dir={blocker}/logs: {blocker} is a file; set --log_dir to a folder you can write to")
    assert tree(tmp_path) == before

    monkeypatch.setattr(sys, "argv", ["run_recbole_mm.py", *planted_args(root, f"--log_dir={tmp_path}/logs",
                                                                          f"--checkpoint_dir={tmp_path}/saved")])
    cli.main()
    assert not (tmp_path / "log").exists() and not (tmp_path / "log_tensorboard").exists()
    [log_file] = (tmp_path / "logs" / "log" / "BPR").glob("BPR-planted-*.log")
    [events] = (tmp_path / "logs" / "log_tensorboard").glob(f"{log_file.stem}/events.out.tfevents.*")
    assert events.stat().st_size > 0


def test_recboles_own_run_recbole_follows_log_dir(tmp_path, monkeypatch):
    """After ``import recbole_mm`` RecBole's own entry point (its init_logger, its trainer's tensorboard)
    writes under log_dir too."""
    from recbole.quick_start import run_recbole as recbole_run

    root = tmp_path / "data"
    folder = root / "atomic"
    folder.mkdir(parents=True)
    rows = [(u, i) for u in range(30) for i in range(40) if (u + i) % 4 == 0]
    pd.DataFrame(rows, columns=["user_id:token", "item_id:token"]).to_csv(folder / "atomic.inter", sep="\t", index=False)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["x"])
    recbole_run(model="BPR", dataset="atomic", config_dict={
        "data_path": str(root), "epochs": 1, "show_progress": False, "state": "WARNING",
        "log_dir": str(tmp_path / "logs"), "checkpoint_dir": str(tmp_path / "saved")})
    assert sorted(p.name for p in (tmp_path / "logs").iterdir()) == ["log", "log_tensorboard"]
    assert not (tmp_path / "log").exists() and not (tmp_path / "log_tensorboard").exists()


# ---- 3. feature extraction --------------------------------------------------------------------------
class StubEncoder(encoders.Encoder):
    """Deterministic text encoder: (length, spaces, 1)."""

    name, dim = "stub", 3

    def encode_text(self, texts):
        return np.asarray([[len(t), t.count(" "), 1] for t in texts], np.float32)


KILLED_EXTRACTION = textwrap.dedent("""
    import os, signal, sys
    import numpy as np
    from recbole_mm import encoders, features

    class Dying(encoders.Encoder):
        name, dim = "dying", 3
        calls = 0
        def encode_text(self, texts):
            Dying.calls += 1
            if Dying.calls == 2:  # the temporary file exists and holds the first batch
                os.kill(os.getpid(), signal.SIGKILL)
            return np.ones((len(texts), 3), np.float32)

    features.make_encoder = lambda modality, spec: Dying()
    encoders.EncoderSpec.check = lambda self, modalities: None
    features.main(sys.argv[1:])
""")


@pytest.mark.slow
def test_a_killed_extraction_leaves_a_temporary_file_that_the_next_run_removes(tmp_path, monkeypatch):
    items = tmp_path / "items.tsv"
    pd.DataFrame({"itemID": range(8), "text": [f"item {i}" for i in range(8)]}).to_csv(items, sep="\t", index=False)
    out = tmp_path / "ds"
    args = [str(items), "-o", str(out), "--batch-size", "3", "--no-progress"]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    killed = subprocess.run([sys.executable, "-c", KILLED_EXTRACTION, *args], capture_output=True, text=True,
                            env=env, timeout=600)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    [stale] = out.glob(".text_feat.npy.*.tmp")
    monkeypatch.setattr(features, "make_encoder", lambda modality, spec: StubEncoder())
    monkeypatch.setattr(encoders.EncoderSpec, "check", lambda self, modalities: None)
    features.main(args)
    assert tree(out) == ["text_feat.npy"] and not stale.exists()
    assert np.load(out / "text_feat.npy")[7].tolist() == [6.0, 1.0, 1.0]


def test_feature_output_folder_faults_are_one_line(tmp_path, monkeypatch):
    items = tmp_path / "items.tsv"
    pd.DataFrame({"itemID": [0, 1], "text": ["a", "b c"]}).to_csv(items, sep="\t", index=False)
    monkeypatch.setattr(features, "make_encoder", lambda modality, spec: StubEncoder())
    monkeypatch.setattr(encoders.EncoderSpec, "check", lambda self, modalities: None)
    blocker = tmp_path / "afile"
    blocker.write_text("")
    line = one_line(features.main, str(items), "--output-dir", f"{blocker}/ds", "--no-progress")
    assert line == (f"recbole_mm: error: --output-dir {blocker}/ds cannot be used: {blocker} is a file; "
                    "give --output-dir a folder you can write to")
    (tmp_path / "ds" / "text_feat.npy").mkdir(parents=True)
    line = one_line(features.main, str(items), "--output-dir", str(tmp_path / "ds"), "--no-progress")
    assert f"{tmp_path / 'ds' / 'text_feat.npy'} is a folder" in line
    assert tree(tmp_path / "ds") == ["text_feat.npy"]

    def full(self, nbytes):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(storage.TempFile, "reserve", full)
    line = one_line(features.main, str(items), "--output-dir", str(tmp_path / "ds2"), "--no-progress")
    assert f"cannot write text feature file {tmp_path / 'ds2' / 'text_feat.npy'} ({ENOSPC_TEXT})" in line
    assert tree(tmp_path / "ds2") == []


# ---- 4. downloader and benchmark folders ------------------------------------------------------------
@pytest.fixture
def by_hand(tmp_path) -> tuple[Path, dict]:
    """A dataset's files 'downloaded by hand' into a folder, and a table with their digests."""
    import hashlib

    made = write_planted_dataset(tmp_path / "made", n_users=2000)  # a 150 KiB .inter
    folder = tmp_path / "by-hand"
    folder.mkdir()
    shutil.copy(made / "planted.inter", folder / "baby.inter")
    data = (folder / "baby.inter").read_bytes()
    table = {"amazon-baby": download.RemoteDataset("baby", (download.RemoteFile(
        "baby.inter", len(data), hashlib.sha256(data).hexdigest()),))}
    return folder, table


def test_download_folder_faults_are_one_line(tmp_path, by_hand, monkeypatch):
    folder, table = by_hand
    monkeypatch.setattr(download, "DATASETS", table)
    blocker = tmp_path / "afile"
    blocker.write_text("")
    line = one_line(download.main, "download", "amazon-baby", "--from", str(folder), "--data-path", f"{blocker}/data")
    assert line == (f"recbole_mm: error: --data-path {blocker}/data cannot be used: {blocker} is a file; "
                    "give --data-path a folder you can write to")
    data = tmp_path / "data"
    data.mkdir()
    (data / "amazon-baby").write_text("")
    line = one_line(download.main, "download", "amazon-baby", "--from", str(folder), "--data-path", str(data))
    assert f"{data / 'amazon-baby'} is a file, so amazon-baby cannot be installed there" in line
    (data / "amazon-baby").unlink()

    # A killed install's staging folder goes with the next install; a live one's stays.
    killed, live = data / ".amazon-baby.partial-1a2b3c4d", data / ".amazon-baby.partial-5e6f7a8b"
    for staging in (killed, live):
        staging.mkdir()
        (staging / "baby.inter.fetched").write_bytes(b"half")
    with held_lock(live):
        download.install("amazon-baby", str(data), download.LocalTransport(str(folder)), table=table, log=lambda *a: None)
    assert tree(data) == [".amazon-baby.partial-5e6f7a8b", ".amazon-baby.partial-5e6f7a8b/baby.inter.fetched",
                          "amazon-baby", "amazon-baby/baby.inter"]

    def no_space(src, dst):
        Path(dst).write_bytes(b"half")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), dst)

    shutil.rmtree(data)
    monkeypatch.setattr(download.shutil, "copyfile", no_space)
    line = one_line(download.main, "download", "amazon-baby", "--from", str(folder), "--data-path", str(data))
    assert f"cannot write amazon-baby file {data / 'amazon-baby' / 'baby.inter'} ({ENOSPC_TEXT})" in line
    assert "cannot fetch" not in line
    assert tree(data) == []


def fake_run_cell(model, dataset, config, workdir, threads=None) -> dict:
    return {"valid": {"recall@20": 0.2}, "test": {"recall@20": 0.1}, "best_valid_score": 0.2, "best_epoch": 0,
            "epochs": 1, "train_seconds": 0.1, "eval_seconds": 0.1, "peak_memory_mb": {"rss": 1.0},
            "parameters": 1, "history": [], "checkpoint": None, "config": {}}


def test_benchmark_output_faults_are_one_line(tmp_path, monkeypatch):
    """--out under a file is refused before any cell runs; a write that fails in a worker thread (the
    disk fills up) is one line, where it was an OSError traceback in the thread and then a KeyError."""
    ran = []
    monkeypatch.setattr(bench_runner, "_run_in_subprocess", lambda *a, **k: ran.append(a) or fake_run_cell(*a, **k))
    blocker = tmp_path / "afile"
    blocker.write_text("")
    root = tmp_path / "data"
    write_planted_dataset(root)
    plan = tmp_path / "plan.yaml"
    plan.write_text(yaml.safe_dump({"datasets": ["planted"], "seeds": [1], "config": planted_config(root),
                                    "runs": {"BPR": {"model": "BPR"}}}))
    monkeypatch.chdir(tmp_path)
    line = one_line(bench_command.main, "--plan", str(plan), "--out", f"{blocker}/results")
    assert line == (f"recbole_mm: error: --out {blocker}/results cannot be used: {blocker} is a file; "
                    "give --out a folder you can write to")
    assert ran == []

    real_write = storage.atomic_write

    @contextlib.contextmanager
    def full_disk(path, *args, **kwargs):
        with real_write(path, *args, **kwargs) as tmp:
            yield tmp
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(storage, "atomic_write", full_disk)
    line = one_line(bench_command.main, "--plan", str(plan), "--out", str(tmp_path / "results"))
    assert "cannot write benchmark cache" in line and ENOSPC_TEXT in line and len(ran) == 1
    assert [name for name in tree(tmp_path / "results") if not name.endswith(".lock")] == []


def test_broken_benchmark_cache_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setattr(bench_runner, "_run_in_subprocess", fake_run_cell)
    (tmp_path / "d.cells.json").write_text('{"abc": {"valid"')
    plan = {"datasets": ["d"], "seeds": [1], "runs": {"M": {"model": "M"}}}
    with pytest.raises(RecBoleMMError, match=r"d.cells.json cannot be read .*; delete it \(its cells run again\)"):
        bench_runner.Runner(tmp_path, tmp_path).run_plans([plan])


# ---- 5. feature files that are not .npy ---------------------------------------------------------------
class Payload:
    """Unpickling this creates a file: the proof that a loader unpickled it."""

    def __init__(self, target: str):
        self.target = target

    def __reduce__(self):
        return (open, (self.target, "w"))


def test_npz_and_pickled_feature_files(tmp_path, monkeypatch):
    from recbole_mm.data.files import open_feature_file

    features_ = np.arange(15, dtype=np.float32).reshape(5, 3)
    np.savez(tmp_path / "one.npz", features=features_)
    array, missing = open_feature_file(str(tmp_path / "one.npz"), "image", 5)
    np.testing.assert_array_equal(array, features_)
    assert missing.tolist() == []

    np.savez(tmp_path / "two.npz", image=features_, text=features_)
    with pytest.raises(RecBoleMMError, match=r"two.npz: a .npz \(zip\) file holding 2 arrays \(image, text\); "
                                             r"a feature file is one array: save the features with numpy.save"):
        open_feature_file(str(tmp_path / "two.npz"), "image", 5)

    payload = tmp_path / "payload-ran"
    np.savez(tmp_path / "objects.npz", features=np.array([Payload(str(payload))], dtype=object))
    torch.save({"features": torch.from_numpy(features_), "extra": Payload(str(payload))}, tmp_path / "feat.pt")
    torch.save(torch.from_numpy(features_), tmp_path / "legacy.pt", _use_new_zipfile_serialization=False)
    (tmp_path / "pickle.npy").write_bytes(pickle.dumps(Payload(str(payload))))
    monkeypatch.setattr(torch, "load", lambda *a, **k: pytest.fail("a feature file went through torch.load"))
    for name, message in (("objects.npz", "cannot be read without unpickling"),
                          ("feat.pt", r"a torch file \(torch.save\), which recbole_mm does not load"),
                          ("legacy.pt", "a pickle"), ("pickle.npy", "a pickle")):
        with pytest.raises(RecBoleMMError, match=message) as exc:
            open_feature_file(str(tmp_path / name), "image", 5)
        assert "numpy.save" in str(exc.value) and "\n" not in str(exc.value)
    assert not payload.exists()


def test_npz_features_through_the_command_line(tmp_path, monkeypatch):
    """The dataset config may name a one-array .npz; the old AttributeError ('NpzFile' object has no
    attribute 'ndim') is gone either way."""
    root = tmp_path / "data"
    folder = write_planted_dataset(root)
    image = np.load(folder / "image_feat.npy")
    np.savez(folder / "image_feat.npz", image, image)
    monkeypatch.chdir(tmp_path)
    modalities = "--modalities={'image':'image_feat.npz'}"
    line = one_line(cli.main, *planted_args(root, modalities, model="VBPR"))
    assert "image_feat.npz: a .npz (zip) file holding 2 arrays (arr_0, arr_1)" in line
    assert not (tmp_path / "log").exists()
    np.savez(folder / "image_feat.npz", image)
    monkeypatch.setattr(sys, "argv", ["run_recbole_mm.py", *planted_args(root, modalities, model="VBPR"),
                                      f"--checkpoint_dir={tmp_path}/saved"])
    cli.main()


# ---- 6. datasets too small to train ---------------------------------------------------------------------
def write_inter(root: Path, name: str, rows: list[tuple[int, int, int]], n_items: int) -> None:
    folder = root / name
    folder.mkdir(parents=True)
    pd.DataFrame(rows, columns=["userID", "itemID", "x_label"]).to_csv(folder / f"{name}.inter", sep="\t", index=False)
    for modality, dim in (("image", 4), ("text", 3)):
        np.save(folder / f"{modality}_feat.npy", np.ones((n_items, dim), np.float32))


def test_one_item_or_a_user_with_every_item_is_one_line(tmp_path, monkeypatch):
    """RecBole's sampler ended in 'ValueError: Some users have interacted with all items'; a topk above
    the number of items ended in torch's 'selected index k out of range' after the first epoch."""
    root = tmp_path / "data"
    write_inter(root, "one-item", [(u, 0, 0) for u in range(5)] + [(0, 0, 1), (1, 0, 2)], 1)
    write_inter(root, "one-user", [(0, i, 0) for i in range(5)] + [(0, 5, 1), (0, 6, 2)], 7)
    write_inter(root, "few-items", [(u, (u + k) % 6, label) for u in range(6) for k, label in enumerate((0, 0, 1, 2))], 6)
    monkeypatch.chdir(tmp_path)
    before = tree(tmp_path)
    for model, extra in (("BPR", ()), ("VBPR", ("--modalities={'image':'image_feat.npy'}",))):
        line = one_line(cli.main, *planted_args(root, *extra, name="one-item", model=model))
        assert line == (f"recbole_mm: error: {root / 'one-item' / 'one-item.inter'}: a single item, so training "
                        "has no negative item to sample; a recommender needs at least two items: add items")
        line = one_line(cli.main, *planted_args(root, *extra, name="one-user", model=model))
        assert line == (f"recbole_mm: error: {root / 'one-user' / 'one-user.inter'}: userID 0 interacted with all "
                        "7 items, so training has no negative item to sample for them; add items, or remove those "
                        "users' rows")
    line = one_line(cli.main, *planted_args(root, name="few-items"))
    assert line == ("recbole_mm: error: topk: [10] asks for more items than the 6 of "
                    f"{root / 'few-items' / 'few-items.inter'}; give topk values up to 6, e.g. --topk=[6]")
    assert tree(tmp_path) == before  # no log, no checkpoint


# ---- 7. benchmark plans --------------------------------------------------------------------------------
PLAN_CASES = [
    ([{"datasets": ["d"], "runs": {"A": {"model": "BPR"}}}], "holds a yaml list, not a mapping"),
    ({"datasets": "tiktok", "runs": {"A": {"model": "BPR"}}}, "datasets: 'tiktok' is not a list of dataset names"),
    ({"datasets": ["d"], "seeds": ["999"], "runs": {"A": {"model": "BPR"}}}, "seeds: '999' is not a seed"),
    ({"datasets": ["d"], "seed": [1], "runs": {"A": {"model": "BPR"}}}, "unknown key(s) seed; a plan has datasets"),
    ({"datasets": ["d"], "runs": [{"model": "BPR"}]}, "runs must map a label to a run"),
    ({"datasets": ["d"], "runs": {"A": {"model": "BPR", "grid": {"reg_weight": 0.1}}}},
     "run 'A': grid key 'reg_weight' needs a non-empty list of values"),
    ({"datasets": ["d"], "runs": {"A": {"model": "BPR", "grid": [0.1, 0.2]}}}, "a grid list needs one mapping per point"),
    ({"datasets": ["d"], "runs": {"A": {"model": "BPR", "seeds": 5}}}, "run 'A': seeds: 5 is not a list of seeds"),
    ({"datasets": ["d"], "config": [1], "runs": {"A": {"model": "BPR"}}}, "config: [1] is not a mapping of settings"),
    ({"datasets": ["d"], "report": "../x", "runs": {"A": {"model": "BPR"}}}, "report: '../x' is not a file name"),
    ({"datasets": ["d"], "runs": {"A": {"model": "BPR"}}, "longtail": "A"}, "longtail: 'A' is not a list of run labels"),
]


@pytest.mark.parametrize("plan, message", PLAN_CASES, ids=[m for _, m in PLAN_CASES])
def test_plan_shapes_are_one_line_before_anything_runs(plan, message, tmp_path, monkeypatch):
    monkeypatch.setattr(bench_runner, "_run_in_subprocess", lambda *a, **k: pytest.fail("a cell ran"))
    path = tmp_path / "plan.yaml"
    path.write_text(yaml.safe_dump(plan))
    line = one_line(bench_command.main, "--plan", str(path), "--out", str(tmp_path / "out"))
    assert f"benchmark plan {path}" in line and message in line
    assert not (tmp_path / "out").exists()


def test_plan_models_settings_and_datasets_are_checked_before_any_cell(tmp_path, monkeypatch):
    """A misspelt model ran, showed a failed row and exited 0; now it, a bad setting at a grid point and an
    unknown dataset are one line before any cell runs, under --report-only too (for the model)."""
    monkeypatch.setattr(bench_runner, "_run_in_subprocess", lambda *a, **k: pytest.fail("a cell ran"))
    root = tmp_path / "data"
    write_planted_dataset(root)
    config = {k: v for k, v in planted_config(root).items() if k != "seed"}
    path = tmp_path / "plan.yaml"
    monkeypatch.chdir(tmp_path)
    cases = [
        ({"runs": {"ok": {"model": "BPR"}, "typo": {"model": "VPBR"}}}, (),
         "run 'typo': unknown model 'VPBR': not a RecBole model nor one of recbole_mm's"),
        ({"runs": {"typo": {"model": "gume"}}}, ("--report-only",), "run 'typo': unknown model 'gume'"),
        ({"runs": {"A": {"model": "BPR", "grid": {"learning_rate": [0.01, -1]}}}}, (),
         "run 'A' on planted at grid point {'learning_rate': -1}: learning_rate: -1"),
        ({"datasets": ["Planted"], "runs": {"A": {"model": "BPR"}}}, (),
         "dataset 'Planted': folder " + str(root / "Planted") + " not found (datasets there: planted;"),
    ]
    for plan, extra, message in cases:
        path.write_text(yaml.safe_dump({"datasets": ["planted"], "seeds": [1], "config": config, **plan}))
        line = one_line(bench_command.main, "--plan", str(path), "--out", str(tmp_path / "out"), *extra)
        assert f"benchmark plan {path}: " in line and message in line, line
    assert not (tmp_path / "out").exists() and not (tmp_path / "log").exists()


# ---- 8. more writers of the same kind ---------------------------------------------------------------------
def test_analysis_and_checkpoint_conversion_outputs_are_checked_first(tmp_path, monkeypatch):
    """analysis longtail --out under a file failed with FileExistsError after every checkpoint had loaded,
    and converting a checkpoint into a folder under a file with a traceback; both are one line first."""
    from recbole_mm import analysis

    monkeypatch.chdir(tmp_path)
    blocker = tmp_path / "afile"
    blocker.write_text("")
    line = one_line(analysis.main, "longtail", str(tmp_path / "not-loaded.pth"), "--out", f"{blocker}/lt")
    assert line == (f"recbole_mm: error: --out's folder {blocker} cannot be used: {blocker} is a file; give --out "
                    "a path in a folder you can write to")
    line = one_line(checkpoint.main, str(tmp_path / "not-read.pth"), f"{blocker}/converted/BPR.pth")
    assert line == (f"recbole_mm: error: DST's folder {blocker}/converted cannot be used: {blocker} is a file; give "
                    "DST in a folder you can write to")
    assert tree(tmp_path) == ["afile"]


# ---- real full disk and read-only folders ---------------------------------------------------------------
SANDBOX_DRIVER = textwrap.dedent("""
    import contextlib, io, json, os, sys
    sys.path.insert(0, sys.argv[1])
    import numpy as np
    import recbole_mm
    from recbole_mm import cli, download, encoders, features
    from recbole_mm.benchmark import command as bench_command
    from recbole_mm.errors import exit_on_user_error
    import test_faults

    tmp = sys.argv[2]
    ro, full, root = f"{tmp}/ro", f"{tmp}/full", f"{tmp}/data"
    import hashlib
    data = open(f"{tmp}/by-hand/baby.inter", "rb").read()
    download.DATASETS = {"amazon-baby": download.RemoteDataset("baby", (download.RemoteFile(
        "baby.inter", len(data), hashlib.sha256(data).hexdigest()),))}
    features.make_encoder = lambda modality, spec: test_faults.StubEncoder()
    encoders.EncoderSpec.check = lambda self, modalities: None

    def call(main, *args, cwd=tmp):
        os.chdir(cwd)
        err, sys.argv = io.StringIO(), ["prog", *args]
        code = 0
        with contextlib.redirect_stderr(err):
            try:
                exit_on_user_error(lambda: main(list(args)))
            except SystemExit as stop:
                code = stop.code
        return {"code": code, "stderr": err.getvalue().strip().splitlines()}

    bpr = test_faults.planted_args(root)
    results = {
        "cwd": call(cli.main, *bpr, f"--checkpoint_dir={tmp}/saved", cwd=ro),
        "cwd with log_dir": call(cli.main, *bpr, f"--log_dir={tmp}/logs", f"--checkpoint_dir={tmp}/saved", cwd=ro),
        "checkpoint": call(cli.main, *bpr, "--embedding_size=512", f"--checkpoint_dir={full}"),
        "download": call(download.main, "download", "amazon-baby", "--from", f"{tmp}/by-hand", "--data-path", ro),
        "download full": call(download.main, "download", "amazon-baby", "--from", f"{tmp}/by-hand", "--data-path", full),
        "features": call(features.main, f"{tmp}/items.tsv", "-o", f"{ro}/ds", "--no-progress"),
        "features full": call(features.main, f"{tmp}/items.tsv", "-o", full, "--num-items", "100000", "--no-progress"),
        "benchmark": call(bench_command.main, "--plan", f"{tmp}/plan.yaml", "--out", f"{ro}/results"),
    }
    results["full left"] = sorted(os.listdir(full))
    print(json.dumps(results))
""")


def _sandbox(tmp_path: Path, size_kib: int) -> list[str]:
    """The shell command that runs a command with ``tmp_path/ro`` a read-only and ``tmp_path/full`` a
    ``size_kib`` KiB tmpfs, in a private mount namespace (nothing outside it sees them)."""
    script = (f"mount -t tmpfs -o size={size_kib}k tmpfs {tmp_path}/full && mount -t tmpfs -o size=64k tmpfs "
              f"{tmp_path}/ro && mount -o remount,ro {tmp_path}/ro && exec \"$@\"")
    return ["unshare", "-rm", "sh", "-c", script, "sandbox"]


@pytest.mark.slow
def test_full_disk_and_read_only_folders_for_real(tmp_path, by_hand):
    (tmp_path / "ro").mkdir()
    (tmp_path / "full").mkdir()
    if shutil.which("unshare") is None or subprocess.run(
            [*_sandbox(tmp_path, 64), "true"], capture_output=True).returncode != 0:
        pytest.skip("no private mount namespace here (unshare -rm), so no tmpfs to fill or make read-only")
    folder, table = by_hand
    write_planted_dataset(tmp_path / "data")
    pd.DataFrame({"itemID": [0, 1], "text": ["a", "b c"]}).to_csv(tmp_path / "items.tsv", sep="\t", index=False)
    (tmp_path / "plan.yaml").write_text(yaml.safe_dump({"datasets": ["planted"], "seeds": [1],
                                                        "config": planted_config(tmp_path / "data"),
                                                        "runs": {"BPR": {"model": "BPR"}}}))
    size_kib = 96  # below a BPR checkpoint with embedding_size 512, a 100000-row feature file, the .inter
    assert table["amazon-baby"].files[0].size > size_kib * 1024
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([*_sandbox(tmp_path, size_kib), sys.executable, "-c", SANDBOX_DRIVER,
                           str(REPO / "tests"), str(tmp_path)], capture_output=True, text=True, env=env,
                          timeout=900, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads(done.stdout.strip().splitlines()[-1])
    ro, full = tmp_path / "ro", tmp_path / "full"

    def line(case: str) -> str:
        outcome = results[case]
        errors = [l for l in outcome["stderr"] if l.startswith("recbole_mm: ")]
        assert outcome["code"] == 2 and len(errors) == 1 and errors[0].startswith("recbole_mm: error: "), outcome
        return errors[0]

    assert line("cwd") == ("recbole_mm: error: log_dir: RecBole's log/ folder cannot be written under the "
                           f"working directory (log_dir unset): {ro} is not writable; set --log_dir to a folder you "
                           "can write to")
    assert results["cwd with log_dir"]["code"] == 0, results["cwd with log_dir"]
    assert "cannot write checkpoint " + str(full) in line("checkpoint") and ENOSPC_TEXT in line("checkpoint")
    assert line("download") == (f"recbole_mm: error: --data-path {ro} cannot be used: {ro} is not writable; "
                                "give --data-path a folder you can write to")
    assert f"cannot write amazon-baby file {full}/amazon-baby/baby.inter ({ENOSPC_TEXT})" in line("download full")
    assert line("features") == (f"recbole_mm: error: --output-dir {ro}/ds cannot be used: {ro} is not writable; "
                                "give --output-dir a folder you can write to")
    assert f"cannot write text feature file {full}/text_feat.npy ({ENOSPC_TEXT})" in line("features full")
    assert line("benchmark") == (f"recbole_mm: error: --out {ro}/results cannot be used: {ro} is not writable; "
                                 "give --out a folder you can write to")
    assert results["full left"] == []  # no temporary file of any of the failed writes


# ---- the docs' table of these faults: generated from FAULT_CASES, so it cannot drift ---------------------
def _fault_table_data(tmp: Path) -> None:
    """Inputs shared by the table's cases, made in ``tmp`` (the working directory)."""
    (tmp / "afile").write_text("")
    root = tmp / "data"
    folder = write_planted_dataset(root)
    image = np.load(folder / "image_feat.npy")
    np.savez(folder / "two.npz", image, image)
    torch.save(torch.from_numpy(image), folder / "image_feat.pt")
    write_inter(root, "one-item", [(u, 0, 0) for u in range(5)] + [(0, 0, 1), (1, 0, 2)], 1)
    write_inter(root, "one-user", [(0, i, 0) for i in range(5)] + [(0, 5, 1), (0, 6, 2)], 7)
    write_inter(root, "few-items", [(u, (u + k) % 6, label) for u in range(6) for k, label in enumerate((0, 0, 1, 2))], 6)
    pd.DataFrame({"itemID": [0, 1], "text": ["a", "b c"]}).to_csv(tmp / "items.tsv", sep="\t", index=False)
    (tmp / "by-hand").mkdir()
    (tmp / "by-hand" / "baby.inter").write_text("userID\titemID\tx_label\n")
    config = {k: v for k, v in planted_config(root).items() if k != "seed"}
    for name, plan in (("plan", {"datasets": ["planted"], "seeds": [1], "config": config,
                                 "runs": {"BPR": {"model": "BPR"}}}),
                       ("list", [{"datasets": ["planted"], "runs": {"BPR": {"model": "BPR"}}}]),
                       ("typo", {"datasets": ["planted"], "config": config, "runs": {"VBPR": {"model": "VPBR"}}}),
                       ("seed", {"datasets": ["planted"], "seed": [1], "runs": {"BPR": {"model": "BPR"}}})):
        (tmp / f"{name}.yaml").write_text(yaml.safe_dump(plan))
    (tmp / "results").mkdir()
    (tmp / "results" / "planted.cells.json").write_text('{"3f2a": {"valid"')
    (tmp / "saved").mkdir()


def _no_space(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


_real_access = os.access


def _read_only_cwd(path, mode, **kwargs) -> bool:
    """``os.access`` as a read-only working directory answers it (root's chmod cannot make one)."""
    return str(Path(path).absolute()) != os.getcwd() and _real_access(path, mode, **kwargs)


def _with(patches: list[tuple], call):
    """``call()`` with ``(object, attribute, value)`` patches in place."""
    with pytest.MonkeyPatch.context() as patch:
        for target, name, value in patches:
            patch.setattr(target, name, value)
        return call()


_STUB_FEATURES = [(features, "make_encoder", lambda modality, spec: StubEncoder()),
                  (encoders.EncoderSpec, "check", lambda self, modalities: None)]
_PLANTED = ("--dataset=planted", "--data_path=data", "--USER_ID_FIELD=userID", "--ITEM_ID_FIELD=itemID",
            "--epochs=1", "--show_progress=False")
_VBPR = ("--model=VBPR", *_PLANTED)

# (what the user does, the entry point, its arguments, patches that simulate the fault)
FAULT_CASES = [
    ("a read-only working directory (`log_dir` unset)", cli.main, ("--model=BPR", *_PLANTED, "--checkpoint_dir=saved"),
     [(os, "access", _read_only_cwd)]),
    ("`--log_dir=afile/logs`", cli.main, ("--model=BPR", *_PLANTED, "--log_dir=afile/logs"), []),
    ("a checkpoint write on a full disk (torch: `[enforce fail at inline_container.cc:672]`)",
     lambda argv: checkpoint.save_atomically({"epoch": 1}, "saved/BPR.pth"), (),
     [(checkpoint.torch, "save", _no_space)]),
    ("`recbole-mm features items.tsv --output-dir afile/ds`", features.main,
     ("items.tsv", "--output-dir", "afile/ds", "--no-progress"), _STUB_FEATURES),
    ("`recbole-mm features` on a full disk", features.main,
     ("items.tsv", "--output-dir", "ds", "--no-progress"), [*_STUB_FEATURES, (storage.TempFile, "reserve", _no_space)]),
    ("`recbole-mm download amazon-baby --data-path afile/data`", download.main,
     ("download", "amazon-baby", "--from", "by-hand", "--data-path", "afile/data"), []),
    ("`recbole-mm download` on a full disk", download.main,
     ("download", "amazon-baby", "--from", "by-hand", "--data-path", "downloads"),
     [(download.shutil, "copyfile", _no_space)]),
    ("`recbole-mm benchmark --plan plan.yaml --out afile/results`", bench_command.main,
     ("--plan", "plan.yaml", "--out", "afile/results"), []),
    ("a benchmark plan that is a yaml list", bench_command.main, ("--plan", "list.yaml"), []),
    ("a benchmark plan with `model: VPBR`", bench_command.main, ("--plan", "typo.yaml"), []),
    ("a benchmark plan with `seed:` for `seeds:`", bench_command.main, ("--plan", "seed.yaml"), []),
    ("a damaged benchmark cache", bench_command.main, ("--plan", "plan.yaml", "--out", "results"), []),
    ("`modalities: {image: two.npz}`, a .npz of two arrays", cli.main,
     (*_VBPR, "--modalities={'image':'two.npz'}"), []),
    ("`modalities: {image: image_feat.pt}`, written by torch.save", cli.main,
     (*_VBPR, "--modalities={'image':'image_feat.pt'}"), []),
    ("a dataset of one item", cli.main,
     ("--model=BPR", *[a.replace("planted", "one-item") for a in _PLANTED]), []),
    ("a user who interacted with every item", cli.main,
     ("--model=BPR", *[a.replace("planted", "one-user") for a in _PLANTED]), []),
    ("`--topk=[10]` on a dataset of 6 items", cli.main,
     ("--model=BPR", *[a.replace("planted", "few-items") for a in _PLANTED], "--topk=[10]",
      "--valid_metric=Recall@10"), []),
    ("`recbole-mm analysis longtail X.pth --out afile/lt`", analysis.main,
     ("longtail", "X.pth", "--out", "afile/lt"), []),
    ("`python -m recbole_mm.checkpoint OLD.pth afile/new/X.pth`", checkpoint.main, ("OLD.pth", "afile/new/X.pth"), []),
]

TABLE_PAGE = REPO / "docs" / "checkpoints.md"
TABLE_BEGIN = "<!-- fault table: written by `python tests/test_faults.py`; test_fault_table checks it -->"
TABLE_END = "<!-- end of fault table -->"


def fault_table() -> str:
    """The table of FAULT_CASES and the line each prints today, run in a fresh folder (paths shortened)."""
    rows, here = [], os.getcwd()
    with tempfile.TemporaryDirectory() as tmp:
        _fault_table_data(Path(tmp))
        os.chdir(tmp)
        try:
            for what, main, args, patches in FAULT_CASES:
                line = _with(patches, lambda: one_line(main, *args))
                rows.append((what, line.replace(f"{tmp}/", "").replace(tmp, ".").replace(str(REPO), "<checkout>")))
        finally:
            os.chdir(here)
    lines = ["| what you do | what you see (exit status 2, nothing half-written) |", "|---|---|"]
    return "\n".join(lines + [f"| {what} | {line.replace('|', chr(92) + '|')} |" for what, line in rows])


def _page_table() -> str:
    text = TABLE_PAGE.read_text()
    return text[text.index(TABLE_BEGIN) + len(TABLE_BEGIN):text.index(TABLE_END)].strip()


@pytest.mark.slow
def test_fault_table():
    assert _page_table() == fault_table(), f"{TABLE_PAGE}'s fault table is stale: run python tests/test_faults.py"


if __name__ == "__main__":  # rewrite the page's table from what the cases print today
    text = TABLE_PAGE.read_text()
    start, end = text.index(TABLE_BEGIN) + len(TABLE_BEGIN), text.index(TABLE_END)
    TABLE_PAGE.write_text(text[:start] + "\n" + fault_table() + "\n" + text[end:])
    print(f"wrote the fault table into {TABLE_PAGE}")

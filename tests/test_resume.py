"""Kill and resume: a run SIGKILLed mid-training resumes from its last checkpoint and ends exactly as an
uninterrupted run with the same seed (GUME on the planted set: lr schedule, noise in L_UM, negative
sampling and shuffling all consume state that must come back)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap

import pytest
import torch
import yaml
from conftest import REPO, planted_config, write_planted_dataset

from recbole_mm import cli
from recbole_mm.errors import RecBoleMMError

EPOCHS = 8
KILL_DURING_WRITE_OF = 4  # the kill lands while epoch 4's last checkpoint is half written


def _config(root) -> dict:
    # Uninterrupted, this run peaks on valid NDCG@10 at epoch 2 and early stopping (patience 2) ends it
    # after epoch 5: the kill falls between the best epoch and the stop, with the patience counter at 1,
    # so the best checkpoint, the best result and the counter must all come back.
    return planted_config(root, epochs=EPOCHS, stopping_step=2, learning_rate=0.01, valid_metric="NDCG@10",
                          learning_rate_scheduler=[0.5, 2], train_batch_size=128)


KILLED_RUN = textwrap.dedent("""
    import json, os, signal, sys
    import torch
    torch.set_num_threads(1)
    import recbole_mm
    from recbole_mm import checkpoint
    from recbole_mm.quick_start import run_recbole

    config, kill_epoch = json.loads(sys.argv[1]), int(sys.argv[2])
    real_save = torch.save

    def save_then_die(state, f, *args, **kwargs):
        name = getattr(f, "name", str(f))
        if ".last.pth." in name and name.endswith(".tmp") and state.get("epoch") == kill_epoch:
            f.write(b"PK\\x03\\x04 half a checkpoint")  # the write has begun ...
            f.flush()
            os.kill(os.getpid(), signal.SIGKILL)  # ... and the process dies: no clean shutdown
        return real_save(state, f, *args, **kwargs)

    checkpoint.torch.save = save_then_die
    run_recbole("GUME", "planted", config_dict=config)
""")


@pytest.mark.slow
def test_killed_run_resumes_to_the_same_result(tmp_path, monkeypatch, capsys):
    from recbole_mm.quick_start import run_recbole

    monkeypatch.chdir(tmp_path)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the killed subprocess runs on one thread too: identical arithmetic
    try:
        root = tmp_path / "data"
        write_planted_dataset(root)
        config = _config(root)
        uninterrupted = run_recbole("GUME", "planted", config_dict=config)

        killed_dir = tmp_path / "killed"
        config_killed = {**config, "checkpoint_dir": str(killed_dir)}
        env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
        out = subprocess.run([sys.executable, "-c", KILLED_RUN, json.dumps(config_killed), str(KILL_DURING_WRITE_OF)],
                             capture_output=True, text=True, cwd=tmp_path, env=env, timeout=600)
        assert out.returncode == -signal.SIGKILL, out.stderr[-2000:]
        [last] = killed_dir.glob("*.last.pth")
        [half_written] = killed_dir.glob(f".{last.name}.*.tmp")  # the half-written file ...
        state = torch.load(last, weights_only=True)  # ... did not replace the last good one
        assert state["epoch"] == KILL_DURING_WRITE_OF - 1

        resumed = run_recbole("GUME", "planted", config_dict=config_killed, resume=str(last))
        assert not half_written.exists()  # the killed writer's temporary file: removed by the next write
    finally:
        torch.set_num_threads(threads)
    assert resumed["best_epoch"] == uninterrupted["best_epoch"]
    assert resumed["best_valid_result"] == uninterrupted["best_valid_result"]
    assert resumed["test_result"] == uninterrupted["test_result"]
    assert [h["train_loss"] for h in resumed["history"]] == [h["train_loss"] for h in uninterrupted["history"]]
    assert [h["learning_rate"] for h in resumed["history"]] == [h["learning_rate"] for h in uninterrupted["history"]]
    trained = len(uninterrupted["history"])
    assert uninterrupted["best_epoch"] < KILL_DURING_WRITE_OF - 1 < trained - 1 < EPOCHS - 1  # the premise above
    assert len(resumed["history"]) == trained
    # The resumed run tested, and wrote its improvements into, the killed run's own best checkpoint.
    assert resumed["saved_model_file"] == str(last).replace(".last.pth", ".pth")

    # The finished (early-stopped) run's last checkpoint has nothing left to train: resuming only tests again.
    # Through the command line, as a user resumes (--resume on run_recbole_mm.py's parser).
    settings = tmp_path / "settings.yaml"
    settings.write_text(yaml.safe_dump(config_killed))
    monkeypatch.setattr(sys, "argv", ["run_recbole_mm.py", "--model=GUME", "--dataset=planted",
                                      f"--config_files={settings}", f"--resume={last}"])
    cli.main()
    table = capsys.readouterr().out.split("test metrics at the best validation epoch")[1]
    assert f"best valid epoch: {uninterrupted['best_epoch']} ({trained} epochs trained)" in table
    test_recall = uninterrupted["test_result"]["recall@10"]
    assert any(line.split()[:1] == ["recall@10"] and float(line.split()[2]) == round(test_recall, 4)
               for line in table.splitlines())


def test_resume_refuses_other_model_and_damaged_file(planted, tmp_path):
    from recbole_mm.quick_start import run_recbole

    root, config = planted
    result = run_recbole("BPR", "planted", config_dict={**config, "epochs": 2})
    best = result["saved_model_file"]
    with pytest.raises(RecBoleMMError, match="resume with --model=BPR"):
        # The run finished, but the model check comes first and names the fix.
        run_recbole("LightGCN", "planted", config_dict={**config, "epochs": 2}, resume=best)
    damaged = tmp_path / "damaged.pth"
    damaged.write_bytes(open(best, "rb").read()[:100])
    with pytest.raises(RecBoleMMError, match="damaged"):
        run_recbole("BPR", "planted", config_dict=config, resume=str(damaged))

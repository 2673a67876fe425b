"""The command line: run_recbole_mm.py and python -m recbole_mm, as a user runs them."""

from __future__ import annotations

import subprocess
import sys

import pytest

from conftest import REPO, write_planted_dataset


def run_cli(*args: str, cwd) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "run_recbole_mm.py"), *args],
                          capture_output=True, text=True, cwd=cwd, timeout=600)


@pytest.mark.slow
def test_trains_a_recbole_model_and_prints_the_table(tmp_path):
    write_planted_dataset(tmp_path / "data")
    out = run_cli("--model=LightGCN", "--dataset=planted", f"--data_path={tmp_path / 'data'}",
                  "--USER_ID_FIELD=userID", "--ITEM_ID_FIELD=itemID", "--epochs=2", "--show_progress=False",
                  "--topk=[10,20]", "--metrics=['Recall','NDCG']", "--valid_metric=Recall@20", cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "test metrics at the best validation epoch" in out.stdout
    table = out.stdout.split("test metrics at the best validation epoch")[1]
    for metric in ("recall@10", "recall@20", "ndcg@10", "ndcg@20"):
        assert metric in table
    assert "best valid epoch:" in table and (tmp_path / "saved").is_dir()


@pytest.mark.slow
def test_module_entry_point_and_config_files(tmp_path):
    write_planted_dataset(tmp_path / "data")
    extra = tmp_path / "extra.yaml"
    extra.write_text(f"data_path: {tmp_path / 'data'}\nUSER_ID_FIELD: userID\nITEM_ID_FIELD: itemID\n"
                     "modalities: {image: image_feat.npy}\nepochs: 1\nshow_progress: False\n")
    out = subprocess.run([sys.executable, "-m", "recbole_mm", "--model=VBPR", "--dataset=planted",
                          f"--config_files={extra}"], capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "VBPR on planted" in out.stdout


@pytest.mark.slow
def test_vbpr_on_amazon_baby_without_features_exits_2(tmp_path):
    out = run_cli("--model=VBPR", "--dataset=amazon-baby", cwd=tmp_path)
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("recbole_mm: error:")
    message = lines[0]
    for expected in ("image_feat.npy", "text_feat.npy", "amazon-baby", "drive.google.com", "MMRec"):
        assert expected in message
    assert not any(tmp_path.iterdir()), "nothing may be written on bad input"


@pytest.mark.slow
def test_unknown_model_exits_2(tmp_path):
    out = run_cli("--model=NoSuchModel", "--dataset=tiktok", cwd=tmp_path)
    assert out.returncode == 2 and "unknown model 'NoSuchModel'" in out.stderr
    assert "lightgbm" not in out.stderr


@pytest.mark.slow
def test_unusable_argument_is_refused(tmp_path):
    out = run_cli("--model=BPR", "--epochs", "3", cwd=tmp_path)
    assert out.returncode == 2 and "--key=value" in out.stderr


@pytest.mark.slow
def test_bpr_on_amazon_baby_needs_no_features(tmp_path):
    """Models without features run on the interaction-only Amazon data (one epoch, real data)."""
    out = run_cli("--model=BPR", "--dataset=amazon-baby", "--epochs=1", "--show_progress=False", cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "BPR on amazon-baby" in out.stdout


@pytest.mark.slow
def test_vbpr_on_tiktok_one_epoch(tmp_path):
    """Real-data smoke run of the README's main job, shortened to one epoch."""
    out = run_cli("--model=VBPR", "--dataset=tiktok", "--epochs=1", "--show_progress=False", cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "recall@20" in out.stdout and "VBPR on tiktok" in out.stdout

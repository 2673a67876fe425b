"""CPU-only checks of the paths a GPU run takes: a checkpoint written on a GPU loads on a machine
without one, and the GPU benchmark refuses to run (clearly) where there is no GPU."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

import recbole_mm
from conftest import REPO
from recbole_mm.checkpoint import load_checkpoint
from recbole_mm.quick_start import load_data_and_model


def _save_as_if_on_gpu(path, monkeypatch) -> None:
    """Rewrite a checkpoint so that torch records every tensor as a cuda:0 storage, as a GPU run's are."""
    state = torch.load(path, weights_only=True)
    with monkeypatch.context() as patch:
        patch.setattr(torch.serialization, "location_tag", lambda storage: "cuda:0")
        torch.save(state, path)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks loading without a GPU")
def test_checkpoint_saved_on_gpu_loads_on_cpu(planted, monkeypatch):
    root, config = planted
    result = recbole_mm.run_recbole(model="VBPR", dataset="planted", config_dict=config)
    path = result["saved_model_file"]
    _save_as_if_on_gpu(path, monkeypatch)
    with pytest.raises(RuntimeError, match="CUDA"):
        torch.load(path, weights_only=True)  # what loading did before map_location defaulted to cpu
    checkpoint = load_checkpoint(path)
    assert all(t.device.type == "cpu" for t in checkpoint["state_dict"].values())
    _, model, *_ = load_data_and_model(path)
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, checkpoint["state_dict"][name]), name


@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message without a GPU")
def test_gpu_benchmark_fails_clearly_without_gpu(tmp_path):
    out = subprocess.run([sys.executable, str(REPO / "benchmarks" / "gpu.py"), "--out", str(tmp_path / "gpu.md")],
                         capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 2
    assert "no CUDA device" in out.stderr
    assert not (tmp_path / "gpu.md").exists()


def _gpu_module():
    import importlib.util

    spec = importlib.util.spec_from_file_location("gpu_bench", REPO / "benchmarks" / "gpu.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_gpu_benchmark_reloads_a_checkpoint_in_a_cpu_only_process(planted):
    root, config = planted
    result = recbole_mm.run_recbole(model="VBPR", dataset="planted", config_dict=config)
    reloaded = _gpu_module().run_reload(result["saved_model_file"])
    assert "failed" not in reloaded, reloaded.get("failed")
    assert reloaded["device"] == "cpu"
    assert reloaded["test"] == pytest.approx({k: float(v) for k, v in result["test_result"].items()})


def test_gpu_report_compares_with_cpu_reference():
    gpu = _gpu_module()
    reference = gpu.cpu_reference(REPO / "results" / "tiktok.csv")
    assert "GUME" in reference and "MM-GEF" in reference
    cell = {"model": "GUME", "train_loss": [1.0] * 60, "best_epoch": 40, "train_seconds": 0.5, "eval_seconds": 0.05,
            "peak_cuda_mib": 900.0, "peak_rss_mib": 2000.0, "device_name": "NVIDIA H200",
            "test": {"recall@20": 0.1052, "ndcg@20": 0.046}, "reload": {"test": {"recall@20": 0.1051}}}
    meta = {"checkout": {"commit": "f" * 40, "dirty": False}, "torch": "2", "cuda": "12", "date": "today"}
    text = gpu.format_report([cell, {"model": "VBPR", "failed": "boom"}], [], reference, "python benchmarks/gpu.py",
                             meta, ["Baby GUME"])
    assert "**NVIDIA H200**" in text and "| GUME | 60 | 40 | 0.50 | 0.050 | 900 | 2000 | 0.1052 |" in text
    assert "| yes |" in text and "| 0.1051 |" in text and "failed: boom" in text and "Baby GUME" in text


def test_every_model_report_lists_failures_and_rows():
    gpu = _gpu_module()
    ok = {"model": "GUME", "device": "cuda:0", "device_name": "NVIDIA H200", "train_loss": [0.69, 0.5],
          "valid_score": [0.05, 0.061], "test": {"recall@20": 0.0612}, "train_seconds": 0.4, "eval_seconds": 0.02,
          "peak_cuda_mib": 812.0, "peak_rss_mib": 1500.0}
    meta = {"checkout": {"commit": "a" * 40, "dirty": False}, "torch": "2", "cuda": "13", "date": "today"}
    text = gpu.format_every_model([ok, {"model": "DiffMM", "failed": "RuntimeError: boom"}], "cmd", meta, jobs=4,
                                  epochs=2, total=3)
    assert "**NVIDIA H200**" in text and "1 of 3 models ran; failed: DiffMM." in text
    assert "| GUME | cuda:0 | 0.6900, 0.5000 | 0.0610 | 0.0612 | 0.40 | 0.020 | 812 | 1500 |" in text
    assert "| DiffMM | failed: RuntimeError: boom |" in text


def test_every_model_covers_the_registry():
    from recbole_mm.registry import PLUGIN_MODELS

    models = _gpu_module().every_model()
    assert models[:2] == ["BPR", "LightGCN"] and set(models[2:]) == set(PLUGIN_MODELS)

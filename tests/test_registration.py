"""After `import recbole_mm`, RecBole's own API finds the plugin's models, yaml defaults and datasets."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
import yaml

import recbole_mm
from recbole_mm import resources
from recbole_mm.errors import UnknownModelError
from recbole_mm.model.general_recommender.vbpr import VBPR



def test_get_model_finds_plugin_and_builtin_models():
    from recbole.utils import get_model
    from recbole.model.general_recommender import LightGCN

    assert get_model("VBPR") is VBPR
    assert get_model("LightGCN") is LightGCN


def test_plugin_yaml_defaults_and_their_precedence(planted):
    from recbole.config import Config

    root, config_dict = planted
    config_dict.pop("embedding_size")
    defaults = yaml.safe_load(resources.model_properties_file("VBPR").read_text())
    config = Config(model="VBPR", dataset="planted", config_dict=config_dict)
    assert config["reg_weight"] == defaults["reg_weight"] and config["embedding_size"] == defaults["embedding_size"]
    config = Config(model="VBPR", dataset="planted", config_dict={**config_dict, "reg_weight": 0.5})
    assert config["reg_weight"] == 0.5
    assert "reg_weight" not in Config(model="BPR", dataset="planted", config_dict=config_dict).final_config_dict


def test_dataset_config_is_found_by_name():
    """A shipped dataset's yaml and folder are found by dataset name alone, from any cwd."""
    from recbole.config import Config

    config = Config(model="BPR", dataset="tiktok", config_dict={"state": "WARNING"})
    assert config["inter_file_name"] == "tiktok.inter"
    assert config["modalities"] == {"image": "image_feat.npy", "audio": "audio_feat.npy"}
    assert config["data_path"] == str(resources.bundled_data_root() / "tiktok")
    config = Config(model="BPR", dataset="tiktok", config_dict={"state": "WARNING", "data_path": "/elsewhere"})
    assert config["data_path"] == "/elsewhere/tiktok"


def test_recbole_run_recbole_trains_vbpr_and_reloads_it(planted):
    """Plain RecBole code: run_recbole(model='VBPR'), then load_data_and_model on its checkpoint."""
    from recbole.quick_start import load_data_and_model, run_recbole
    from recbole.trainer import Trainer

    root, config_dict = planted
    result = run_recbole(model="VBPR", dataset="planted", config_dict=config_dict)
    assert 0.0 <= result["test_result"]["recall@10"] <= 1.0
    checkpoint = next((root / "saved").glob("VBPR-*.pth"))
    config, model, dataset, train_data, valid_data, test_data = load_data_and_model(str(checkpoint))
    assert isinstance(model, VBPR)
    state = torch.load(checkpoint, weights_only=True)["state_dict"]
    assert torch.equal(model.user_embedding.weight, state["user_embedding.weight"])
    trainer = Trainer(config, model)
    again = trainer.evaluate(test_data, load_best_model=True, model_file=str(checkpoint))
    assert again == result["test_result"]


def test_resume_checkpoint(planted):
    """RecBole's resume_checkpoint continues from a recbole_mm checkpoint."""
    root, config_dict = planted
    result = recbole_mm.run_recbole(model="VBPR", dataset="planted", config_dict={**config_dict, "epochs": 2})
    config, model, dataset, train_data, valid_data, test_data = recbole_mm.load_data_and_model(result["saved_model_file"])
    from recbole_mm.quick_start import make_trainer

    trainer = make_trainer(config, model)
    trainer.resume_checkpoint(result["saved_model_file"])
    assert trainer.start_epoch == result["best_epoch"] + 1


def test_hyper_tuning_with_recbole_objective_function(planted, tmp_path):
    """RecBole's HyperTuning + RecBole's objective_function find VBPR by the name in a yaml."""
    from recbole.quick_start import objective_function
    from recbole.trainer import HyperTuning

    root, config_dict = planted
    fixed = tmp_path / "fixed.yaml"
    fixed.write_text(yaml.safe_dump({**config_dict, "model": "VBPR", "dataset": "planted"}))
    tuner = HyperTuning(objective_function, params_dict={"choice": {"reg_weight": [0.0, 0.001]}},
                        fixed_config_file_list=[str(fixed)], algo="exhaustive")
    tuner.run()
    assert len(tuner.params2result) == 2 and tuner.model == "VBPR"


@pytest.mark.parametrize("model", ["BPR", "Pop", *(pytest.param(m, marks=pytest.mark.slow)
                                                for m in ("LightGCN", "NGCF", "SGL", "ItemKNN"))])
def test_recbole_builtin_models_on_ml100k(model, tmp_path, monkeypatch):
    """RecBole's own quick start on its bundled ml-100k: train, save, reload the best checkpoint, test."""
    from recbole.quick_start import run_recbole

    monkeypatch.chdir(tmp_path)
    result = run_recbole(model=model, dataset="ml-100k", config_dict={
        "epochs": 1, "show_progress": False, "state": "WARNING", "checkpoint_dir": str(tmp_path / "saved"),
        "metrics": ["Recall", "NDCG", "Precision"], "topk": [10, 20], "valid_metric": "Recall@10",
    })
    assert 0.0 < result["test_result"]["recall@20"] <= 1.0


@pytest.mark.slow
def test_lightgcn_ml100k_matches_reference_values(tmp_path, monkeypatch):
    """Regression guard for silent breakage: RecBole's LightGCN, 2 epochs on ml-100k, gives the figures
    measured on the pinned old stack (numpy 1.26 / pandas 2.3 / scipy 1.12), docs/recbole-compat.md."""
    from recbole.quick_start import run_recbole

    monkeypatch.chdir(tmp_path)
    result = run_recbole(model="LightGCN", dataset="ml-100k", config_dict={
        "epochs": 2, "show_progress": False, "state": "WARNING", "checkpoint_dir": str(tmp_path / "saved"),
        "metrics": ["Recall", "NDCG", "Precision"], "topk": [10, 20], "valid_metric": "Recall@10",
    })
    test = result["test_result"]
    assert (test["recall@10"], test["ndcg@10"], test["precision@10"], test["recall@20"]) == pytest.approx(
        (0.1361, 0.1521, 0.1063, 0.2108), abs=2e-4)


def test_unknown_model_is_a_clear_error():
    with pytest.raises(UnknownModelError, match="unknown model 'NoSuchModel'"):
        recbole_mm.run_recbole(model="NoSuchModel", dataset="tiktok")


@pytest.mark.slow
def test_get_model_in_a_fresh_process():
    """The README's one-liner."""
    out = subprocess.run([sys.executable, "-c", "import recbole_mm; from recbole.utils import get_model; "
                          "print(get_model('VBPR'))"], capture_output=True, text=True, cwd="/", check=True)
    assert "recbole_mm.model.general_recommender.vbpr.VBPR" in out.stdout

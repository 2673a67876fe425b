"""Training and evaluation through RecBole's trainer: RecBole models and recbole_mm's, on planted data."""

from __future__ import annotations

import pytest
import torch

import recbole_mm
from recbole_mm.quick_start import create_dataset, make_config


@pytest.mark.parametrize("model", ["BPR", "LightGCN", "VBPR"])
def test_one_epoch_train_and_eval(planted, model):
    """One epoch of training plus full-sort valid/test evaluation gives metrics in [0, 1]."""
    root, config = planted
    result = recbole_mm.run_recbole(model=model, dataset="planted", config_dict=config)
    assert result["best_epoch"] == 0 and len(result["history"]) == 1
    for split in ("best_valid_result", "test_result"):
        assert set(result[split]) == {"recall@10", "ndcg@10"}
        assert all(0.0 <= v <= 1.0 for v in result[split].values())


def test_vbpr_learns_planted_clusters(planted):
    """Users only like items of their cluster: VBPR must beat popularity by a wide margin."""
    root, config = planted
    config.update(epochs=40, learning_rate=0.01, stopping_step=40)
    pop = recbole_mm.run_recbole(model="Pop", dataset="planted", config_dict=config)
    vbpr = recbole_mm.run_recbole(model="VBPR", dataset="planted", config_dict=config)
    pop_recall, vbpr_recall = pop["test_result"]["recall@10"], vbpr["test_result"]["recall@10"]
    assert vbpr_recall > 0.6 and vbpr_recall > pop_recall + 0.3, (vbpr_recall, pop_recall)


def test_vbpr_is_deterministic_on_cpu(planted):
    """Two runs with the same seed give the same loss curve and the same test metrics."""
    root, config = planted
    config.update(epochs=3)
    runs = [recbole_mm.run_recbole(model="VBPR", dataset="planted", config_dict=config, saved=False)
            for _ in range(2)]
    assert [h["train_loss"] for h in runs[0]["history"]] == [h["train_loss"] for h in runs[1]["history"]]
    assert runs[0]["test_result"] == runs[1]["test_result"]


def test_vbpr_uses_features_and_caches_eval(planted):
    """Scores depend on the item features; full_sort_predict reuses one forward per eval pass."""
    from recbole.data import data_preparation
    from recbole.data.interaction import Interaction
    from recbole.utils import get_model

    root, config_dict = planted
    config = make_config("VBPR", "planted", config_dict=config_dict)
    dataset = create_dataset(config)
    train_data, _, _ = data_preparation(config, dataset)
    model = get_model("VBPR")(config, train_data._dataset)
    users = Interaction({"userID": torch.tensor([1, 2, 3])})
    model.eval()
    calls = []
    original = model.forward
    model.forward = lambda: calls.append(1) or original()
    before = model.full_sort_predict(users)
    model.full_sort_predict(users)
    assert len(calls) == 1  # cached within the evaluation pass
    model.train()
    model.eval()
    with torch.no_grad():
        model.features_image.mul_(2.0)
    after = model.full_sort_predict(users)
    assert len(calls) == 2 and not torch.allclose(before, after)
    assert before.shape == (3 * dataset.item_num,)

"""Protocol switches: MMRec's test masking (train items only) and negatives among training items."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from recbole_mm.errors import RecBoleMMError
from recbole_mm.quick_start import create_dataset, make_config, prepare_data

from conftest import planted_config, write_planted_dataset


def loaders(root, **overrides):
    config = make_config("BPR", "planted", config_dict={**planted_config(root), **overrides})
    dataset = create_dataset(config)
    return dataset, prepare_data(config, dataset)


def test_test_masking_train_only_keeps_valid_items_rankable(planted):
    root, _ = planted
    dataset, (train, valid, test) = loaders(root)
    _, (_, _, mmrec_test) = loaders(root, test_masking="train")
    valid_pairs = set(zip(valid._dataset.inter_feat["userID"].tolist(), valid._dataset.inter_feat["itemID"].tolist()))
    user, item = next(iter(valid_pairs))
    assert item in test.uid2history_item[user].tolist()  # RecBole: valid items masked at test
    assert item not in mmrec_test.uid2history_item[user].tolist()  # MMRec: only training items
    train_items = set(train._dataset.inter_feat["itemID"][train._dataset.inter_feat["userID"] == user].tolist())
    assert set(mmrec_test.uid2history_item[user].tolist()) == train_items


def test_negatives_among_training_items_only(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    root = tmp_path / "data"
    folder = write_planted_dataset(root)
    inter = pd.read_csv(folder / "planted.inter", sep="\t")
    inter.loc[inter.itemID == 7, "x_label"] = 2  # item 7 never occurs in training
    inter.to_csv(folder / "planted.inter", sep="\t", index=False)
    for negatives, expect_unseen in (("all", True), ("train", False)):
        dataset, (train, _, _) = loaders(root, negative_items=negatives)
        unseen = dataset.token2id("itemID", "7")
        np.random.seed(0)
        drawn = np.concatenate([batch["neg_itemID"].numpy() for _ in range(20) for batch in train])
        assert (unseen in set(drawn)) == expect_unseen, negatives


def test_bad_protocol_values_are_refused(planted):
    root, _ = planted
    with pytest.raises(RecBoleMMError, match="test_masking"):
        loaders(root, test_masking="valid")
    with pytest.raises(RecBoleMMError, match="negative_items"):
        loaders(root, negative_items="popular")


def test_cold_start_split_on_a_generated_set(tmp_path, monkeypatch):
    """20% of the items (seeded) lose every interaction to test; test holds only those items."""
    monkeypatch.chdir(tmp_path)
    root = tmp_path / "data"
    folder = write_planted_dataset(root)
    raw = pd.read_csv(folder / "planted.inter", sep="\t")
    dataset, (train, valid, test) = loaders(root, cold_start_items=0.2, cold_start_seed=7)
    items = {name: set(dataset.id2token("itemID", loader._dataset.inter_feat["itemID"].numpy()).astype(int))
             for name, loader in (("train", train), ("valid", valid), ("test", test))}
    cold = items["test"]
    assert len(cold) == round(0.2 * raw.loc[raw.x_label == 0, "itemID"].nunique())
    assert not cold & items["train"] and not cold & items["valid"]
    assert len(test._dataset.inter_feat) == raw.itemID.isin(cold).sum()  # every interaction of the cold items
    again, (_, _, test2) = loaders(root, cold_start_items=0.2, cold_start_seed=7)
    assert set(again.id2token("itemID", test2._dataset.inter_feat["itemID"].numpy()).astype(int)) == cold
    # the model still scores cold items (from content): a multimodal model trains and evaluates
    import recbole_mm

    result = recbole_mm.run_recbole(model="MMGEF", dataset="planted", config_dict={
        **planted_config(root), "cold_start_items": 0.2, "fusion": "concat", "knn_k": 5, "epochs": 2})
    assert 0.0 <= result["test_result"]["recall@10"] <= 1.0


def test_early_stopping_counts_a_rounded_tie_as_an_improvement(planted, monkeypatch):
    """The protocol as the README and the benchmark report state it: RecBole's early stopping takes a
    valid score equal to the best (after rounding to metric_decimal_place) as a new best, so the later
    of two tied epochs is the best epoch, and its checkpoint is the one tested; MMRec needs strictly better."""
    import recbole_mm
    from recbole_mm.trainer import Trainer

    root, config = planted
    scores = iter([0.3, 0.3, 0.2, 0.1])  # what RecBole's evaluators return: already rounded

    def scripted_valid(self, valid_data, show_progress=False):
        score = next(scores)
        return score, {"recall@10": score}

    monkeypatch.setattr(Trainer, "_valid_epoch", scripted_valid)
    result = recbole_mm.run_recbole("BPR", "planted", config_dict={**config, "epochs": 4}, saved=False)
    assert result["best_epoch"] == 1 and result["best_valid_score"] == 0.3

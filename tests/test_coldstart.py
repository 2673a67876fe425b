"""Cold-start protocol: held-out items ranked among held-out items, never negatives, chosen on cold
validation; and the shuffled-features control."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from recbole.model.abstract_recommender import GeneralRecommender
from recbole.utils import InputType

from recbole_mm.data.protocol import cold_start_split
from recbole_mm.errors import RecBoleMMError
from recbole_mm.quick_start import create_dataset, make_config, prepare_data
from recbole_mm.trainer import Trainer

from conftest import planted_config, write_planted_dataset

COLD = {"cold_start_items": 0.2, "cold_start_valid_items": 0.1, "cold_start_seed": 7}


@pytest.fixture()
def root(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_planted_dataset(tmp_path / "data")
    return tmp_path / "data"


def loaders(root, model="BPR", **overrides):
    config = make_config(model, "planted", config_dict={**planted_config(root), **overrides})
    dataset = create_dataset(config)
    return config, dataset, prepare_data(config, dataset)


def items_of(loader) -> set[int]:
    return set(loader._dataset.inter_feat["itemID"].tolist())


def test_split_holds_out_a_test_group_and_a_validation_group(root):
    raw = pd.read_csv(root / "planted" / "planted.inter", sep="\t")
    _, dataset, (train, valid, test) = loaders(root, **COLD)
    groups = dataset.cold_start_item_ids
    n_train_items = raw.loc[raw.x_label == 0, "itemID"].nunique()
    assert len(groups["test"]) == round(0.2 * n_train_items) and len(groups["valid"]) == round(0.1 * n_train_items)
    assert items_of(test) == set(groups["test"].tolist()) and items_of(valid) == set(groups["valid"].tolist())
    assert not items_of(train) & (items_of(valid) | items_of(test))
    tokens = dataset.id2token("itemID", groups["test"]).astype(int)
    assert len(test._dataset.inter_feat) == raw.itemID.isin(tokens).sum()  # every interaction of those items
    # the test group does not depend on the validation group's size: old seeds keep their test items
    _, without = cold_start_split(raw, "itemID", 0.2, 0.0, 7)
    _, with_valid = cold_start_split(raw, "itemID", 0.2, 0.1, 7)
    assert np.array_equal(without["test"], with_valid["test"]) and len(without["valid"]) == 0


def test_held_out_item_ids_carry_no_held_out_popularity(root, tmp_path):
    # RecBole numbers items by first appearance; the held-out ones must get the same ids whatever the
    # order (and so the counts) of their rows, or a tie-breaking ranker (Pop) would read test popularity
    orders = []
    for reverse in (False, True):
        raw = pd.read_csv(root / "planted" / "planted.inter", sep="\t")
        raw = raw.iloc[::-1] if reverse else raw
        raw.to_csv(root / "planted" / "planted.inter", sep="\t", index=False)
        _, dataset, _ = loaders(root, **COLD)
        groups = dataset.cold_start_item_ids
        orders.append([dataset.id2token("itemID", groups[name]).tolist() for name in ("valid", "test")])
    assert orders[0] == orders[1]
    tokens = np.asarray(orders[0][1], dtype=int)
    assert not np.array_equal(tokens, np.sort(tokens))  # a seeded shuffle, not the raw-id order either


class Oracle(GeneralRecommender):
    """Scores every warm item 100, each user's own held-out positives (valid or test) 1, the rest 0."""

    input_type = InputType.POINTWISE

    def __init__(self, config, dataset, positives: dict[int, set[int]], warm: np.ndarray):
        super().__init__(config, dataset)
        self.unused = torch.nn.Parameter(torch.zeros(1))
        self.table = torch.zeros(dataset.user_num, dataset.item_num)
        self.table[:, torch.from_numpy(warm)] = 100.0
        for user, items in positives.items():
            self.table[user, list(items)] = 1.0

    def full_sort_predict(self, interaction):
        return self.table[interaction[self.USER_ID]].flatten()


def oracle_recall(config, dataset, train, loader):
    inter = loader._dataset.inter_feat
    positives: dict[int, set[int]] = {}
    for user, item in zip(inter["userID"].tolist(), inter["itemID"].tolist()):
        positives.setdefault(user, set()).add(item)
    warm = np.unique(train._dataset.inter_feat["itemID"].numpy())
    trainer = Trainer(config, Oracle(config, train._dataset, positives, warm))
    return trainer.evaluate(loader, load_best_model=False, show_progress=False)["recall@10"]


def test_cold_candidates_rank_held_out_items_among_held_out_items_only(root):
    # each user has one valid and one test row, and fewer than 10 positives, so a ranker that puts the
    # user's held-out items first among the candidates scores recall@10 = 1; warm items outscore them
    config, dataset, (train, valid, test) = loaders(root, **COLD)
    assert oracle_recall(config, dataset, train, test) == 1.0
    assert oracle_recall(config, dataset, train, valid) == 1.0  # the epoch is chosen among cold items too
    config, dataset, (train, valid, test) = loaders(root, **COLD, cold_start_candidates="all")
    assert oracle_recall(config, dataset, train, test) == 0.0  # among all items the warm ones fill the top 10
    assert oracle_recall(config, dataset, train, valid) == 0.0


def test_masked_items_are_exactly_the_other_items(root):
    _, dataset, (_, valid, test) = loaders(root, **COLD)
    groups = dataset.cold_start_item_ids
    for name, loader in (("valid", valid), ("test", test)):
        _, (rows, items), _, _ = next(iter(loader))
        masked = set(items.flatten().tolist())
        assert masked == set(range(1, dataset.item_num)) - set(groups[name].tolist())
        assert rows.shape[1] == 1 and items.shape[0] == 1  # broadcast, never a users x items index


@pytest.mark.parametrize("negatives", ["all", "train"])
def test_held_out_items_are_never_training_negatives(root, negatives):
    _, dataset, (train, _, _) = loaders(root, **COLD, negative_items=negatives)
    groups = dataset.cold_start_item_ids
    held_out = set(groups["valid"].tolist()) | set(groups["test"].tolist())
    np.random.seed(0)
    drawn = np.concatenate([batch["neg_itemID"].numpy() for _ in range(30) for batch in train])
    assert not held_out & set(drawn.tolist())
    assert len(set(drawn.tolist())) == dataset.item_num - 1 - len(held_out)  # every other item still drawn


def test_without_cold_start_negatives_may_be_any_item(root):
    # the control for the test above: the same draw without the protocol does reach those items
    _, dataset, (train, _, _) = loaders(root)
    np.random.seed(0)
    drawn = np.concatenate([batch["neg_itemID"].numpy() for _ in range(30) for batch in train])
    assert len(set(drawn.tolist())) == dataset.item_num - 1


def test_validation_on_warm_items_when_asked_and_bad_values_refused(root):
    _, dataset, (_, valid, _) = loaders(root, **{**COLD, "cold_start_valid_items": 0})
    assert len(dataset.cold_start_item_ids["valid"]) == 0
    assert type(valid).__name__ == "CompactFullSortEvalDataLoader"  # warm validation: the plain full-sort loader
    with pytest.raises(RecBoleMMError, match="cold_start_candidates"):
        loaders(root, **COLD, cold_start_candidates="warm")
    with pytest.raises(RecBoleMMError, match="cold_start_valid_items: 0.9"):
        loaders(root, **{**COLD, "cold_start_valid_items": 0.9})


def test_shuffled_features_are_a_permutation_of_the_rows(root):
    _, plain, _ = loaders(root, model="VBPR")
    _, shuffled, _ = loaders(root, model="VBPR", shuffle_features=True, shuffle_features_seed=3)
    _, again, _ = loaders(root, model="VBPR", shuffle_features=True, shuffle_features_seed=3)
    a, b = plain.item_features, shuffled.item_features
    order = None
    for name in a:
        assert torch.equal(b[name][0], a[name][0])  # padding row stays
        assert torch.equal(b[name], again.item_features[name])  # seeded
        # every shuffled row is some original row, all rows used once, the same permutation in each modality
        match = (b[name][1:, None, :] == a[name][None, 1:, :]).all(-1).int().argmax(1)
        assert torch.equal(torch.sort(match).values, torch.arange(len(match)))
        assert (match != torch.arange(len(match))).float().mean() > 0.9
        order = match if order is None else order
        assert torch.equal(match, order)


def test_a_content_model_trains_and_evaluates_under_the_protocol(root):
    import recbole_mm

    result = recbole_mm.run_recbole(model="MMGEF", dataset="planted", config_dict={
        **planted_config(root), **COLD, "fusion": "concat", "knn_k": 5, "epochs": 2, "shuffle_features": True})
    assert 0.0 <= result["test_result"]["recall@10"] <= 1.0

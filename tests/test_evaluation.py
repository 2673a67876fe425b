"""Per-user test metrics and beyond-accuracy metrics through RecBole's evaluator path; the leakage screen."""

from __future__ import annotations

import inspect
from collections import Counter
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
from recbole.evaluator.collector import DataStruct
from recbole.evaluator.metrics import TailPercentage

import recbole_mm
from recbole_mm import evaluation, leakage
from recbole_mm.analysis import degree_groups, longtail


def test_per_user_values_average_to_the_reported_metrics_and_leave_the_result_unchanged(planted):
    root, config = planted
    config = {**config, "epochs": 2, "topk": [5, 10]}
    plain = recbole_mm.run_recbole(model="BPR", dataset="planted", config_dict=config)
    detailed = recbole_mm.run_recbole(model="BPR", dataset="planted", config_dict=config, test_details=True)
    assert detailed["test_result"] == plain["test_result"]  # same keys, same values: only details are added
    details = detailed["test_details"]
    users = details["users"]
    assert len(users) == 120 and len(set(users.tolist())) == 120  # every planted user has one test row
    assert set(details["per_user"]) == {"recall@5", "recall@10", "ndcg@5", "ndcg@10", "averagepopularity@5",
                                        "averagepopularity@10", "tailpercentage@5", "tailpercentage@10"}
    for name, reported in detailed["test_result"].items():
        values = details["per_user"][name]
        assert values.dtype == np.float32 and values.shape == (120,)
        assert abs(float(values.astype(np.float64).mean()) - reported) <= 0.5e-4 + 1e-6, name
    assert 0 < detailed["test_result"]["recall@10"] < 1  # not a degenerate all-zero or all-one check
    beyond = details["beyond_accuracy"]
    assert set(beyond) == {f"{m.lower()}@{k}" for m in evaluation.BEYOND_ACCURACY for k in (5, 10)}
    assert 0 < beyond["itemcoverage@10"] <= 1 and 0 <= beyond["giniindex@10"] <= 1
    for name in ("averagepopularity@10", "tailpercentage@10"):  # per-user metrics too: their means are the result
        assert abs(float(details["per_user"][name].astype(np.float64).mean()) - beyond[name]) <= 0.5e-4 + 1e-4 * beyond[name]
    assert details["tail"]["groups"].startswith("degree groups 2-")
    # Per-user recall@10 of a one-test-item user is a hit flag: users with a hit are exactly the ones with 1.
    assert set(np.unique(details["per_user"]["recall@10"])) <= {0.0, 1.0}


def test_fast_tail_percentage_is_recboles():
    rng = np.random.default_rng(3)
    counts = Counter({int(i): int(c) for i, c in zip(range(1, 80), rng.integers(1, 30, size=79))})
    items = torch.from_numpy(rng.integers(1, 90, size=(40, 10)))  # ids 80-89: no training count, never tail
    struct = DataStruct()
    struct.set("rec.items", items)
    struct.set("data.count_items", counts)
    for ratio in (5, 0.3, 1.0):
        config = {"metric_decimal_place": 6, "topk": [3, 10], "tail_ratio": ratio}
        ours = evaluation.FastTailPercentage(config)
        assert ours.calculate_metric(struct) == TailPercentage(config).calculate_metric(struct)
        np.testing.assert_array_equal(ours.get_tail(items.numpy(), dict(counts)),
                                      TailPercentage(config).get_tail(items.numpy(), dict(counts)))
    # By hand, count rule: share of recommended items with 1 <= training count <= 5, per user, averaged.
    tail = {i for i, c in counts.items() if c <= 5}
    expected = np.mean([np.mean([int(i) in tail for i in row[:10]]) for row in items.numpy()])
    got = evaluation.FastTailPercentage({"metric_decimal_place": 6, "topk": [10], "tail_ratio": 5}).calculate_metric(struct)
    assert got["tailpercentage@10"] == pytest.approx(expected, abs=1e-6)


def _fake_dataset(item_degrees: list[int]) -> SimpleNamespace:
    items = np.repeat(np.arange(1, len(item_degrees) + 1), item_degrees)
    return SimpleNamespace(inter_feat={"item": torch.from_numpy(items)}, iid_field="item",
                           item_num=len(item_degrees) + 1)


def test_tail_is_the_longtail_charts_groups_after_the_first():
    assert evaluation.LONGTAIL_GROUPS == inspect.signature(longtail).parameters["n_groups"].default
    degrees = [50, 40, 30, 20, 12, 12, 9, 8, 7, 6, 5, 4, 3, 3, 2, 2, 1, 1, 1, 0]
    tail = evaluation.tail_definition(_fake_dataset(degrees))
    groups, bounds = degree_groups(np.array([0, *degrees]), evaluation.LONGTAIL_GROUPS)
    in_tail = [d for d, g in zip(degrees, groups[1:]) if g >= 1 and d > 0]
    assert tail["tail_ratio"] == tail["max_degree"] == bounds[1][1] == max(in_tail) and tail["tail_ratio"] > 1
    assert tail["items"] == len(in_tail)
    # RecBole's count rule then selects exactly those items.
    counts = Counter({i + 1: d for i, d in enumerate(degrees) if d > 0})
    config = {"metric_decimal_place": 4, "topk": [1], "tail_ratio": tail["tail_ratio"]}
    flags = evaluation.FastTailPercentage(config).get_tail(np.arange(1, len(degrees) + 1).reshape(-1, 1), dict(counts))
    assert [d for d, f in zip(degrees, flags[:, 0]) if f] == in_tail
    # A bound of 1 would read as 100 % in RecBole: the fraction covering the degree-1 items instead.
    ones = [9, 9, 9, 9, 9, 9, 9, 9, 1, 1, 1, 1]
    tail = evaluation.tail_definition(_fake_dataset(ones))
    assert tail["max_degree"] == 1 and tail["tail_ratio"] < 1
    config["tail_ratio"] = tail["tail_ratio"]
    counts = Counter({i + 1: d for i, d in enumerate(ones)})
    flags = evaluation.FastTailPercentage(config).get_tail(np.arange(1, len(ones) + 1).reshape(-1, 1), dict(counts))
    assert flags[:, 0].tolist() == [d == 1 for d in ones]
    assert evaluation.tail_definition(_fake_dataset([4, 4, 4])) is None  # one degree: no tail


def test_per_user_values_round_trip_through_base64_and_npz(tmp_path):
    details = {"users": np.array(["u1", "u 2", "3"]), "per_user": {"recall@20": np.array([0.5, 0.0, 1 / 3], np.float32)}}
    arrays = evaluation.decode_per_user(evaluation.encode_per_user(details))
    evaluation.write_per_user(tmp_path / "x" / "cell.npz", arrays)
    back = evaluation.read_per_user(tmp_path / "x" / "cell.npz")
    assert back["users"].tolist() == ["u1", "u 2", "3"] and back["recall@20"].dtype == np.float32
    np.testing.assert_array_equal(back["recall@20"], details["per_user"]["recall@20"])
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    with pytest.raises(evaluation.RecBoleMMError, match="bad.npz"):
        evaluation.read_per_user(tmp_path / "bad.npz")


# ---- leakage screen ------------------------------------------------------------------------------
def test_screen_passes_a_clean_split_and_records_what_chose_the_epoch(planted):
    root, config = planted
    result = recbole_mm.run_recbole(model="Pop", dataset="planted", config_dict=config, screen_leakage=True)
    screen = result["leakage"]
    assert screen["test_pairs"] == 120 and screen["valid_pairs"] == 120 and screen["train_pairs"] == 720
    assert screen["test_in_train"] == screen["test_in_valid"] == screen["valid_in_train"] == 0
    assert screen["epoch_chosen_by"] == {"metric": "recall@10", "split": "valid"}
    assert leakage.problems(screen) == []


def test_screen_refuses_a_planted_leak_before_training(planted):
    root, config = planted
    path = root / "planted" / "planted.inter"
    table = pd.read_csv(path, sep="\t")
    # Plant a leak: three users' test items also appear as their training rows.
    leaks = table[table["x_label"] == 2].head(3).assign(x_label=0)
    pd.concat([leaks, table]).to_csv(path, sep="\t", index=False)
    with pytest.raises(leakage.LeakageError, match=r"3 of 120 test \(user, item\) pairs are also training pairs"):
        recbole_mm.run_recbole(model="BPR", dataset="planted", config_dict=config, screen_leakage=True)
    assert not list((root / "saved").glob("*.pth"))  # refused before training: no checkpoint
    recbole_mm.run_recbole(model="Pop", dataset="planted", config_dict=config)  # not asked: RecBole's behaviour


def test_screen_checks_the_cold_start_held_out_items(planted, monkeypatch):
    root, config = planted
    config = {**config, "cold_start_items": 0.2}
    result = recbole_mm.run_recbole(model="Pop", dataset="planted", config_dict=config, screen_leakage=True)
    cold = result["leakage"]["cold_start"]
    assert cold["held_out_items"] == 12 + 6 and cold["held_out_in_train"] == 0  # 20 % test, 10 % valid of 60

    from recbole_mm.data.dataset import MultiModalDataset

    original = MultiModalDataset.cold_start_item_ids

    def leaky(self):  # a held-out group that names two items with training rows
        groups = original.fget(self)
        trained = np.unique(self.inter_feat[self.iid_field].numpy())[:2] if self.inter_feat is not None else []
        return {**groups, "test": np.concatenate([groups["test"], trained])}

    monkeypatch.setattr(MultiModalDataset, "cold_start_item_ids", property(leaky))
    with pytest.raises(leakage.LeakageError, match="2 of the 20 cold-start held-out items have training interactions"):
        recbole_mm.run_recbole(model="Pop", dataset="planted", config_dict=config, screen_leakage=True)


def test_screen_refuses_selection_without_a_validation_split():
    screen = {"test_pairs": 5, "test_in_train": 0, "test_in_valid": 0, "valid_in_train": 0, "cold_start": None,
              "epoch_chosen_by": {"metric": "recall@20", "split": "none (the last epoch)"}}
    assert leakage.problems(screen) == ["the epoch is chosen on none (the last epoch), not on a validation split"]
    lines = leakage.report_lines([{"leakage": screen}, {}], ["M: best valid recall@20 of seed 1"])
    assert any("FAILED" in line for line in lines) and any("1 ran before the screen existed" in line for line in lines)

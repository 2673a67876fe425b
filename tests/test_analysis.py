"""Long-tail analysis: the group split, per-group metrics on a hand-made example, end to end."""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch

import recbole_mm
from recbole_mm import analysis
from recbole_mm.analysis import degree_groups, evaluate_groups, group_topk, longtail, write_report
from recbole_mm.errors import RecBoleMMError


def test_degree_groups_by_hand():
    degree = np.array([0, 5, 1, 3, 3, 0, 2])  # item 0 is padding
    groups, bounds = degree_groups(degree, 3)
    # items with interactions by degree: 1(5) 3(3) 4(3) 6(2) 2(1); thirds of 5 at 1.67 and 3.33 -> the
    # nearest degree boundaries, after 1 item and after 3; item 5 (degree 0) in a group of its own
    assert groups.tolist() == [-1, 0, 2, 1, 1, 3, 2]
    assert bounds == [(5, 5), (3, 3), (1, 2), (0, 0)]
    assert np.bincount(degree_groups(np.arange(11), 5)[0][1:]).tolist() == [2, 2, 2, 2, 2]
    # few distinct degrees allow fewer groups; no degree-0 items, no such group
    groups, bounds = degree_groups(np.array([0, 1, 1, 1, 1, 2, 2]), 5)
    assert bounds == [(2, 2), (1, 1)] and groups.tolist() == [-1, 1, 1, 1, 1, 0, 0]
    with pytest.raises(RecBoleMMError):
        degree_groups(degree, 0)
    with pytest.raises(RecBoleMMError, match="no item has a training interaction"):
        degree_groups(np.zeros(5, dtype=int), 2)


def test_an_items_group_depends_on_its_degree_not_its_id():
    """Equal degrees share a group (the cut falls between degree values), so renumbering the items
    moves no item to another group; items never seen in training are a group of their own."""
    rng = np.random.default_rng(0)
    degree = np.concatenate([[0], rng.geometric(0.08, size=500)])
    degree[rng.choice(np.arange(1, 501), size=40, replace=False)] = 0
    groups, bounds = degree_groups(degree, 5)
    assert len(bounds) == 6 and bounds[-1] == (0, 0)
    assert set(groups[1:][degree[1:] == 0]) == {5} and 5 not in set(groups[1:][degree[1:] > 0])
    for value in np.unique(degree[1:]):
        assert len(set(groups[1:][degree[1:] == value])) == 1, value
    assert all(a[0] > b[1] for a, b in zip(bounds, bounds[1:]))  # disjoint, descending degree ranges
    permutation = np.concatenate([[0], 1 + rng.permutation(500)])
    moved, _ = degree_groups(degree[permutation], 5)
    assert (moved == groups[permutation]).all()
    sizes = np.bincount(groups[1:])[:5]  # about equal: within the largest tie block of the target
    assert sizes.sum() == (degree[1:] > 0).sum() and sizes.min() > 0


def test_group_metrics_on_a_hand_made_example(planted):
    from recbole_mm.quick_start import make_config

    root, config_dict = planted
    config = make_config("BPR", "planted", config_dict=config_dict)
    groups = torch.tensor([-1, 0, 0, 1, 1, 1])  # items 1-2 head, 3-5 tail
    scores = torch.tensor([[-math.inf, 0.9, 0.1, 0.8, 0.2, 0.0],   # top-2: items 1, 3
                           [-math.inf, 0.1, 0.2, 0.3, 0.9, 0.8]])  # top-2: items 4, 5
    positives = torch.tensor([[0, 1, 1, 1, 0, 0],
                              [0, 0, 0, 0, 0, 1]], dtype=torch.bool)
    head, tail = evaluate_groups(group_topk(scores, positives, groups, 2, 2), config, 2)
    # head: only user 0 (positives 1, 2; hit 1 at rank 1) -> recall 1/2, ndcg 1 / (1 + 1/log2 3)
    assert head["users"] == 1 and head["hits"] == 1
    assert head["recall@2"] == pytest.approx(0.5, abs=1e-4)
    assert head["ndcg@2"] == pytest.approx(1 / (1 + 1 / math.log2(3)), abs=1e-4)
    # tail: user 0 (positive 3, hit at rank 2) and user 1 (positive 5, hit at rank 2)
    assert tail["users"] == 2 and tail["hits"] == 2
    assert tail["recall@2"] == pytest.approx(1.0, abs=1e-4)
    assert tail["ndcg@2"] == pytest.approx(1 / math.log2(3), abs=1e-4)


@pytest.mark.slow
def test_one_group_equals_recboles_test_metrics_and_report(planted, tmp_path):
    root, config = planted
    config.update(epochs=3, topk=[10], metrics=["Recall", "NDCG"])
    result = recbole_mm.run_recbole(model="BPR", dataset="planted", config_dict=config)
    whole = longtail(result["saved_model_file"], n_groups=1, k=10)
    assert whole["groups"][0]["recall@10"] == pytest.approx(result["test_result"]["recall@10"], abs=1e-4)
    assert whole["groups"][0]["ndcg@10"] == pytest.approx(result["test_result"]["ndcg@10"], abs=1e-4)
    five = longtail(result["saved_model_file"], n_groups=5, k=10)
    assert sum(five["group_items"]) == whole["group_items"][0] and len(five["groups"]) == len(five["group_degrees"])
    assert sum(g["hits"] for g in five["groups"]) == whole["groups"][0]["hits"] > 0
    md, png = write_report([five, five], str(tmp_path / "report" / "longtail"))
    assert png.stat().st_size > 1000 and png.read_bytes()[:4] == b"\x89PNG"
    text = md.read_text()
    assert text.count("| BPR | recall@10 |") == 2
    row = next(line for line in text.splitlines() if line.startswith("| BPR | recall@10 |"))
    assert [int(n) for n in re.findall(r"\((\d+)\)", row)] == [g["hits"] for g in five["groups"]]
    # `saved/BPR-*.pth` also matches the run's .last.pth: the command analyses the best epoch once.
    best = result["saved_model_file"]
    last = best[: -len(".pth")] + ".last.pth"
    assert Path(last).exists()
    analysis.main(["longtail", best, last, "--k", "10", "--out", str(tmp_path / "cli")])
    assert (tmp_path / "cli.md").read_text().count("| BPR | recall@10 |") == 1
    other = {**five, "file": "other.pth", "group_degrees": [[9, 9]] + five["group_degrees"][1:]}
    with pytest.raises(RecBoleMMError, match="other.pth has other item degrees"):
        write_report([five, other], str(tmp_path / "report" / "mixed"))


def test_items_without_training_interactions_are_their_own_group(planted, tmp_path):
    """A planted set where some items occur only in valid/test: they are the last group, and a
    content model can still hit them."""
    import pandas as pd

    root, config = planted
    inter = root / "planted" / "planted.inter"
    frame = pd.read_csv(inter, sep="\t")
    unseen = [3, 7, 11]  # training rows of these items become test rows
    frame.loc[frame["itemID"].isin(unseen) & (frame["x_label"] == 0), "x_label"] = 2
    frame.to_csv(inter, sep="\t", index=False)
    config.update(epochs=2, topk=[10], metrics=["Recall", "NDCG"])
    result = recbole_mm.run_recbole(model="VBPR", dataset="planted", config_dict=config)
    report = longtail(result["saved_model_file"], n_groups=3, k=10)
    assert report["group_degrees"][-1] == [0, 0] and report["group_items"][-1] == len(unseen)
    assert report["groups"][-1]["users"] > 0
    md, _ = write_report([report], str(tmp_path / "lt"))
    assert "| no training interaction |" in md.read_text()

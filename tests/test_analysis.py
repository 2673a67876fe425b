"""Long-tail analysis: the group split, per-group metrics on a hand-made example, end to end."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import recbole_mm
from recbole_mm.analysis import degree_groups, evaluate_groups, group_topk, longtail, write_report
from recbole_mm.errors import RecBoleMMError


def test_degree_groups_by_hand():
    degree = np.array([0, 5, 1, 3, 3, 0, 2])  # item 0 is padding
    groups = degree_groups(degree, 3)
    # sorted by degree, ties to the lower id: 1(5) 3(3) 4(3) 6(2) 2(1) 5(0)
    assert groups.tolist() == [-1, 0, 2, 0, 1, 2, 1]
    assert np.bincount(degree_groups(np.arange(11), 5)[1:]).tolist() == [2, 2, 2, 2, 2]
    with pytest.raises(RecBoleMMError):
        degree_groups(degree, 7)


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
    assert head["users"] == 1
    assert head["recall@2"] == pytest.approx(0.5, abs=1e-4)
    assert head["ndcg@2"] == pytest.approx(1 / (1 + 1 / math.log2(3)), abs=1e-4)
    # tail: user 0 (positive 3, hit at rank 2) and user 1 (positive 5, hit at rank 2)
    assert tail["users"] == 2
    assert tail["recall@2"] == pytest.approx(1.0, abs=1e-4)
    assert tail["ndcg@2"] == pytest.approx(1 / math.log2(3), abs=1e-4)


def test_one_group_equals_recboles_test_metrics_and_report(planted, tmp_path):
    root, config = planted
    config.update(epochs=3, topk=[10], metrics=["Recall", "NDCG"])
    result = recbole_mm.run_recbole(model="BPR", dataset="planted", config_dict=config)
    whole = longtail(result["saved_model_file"], n_groups=1, k=10)
    assert whole["groups"][0]["recall@10"] == pytest.approx(result["test_result"]["recall@10"], abs=1e-4)
    assert whole["groups"][0]["ndcg@10"] == pytest.approx(result["test_result"]["ndcg@10"], abs=1e-4)
    five = longtail(result["saved_model_file"], n_groups=5, k=10)
    assert sum(five["group_items"]) == whole["group_items"][0] and len(five["groups"]) == 5
    md, png = write_report([five, five], str(tmp_path / "report" / "longtail"))
    assert png.stat().st_size > 1000 and png.read_bytes()[:4] == b"\x89PNG"
    assert md.read_text().count("| BPR | recall@10 |") == 2

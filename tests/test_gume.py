"""GUME: loss terms against hand-computed values, gradients, determinism, ablations, learning."""

from __future__ import annotations

import math

import pytest
import torch

import recbole_mm
from recbole_mm.model.losses import bpr_loss, gaussian_alignment, info_nce, perturb_rows, squared_l2
from recbole_mm.quick_start import create_dataset, make_config
from builders import assert_trains_deterministically, assert_gradients_reach


# ---- loss terms on tiny inputs ------------------------------------------------------------------
def test_bpr_loss_by_hand():
    value = bpr_loss(torch.tensor([2.0, 0.0]), torch.tensor([1.0, 1.0]))
    expected = -(math.log(1 / (1 + math.exp(-1))) + math.log(1 / (1 + math.exp(1)))) / 2
    assert value.item() == pytest.approx(expected, abs=1e-6)


def test_info_nce_by_hand():
    a = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    b = torch.tensor([[3.0, 0.0], [1.0, 1.0]])
    tau = 0.5
    # cosines: a0·b0 = 1, a0·b1 = 1/√2, a1·b0 = 0, a1·b1 = 1/√2
    c = 1 / math.sqrt(2)
    row0 = -math.log(math.exp(1 / tau) / (math.exp(1 / tau) + math.exp(c / tau)))
    row1 = -math.log(math.exp(c / tau) / (math.exp(0) + math.exp(c / tau)))
    assert info_nce(a, b, tau).item() == pytest.approx((row0 + row1) / 2, abs=1e-6)


def test_squared_l2_by_hand():
    value = squared_l2(torch.tensor([[1.0, 2.0]]), torch.tensor([[3.0]]), denominator=4)
    assert value.item() == pytest.approx(0.5 * (1 + 4 + 9) / 4)


def test_gaussian_alignment_by_hand():
    x = torch.tensor([[1.0, 2.0], [3.0, 4.0]])  # mean 2.5, unbiased var 5/3
    y = torch.tensor([[0.0, 0.0], [0.0, 4.0]])  # mean 1.0, unbiased var 4
    assert gaussian_alignment([x, y]).item() == pytest.approx(abs(5 / 3 - 4) + 1.5, abs=1e-6)
    z = torch.zeros(2, 2)  # three modalities: mean over the three pairs
    pairs = [abs(5 / 3 - 4) + 1.5, 5 / 3 + 2.5, 4 + 1.0]
    assert gaussian_alignment([x, y, z]).item() == pytest.approx(sum(pairs) / 3, abs=1e-6)
    assert gaussian_alignment([x]).item() == 0.0


def test_perturb_keeps_signs_and_bounds_noise():
    torch.manual_seed(0)
    x = torch.tensor([[1.0, -2.0, 3.0], [-0.5, 0.5, -1.0]])
    ids = torch.arange(2)
    noisy = perturb_rows(x, ids, eps=0.1)
    delta = noisy - x
    assert torch.all(torch.sign(delta) == torch.sign(x))
    assert torch.allclose(delta.norm(dim=1), torch.full((2,), 0.1), atol=1e-6)
    assert not torch.equal(perturb_rows(x, ids, 0.1), perturb_rows(x, ids, 0.1))  # a fresh draw each call


# ---- the model -----------------------------------------------------------------------------------
def build(planted, **overrides):
    from recbole.data import data_preparation
    from recbole.utils import get_model, init_seed

    root, config_dict = planted
    config = make_config("GUME", "planted", config_dict={**config_dict, **overrides})
    dataset = create_dataset(config)
    train_data, valid_data, test_data = data_preparation(config, dataset)
    init_seed(config["seed"], True)
    return config, get_model("GUME")(config, train_data._dataset), train_data


def test_gradients_reach_every_parameter(planted):
    config, model, train_data = build(planted, knn_k=5)
    batch = next(iter(train_data))
    model.calculate_loss(batch).backward()
    assert_gradients_reach(model.named_parameters())


def test_attention_weights_sum_to_one_and_final_is_id_plus_z(planted):
    config, model, _ = build(planted, knn_k=5)
    out = model.forward()
    assert torch.allclose(out["attention"].sum(dim=1), torch.ones(len(out["o"])), atol=1e-6)
    assert torch.allclose(out["o"], out["h_id"] + out["z"])
    assert len(out["explicit"]) == 2 and out["explicit"][0].shape == out["o"].shape


def test_graph_enhancement_adds_semantic_edges(planted):
    _, with_ge, train_data = build(planted, knn_k=5)
    _, without, _ = build(planted, knn_k=5, graph_enhancement=False)
    assert with_ge.n_semantic_edges > 0 and without.n_semantic_edges == 0
    extra = with_ge.norm_adj._nnz() - without.norm_adj._nnz()
    assert extra == with_ge.n_semantic_edges
    # Planted features: semantic neighbours of an item share its cluster (original itemID % 4).
    tokens = train_data._dataset.field2id_token["itemID"]
    cluster = torch.tensor([-1] + [int(t) % 4 for t in tokens[1:]])
    rows, cols = with_ge.norm_adj.indices()
    n_users = with_ge.n_users
    items = (rows >= n_users) & (cols >= n_users)
    assert torch.equal(cluster[rows[items] - n_users], cluster[cols[items] - n_users])


@pytest.mark.parametrize("switch", ["internal_alignment", "external_alignment", "user_modality_enhancement"])
def test_each_switch_changes_the_loss(planted, switch):
    losses = []
    for on in (True, False):
        config, model, train_data = build(planted, knn_k=5, **{switch: on})
        torch.manual_seed(1)
        losses.append(model.calculate_loss(next(iter(train_data))).item())
    assert losses[0] != pytest.approx(losses[1], abs=1e-7)


def test_all_auxiliary_parts_off_still_trains(planted):
    root, config = planted
    config.update(epochs=3, knn_k=5, graph_enhancement=False, internal_alignment=False,
                  external_alignment=False, user_modality_enhancement=False)
    result = recbole_mm.run_recbole(model="GUME", dataset="planted", config_dict=config, saved=False)
    losses = [h["train_loss"] for h in result["history"]]
    assert all(math.isfinite(v) for v in losses) and losses[-1] < losses[0]


@pytest.mark.slow
def test_deterministic_on_cpu(planted):
    root, config = planted
    config.update(epochs=2, knn_k=5)
    assert_trains_deterministically("GUME", config)


@pytest.mark.slow
def test_gume_beats_popularity_on_planted_clusters(planted):
    root, config = planted
    config.update(epochs=15, knn_k=5, learning_rate=0.01, stopping_step=15)
    pop = recbole_mm.run_recbole(model="Pop", dataset="planted", config_dict=config)
    gume = recbole_mm.run_recbole(model="GUME", dataset="planted", config_dict=config)
    assert gume["test_result"]["recall@10"] > pop["test_result"]["recall@10"] + 0.3, (gume["test_result"], pop["test_result"])


def test_single_modality_trains(planted):
    root, config = planted
    config.update(epochs=1, knn_k=5, modalities={"image": "image_feat.npy"})
    result = recbole_mm.run_recbole(model="GUME", dataset="planted", config_dict=config, saved=False)
    assert 0.0 <= result["test_result"]["recall@10"] <= 1.0


def test_recbole_run_recbole_finds_gume(planted):
    from recbole.quick_start import run_recbole

    root, config = planted
    config.update(knn_k=5)
    result = run_recbole(model="GUME", dataset="planted", config_dict=config)
    assert 0.0 <= result["test_result"]["recall@10"] <= 1.0


def test_full_sort_reuses_one_forward_per_evaluation(planted):
    from recbole.data.interaction import Interaction

    config, model, _ = build(planted, knn_k=5)
    calls = []
    original = model.forward
    model.forward = lambda: calls.append(1) or original()
    model.eval()
    users = Interaction({"userID": torch.tensor([1, 2])})
    model.full_sort_predict(users)
    model.full_sort_predict(users)
    assert len(calls) == 1
    model.train()
    model.eval()
    model.full_sort_predict(users)
    assert len(calls) == 2


def test_learning_rate_schedule(planted):
    """learning_rate_scheduler [a, b]: epoch e trains with lr · a^(e/b), for any model (here BPR)."""
    root, config = planted
    config.update(epochs=3, learning_rate=0.01, learning_rate_scheduler=[0.5, 1])
    result = recbole_mm.run_recbole(model="BPR", dataset="planted", config_dict=config, saved=False)
    assert [h["learning_rate"] for h in result["history"]] == pytest.approx([0.01, 0.005, 0.0025])
    config.pop("learning_rate_scheduler")
    result = recbole_mm.run_recbole(model="BPR", dataset="planted", config_dict=config, saved=False)
    assert [h["learning_rate"] for h in result["history"]] == pytest.approx([0.01] * 3)


def test_per_dataset_overrides_reach_only_their_model():
    from recbole.config import Config

    gume = Config(model="GUME", dataset="amazon-baby", config_dict={"state": "WARNING"})
    lightgcn = Config(model="LightGCN", dataset="amazon-baby", config_dict={"state": "WARNING"})
    assert gume["n_layers"] == 2 and gume["bm_temp"] == 0.4 and gume["vt_loss"] == 0.1
    assert lightgcn["n_layers"] == 2 and "bm_temp" not in lightgcn.final_config_dict
    sports = Config(model="GUME", dataset="amazon-sports", config_dict={"state": "WARNING", "vt_loss": 0.5})
    assert sports["n_layers"] == 1 and sports["vt_loss"] == 0.5  # the user's value wins

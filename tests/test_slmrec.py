"""SLMRec: loss terms by hand (dense LightGCN and explicit layers), the self-supervised tasks, gradients,
determinism, learning, RecBole's own entry point, and equality with MMRec's SLMRec on the fixture of
tests/data/mmrec_fidelity/slmrec.pt (scripts/make_slmrec_fidelity_fixture.py)."""

from __future__ import annotations

import math
import shutil

import pytest
import torch
import torch.nn.functional as F

from builders import assert_gradients_reach, assert_trains_deterministically, build_planted
from conftest import planted_config
from fidelity import DATA, NAME, getattr_path
import recbole_mm
from recbole_mm.errors import RecBoleMMError
from recbole_mm.model.losses import dot_info_nce


def build(planted, **overrides):
    _, model, train_data = build_planted("SLMRec", planted, **{"n_layers": 2, **overrides})
    return model, train_data


def dense_adjacency(model) -> torch.Tensor:
    """D^-1/2 A D^-1/2 over users then items, dense, built here from the training pairs (not the model's graph)."""
    users, items = model.interaction_edges(model._dataset_for_test)
    n = model.n_users + model.n_items
    adjacency = torch.zeros(n, n)
    adjacency[users, model.n_users + items] = 1
    adjacency[model.n_users + items, users] = 1
    degree = adjacency.sum(dim=1)
    scale = torch.where(degree > 0, degree.pow(-0.5), torch.zeros_like(degree))
    return scale[:, None] * adjacency * scale[None, :]


def dense_views(model) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Each view's (users, items) after mean propagation over :func:`dense_adjacency`."""
    norm = dense_adjacency(model)
    inputs = {"id": model.item_embedding.weight}
    for m in model.modalities:
        unit = F.normalize(model._dataset_for_test.item_features[m], dim=1)
        inputs[m] = unit @ model.projections[m].weight.T + model.projections[m].bias
    views = {}
    for name, x in inputs.items():
        layer = torch.cat([model.user_embedding.weight, x])
        total = layer
        for _ in range(model.n_layers):
            layer = norm @ layer
            total = total + layer
        out = total / (model.n_layers + 1)
        views[name] = (out[: model.n_users], out[model.n_users:])
    return views


def cross_entropy_by_hand(logits: torch.Tensor) -> torch.Tensor:
    """mean_n -log(exp(l_nn) / Σ_m exp(l_nm))."""
    return torch.stack([-(logits[n, n] - logits[n].exp().sum().log()) for n in range(len(logits))]).mean()


# ---- loss terms ----------------------------------------------------------------------------------
def test_dot_info_nce_by_hand():
    a = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    b = torch.tensor([[3.0, 1.0], [1.0, 1.0]])
    # logits (a bᵀ)/0.5 = [[6, 2], [4, 4]]
    expected = (-(6 - math.log(math.exp(6) + math.exp(2))) - (4 - math.log(2 * math.exp(4)))) / 2
    assert dot_info_nce(a, b, 0.5).item() == pytest.approx(expected, rel=1e-6)


def with_dataset(model, train_data):
    model._dataset_for_test = train_data._dataset
    return model


def test_fac_loss_by_hand(planted):
    model, train_data = build(planted, ssl_alpha=0.3, ssl_temp=0.5, temp=0.2)
    with_dataset(model, train_data)
    batch = next(iter(train_data))
    users, items = batch["userID"], batch["itemID"]
    loss = model.calculate_loss(batch)

    views = dense_views(model)
    order = ["id", "image", "text"]
    u = torch.cat([views[v][0][users] for v in order], dim=1) @ model.user_fusion.weight.T + model.user_fusion.bias
    i = torch.cat([views[v][1][items] for v in order], dim=1) @ model.item_fusion.weight.T + model.item_fusion.bias
    main = cross_entropy_by_hand(F.normalize(u, dim=1) @ F.normalize(i, dim=1).T / 0.2)

    def lin(layer, x):
        return x @ layer.weight.T + layer.bias

    # Two modalities: image in the first fine space; the empty middle level; text in the d/2 coarse space.
    fine = lin(model.fac_id, views["id"][1][items])
    image = lin(model.fac_heads["image"], views["image"][1][items])
    coarse = lin(model.fac_coarse, lin(model.fac_hops[0], fine))
    text = lin(model.fac_heads["text"], views["text"][1][items])
    assert coarse.shape[1] == text.shape[1] == model.user_fusion.weight.shape[0] // 2
    fac = cross_entropy_by_hand(fine @ image.T / 0.5) + cross_entropy_by_hand(coarse @ text.T / 0.5)
    assert loss.item() == pytest.approx((main + 0.3 * fac).item(), rel=1e-5)


def test_feature_dropout_without_dropout_contrasts_each_row_with_itself(planted):
    # FD with dropout_rate 0: both copies are the forward pass's rows, so the task is InfoNCE(x, x).
    model, train_data = build(planted, ssl_task="FD", dropout_rate=0.0, ssl_alpha=1.0, ssl_temp=0.5, temp=0.2)
    batch = next(iter(train_data))
    users, items = batch["userID"], batch["itemID"]
    total = model.calculate_loss(batch)
    all_u, all_i = model.forward()
    u, i = all_u[users], all_i[items]

    def cos_ce(a, b, t):
        return cross_entropy_by_hand(F.normalize(a, dim=1) @ F.normalize(b, dim=1).T / t)

    expected = cos_ce(u, i, 0.2) + cos_ce(u, u, 0.5) + cos_ce(i, i, 0.5)
    assert total.item() == pytest.approx(expected.item(), rel=1e-5)


def test_feature_masking_zeroes_one_view_per_copy_and_swaps_layers(planted):
    # FM, one layer: copy c of a view = (its own ego + A · the other copy's ego) / 2 (the reference's swap),
    # where a copy's ego has zero item inputs in the view drawn for it.
    model, train_data = build(planted, ssl_task="FM", n_layers=1, ssl_alpha=1.0, ssl_temp=0.5, temp=0.2)
    with_dataset(model, train_data)
    batch = next(iter(train_data))
    users, items = batch["userID"], batch["itemID"]
    masked = ("image", "id")
    model.masked_views = lambda: masked
    inputs = model._item_inputs()
    ssl = model.two_view_loss(inputs, users, items)

    adjacency = dense_adjacency(model)
    egos = {c: {name: torch.cat([model.user_embedding.weight, x * (name != masked[c])]) for name, x in inputs.items()}
            for c in (0, 1)}
    fused = {}
    for c in (0, 1):
        outs = [(egos[c][name] + adjacency @ egos[1 - c][name]) / 2 for name in ["id", "image", "text"]]
        fused[c] = (torch.cat([o[users] for o in outs], 1) @ model.user_fusion.weight.T + model.user_fusion.bias,
                    torch.cat([o[model.n_users + items] for o in outs], 1) @ model.item_fusion.weight.T
                    + model.item_fusion.bias)

    def cos_ce(a, b):
        return cross_entropy_by_hand(F.normalize(a, dim=1) @ F.normalize(b, dim=1).T / 0.5)

    expected = cos_ce(fused[0][0], fused[1][0]) + cos_ce(fused[0][1], fused[1][1])
    assert ssl.item() == pytest.approx(expected.item(), rel=1e-5)


def test_fac_hierarchy_for_one_and_three_modalities(planted):
    root, _ = planted
    shutil.copy(root / "planted" / "text_feat.npy", root / "planted" / "audio_feat.npy")
    modalities = {"image": "image_feat.npy", "audio": "audio_feat.npy", "text": "text_feat.npy"}
    model, train_data = build(planted, modalities=modalities)
    # The authors' three levels: image fine (d), audio fine (d, one hop on), text coarse (d/2).
    assert [model.fac_heads[m].out_features for m in modalities] == [16, 16, 8]
    assert len(model.fac_hops) == 1 and model.fac_coarse.out_features == 8
    model.calculate_loss(next(iter(train_data))).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())
    model, train_data = build(planted, modalities={"image": "image_feat.npy"})
    assert len(model.fac_hops) == 0 and not hasattr(model, "fac_coarse") and list(model.fac_heads) == ["image"]


# ---- the model -----------------------------------------------------------------------------------
@pytest.mark.parametrize("task", ["FAC", "FD", "FM", "FD+FM"])
def test_gradients_reach_every_parameter(planted, task):
    model, train_data = build(planted, ssl_task=task)
    torch.manual_seed(0)
    model.calculate_loss(next(iter(train_data))).backward()
    assert_gradients_reach(model.named_parameters())


def test_sampled_negatives_are_refused(planted):
    negatives = {"distribution": "uniform", "sample_num": 1, "alpha": 1.0, "dynamic": False, "candidate_num": 0}
    with pytest.raises(RecBoleMMError, match="train_neg_sample_args"):
        build(planted, train_neg_sample_args=negatives)


def test_mean_fusion_trains(planted):
    model, train_data = build(planted, mm_fusion_mode="mean")
    assert model.user_fusion.in_features == 16
    assert torch.isfinite(model.calculate_loss(next(iter(train_data))))


@pytest.mark.parametrize("task", ["FAC", "FD+FM"])
def test_deterministic_on_cpu(planted, task):
    root, config = planted
    config.update(epochs=2, ssl_task=task, n_layers=2)
    assert_trains_deterministically("SLMRec", config)


@pytest.mark.slow
def test_slmrec_beats_popularity_on_planted_clusters(planted):
    root, config = planted
    config.update(epochs=15, learning_rate=0.01, stopping_step=15, n_layers=2)
    pop = recbole_mm.run_recbole(model="Pop", dataset="planted", config_dict=config)
    slmrec = recbole_mm.run_recbole(model="SLMRec", dataset="planted", config_dict=config)
    recall, pop_recall = slmrec["test_result"]["recall@10"], pop["test_result"]["recall@10"]
    assert recall > pop_recall + 0.3, (recall, pop_recall)


def test_single_modality_trains(planted):
    root, config = planted
    config.update(epochs=1, n_layers=1, modalities={"text": "text_feat.npy"})
    result = recbole_mm.run_recbole(model="SLMRec", dataset="planted", config_dict=config, saved=False)
    assert 0.0 <= result["test_result"]["recall@10"] <= 1.0


def test_recbole_run_recbole_finds_slmrec(planted):
    from recbole.quick_start import run_recbole

    root, config = planted
    config.update(n_layers=1)
    result = run_recbole(model="SLMRec", dataset="planted", config_dict=config)
    assert 0.0 <= result["test_result"]["recall@10"] <= 1.0


# ---- fidelity: MMRec's SLMRec on the same data, weights, batches and random draws --------------------
# MMRec name → ours; MMRec's g_a_iva (its audio level, never used without audio) has no counterpart.
NAMES = {
    "embedding_user": "user_embedding", "embedding_item": "item_embedding", "v_dense": "projections.image",
    "t_dense": "projections.text", "embedding_item_after_GCN": "item_fusion",
    "embedding_user_after_GCN": "user_fusion", "g_i_iv": "fac_id", "g_v_iv": "fac_heads.image",
    "g_iv_iva": "fac_hops.0", "g_iva_ivat": "fac_coarse", "g_t_ivat": "fac_heads.text",
}
RECORD = None


def fixture_record() -> dict:
    global RECORD
    if RECORD is None:
        RECORD = torch.load(DATA / NAME / "slmrec.pt", weights_only=True)
    return RECORD


def load_reference(case: str, tmp_path):
    """Our SLMRec on the fixture's data holding the reference's weights; (record, model, name map)."""
    from recbole.data import data_preparation
    from recbole.utils import get_model

    from recbole_mm.quick_start import create_dataset, make_config

    record = fixture_record()[case]
    config = make_config("SLMRec", NAME, config_dict=planted_config(
        DATA, NAME, checkpoint_dir=str(tmp_path / "saved"), **record["config"]))
    train_data, _, _ = data_preparation(config, create_dataset(config))
    dataset = train_data._dataset
    for field in ("userID", "itemID"):  # reference id + 1 = ours (ids numbered by first appearance)
        tokens = dataset.field2id_token[field][1:]
        assert [int(t) for t in tokens] == list(range(len(tokens))), field
    model = get_model("SLMRec")(config, dataset)
    names = {}
    ours = dict(model.named_parameters())
    for key in record["state"]:
        module, kind = key.rsplit(".", 1)
        if module in NAMES and f"{NAMES[module]}.{kind}" in ours:
            names[key] = f"{NAMES[module]}.{kind}"
    with torch.no_grad():
        for theirs, mine in names.items():
            target = getattr_path(model, mine)
            if mine.startswith(("user_embedding", "item_embedding")):
                target[1:] = record["state"][theirs]
            else:
                target.copy_(record["state"][theirs])
    assert len(names) == len(ours), sorted(set(ours) - set(names.values()))
    return record, model, names


def replay_random_draws(model, record) -> None:
    """Make our model take the reference's recorded masks: dropout masks (reference rows → ours, padding
    rows kept) and FM's masked views (0 = vision, i.e. image; 1 = the absent audio view: nothing)."""
    n_users = model.n_users - 1
    ref_rows = model.n_users + model.n_items - 2
    rows = torch.arange(ref_rows)
    ours_rows = torch.where(rows < n_users, rows + 1, rows - n_users + model.n_users + 1)
    if "dropout_masks" in record:
        masks = iter(record["dropout_masks"])
        p = record["config"]["dropout_rate"]

        def layer_dropout(x):
            keep = torch.ones_like(x)
            keep[ours_rows] = next(masks).to(x.dtype)
            return x * keep / (1 - p)

        model.layer_dropout = layer_dropout
    draws, pairs = record["draws"].tolist(), []
    while draws:
        first = draws.pop(0)
        second = draws.pop(0)
        while second == first:
            second = draws.pop(0)
        pairs.append(tuple({0: "image", 1: None, 3: "id"}[d] for d in (first, second)))
    pairs = iter(pairs)
    model.masked_views = lambda: next(pairs)


@pytest.mark.parametrize("case", ["FAC", "FAC_1", "FD", "FM", "FD+FM"])
def test_matches_mmrec_slmrec(case, tmp_path, monkeypatch):
    from recbole.data.interaction import Interaction

    monkeypatch.chdir(tmp_path)
    record, model, names = load_reference(case, tmp_path)
    replay_random_draws(model, record)
    model.train()
    for b, ids in enumerate(record["batches"]):
        model.zero_grad()
        loss = model.calculate_loss(Interaction({model.USER_ID: ids[0] + 1, model.ITEM_ID: ids[1] + 1}))
        loss.backward()
        assert loss.item() == pytest.approx(record[f"loss_{b}"].item(), abs=1e-5), b
        for theirs, grad in record[f"grads_{b}"].items():
            if theirs not in names:  # the reference's unused layers
                assert torch.all(grad == 0), theirs
                continue
            mine = getattr_path(model, names[theirs]).grad
            if names[theirs].startswith(("user_embedding", "item_embedding")):
                assert torch.all(mine[0] == 0)
                mine = mine[1:]
            assert torch.allclose(mine, grad, atol=1e-5, rtol=1e-4), (b, theirs)
    if "dropout_masks" in record:
        # every recorded mask was used: (M + 1) views × 2 copies × n_layers × 2 batches
        assert len(record["dropout_masks"]) == 2 * 2 * record["config"]["n_layers"] * len(model.views)
    model.eval()
    with torch.no_grad():
        users = torch.arange(1, model.n_users)
        scores = model.full_sort_predict(Interaction({model.USER_ID: users})).reshape(len(users), -1)[:, 1:]
    # The reference returns σ(u·i) (same ranking).
    assert torch.allclose(torch.sigmoid(scores), record["scores"], atol=1e-6)

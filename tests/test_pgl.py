"""PGL: the principal graphs (local sample, global SVD) against dense references, the loss by hand, gradients,
determinism, learning, RecBole's own entry point, and equality with MMRec's PGL on the fixture of
tests/data/mmrec_fidelity."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import fidelity
import recbole_mm
from builders import assert_gradients_reach, assert_trains_deterministically, build_planted
from recbole_mm.errors import RecBoleMMError
from recbole_mm.model.losses import bpr_loss


def build(planted, **overrides):
    _, model, train_data = build_planted("PGL", planted, **{"knn_k": 5, "embedding_size": 16,
                                                            "feat_embed_dim": 16, **overrides})
    return model, train_data


# ---- the model on the planted set ----------------------------------------------------------------
def test_loss_is_bpr_plus_weighted_contrast_of_dropout_views(planted):
    model, train_data = build(planted, reg_weight=0.3, dropout=0.25, temperature=0.5)
    batch = next(iter(train_data))
    torch.manual_seed(3)
    loss = model.calculate_loss(batch)
    # By hand: the same epoch graph (kept), the same dropout masks (same seed after the graph's draw).
    torch.manual_seed(3)
    model.train()
    users, items = model.forward()
    u = users[batch["userID"]]
    pos, neg = items[batch["itemID"]], items[batch["neg_itemID"]]
    masks = [(F.dropout(torch.ones_like(x), 0.25, True)) for x in (u, u, pos, pos)]
    views = [m * x for m, x in zip(masks, (u, u, pos, pos))]

    def nce(a, b):
        a, b = F.normalize(a, dim=1), F.normalize(b, dim=1)
        logits = torch.exp(a @ b.T / 0.5)
        return (-torch.log(logits.diag() / logits.sum(dim=1))).mean()

    contrast = (nce(views[0], views[1]) + nce(views[2], views[3])) / 2
    expected = bpr_loss((u * pos).sum(1), (u * neg).sum(1)) + 0.3 * contrast
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)


def test_items_are_normalised_features_side_by_side_and_users_their_modality_blocks(planted):
    model, _ = build(planted, n_ui_layers=0, n_mm_layers=0)
    model.eval()
    users, items = model.forward()
    for k, m in enumerate(model.modalities):
        block = items[:, 16 * k: 16 * (k + 1)] / 2  # the layer mean with no layers adds x and h = x
        expected = F.normalize(model.projections[m](model.raw_features[m].weight), dim=1)
        assert torch.allclose(block, expected, atol=1e-6)
        assert torch.equal(users[:, 16 * k: 16 * (k + 1)], model.user_embeddings[m].weight)


def test_local_graph_is_redrawn_each_epoch_and_evaluation_uses_the_full_graph(planted):
    model, _ = build(planted, edge_keep_rate=0.3)
    model.train()
    model.forward()
    first = model.local_adj
    model.forward()
    assert model.local_adj is first  # fixed within the epoch
    edges = len(model.edge_users)
    assert first._nnz() == 2 * int(edges * 0.3) and model.norm_adj._nnz() == 2 * edges
    model.eval()
    eval_out = model.forward()
    model.train()
    model.forward()
    assert not torch.equal(model.local_adj.indices(), first.indices())
    model.eval()
    assert torch.equal(model.forward()[1], eval_out[1])


def test_global_mode_trains_on_the_principal_graph(planted):
    model, train_data = build(planted, principal_graph="global")
    assert not hasattr(model, "local_adj") and model.principal_adj._nnz() > 0
    # Rows of users reach items only (and the reverse): the graph keeps Â's bipartite structure.
    rows, cols = model.principal_adj.indices()
    assert torch.all((rows < model.n_users) != (cols < model.n_users))
    model.train()
    loss = model.calculate_loss(next(iter(train_data)))
    assert torch.isfinite(loss) and not hasattr(model, "local_adj")


def test_item_graph_mixes_binary_knn_graphs(planted):
    model, _ = build(planted)
    dense = model.item_graph.to_dense()
    assert torch.all(dense[0] == 0) and torch.all(dense[:, 0] == 0)
    assert torch.allclose(dense[1:].sum(dim=1), torch.ones(model.n_items - 1))


@pytest.mark.parametrize("mode", ["local", "global"])
def test_gradients_reach_every_parameter(planted, mode):
    model, train_data = build(planted, reg_weight=0.1, principal_graph=mode)
    model.calculate_loss(next(iter(train_data))).backward()
    assert_gradients_reach(model.named_parameters())


def test_feat_embed_dim_must_equal_embedding_size(planted):
    with pytest.raises(RecBoleMMError, match="feat_embed_dim"):
        build(planted, feat_embed_dim=8)


def test_deterministic_on_cpu(planted):
    root, config = planted
    config.update(epochs=2, knn_k=5, embedding_size=16, feat_embed_dim=16, reg_weight=0.1)
    assert_trains_deterministically("PGL", config)


def test_pgl_beats_popularity_on_planted_clusters(planted):
    root, config = planted
    config.update(epochs=15, knn_k=5, embedding_size=16, feat_embed_dim=16, learning_rate=0.01, stopping_step=15)
    pop = recbole_mm.run_recbole(model="Pop", dataset="planted", config_dict=config)
    pgl = recbole_mm.run_recbole(model="PGL", dataset="planted", config_dict=config)
    assert pgl["test_result"]["recall@10"] > pop["test_result"]["recall@10"] + 0.3, (pgl, pop)


def test_single_modality_trains(planted):
    root, config = planted
    config.update(epochs=1, knn_k=5, embedding_size=16, feat_embed_dim=16, modalities={"text": "text_feat.npy"})
    result = recbole_mm.run_recbole(model="PGL", dataset="planted", config_dict=config, saved=False)
    assert 0.0 <= result["test_result"]["recall@10"] <= 1.0


def test_recbole_run_recbole_finds_pgl(planted):
    from recbole.quick_start import run_recbole

    root, config = planted
    config.update(knn_k=5, embedding_size=16, feat_embed_dim=16)
    result = run_recbole(model="PGL", dataset="planted", config_dict=config)
    assert 0.0 <= result["test_result"]["recall@10"] <= 1.0


# ---- fidelity: MMRec's PGL (the authors' code) on the same data, weights, batches and random draws ----------
# Reference parameter name → ours.
NAMES = {"user_image.weight": "user_embeddings.image.weight", "user_text.weight": "user_embeddings.text.weight",
         "image_embedding.weight": "raw_features.image.weight", "text_embedding.weight": "raw_features.text.weight"}


def load_reference(mode: str, tmp_path):
    """(record, model): scripts/make_pgl_fidelity_fixture.py's record of ``mode`` and our PGL on the same data
    holding the reference's initial weights (user and item tables: our row id = theirs + 1, padding at 0)."""
    from recbole.data import data_preparation
    from recbole.utils import get_model

    from conftest import planted_config
    from recbole_mm.quick_start import create_dataset, make_config

    record = torch.load(fidelity.DATA / "pgl_fidelity" / "pgl.pt", weights_only=True)[mode]
    settings = {**record["config"]}
    settings["principal_graph"] = settings.pop("mode")  # the reference's name of the key
    config = make_config("PGL", "pgl_fidelity", config_dict=planted_config(
        fidelity.DATA, "pgl_fidelity", checkpoint_dir=str(tmp_path / "saved"), **settings))
    train_data, _, _ = data_preparation(config, create_dataset(config))
    dataset = train_data._dataset
    for field in ("userID", "itemID"):  # the fixture numbers ids by first appearance: RecBole's are + 1
        tokens = dataset.field2id_token[field][1:]
        assert [int(t) for t in tokens] == list(range(len(tokens))), field
    model = get_model("PGL")(config, dataset)
    state = record["state"]
    with torch.no_grad():
        for theirs, ours in NAMES.items():
            fidelity.getattr_path(model, ours)[1:] = state[theirs]
        for m in ("image", "text"):
            model.projections[m].weight.copy_(state[f"{m}_trs.weight"])
            model.projections[m].bias.copy_(state[f"{m}_trs.bias"])
    return record, model


@pytest.mark.parametrize("mode", ["local", "global"])
def test_matches_mmrec_pgl(mode, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    record, model = load_reference(mode, tmp_path)
    torch.manual_seed(record["seeds"]["train"])  # the reference drew its sub-graph, then the dropout masks
    model.train()
    for b, ids in enumerate(record["batches"]):
        model.zero_grad()
        loss = model.calculate_loss(fidelity.batch(model, ids))
        loss.backward()
        assert loss.item() == pytest.approx(record[f"loss_{b}"].item(), abs=1e-6), b
        ours = fidelity.our_grads(model, NAMES)
        for name, grad in record[f"grads_{b}"].items():
            assert torch.allclose(ours[name], grad, atol=1e-6), (b, name)
    # The same principal graph: reference node n ↔ ours n + 1 (users), n - n_users + our n_users + 1 (items).
    n_users = model.n_users - 1
    ref = torch.arange(record["principal_adj"].shape[0])
    ours_index = torch.where(ref < n_users, ref + 1, ref - n_users + model.n_users + 1)
    graph = model.local_adj if mode == "local" else model.principal_adj
    assert torch.allclose(graph.to_dense()[ours_index][:, ours_index], record["principal_adj"], atol=1e-6)
    assert torch.allclose(fidelity.scores(model), record["scores"], atol=1e-5)


def test_a_key_that_prefixes_a_command_line_option_is_not_read_as_it():
    """The reference's key ``mode`` is a prefix of ``--model``: run_recbole_mm.py's parser takes no
    abbreviations, so ``--mode=...`` stays a setting for RecBole and the model is the one named."""
    from recbole_mm.cli import parse_args

    assert parse_args(["--model=PGL", "--mode=global"]).model == "PGL"
    assert parse_args(["--model=PGL", "--principal_graph=global"]).model == "PGL"

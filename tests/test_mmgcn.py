"""MMGCN: one layer and the loss by hand, gradients, determinism, learning, one modality, RecBole's own entry
point, and equality with MMRec's MMGCN (initial weights from the same seed, losses, gradients, scores) on the
fixture of tests/data/mmrec_fidelity (scripts/make_mmrec_mmgcn_fixture.py)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import fidelity
from builders import assert_gradients_reach, assert_trains_deterministically, build_planted
import recbole_mm
from recbole_mm.model.losses import bpr_loss


def build(planted, **overrides):
    _, model, train_data = build_planted("MMGCN", planted, **{"latent_dims": {"image": 12}, **overrides})
    return model, train_data


def dense_graph(model, mean: bool = True) -> torch.Tensor:
    """The user-item graph from the training pairs, written densely: A[u, i] = A[i, u] = 1, rows / degree."""
    users, items = model.interaction_edges(model._dataset_for_test)
    n = model.n_users + model.n_items
    adjacency = torch.zeros(n, n)
    adjacency[users, model.n_users + items] = 1
    adjacency[model.n_users + items, users] = 1
    if mean:
        degree = adjacency.sum(dim=1, keepdim=True)
        adjacency = torch.where(degree > 0, adjacency / degree.clamp_min(1), adjacency)
    return adjacency


@pytest.fixture
def planted_model(planted):
    def make(**overrides):
        model, train_data = build(planted, **overrides)
        model._dataset_for_test = train_data._dataset
        return model, train_data
    return make


@pytest.mark.parametrize("concat,aggregation", [(True, "mean"), (False, "add")])
def test_forward_against_dense_layers(planted_model, concat, aggregation):
    model, _ = planted_model(concat=concat, aggregation=aggregation, n_layers=2)
    adjacency = dense_graph(model, mean=aggregation == "mean")
    outs = []
    for m in ("image", "text"):
        branch = model.branches[m]
        features = model.item_features(m)
        items = features @ branch.mlp.weight.T + branch.mlp.bias if m == "image" else features
        x = torch.cat([branch.preference, items])
        x = x / x.norm(dim=1, keepdim=True).clamp_min(1e-12)
        for layer in range(2):
            h = F.leaky_relu(adjacency @ (x @ branch.conv_weights[layer]))
            lin = branch.linears[layer]
            x_hat = F.leaky_relu(x @ lin.weight.T + lin.bias) + model.id_embedding
            gate = branch.gates[layer]
            x = F.leaky_relu(torch.cat([h, x_hat], 1) @ gate.weight.T + gate.bias if concat
                             else h @ gate.weight.T + gate.bias + x_hat)
        outs.append(x)
    expected = (outs[0] + outs[1]) / 2
    users, items = model.forward()
    assert torch.allclose(torch.cat([users, items]), expected, atol=1e-5)


def test_loss_is_bpr_plus_reference_regulariser(planted_model):
    model, train_data = planted_model(reg_weight=0.3)
    batch = next(iter(train_data))
    loss = model.calculate_loss(batch)
    users, items = model.forward()
    u_ids, pos, neg = batch["userID"], batch["itemID"], batch["neg_itemID"]
    u = users[u_ids]
    expected = bpr_loss((u * items[pos]).sum(1), (u * items[neg]).sum(1))
    # The references' form: [2B, d] rows of (user, pos), (user, neg), mean of e_u² + e_i² over all entries.
    e = model.id_embedding
    user_rows = u_ids.repeat_interleave(2)
    item_rows = model.n_users + torch.stack([pos, neg], dim=1).reshape(-1)
    reg = (e[user_rows] ** 2 + e[item_rows] ** 2).mean() + (model.branches["image"].preference[1:] ** 2).mean()
    assert loss.item() == pytest.approx((expected + 0.3 * reg).item(), rel=1e-6)
    model.reg_weight = 0.0
    assert model.calculate_loss(batch).item() == pytest.approx(expected.item(), rel=1e-6)


@pytest.mark.parametrize("train_embeddings,n_layers", [(False, 2), (True, 2), (False, 1)])
def test_a_training_step_computes_the_batch_nodes_last_layer_only(planted_model, train_embeddings, n_layers):
    """Training runs the last layer's row-wise maps for the batch's nodes and layer 0's products per side:
    the same numbers as the whole forward's rows bit for bit, its loss, and its gradients to float rounding."""
    model, train_data = planted_model(train_embeddings=train_embeddings, n_layers=n_layers, reg_weight=0.1)
    batch = next(iter(train_data))
    nodes, users, pos, neg = model.batch_nodes(batch)
    whole = torch.cat(model.forward())
    assert torch.equal(model.node_vectors(nodes), whole[nodes])
    params = [p for p in model.parameters() if p.requires_grad]
    ours = torch.autograd.grad(model.calculate_loss(batch), params)
    u_ids, p_ids, n_ids = batch["userID"], batch["itemID"], batch["neg_itemID"]
    e = model.id_embedding
    reference = bpr_loss((whole[u_ids] * whole[model.n_users + p_ids]).sum(1),
                         (whole[u_ids] * whole[model.n_users + n_ids]).sum(1))
    reg = ((2 * e[u_ids].pow(2).sum() + e[model.n_users + p_ids].pow(2).sum() + e[model.n_users + n_ids].pow(2).sum())
           / (2 * e[u_ids].numel()) + model.branches["image"].preference[1:].pow(2).mean())
    theirs = torch.autograd.grad(reference + 0.1 * reg, params)
    for a, b in zip(ours, theirs):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-7)


def test_fixed_embeddings_are_buffers_unless_trained(planted_model):
    model, _ = planted_model()
    names = dict(model.named_parameters())
    assert "id_embedding" not in names and not any(n.endswith("preference") for n in names)
    assert "id_embedding" in model.state_dict()  # kept in checkpoints: the scores depend on the draw
    trained, _ = planted_model(train_embeddings=True)
    names = dict(trained.named_parameters())
    assert {"id_embedding", "branches.image.preference", "branches.text.preference"} <= set(names)
    # The padding rows stay zero-initialised.
    assert torch.all(model.id_embedding[0] == 0) and torch.all(model.id_embedding[model.n_users] == 0)


@pytest.mark.parametrize("train_embeddings", [False, True])
def test_gradients_reach_every_parameter(planted_model, train_embeddings):
    model, train_data = planted_model(train_embeddings=train_embeddings)
    model.calculate_loss(next(iter(train_data))).backward()
    assert_gradients_reach(model.named_parameters())


def test_latent_dims_of_an_absent_modality_warn(planted_model, caplog):
    model, _ = planted_model(latent_dims={"video": 8, "text": 4})
    assert "MMGCN latent_dims names video" in caplog.text
    assert model.branches["image"].mlp is None and model.branches["text"].mlp.out_features == 4


def test_deterministic_on_cpu(planted):
    root, config = planted
    config.update(epochs=2, latent_dims={"image": 12})
    assert_trains_deterministically("MMGCN", config)


@pytest.mark.slow
def test_mmgcn_beats_popularity_on_planted_clusters(planted):
    root, config = planted
    config.update(epochs=20, learning_rate=0.01, stopping_step=20, latent_dims={"image": 12})
    pop = recbole_mm.run_recbole(model="Pop", dataset="planted", config_dict=config)
    mmgcn = recbole_mm.run_recbole(model="MMGCN", dataset="planted", config_dict=config)
    assert mmgcn["test_result"]["recall@10"] > pop["test_result"]["recall@10"] + 0.3, (mmgcn, pop)


def test_single_modality_trains(planted):
    root, config = planted
    config.update(epochs=1, latent_dims=None, modalities={"text": "text_feat.npy"})
    result = recbole_mm.run_recbole(model="MMGCN", dataset="planted", config_dict=config, saved=False)
    assert 0.0 <= result["test_result"]["recall@10"] <= 1.0


def test_recbole_run_recbole_finds_mmgcn(planted):
    from recbole.quick_start import run_recbole

    root, config = planted
    config.update(latent_dims={"image": 12})
    result = run_recbole(model="MMGCN", dataset="planted", config_dict=config)
    assert 0.0 <= result["test_result"]["recall@10"] <= 1.0


# ---- fidelity: MMRec's MMGCN on the same data, seed, weights and batches --------------------------
def reference_tensor(model, name: str) -> tuple[torch.Tensor, object]:
    """(our tensor, its rows) holding the reference's ``name``: the rows of real users/items only."""
    if name == "id_embedding":
        real = torch.cat([torch.arange(1, model.n_users), torch.arange(model.n_users + 1, model.n_users + model.n_items)])
        return model.id_embedding, real
    slot, rest = name.split(".", 1)
    branch = model.branches["image" if slot == "v_gcn" else "text"]
    if rest == "preference":
        return branch.preference, slice(1, None)
    if rest.startswith("MLP."):
        return getattr(branch.mlp, rest.split(".")[1]), slice(None)
    layer, attr = rest.split(".")
    kind, number = layer.rstrip("123"), int(layer[-1]) - 1
    if kind == "conv_embed_":
        return branch.conv_weights[number], slice(None)
    module = {"linear_layer": branch.linears, "g_layer": branch.gates}[kind][number]
    return getattr(module, attr), slice(None)


def build_from_fixture(tmp_path, train_embeddings: bool):
    from recbole.data import data_preparation
    from recbole.utils import get_model

    from conftest import planted_config
    from recbole_mm.quick_start import create_dataset, make_config

    record = torch.load(fidelity.DATA / fidelity.NAME / "mmgcn.pt", weights_only=True)
    config_dict = planted_config(fidelity.DATA, fidelity.NAME, checkpoint_dir=str(tmp_path / "saved"),
                                 **record["config"], train_embeddings=train_embeddings)
    config = make_config("MMGCN", fidelity.NAME, config_dict=config_dict)
    train_data, _, _ = data_preparation(config, create_dataset(config))
    torch.manual_seed(0)  # the reference's model was built right after this seed
    model = get_model("MMGCN")(config, train_data._dataset)
    assert (model.n_users - 1, model.n_items - 1) == (record["n_users"], record["n_items"])
    return record, model


def test_seeded_initial_weights_equal_mmrecs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    record, model = build_from_fixture(tmp_path, train_embeddings=False)
    for name, value in record["state"].items():
        tensor, rows = reference_tensor(model, name)
        assert torch.equal(tensor[rows], value), name


@pytest.mark.parametrize("train_embeddings", [False, True])
def test_matches_mmrec_mmgcn(tmp_path, monkeypatch, train_embeddings):
    monkeypatch.chdir(tmp_path)
    record, model = build_from_fixture(tmp_path, train_embeddings)
    with torch.no_grad():  # the reference's weights, independently of the seeded draw tested above
        for name, value in record["state"].items():
            tensor, rows = reference_tensor(model, name)
            tensor[rows] = value
    model.train()
    for b, ids in enumerate(record["batches"]):
        model.zero_grad()
        loss = model.calculate_loss(fidelity.batch(model, ids))
        loss.backward()
        assert loss.item() == pytest.approx(record[f"loss_{b}"].item(), abs=1e-6)
        for name, grad in record[f"grads_{b}"].items():
            tensor, rows = reference_tensor(model, name)
            if not tensor.requires_grad:  # fixed (buffers): MMRec computes their gradient but never applies it
                assert not train_embeddings
                continue
            assert torch.allclose(tensor.grad[rows], grad, atol=1e-6), (b, name)
    assert torch.allclose(fidelity.scores(model), record["scores"], atol=1e-5)


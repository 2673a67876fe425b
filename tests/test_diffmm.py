"""DiffMM: forward pass and loss by hand, the diffusion-rebuilt graphs, the once-per-epoch diffusion pass inside
RecBole's trainer, gradients, determinism, learning, and fidelity to the authors' code
(tests/data/diffmm_reference.json, made by scripts/make_diffmm_fidelity_fixture.py)."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from builders import DATA, assert_scores_match, assert_trains_deterministically, build_from_fixture, build_planted

import recbole_mm
from recbole_mm.errors import RecBoleMMError
from recbole_mm.model.general_recommender.diffmm import DiffMM

SMALL = {"denoiser_dims": [16], "time_embedding_size": 4}


def build(planted, **overrides):
    return build_planted("DiffMM", planted, **{**SMALL, **overrides})


def dense(model, name):
    return getattr(model, name).to_dense()


# ---- the forward pass and the loss by hand ------------------------------------------------------------
def test_forward_by_hand(planted):
    config, model, _ = build(planted, n_layers=2, ris_lambda=0.3, ris_adj_lambda=0.7)
    model.eval()
    users, items = model.forward()
    a = dense(model, "norm_adj")
    e_u, e_i = model.user_embedding.weight, model.item_embedding.weight
    w = torch.softmax(model.modal_weight, 0)
    mixed = 0
    for k, m in enumerate(model.modalities):
        f = F.normalize(model.modality_features(m))
        x = a @ torch.cat([e_u, f])
        x = x + a @ torch.cat([x[: model.n_users], e_i]) + 0.7 * dense(model, f"diffusion_graph_{m}") @ torch.cat([e_u, e_i])
        mixed = mixed + w[k] * x
    out = mixed + a @ mixed + a @ a @ mixed + 0.3 * F.normalize(mixed)
    assert torch.allclose(torch.cat([users, items]), out, atol=1e-5)


@pytest.mark.parametrize("cl_pairs", ["modalities", "main"])
def test_loss_by_hand(planted, cl_pairs):
    config, model, train_data = build(planted, reg_weight=0.01, cl_weight=0.3, cl_temp=0.5, cl_pairs=cl_pairs)
    interaction = next(iter(train_data))
    model.train()
    model.rebuild_graphs()  # this epoch's graphs: calculate_loss then skips the diffusion pass
    u, p, n = interaction[model.USER_ID], interaction[model.ITEM_ID], interaction[model.NEG_ITEM_ID]
    users, items = model.forward()
    bpr = -torch.log(torch.sigmoid((users[u] * items[p]).sum(1) - (users[u] * items[n]).sum(1))).sum() / 256
    reg = 0.01 * (model.user_embedding.weight[1:].pow(2).sum() + model.item_embedding.weight[1:].pow(2).sum())
    nu = model.n_users

    def nce(a, b, nodes):  # the authors' contrastLoss: all real rows of b are candidates
        a, b = F.normalize(a, dim=1), F.normalize(b, dim=1)
        return -torch.log(torch.exp((a[nodes] * b[nodes]).sum(1) / 0.5) / torch.exp(a[nodes] @ b.T / 0.5).sum(1)).mean()

    def pair(a, b):
        return nce(a[1:nu], b[1:nu], u - 1) + nce(a[nu + 1:], b[nu + 1:], p - 1)

    views = model.modality_views()
    main = torch.cat([users, items])
    cl = pair(main, views[0]) + pair(main, views[1]) if cl_pairs == "main" else pair(views[0], views[1])
    expected = bpr + reg + 0.3 * cl
    assert model.calculate_loss(interaction).item() == pytest.approx(expected.item(), rel=1e-5)


def test_modality_views_by_hand(planted):
    config, model, _ = build(planted, n_layers=1)
    model.eval()
    model.forward()
    a = dense(model, "norm_adj")
    for m, view in zip(model.modalities, model.modality_views()):
        h = dense(model, f"diffusion_graph_{m}") @ torch.cat([model.user_embedding.weight,
                                                               F.normalize(model.modality_features(m))])
        assert torch.allclose(view, h + a @ h, atol=1e-6)


def test_leaky_relu_and_linear_projections(planted):
    _, model, _ = build(planted, feature_projection="leaky_relu")
    f = model.item_features("image")
    assert torch.allclose(model.modality_features("image"), F.leaky_relu(f @ model.projections["image"], 0.2))
    _, model, _ = build(planted, feature_projection="linear")
    assert torch.allclose(model.modality_features("image"), model.projections["image"](f))


# ---- the diffusion-rebuilt graphs ------------------------------------------------------------------
def test_rebuilt_graph_links_each_user_to_its_denoised_top_items(planted):
    config, model, _ = build(planted, rebuild_k=2, keep_rate=1.0)
    model.eval()
    model.rebuild_graphs()
    users = torch.arange(1, model.n_users)
    for m in model.modalities:
        denoised = model.diffusion.p_sample(model.denoisers[m], model.interaction_rows(users))
        top = torch.topk(denoised, 2, dim=1).indices + 1
        r = torch.zeros(model.n_users, model.n_items)
        r[users.repeat_interleave(2), top.reshape(-1)] = 1
        n = model.n_users + model.n_items
        adj = torch.zeros(n, n)
        adj[: model.n_users, model.n_users:], adj[model.n_users:, : model.n_users] = r, r.T
        adj = adj + torch.eye(n)
        d = adj.sum(1).rsqrt()
        assert torch.allclose(dense(model, f"diffusion_graph_{m}"), d[:, None] * adj * d[None], atol=1e-6), m


def test_interaction_rows_are_the_training_rows(planted):
    _, model, train_data = build(planted)
    inter = train_data._dataset.inter_matrix(form="csr")
    users = torch.tensor([1, 5, 7])
    assert torch.equal(model.interaction_rows(users), torch.tensor(inter[users.numpy()].toarray()[:, 1:]).float())


# ---- the training schedule inside RecBole's trainer ----------------------------------------------------
def test_one_diffusion_pass_per_epoch_and_recbole_optimizer_leaves_denoisers_alone(planted, monkeypatch):
    root, config = planted
    config.update(epochs=2, **SMALL)
    calls = []
    original = DiffMM.train_denoisers

    def counted(self):
        calls.append(self.training)
        before = [p.detach().clone() for p in self.denoisers.parameters()]
        original(self)
        assert any(not torch.equal(a, b) for a, b in zip(before, self.denoisers.parameters()))
        assert all(p.grad is None for p in self.denoisers.parameters())

    monkeypatch.setattr(DiffMM, "train_denoisers", counted)
    result = recbole_mm.run_recbole(model="DiffMM", dataset="planted", config_dict=config, saved=False)
    assert calls == [True, True]
    assert len(result["history"]) == 2


def test_evaluation_without_graphs_rebuilds_them(planted):
    _, model, _ = build(planted)
    model.eval()
    assert not model._diffusion_graphs_ready()
    users, items = model.user_item_vectors()
    assert model._diffusion_graphs_ready() and torch.isfinite(users).all()


def test_gradients_reach_every_parameter(planted):
    config, model, train_data = build(planted, cl_pairs="modalities")
    model.train()
    loss = model.calculate_loss(next(iter(train_data)))  # runs this epoch's diffusion pass first
    loss.backward()
    for name, parameter in model.named_parameters():
        if name.startswith("denoisers."):  # trained by the diffusion pass, not by this loss
            continue
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name
    model.zero_grad(set_to_none=True)
    rows = model.interaction_rows(torch.arange(1, model.n_users))
    losses = model.diffusion_losses(rows, model.item_embedding.weight[1:].detach(),
                                    {m: model.modality_features(m)[1:].detach() for m in model.modalities})
    sum(losses.values()).backward()
    for name, parameter in model.denoisers.named_parameters():
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name
    assert model.user_embedding.weight.grad is None  # the diffusion losses see the ID table detached


def test_sampling_steps_above_diffusion_steps_is_one_clear_error(planted):
    with pytest.raises(RecBoleMMError, match="sampling_steps"):
        build(planted, sampling_steps=6, diffusion_steps=5)


def test_deterministic_on_cpu(planted):
    root, config = planted
    config.update(epochs=2, **SMALL)
    assert_trains_deterministically("DiffMM", config)


def test_diffmm_beats_popularity_on_planted_clusters(planted):
    root, config = planted
    config.update(epochs=10, learning_rate=0.01, stopping_step=10, **SMALL)
    pop = recbole_mm.run_recbole(model="Pop", dataset="planted", config_dict=config)
    diffmm = recbole_mm.run_recbole(model="DiffMM", dataset="planted", config_dict=config)
    recall, pop_recall = diffmm["test_result"]["recall@10"], pop["test_result"]["recall@10"]
    assert recall > pop_recall + 0.3, (recall, pop_recall)


def test_single_modality_trains(planted):
    root, config = planted
    config.update(epochs=1, cl_pairs="main", modalities={"image": "image_feat.npy"}, **SMALL)
    result = recbole_mm.run_recbole(model="DiffMM", dataset="planted", config_dict=config, saved=False)
    assert 0.0 <= result["test_result"]["recall@10"] <= 1.0


def test_recbole_run_recbole_finds_diffmm(planted):
    from recbole.quick_start import run_recbole

    root, config = planted
    config.update(SMALL)
    result = run_recbole(model="DiffMM", dataset="planted", config_dict=config)
    assert 0.0 <= result["test_result"]["recall@10"] <= 1.0


# ---- fidelity to the authors' code ----------------------------------------------------------------
FIXTURE = json.loads((DATA / "diffmm_reference.json").read_text())


def case_model(tmp_path, name):
    """Our model on the fixture's data with the authors' weights of case ``name`` (ids permuted to RecBole's)."""
    case = FIXTURE["cases"][name]
    common, settings = FIXTURE["common"], case["settings"]
    config = {
        "modalities": {"image": "image_feat.npy", "text": "text_feat.npy"},  # the authors' order: image, text
        "n_layers": common["gnn_layer"], "reg_weight": common["reg"], "cl_weight": common["ssl_reg"],
        "cl_temp": common["temp"], "ris_lambda": common["ris_lambda"], "ris_adj_lambda": common["ris_adj_lambda"],
        "msi_weight": common["e_loss"], "diffusion_steps": common["steps"], "noise_scale": common["noise_scale"],
        "noise_min": common["noise_min"], "noise_max": common["noise_max"], "keep_rate": common["keepRate"],
        "train_batch_size": common["batch"], "denoiser_dims": FIXTURE["dims"]["hidden"],
        "time_embedding_size": FIXTURE["dims"]["time"],
        "feature_projection": "linear" if settings["trans"] == 1 else "leaky_relu",
        "cl_pairs": "main" if settings["cl_method"] == 1 else "modalities",
    }
    # Training rows ordered by item, so that RecBole's item ids keep the authors' column order (the diffusion noise
    # is drawn per row and column; a permuted item axis would draw it elsewhere).
    train = sorted(FIXTURE["train"], key=lambda r: (r[1], r[0]))
    fixture = {"train": train, "held_out": FIXTURE["held_out"], "features": FIXTURE["features"],
               "weights": {"user_embedding.weight": case["weights"]["model"]["uEmbeds"]}, "config": config}
    model, cfg, user_map, item_map = build_from_fixture("DiffMM", fixture, tmp_path / "data")
    assert torch.equal(item_map, torch.arange(1, len(item_map) + 1))
    state = model.state_dict()
    ref = {k: torch.tensor(v, dtype=torch.float32) for k, v in case["weights"]["model"].items()}
    state["user_embedding.weight"][user_map] = ref["uEmbeds"]
    state["item_embedding.weight"][item_map] = ref["iEmbeds"]
    state["modal_weight"] = ref["modal_weight"]
    for m in ("image", "text"):
        if settings["trans"] == 1:
            state[f"projections.{m}.weight"], state[f"projections.{m}.bias"] = ref[f"{m}_trans.weight"], ref[f"{m}_trans.bias"]
        else:
            state[f"projections.{m}"] = ref[f"{m}_trans"]
        for k, v in case["weights"][m].items():
            state[f"denoisers.{m}.{k.replace('emb_layer', 'time_layer')}"] = torch.tensor(v, dtype=torch.float32)
    model.load_state_dict(state)
    return model, case, user_map, item_map


@pytest.mark.parametrize("name", ["defaults", "tiktok"])
def test_matches_the_authors_code(tmp_path, monkeypatch, name):
    from recbole.data.interaction import Interaction

    monkeypatch.chdir(tmp_path)
    model, case, user_map, item_map = case_model(tmp_path, name)
    model.train()
    # (1) diffusion losses and the denoisers' gradients, the same draws (seed 7: steps, noise, dropout per modality)
    rows = model.interaction_rows(user_map)
    torch.manual_seed(7)
    losses = model.diffusion_losses(rows, model.item_embedding.weight[item_map].detach(),
                                    {m: model.modality_features(m)[item_map].detach() for m in model.modalities})
    for m, loss in losses.items():
        assert loss.item() == pytest.approx(case["diffusion_losses"][m], rel=1e-5), m
    sum(losses.values()).backward()
    for m in ("image", "text"):
        for k, expected in case["denoiser_grads"][m].items():
            grad = model.denoisers[m].get_parameter(k.replace("emb_layer", "time_layer")).grad
            assert torch.allclose(grad, torch.tensor(expected, dtype=torch.float32), atol=1e-6, rtol=1e-4), (m, k)
    model.zero_grad(set_to_none=True)
    # (2) the reverse process and the rebuilt graphs
    model.rebuild_graphs()
    nodes = torch.cat([user_map, model.n_users + item_map])
    for m in ("image", "text"):
        denoised = model.diffusion.p_sample(model.denoisers[m], rows)
        assert torch.allclose(denoised, torch.tensor(case["denoised"][m], dtype=torch.float32), atol=1e-5), m
        graph = dense(model, f"diffusion_graph_{m}")[nodes][:, nodes]
        assert torch.allclose(graph, torch.tensor(case["graphs"][m], dtype=torch.float32), atol=1e-6), m
    # (3) one batch's loss and every parameter's gradient, then the full score matrix
    batch = case["batch"]
    interaction = Interaction({"userID": user_map[batch["users"]], "itemID": item_map[batch["pos"]],
                               "neg_itemID": item_map[batch["neg"]]})
    loss = model.calculate_loss(interaction)
    assert loss.item() == pytest.approx(case["loss"], rel=1e-5)
    loss.backward()
    names = {"uEmbeds": ("user_embedding.weight", user_map), "iEmbeds": ("item_embedding.weight", item_map),
             "modal_weight": ("modal_weight", None)}
    for m in ("image", "text"):
        for suffix in ("", ".weight", ".bias"):
            names[f"{m}_trans{suffix}"] = (f"projections.{m}{suffix}", None)
    for ref_name, expected in case["grads"].items():
        name, rows_of = names[ref_name]
        grad = model.get_parameter(name).grad
        grad = grad if rows_of is None else grad[rows_of]
        assert torch.allclose(grad, torch.tensor(expected, dtype=torch.float32), atol=1e-6, rtol=1e-4), ref_name
    assert_scores_match(model, case, user_map, item_map)

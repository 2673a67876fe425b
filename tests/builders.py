"""Model builders for the model tests: a model on the planted set, and a model rebuilt from a fidelity
fixture made by tests/data/mmrec_reference.py with the reference's weights loaded (rows permuted to
RecBole's internal ids; padding rows keep their own init)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import torch

DATA = Path(__file__).resolve().parent / "data"

# MMRec MGCN parameter name → ours, for the modalities named image and text (the fidelity fixture's;
# benchmarks/mgcn_tiktok_vs_mmrec.py renames text to audio for TikTok).
MGCN_NAMES = {
    "user_embedding.weight": "user_embedding.weight", "item_id_embedding.weight": "item_embedding.weight",
    "image_embedding.weight": "raw_features.image.weight", "text_embedding.weight": "raw_features.text.weight",
    "image_trs.weight": "projections.image.weight", "image_trs.bias": "projections.image.bias",
    "text_trs.weight": "projections.text.weight", "text_trs.bias": "projections.text.bias",
    "gate_v.0.weight": "purifiers.image.0.weight", "gate_v.0.bias": "purifiers.image.0.bias",
    "gate_t.0.weight": "purifiers.text.0.weight", "gate_t.0.bias": "purifiers.text.0.bias",
    "query_common.0.weight": "attention.0.weight", "query_common.0.bias": "attention.0.bias",
    "query_common.2.weight": "attention.2.weight",
    "gate_image_prefer.0.weight": "preference_gates.image.0.weight",
    "gate_image_prefer.0.bias": "preference_gates.image.0.bias",
    "gate_text_prefer.0.weight": "preference_gates.text.0.weight",
    "gate_text_prefer.0.bias": "preference_gates.text.0.bias",
}


def build_planted(model_name: str, planted, **overrides):
    """(config, model, train dataloader) of ``model_name`` on the planted set, seeded."""
    from recbole.data import data_preparation
    from recbole.utils import get_model, init_seed

    from recbole_mm.quick_start import create_dataset, make_config

    root, config_dict = planted
    config = make_config(model_name, "planted", config_dict={**config_dict, **overrides})
    dataset = create_dataset(config)
    train_data, _, _ = data_preparation(config, dataset)
    init_seed(config["seed"], True)
    return config, get_model(model_name)(config, train_data._dataset), train_data


def load_fixture(name: str) -> dict:
    return json.loads((DATA / f"{name}_reference.json").read_text())


def build_from_fixture(model_name: str, fixture: dict, root: Path, **config):
    """(model, config, user id map, item id map): ``user_map[u]`` is the internal id of MMRec user u."""
    from recbole.data import data_preparation
    from recbole.utils import get_model, init_seed

    from recbole_mm.quick_start import create_dataset, make_config

    folder = root / "tiny"
    folder.mkdir(parents=True, exist_ok=True)
    rows = [(u, i, 0) for u, i in fixture["train"]] + [tuple(r) for r in fixture["held_out"]]
    pd.DataFrame(rows, columns=["userID", "itemID", "x_label"]).to_csv(folder / "tiny.inter", sep="\t", index=False)
    for modality, values in fixture["features"].items():
        np.save(folder / f"{modality}_feat.npy", np.array(values, dtype=np.float32))
    config_dict = {
        "data_path": str(root), "USER_ID_FIELD": "userID", "ITEM_ID_FIELD": "itemID",
        # text first: the order in which MMRec's BM3 draws its dropout masks (text before image)
        "modalities": {"text": "text_feat.npy", "image": "image_feat.npy"},
        "show_progress": False, "state": "WARNING",
        "embedding_size": len(fixture["weights"]["user_embedding.weight"][0]),
        "train_batch_size": 4, "seed": 0, "reproducibility": True, **fixture["config"], **config,
    }
    cfg = make_config(model_name, "tiny", config_dict=config_dict)
    dataset = create_dataset(cfg)
    train_data, _, _ = data_preparation(cfg, dataset)
    init_seed(cfg["seed"], True)
    model = get_model(model_name)(cfg, train_data._dataset)
    user_map = _id_map(dataset, dataset.uid_field)
    item_map = _id_map(dataset, dataset.iid_field)
    return model, cfg, user_map, item_map


def _id_map(dataset, field) -> torch.Tensor:
    tokens = dataset.field2id_token[field]
    mapping = torch.empty(len(tokens) - 1, dtype=torch.long)
    for internal, token in enumerate(tokens[1:], start=1):
        mapping[int(token)] = internal
    return mapping


def permuted_rows(reference: torch.Tensor, mapping: torch.Tensor, current: torch.Tensor) -> torch.Tensor:
    """``current`` with its rows ``mapping[r]`` replaced by the reference's rows r (row 0, padding, kept)."""
    out = current.detach().clone()
    out[mapping] = reference
    return out


def load_reference_weights(model, fixture: dict, names: dict[str, str], user_map, item_map) -> None:
    """Copy the reference's weights into ``model``; ``names`` maps reference → model parameter names.
    User and item tables (the ID embeddings and the raw feature tables) are permuted to internal ids."""
    state = model.state_dict()
    for ref_name, name in names.items():
        value = torch.tensor(fixture["weights"][ref_name], dtype=torch.float32)
        if name.startswith("user_embedding"):
            value = permuted_rows(value, user_map, state[name])
        elif name.startswith(("item_embedding", "raw_features")):
            value = permuted_rows(value, item_map, state[name])
        assert state[name].shape == value.shape, name
        state[name] = value
    model.load_state_dict(state)


def assert_scores_match(model, fixture: dict, user_map, item_map) -> None:
    """The model's full score matrix over the reference's users × items equals the fixture's (1e-5)."""
    from recbole.data.interaction import Interaction

    model.eval()
    with torch.no_grad():
        scores = model.full_sort_predict(Interaction({"userID": user_map})).reshape(len(user_map), -1)
    expected = torch.tensor(fixture["scores"], dtype=torch.float32)
    assert torch.allclose(scores[:, item_map], expected, atol=1e-5, rtol=1e-5)


def assert_loss_and_grads_match(model, fixture: dict, names: dict[str, str], user_map, item_map,
                                grad_atol: float = 1e-6) -> None:
    """On the fixture's batch, the model's training loss (1e-5 relative) and the gradient of every parameter
    of ``names`` (reference → ours; user and item tables compared in the reference's row order) equal the
    reference's."""
    import pytest
    from recbole.data.interaction import Interaction

    batch = fixture["batch"]
    interaction = Interaction({"userID": user_map[batch["users"]], "itemID": item_map[batch["pos"]],
                               "neg_itemID": item_map[batch["neg"]]})
    model.train()
    loss = model.calculate_loss(interaction)
    assert loss.item() == pytest.approx(fixture["loss"], rel=1e-5)
    loss.backward()
    parameters = dict(model.named_parameters())
    for ref_name, name in names.items():
        grad, expected = parameters[name].grad, torch.tensor(fixture["grads"][ref_name], dtype=torch.float32)
        if name.startswith("user_embedding"):
            grad = grad[user_map]
        elif name.startswith(("item_embedding", "raw_features")):
            grad = grad[item_map]
        assert torch.allclose(grad, expected, atol=grad_atol, rtol=1e-4), name


def assert_trains_deterministically(model_name: str, config: dict) -> None:
    """Two CPU runs of the model with the same seed give the same training loss at every epoch."""
    import recbole_mm

    runs = [recbole_mm.run_recbole(model=model_name, dataset="planted", config_dict=config, saved=False)
            for _ in range(2)]
    assert [h["train_loss"] for h in runs[0]["history"]] == [h["train_loss"] for h in runs[1]["history"]]


def assert_gradients_reach(parameters) -> None:
    """Every named parameter got a non-zero gradient from the last backward pass."""
    for name, parameter in parameters:
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name

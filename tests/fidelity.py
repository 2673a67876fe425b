"""Load the MMRec reference fixture of tests/data/mmrec_fidelity (made by
scripts/make_mmrec_fidelity_fixture.py) into a recbole_mm model: same data, weights and batches."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import pytest
import torch
from recbole.data.interaction import Interaction

from conftest import planted_config
from recbole_mm.quick_start import create_dataset, make_config

DATA = Path(__file__).resolve().parent / "data"
NAME = "mmrec_fidelity"


# Reference parameter name → ours, for the models whose names these are (FREEDOM, LATTICE); others pass theirs.
NAMES = {"user_embedding.weight": "user_embedding.weight", "item_id_embedding.weight": "item_embedding.weight",
         "image_embedding.weight": "raw_features.image.weight", "text_embedding.weight": "raw_features.text.weight"}


def load(model_name: str, tmp_path: Path, names: dict[str, str] | None = None, **overrides):
    """(record, model, names): the reference record, our model holding the reference's weights, and the map
    from the reference's parameter names to ours (``names``, default :data:`NAMES`). A table with one row more
    than the reference's is a user or item table (RecBole's id = the reference's + 1, padding at 0): its rows
    1.. get the reference's; other parameters are copied whole. ``image_trs``/``text_trs`` go into our
    ``projections`` when the record has them. ``overrides``: our config keys on top of the record's."""
    record, model = build(model_name, tmp_path, **overrides)
    state = record["state"]
    names = NAMES if names is None else names
    with torch.no_grad():
        for theirs, ours in names.items():
            target = getattr_path(model, ours)
            if target.shape == state[theirs].shape:
                target.copy_(state[theirs])
            else:
                target[1:] = state[theirs]
        for m, prefix in (("image", "image_trs"), ("text", "text_trs")) if "image_trs.weight" in state else ():
            model.projections[m].weight.copy_(state[f"{prefix}.weight"])
            model.projections[m].bias.copy_(state[f"{prefix}.bias"])
        if "modal_weight" in state:
            model.modal_weight.copy_(state["modal_weight"])
    return record, model, names


def build(model_name: str, tmp_path: Path, **overrides):
    """(record, model): the reference record and our model built on the fixture's data with its config and
    ``overrides`` (our own initial weights; the caller loads the reference's)."""
    from recbole.data import data_preparation
    from recbole.utils import get_model

    record = torch.load(DATA / NAME / f"{model_name.lower()}.pt", weights_only=True)
    config_dict = planted_config(DATA, NAME, checkpoint_dir=str(tmp_path / "saved"), **{**record["config"], **overrides})
    config = make_config(model_name, NAME, config_dict=config_dict)
    train_data, _, _ = data_preparation(config, create_dataset(config))
    dataset = train_data._dataset
    # The fixture's ids were numbered by first appearance, so RecBole's remapping is the shift by one.
    for field in ("userID", "itemID"):
        tokens = dataset.field2id_token[field][1:]
        assert [int(t) for t in tokens] == list(range(len(tokens))), field
    return record, get_model(model_name)(config, dataset)


def getattr_path(model, dotted: str) -> torch.Tensor:
    obj = model
    for part in dotted.split("."):
        obj = getattr(obj, part)
    return obj


def batch(model, ids: torch.Tensor) -> Interaction:
    """A reference batch [users; pos; neg] as RecBole's Interaction in our ids."""
    return Interaction({model.USER_ID: ids[0] + 1, model.ITEM_ID: ids[1] + 1, model.NEG_ITEM_ID: ids[2] + 1})


def our_grads(model, names: dict[str, str], unpadded: tuple[str, ...] = ()) -> dict[str, torch.Tensor]:
    """Our gradients under the reference's parameter names (real rows only; padding rows are checked zero),
    whole for the parameters of ours named in ``unpadded`` (no user or item rows)."""
    def grad(parameter: torch.Tensor) -> torch.Tensor:  # None (no gradient reached it) as zeros, like the fixture
        return torch.zeros_like(parameter) if parameter.grad is None else parameter.grad

    grads = {}
    for theirs, ours in names.items():
        full = grad(getattr_path(model, ours))
        if ours in unpadded:
            grads[theirs] = full
            continue
        assert torch.all(full[0] == 0), ours
        grads[theirs] = full[1:]
    for m, prefix in (("image", "image_trs"), ("text", "text_trs")) if hasattr(model, "projections") else ():
        grads[f"{prefix}.weight"] = grad(model.projections[m].weight)
        grads[f"{prefix}.bias"] = grad(model.projections[m].bias)
    if hasattr(model, "modal_weight"):
        grads["modal_weight"] = grad(model.modal_weight)
    return grads


def scores(model) -> torch.Tensor:
    """Full-ranking scores of the real users over the real items, eval mode."""
    model.eval()
    with torch.no_grad():
        users = torch.arange(1, model.n_users)
        flat = model.full_sort_predict(Interaction({model.USER_ID: users}))
    return flat.reshape(len(users), model.n_items)[:, 1:]


def replay(model, record: dict, our_grads: Callable[[], dict[str, torch.Tensor]], atol: float = 1e-6) -> None:
    """The reference's batches in train mode, no optimiser step between them: each batch's loss (1e-6) and
    every gradient the record holds (``our_grads()``: ours under the reference's names) must be the reference's."""
    model.train()
    for b, ids in enumerate(record["batches"]):
        model.zero_grad()
        loss = model.calculate_loss(batch(model, ids))
        loss.backward()
        assert loss.item() == pytest.approx(record[f"loss_{b}"].item(), abs=1e-6), b
        ours = our_grads()
        for name, grad in record[f"grads_{b}"].items():
            assert torch.allclose(ours[name], grad, atol=atol), (b, name)

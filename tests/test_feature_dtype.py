"""``feature_dtype: bfloat16`` (issue #24): the feature projections multiply in bf16 (FeatureLinear), the rest
of the model stays float32; float32, the default, is the model as before, bit for bit."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from builders import build_planted
from conftest import REPO
from torch import nn

import recbole_mm
from recbole_mm.config_check import ConfigError
from recbole_mm.model.abstract_recommender import FeatureLinear

# The models whose feature layers all go through FeatureLinear / projection_input (their schemas say so).
BF16_MODELS = ["GUME", "FREEDOM", "VBPR", "LATTICE", "MGCN", "BM3", "SMORE", "PGL", "GRCN"]
# Their planted builds (the planted set's embedding_size is 16; these models need their projection as wide).
SETTINGS = {"FREEDOM": {"feat_embed_dim": 16}, "PGL": {"feat_embed_dim": 16}}


def _loss(model, batch, seed: int = 7) -> torch.Tensor:
    """The model's loss on ``batch``, its random draws (dropout, noise) from ``seed``."""
    model.train()
    torch.manual_seed(seed)
    loss = model.calculate_loss(batch)
    return sum(loss) if isinstance(loss, tuple) else loss


def _feature_layers(model) -> list[FeatureLinear]:
    return [m for m in model.modules() if isinstance(m, FeatureLinear)]


# ---- the key ----------------------------------------------------------------------------------------------
def test_feature_dtype_rejects_other_values(planted):
    with pytest.raises(ConfigError, match="feature_dtype: 'float16' .* one of float32, bfloat16"):
        build_planted("GUME", planted, feature_dtype="float16")


def test_a_model_without_a_bf16_path_refuses_bfloat16_instead_of_ignoring_it(planted):
    with pytest.raises(ConfigError, match="feature_dtype: 'bfloat16' .* float32 .* no bfloat16 path"):
        build_planted("MMGCN", planted, feature_dtype="bfloat16")
    build_planted("MMGCN", planted, feature_dtype="float32")  # float32 is every model's


@pytest.mark.slow
def test_a_bad_feature_dtype_on_the_command_line_is_one_line_and_exit_2(tmp_path):
    out = subprocess.run([sys.executable, str(REPO / "run_recbole_mm.py"), "--model=GUME", "--dataset=planted",
                          f"--data_path={tmp_path}", "--feature_dtype=half"],
                         capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert out.returncode == 2, out.stderr[-2000:]
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("recbole_mm: error: feature_dtype: 'half'"), out.stderr


def test_the_bf16_models_are_the_ones_the_docs_list():
    """The models whose schema declares the bf16 path are this file's BF16_MODELS and the command-line
    page's list (the other models refuse bfloat16)."""
    import re

    from recbole_mm.model import general_recommender
    from recbole_mm.model.abstract_recommender import BFLOAT16_FEATURES

    declared = {name for name, cls in general_recommender.MODELS.items()
                if getattr(cls, "config_schema", {}).get("feature_dtype") is BFLOAT16_FEATURES}
    assert declared == set(BF16_MODELS)
    page = (REPO / "docs" / "command-line.md").read_text()
    listed = re.search(r"Models with\s+the bf16 path: ([^;]+);", page).group(1)
    assert set(re.split(r",\s+", listed)) == declared


# ---- float32: the model as before -------------------------------------------------------------------------
def test_feature_linear_draws_and_computes_as_nn_linear():
    torch.manual_seed(1)
    layer = FeatureLinear(12, 5)
    torch.manual_seed(1)
    reference = nn.Linear(12, 5)
    assert torch.equal(layer.weight, reference.weight) and torch.equal(layer.bias, reference.bias)
    x = torch.randn(9, 12)
    assert torch.equal(layer(x), reference(x))
    assert list(layer.state_dict()) == list(reference.state_dict())


@pytest.mark.parametrize("model_name", BF16_MODELS)
def test_float32_default_is_the_model_as_before(planted, model_name):
    """The default and an explicit float32 build the same weights, and the loss equals, bit for bit, the
    loss of the same model with every FeatureLinear turned back into a plain nn.Linear."""
    _, model, train_data = build_planted(model_name, planted, **SETTINGS.get(model_name, {}))
    _, explicit, _ = build_planted(model_name, planted, feature_dtype="float32", **SETTINGS.get(model_name, {}))
    state, explicit_state = model.state_dict(), explicit.state_dict()
    assert list(state) == list(explicit_state) and all(torch.equal(state[k], explicit_state[k]) for k in state)
    layers = _feature_layers(model)
    assert layers and all(layer.compute_dtype is None for layer in layers)
    if not getattr(model, "_features_released", False):  # models that train copies drop the fixed ones
        assert all(model.projection_input(m) is model.item_features(m) for m in model.modalities)
    batch = next(iter(train_data))  # each pass draws other negatives
    loss = _loss(model, batch)
    for layer in layers:
        layer.__class__ = nn.Linear
    assert torch.equal(loss, _loss(model, batch))


# ---- bfloat16 ---------------------------------------------------------------------------------------------
def test_feature_linear_in_bf16_returns_float32_close_to_the_float32_product():
    torch.manual_seed(2)
    layer = FeatureLinear(64, 8)
    x = torch.randn(30, 64, requires_grad=True)
    exact = layer(x)
    layer.compute_dtype = torch.bfloat16
    out = layer(x)
    assert out.dtype == torch.float32 and not torch.equal(out, exact)
    assert torch.allclose(out, exact, rtol=0.05, atol=0.05)  # bf16 keeps 8 significant bits
    out.sum().backward()
    assert layer.weight.grad.dtype == torch.float32 and x.grad.dtype == torch.float32
    assert torch.equal(layer(x.detach().bfloat16()), layer(x.detach().bfloat16().float()))  # a bf16 input as is


@pytest.mark.parametrize("model_name", BF16_MODELS)
def test_bfloat16_projects_in_bf16_and_hands_on_float32(planted, model_name):
    _, model, train_data = build_planted(model_name, planted, feature_dtype="bfloat16", **SETTINGS.get(model_name, {}))
    _, exact, _ = build_planted(model_name, planted, **SETTINGS.get(model_name, {}))
    layers = _feature_layers(model)
    assert layers and all(layer.compute_dtype == torch.bfloat16 for layer in layers)
    for m in model.modalities if not getattr(model, "_features_released", False) else ():
        assert model.item_features(m).dtype == torch.float32  # the graphs' input: the features as loaded
        assert model.projection_input(m).dtype == torch.bfloat16
        assert torch.equal(model.projection_input(m), model.item_features(m).bfloat16())
    # Graphs built at load are the float32 model's; parameters (trainable tables too) stay float32.
    for name, buffer in exact.named_buffers():
        other = dict(model.named_buffers())[name]
        if buffer.is_sparse:
            buffer, other = buffer.coalesce(), other.coalesce()
            assert torch.equal(buffer.indices(), other.indices()) and torch.equal(buffer.values(), other.values())
        else:
            assert torch.equal(buffer, other), name
    assert all(p.dtype == torch.float32 for p in model.parameters())
    loss = _loss(model, next(iter(train_data)))
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    loss.backward()
    for layer in layers:
        assert layer.weight.grad is not None and torch.isfinite(layer.weight.grad).all()
        assert layer.weight.grad.abs().sum() > 0
    model.eval()
    with torch.no_grad():
        users = next(iter(train_data))
        scores = model.full_sort_predict(users)
    assert scores.dtype == torch.float32 and torch.isfinite(scores).all()


def test_gume_trainable_table_gets_float32_gradients_through_the_bf16_projection(planted):
    _, model, train_data = build_planted("GUME", planted, feature_dtype="bfloat16")
    _loss(model, next(iter(train_data))).backward()
    for m in model.modalities:
        table = model.raw_features[m].weight
        assert table.dtype == torch.float32 and table.grad.dtype == torch.float32
        assert torch.isfinite(table.grad).all() and table.grad.abs().sum() > 0


def test_gume_frozen_features_read_the_bf16_copy_once(planted):
    _, model, _ = build_planted("GUME", planted, feature_dtype="bfloat16", freeze_features=True)
    for m in model.modalities:
        assert model.raw_table(m).dtype == torch.bfloat16
        assert model.raw_table(m) is model.raw_table(m)  # cast once, not per step


@pytest.mark.slow
@pytest.mark.parametrize("model_name", ["VBPR", "GUME"])
def test_a_bf16_model_still_learns_planted_clusters(planted, model_name):
    """Users only like items of their cluster: the bf16 model must still beat popularity by a wide margin."""
    _, config = planted
    config.update(epochs=40, learning_rate=0.01, stopping_step=40)
    pop = recbole_mm.run_recbole(model="Pop", dataset="planted", config_dict=config)
    model = recbole_mm.run_recbole(model=model_name, dataset="planted",
                                   config_dict={**config, "feature_dtype": "bfloat16"})
    pop_recall, recall = pop["test_result"]["recall@10"], model["test_result"]["recall@10"]
    assert recall > 0.6 and recall > pop_recall + 0.3, (recall, pop_recall)


def test_the_micro_benchmark_times_both_dtypes_at_a_small_size(monkeypatch):
    monkeypatch.setenv("THP_MEM_ALLOC_ENABLE", "0")  # the script sets it when unset; keep this process's env
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        import feature_dtype
    finally:
        sys.path.remove(str(REPO / "benchmarks"))
    result = feature_dtype.main(["--items", "300", "--width", "64", "--dim", "8", "--repeats", "1"])
    assert set(result) == {"forward, fixed table", "forward+backward only", "step, trainable table"}
    assert all(f32 > 0 and bf16 > 0 for f32, bf16 in result.values())


def test_the_kept_bf16_fused_table_follows_an_in_place_change_of_the_features(planted):
    _, model, _ = build_planted("VBPR", planted, feature_dtype="bfloat16")
    first = model.item_features(model.modalities[0])
    before = model.fused_features(projection=True).clone()
    with torch.no_grad():
        first.mul_(2.0)
    after = model.fused_features(projection=True)
    width = first.shape[1]
    assert torch.equal(after[:, :width], first.to(torch.bfloat16))
    assert not torch.equal(after[:, :width], before[:, :width])

"""Every shipped dataset config works with every model: a dataset-wide value that a model refuses (the
sampled negatives that BM3 and SLMRec train without) has that model's override beside it."""

from __future__ import annotations

import pytest
import yaml

from recbole_mm import resources
from recbole_mm.quick_start import make_config

from conftest import REPO

DATASETS = sorted(p.stem for p in (REPO / "dataset_configs").glob("*.yaml"))
# Models whose own yaml turns sampling off: a dataset config that turns it on must turn it off again for them.
MODEL_DEFAULTS = {p.stem: yaml.safe_load(p.read_text()) or {} for p in (REPO / "properties" / "model").glob("*.yaml")}
WITHOUT_NEGATIVES = sorted(model for model, defaults in MODEL_DEFAULTS.items()
                           if "train_neg_sample_args" in defaults and defaults["train_neg_sample_args"] is None)


def test_the_models_without_negatives_are_found():
    assert {"BM3", "SLMRec"} <= set(WITHOUT_NEGATIVES)


@pytest.mark.parametrize("dataset", DATASETS)
@pytest.mark.parametrize("model", WITHOUT_NEGATIVES)
def test_no_dataset_config_gives_sampled_negatives_to_a_model_without_them(dataset, model):
    assert resources.dataset_config_file(dataset).is_file()
    config = make_config(model, dataset, config_dict={"data_path": str(REPO / "dataset")})
    assert config["train_neg_sample_args"]["distribution"] == "none", (dataset, model)

"""Make RecBole's own name-based lookups find recbole_mm's models, datasets and yaml defaults.

- ``get_model(name)`` tries ``importlib.util.find_spec('recbole.model.<sub>.<name>')``, which returns an
  existing ``sys.modules`` entry: an alias module there is enough, no RecBole function is patched.
- ``create_dataset`` looks for ``<Model>Dataset`` in ``recbole.data.dataset``.
- ``Config`` reads only RecBole's own ``properties/``; its internal-config step is extended to merge
  ``properties/model/<Model>.yaml`` (plugin models) and ``dataset_configs/<dataset>.yaml``, keeping
  RecBole's precedence overall < model < dataset < config files < config_dict < command line.
- Every ``Config`` reads settings as data (:func:`_settings_are_data`): no ``eval`` of a value, no
  python yaml tags.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys

import recbole

from recbole_mm import resources
from recbole_mm.errors import UnknownModelError
from recbole_mm.model.general_recommender import MODELS

# Model name → module, derived from the one list (the model classes found in recbole_mm.model.
# general_recommender); each module is aliased into recbole.model.general_recommender.
PLUGIN_MODELS: dict[str, str] = {name: cls.__module__ for name, cls in MODELS.items()}
# Other spellings accepted by recbole_mm's entry points: a model class's ``aliases`` (MMGEF: "MM-GEF").
MODEL_ALIASES: dict[str, str] = {alias: name for name, cls in MODELS.items() for alias in getattr(cls, "aliases", ())}

# recbole_mm's dataset keys: they change the data, so RecBole's save_dataset / save_dataloaders reuse
# check (which compares RecBole's dataset_arguments) must compare them too.
DATASET_ARGUMENTS = ("inter_file_name", "data_format", "modalities", "missing_feature", "filter_cold_start_users",
                     "cold_start_items", "cold_start_seed")

_RECBOLE_SUBPACKAGES = (
    "general_recommender",
    "context_aware_recommender",
    "sequential_recommender",
    "knowledge_aware_recommender",
)
_registered = False


def canonical_model_name(name: str) -> str:
    """Resolve an alias and check that RecBole or recbole_mm has a model of that name."""
    name = MODEL_ALIASES.get(name, name)
    if name in PLUGIN_MODELS:
        return name
    for sub in _RECBOLE_SUBPACKAGES:
        if importlib.util.find_spec(f"recbole.model.{sub}.{name.lower()}") is not None:
            # RecBole finds the module by the lower-cased name but the class by the exact one.
            classes = [c for c in dir(importlib.import_module(f"recbole.model.{sub}.{name.lower()}"))
                       if c.lower() == name.lower()]
            if name in classes:
                return name
            if classes:
                raise UnknownModelError(f"unknown model '{name}': model names are case-sensitive; "
                                        f"did you mean --model={classes[0]}?")
    raise UnknownModelError(
        f"unknown model '{name}': not a RecBole model nor one of recbole_mm's "
        f"({', '.join(sorted(PLUGIN_MODELS))}); model names are case-sensitive, e.g. --model=LightGCN"
    )


def is_plugin_model(name: str) -> bool:
    """True for models that recbole_mm provides."""
    return MODEL_ALIASES.get(name, name) in PLUGIN_MODELS


def _read_yaml(path: os.PathLike, what: str) -> dict:
    from recbole_mm.config_files import load_yaml_file

    return load_yaml_file(path, what) or {}


def _extend_internal_config(original):
    from recbole_mm.config_files import INTERNAL_SOURCES

    def _load_internal_config_dict(self, model, model_class, dataset):
        original(self, model, model_class, dataset)
        sources = {}  # key → where it was set, for messages (config_files.where_set)
        setattr(self, INTERNAL_SOURCES, sources)
        recbole_props = os.path.join(os.path.dirname(recbole.__file__), "properties", "dataset")
        # Keys that RecBole's own dataset-level yamls set outrank a model yaml.
        protected = set()
        for name in ("sample.yaml", f"{dataset}.yaml"):
            path = os.path.join(recbole_props, name)
            if os.path.isfile(path):
                protected |= set(_read_yaml(path, "RecBole's dataset defaults"))
        model_file = resources.model_properties_file(model)
        if model in PLUGIN_MODELS and model_file.is_file():
            for key, value in _read_yaml(model_file, "model defaults").items():
                if key not in protected:
                    self.internal_config_dict[key] = value
                    sources[key] = f"default in {model_file}"
        dataset_file = resources.dataset_config_file(dataset)
        if dataset_file.is_file():
            dataset_config = _read_yaml(dataset_file, "dataset config")
            # model_overrides: {GUME: {...}} holds a model's per-dataset values (e.g. GUME's n_layers,
            # which must not reach LightGCN's n_layers on the same dataset).
            overrides = dataset_config.pop("model_overrides", None) or {}
            self.internal_config_dict.update(dataset_config)
            self.internal_config_dict.update(overrides.get(model) or {})
            sources.update({key: f"set in dataset config {dataset_file}"
                            for key in [*dataset_config, *(overrides.get(model) or {})]})
            self.parameters["Dataset"] += [k for k in dataset_config if k not in self.parameters["Dataset"]]
        if (resources.bundled_data_root() / dataset).is_dir():
            # Like RecBole's own ml-100k: a shipped dataset is found wherever recbole_mm is installed;
            # an explicit data_path (file, config_dict or command line) still wins.
            self.internal_config_dict["data_path"] = str(resources.bundled_data_root())

    _load_internal_config_dict.__wrapped__ = original
    return _load_internal_config_dict


def _refuse_untyped_files(original):
    def _load_feat(self, filepath, source):
        from recbole_mm.data import files
        from recbole_mm.errors import DataError

        if filepath and os.path.isfile(filepath) and files.is_mmrec_layout(filepath):
            # RecBole would fail with "not enough values to unpack" on the untyped MMRec header.
            raise DataError(
                f"{filepath}: an untyped (MMRec-layout) header, which RecBole's own Dataset cannot read; "
                "train through recbole_mm (recbole_mm.run_recbole or run_recbole_mm.py; docs/command-line.md, "
                "'From an existing RecBole script'), or give the file RecBole's typed header (e.g. user_id:token)")
        return original(self, filepath, source)

    _load_feat.__wrapped__ = original
    return _load_feat


def _settings_are_data(config_class) -> None:
    """Make every RecBole ``Config`` (recbole_mm's entry points, RecBole's own ``run_recbole``,
    ``objective_function``, ``HyperTuning``) read settings as data: ``--key=value`` and ``config_dict``
    strings are parsed as literals, never ``eval``-ed (configurator.py:131); yaml files are read with a
    safe loader that refuses ``!!python/...`` tags, naming the file; the settings that a RecBole model runs
    as code (KD_DAGFM's ``teacher``) must be one of the names it allows."""
    from recbole_mm import config_check, config_files
    from recbole_mm.config_files import FILE_SOURCES

    config_class._convert_config_dict = config_files.convert_config_dict
    config_class._build_yaml_loader = config_files.build_yaml_loader

    def _update_internal_config_dict(self, file):
        config_dict = _read_yaml(file, "RecBole's defaults")
        self.internal_config_dict.update(config_dict)
        return config_dict

    def _load_config_files(self, file_list):
        merged, sources = {}, {}
        for file in file_list or []:
            data = config_files.read_config_file(file)
            merged.update(data)
            sources.update({key: str(file) for key in data})
        setattr(self, FILE_SOURCES, sources)
        return merged

    original_defaults = config_class._set_default_parameters

    def _set_default_parameters(self):
        original_defaults(self)
        config_check.check_code_settings(self)

    config_class._update_internal_config_dict = _update_internal_config_dict
    config_class._load_config_files = _load_config_files
    config_class._set_default_parameters = _set_default_parameters


def register() -> None:
    """Alias plugin models into RecBole's model packages and hook the config defaults; idempotent."""
    global _registered
    if _registered:
        return
    import recbole.data.dataset as recbole_datasets
    from recbole.config.configurator import Config

    from recbole_mm.data.dataset import MultiModalDataset

    for name, module_path in PLUGIN_MODELS.items():
        module = sys.modules[module_path]
        sys.modules[f"recbole.model.general_recommender.{name.lower()}"] = module
        setattr(recbole_datasets, f"{name}Dataset", getattr(module, "dataset_class", MultiModalDataset))
    _settings_are_data(Config)
    Config._load_internal_config_dict = _extend_internal_config(Config._load_internal_config_dict)
    original_categories = Config._init_parameters_category

    def _init_parameters_category(self):
        original_categories(self)
        # RecBole hands every Config its global argument lists and then extends them in place with each
        # dataset yaml's keys; a Config's own copies keep the globals as declared.
        self.parameters = {category: list(keys) for category, keys in self.parameters.items()}

    Config._init_parameters_category = _init_parameters_category
    recbole_datasets.Dataset._load_feat = _refuse_untyped_files(recbole_datasets.Dataset._load_feat)
    from recbole.utils.argument_list import dataset_arguments

    dataset_arguments.extend(k for k in DATASET_ARGUMENTS if k not in dataset_arguments)
    from recbole_mm.trainer import register_trainers

    register_trainers(PLUGIN_MODELS)  # RecBole's run_recbole trains them with recbole_mm's Trainer
    _registered = True

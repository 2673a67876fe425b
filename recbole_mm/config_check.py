"""Configuration checks in one place: a declared type and range per key, checked before anything runs.

Where the declarations live:

- :data:`RECBOLE_SCHEMA`: the RecBole keys that recbole_mm's entry points depend on (any model);
- :data:`PLUGIN_SCHEMA`: recbole_mm's dataset-level and protocol switches (any model);
- each plugin model's own keys: a ``config_schema`` class attribute on the model, next to its code,
  e.g. ``config_schema = {"knn_k": Int(min=1), "fusion": Choice("mean", "concat")}``. A key of the
  model's ``properties/model/<Model>.yaml`` without a declaration is checked against the type of its
  default there (a number wants a number, a bool a bool, a string a string), so a new model is covered
  without touching this module; its ``config_schema`` adds integer types and ranges.

:func:`check_config` runs on the merged values before RecBole's own validation (see
:class:`CheckedConfig`), so a wrong value is one line naming the key, the value, what is allowed and
where it was set (command line, config_dict, config file, dataset config, model defaults), and never
a traceback from deep inside torch or after an epoch.

Settings are data: text values are parsed as literals (:func:`parse_setting`, never ``eval``), yaml is
read with :class:`SettingsLoader` (no ``!!python/...`` tags), both installed on RecBole's own ``Config``
at ``import recbole_mm``; RecBole's pickled caches need ``trust_pickle: True``. A key that nothing
reads (a typo, another model's setting) is a warning with the closest known name, an error under
``strict_config: True`` (:func:`check_settings_known`).
"""

from __future__ import annotations

import ast
import difflib
import os
import re
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml
from recbole.config import Config

from recbole_mm.errors import RecBoleMMError, warn_user


class ConfigError(RecBoleMMError, ValueError):
    """A configuration value of the wrong type or out of range."""


# ---- value specs -------------------------------------------------------------------------------
class Spec:
    """A declared type/range; ``problem(value)`` is None when the value is allowed."""

    allowed = "any value"
    none_ok = False

    def problem(self, value: Any) -> str | None:
        if value is None:
            return None if self.none_ok else self.allowed
        return None if self._ok(value) else self.allowed

    def _ok(self, value: Any) -> bool:
        return True


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return (isinstance(value, (int, float)) and not isinstance(value, bool)) and value == value  # no NaN


def _bounds_text(kind: str, lo: float | None, hi: float | None, lo_open: bool, hi_open: bool) -> str:
    parts = []
    if lo is not None:
        parts.append(f"{'>' if lo_open else '>='} {lo}")
    if hi is not None:
        parts.append(f"{'<' if hi_open else '<='} {hi}")
    return kind + (" " + " and ".join(parts) if parts else "")


class Number(Spec):
    """A real number (ints accepted) within bounds."""

    kind = "a number"

    def __init__(self, min: float | None = None, max: float | None = None, min_open: bool = False,
                 max_open: bool = False, none_ok: bool = False):
        self.lo, self.hi, self.lo_open, self.hi_open, self.none_ok = min, max, min_open, max_open, none_ok
        self.allowed = _bounds_text(self.kind, min, max, min_open, max_open) + (" or None" if none_ok else "")

    def _type_ok(self, value: Any) -> bool:
        return _is_number(value) and abs(value) != float("inf")

    def _ok(self, value: Any) -> bool:
        if not self._type_ok(value):
            return False
        if self.lo is not None and (value <= self.lo if self.lo_open else value < self.lo):
            return False
        if self.hi is not None and (value >= self.hi if self.hi_open else value > self.hi):
            return False
        return True


class Float(Number):
    """A real number; ints are accepted (``--reg_weight=0``)."""


class Int(Number):
    """An integer (not a bool, not 2.0)."""

    kind = "an integer"

    def _type_ok(self, value: Any) -> bool:
        return _is_int(value)


class Bool(Spec):
    def __init__(self, none_ok: bool = False):
        self.none_ok = none_ok
        self.allowed = "True or False"

    def _ok(self, value: Any) -> bool:
        return isinstance(value, bool)


class Str(Spec):
    def __init__(self, none_ok: bool = False):
        self.none_ok = none_ok
        self.allowed = "a string" + (" or None" if none_ok else "")

    def _ok(self, value: Any) -> bool:
        return isinstance(value, str) and value != ""


class Choice(Spec):
    """One of the listed strings (case-sensitive, as the code compares them, unless ``ignore_case``)."""

    def __init__(self, *options: str, none_ok: bool = False, ignore_case: bool = False):
        self.options, self.none_ok, self.ignore_case = options, none_ok, ignore_case
        self.allowed = ("one of " + ", ".join(options) + (" (any case)" if ignore_case else "")
                        + (" (or unset)" if none_ok else ""))

    def _ok(self, value: Any) -> bool:
        if not isinstance(value, str):
            return False
        return (value.lower() in [o.lower() for o in self.options]) if self.ignore_case else value in self.options


class ListOf(Spec):
    """A list of values that each satisfy ``item`` (``length`` exact when given; ``scalar_ok``: a bare
    value counts as a one-element list, as RecBole allows for ``topk``)."""

    def __init__(self, item: Spec, length: int | None = None, min_length: int = 1, scalar_ok: bool = False,
                 none_ok: bool = False):
        self.item, self.length, self.min_length, self.scalar_ok, self.none_ok = (
            item, length, min_length, scalar_ok, none_ok)
        size = f"a list of {length} values" if length else ("a non-empty list" if min_length else "a list")
        self.allowed = (f"{size}, each {item.allowed}" + (" (or one such value)" if scalar_ok else "")
                        + (", or None" if none_ok else ""))

    def _ok(self, value: Any) -> bool:
        if self.scalar_ok and not isinstance(value, (list, tuple)):
            value = [value]
        if not isinstance(value, (list, tuple)):
            return False
        if (self.length and len(value) != self.length) or len(value) < self.min_length:
            return False
        return all(self.item.problem(v) is None and v is not None for v in value)


class MappingOf(Spec):
    """A dict of non-empty string keys to values satisfying ``value``."""

    def __init__(self, value: Spec, example: str, none_ok: bool = True):
        self.value, self.none_ok = value, none_ok
        self.allowed = f"a mapping such as {example}"

    def _ok(self, value: Any) -> bool:
        return isinstance(value, dict) and all(
            isinstance(k, str) and k and self.value.problem(v) is None and v is not None for k, v in value.items())


class Keywords(Spec):
    """A mapping of keyword arguments to a function, its keys among ``keys`` (RecBole passes it on with
    ``**``), e.g. ``clip_grad_norm: {max_norm: 5}``."""

    def __init__(self, keys: tuple[str, ...], example: str, none_ok: bool = True):
        self.keys, self.none_ok = keys, none_ok
        self.allowed = f"a mapping such as {example} (keys: {', '.join(keys)})" + (" or None" if none_ok else "")

    def _ok(self, value: Any) -> bool:
        return isinstance(value, dict) and bool(value) and all(k in self.keys for k in value)


class NegativeSampling(Spec):
    """RecBole's ``train_neg_sample_args``: None (no negatives), or a mapping whose ``sample_num`` is a
    count >= 1 when a distribution is set (a negative count fails only inside the first epoch)."""

    none_ok = True
    allowed = ("None or a mapping such as {distribution: uniform, sample_num: 1} with sample_num an "
               "integer >= 1 (and candidate_num >= 0, dynamic True/False)")

    def _ok(self, value: Any) -> bool:
        if value == "None":
            return True
        if not isinstance(value, dict):
            return False
        if value.get("distribution", "uniform") in (None, "none", "None"):  # RecBole fills in uniform
            return True
        checks = {"sample_num": Int(min=1), "candidate_num": Int(min=0), "dynamic": Bool(), "alpha": Float()}
        return all(spec.problem(value[key]) is None for key, spec in checks.items() if key in value)


# ---- declarations ------------------------------------------------------------------------------
RECBOLE_SCHEMA: dict[str, Spec] = {
    "dataset": Str(),
    "epochs": Int(min=1),
    "learning_rate": Float(min=0, min_open=True),
    "train_batch_size": Int(min=1),
    "eval_batch_size": Int(min=1),
    "embedding_size": Int(min=1, none_ok=True),
    "stopping_step": Int(min=1),
    "eval_step": Int(min=0),
    "seed": Int(min=0, max=2**32 - 1),  # numpy's seed range
    "reproducibility": Bool(),
    "show_progress": Bool(),
    "weight_decay": Float(min=0),
    "topk": ListOf(Int(min=1), scalar_ok=True),
    "metrics": ListOf(Str(), scalar_ok=True),
    "valid_metric": Str(),
    "learner": Choice("adam", "sgd", "adagrad", "rmsprop", "sparse_adam", none_ok=True),
    "worker": Int(min=0),
    "checkpoint_dir": Str(),
    "loss_decimal_place": Int(min=0, none_ok=True),
    "metric_decimal_place": Int(min=0, none_ok=True),
    "save_dataset": Bool(none_ok=True),
    "save_dataloaders": Bool(none_ok=True),
    "use_gpu": Bool(),
    "enable_amp": Bool(none_ok=True),
    "enable_scaler": Bool(none_ok=True),
    "clip_grad_norm": Keywords(("max_norm", "norm_type", "error_if_nonfinite", "foreach"),
                               "{max_norm: 5, norm_type: 2}"),  # torch's clip_grad_norm_ arguments
    "state": Choice("INFO", "DEBUG", "WARNING", "ERROR", "CRITICAL", none_ok=True, ignore_case=True),
    "train_neg_sample_args": NegativeSampling(),
}

PLUGIN_SCHEMA: dict[str, Spec] = {
    "test_masking": Choice("train_valid", "train", none_ok=True),
    "negative_items": Choice("all", "train", none_ok=True),
    "missing_feature": Choice("error", "mean", "zero", none_ok=True),
    "data_format": Choice("auto", "mmrec", "atomic", none_ok=True),
    "filter_cold_start_users": Bool(none_ok=True),
    "cold_start_items": Float(min=0, max=1, max_open=True, none_ok=True),  # 0/unset: off
    "cold_start_seed": Int(min=0, none_ok=True),
    "cold_start_valid_items": Float(min=0, max=1, max_open=True, none_ok=True),
    "cold_start_candidates": Choice("cold", "all", none_ok=True),
    "shuffle_features": Bool(none_ok=True),
    "shuffle_features_seed": Int(min=0, none_ok=True),
    "learning_rate_scheduler": ListOf(Float(min=0, min_open=True), length=2, none_ok=True),
    "modalities": MappingOf(Str(), "{image: image_feat.npy}"),
    "inter_file_name": Str(none_ok=True),
    "log_dir": Str(none_ok=True),  # recbole_mm.logs: the folder that receives RecBole's log/ and log_tensorboard/
    "trust_pickle": Bool(none_ok=True),  # RecBole's pickled dataset/dataloader caches are read only when True
    "strict_config": Bool(none_ok=True),  # an unknown setting is an error instead of a warning
}

# RecBole models whose code runs a setting: KD_DAGFM does eval(f"{config['teacher']}")
# (kd_dagfm.py:44), so its teacher must be one of the networks defined next to it.
RECBOLE_MODEL_SCHEMAS: dict[str, dict[str, Spec]] = {
    "KD_DAGFM": {"teacher": Choice("CrossNet", "CIN"),
                 "phase": Choice("teacher_training", "distillation", "finetuning")},
}

_VALUE_METRICS_NOTE = "value metrics (AUC, MAE, ...) take no @k"


def _inferred_spec(default: Any, strict: bool = True) -> Spec | None:
    """A spec from the type of a model yaml's default value: a bool default wants a bool, a number any
    number (a weight written ``0`` in a yaml is a float key; declare ``Int`` in ``config_schema`` for
    counts), a string a string (``strict`` only: RecBole's own yamls are looser)."""
    # none_ok: a model may read an unset key as "off"; declared specs say so explicitly.
    if isinstance(default, bool):
        return Bool(none_ok=True)
    if _is_number(default):
        return Float(none_ok=True)
    if isinstance(default, str) and strict:
        return Str(none_ok=True)
    return None


def model_schema(model_class: Any, model_defaults: dict, strict: bool = True) -> dict[str, Spec]:
    """The model's declared ``config_schema``, completed with specs inferred from its yaml defaults."""
    inferred = ((k, _inferred_spec(v, strict)) for k, v in model_defaults.items())
    schema = {k: s for k, s in inferred if s is not None}
    for cls in reversed(getattr(model_class, "__mro__", ())):
        schema.update(getattr(cls, "config_schema", None) or {})
    return schema


# ---- settings are data ---------------------------------------------------------------------------
# What RecBole's Config kept from eval(): these types; anything else (a set, bytes, a complex number) stays text.
_LITERAL_TYPES = (str, int, float, list, tuple, dict, bool)


def parse_setting(text: str) -> Any:
    """A setting written as text (command line, ``config_dict``, a HyperTuning params file) as the value
    it spells, never run as code: a Python literal (``5``, ``1e-3``, ``'x'``, ``[10, 20]``,
    ``{'RS': [0.8, 0.1, 0.1]}``, ``True``, ``None``), ``true``/``false`` in any case (as RecBole reads
    them), else the text itself. RecBole's ``Config`` ran ``eval`` on it, so a value could run any code."""
    try:
        value = ast.literal_eval(text)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        # Not a literal: a plain word (a path, a model name), or an expression, which is not evaluated.
        return {"true": True, "false": False}.get(text.lower(), text)
    if value is not None and not isinstance(value, _LITERAL_TYPES):
        return text
    return value


def convert_config_dict(self: Any, config_dict: dict) -> dict:
    """``Config._convert_config_dict`` (command-line and ``config_dict`` values) with :func:`parse_setting`
    instead of ``eval``; installed on RecBole's ``Config`` at ``import recbole_mm``."""
    for key, value in config_dict.items():
        if isinstance(value, str):
            config_dict[key] = parse_setting(value)
    return config_dict


class UnsafeYamlTagError(ConfigError):
    """A yaml ``!!python/...`` tag: yaml would build a Python object (or call a function) from it."""


class SettingsLoader(yaml.SafeLoader):
    """yaml's safe loader (plain values only) with RecBole's one extension: a float may omit the dot
    (``1e-3``). RecBole's own loader is a ``FullLoader``, which accepts ``!!python/name:os.system``."""


SettingsLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"""^(?:[-+]?[0-9][0-9_]*\.[0-9_]*(?:[eE][-+]?[0-9]+)?
                  |[-+]?[0-9][0-9_]*[eE][-+]?[0-9]+
                  |\.[0-9_]+(?:[eE][-+][0-9]+)?
                  |[-+]?[0-9][0-9_]*(?::[0-5]?[0-9])+\.[0-9_]*
                  |[-+]?\.(?:inf|Inf|INF)
                  |\.(?:nan|NaN|NAN))$""", re.X),
    list("-+0123456789."),
)


def _refuse_python_tag(loader: Any, suffix: str, node: Any) -> None:
    raise UnsafeYamlTagError(f"line {node.start_mark.line + 1}: the tag !!python/{suffix} asks yaml to build a "
                             "Python object, which could run code; settings are plain values only "
                             "(numbers, strings, lists, mappings), so write the value itself")


SettingsLoader.add_multi_constructor("tag:yaml.org,2002:python/", _refuse_python_tag)


def build_yaml_loader(self: Any = None) -> type:
    """``Config._build_yaml_loader``: :class:`SettingsLoader` (RecBole's adds its float pattern to
    yaml's ``FullLoader`` itself, again in every ``Config``)."""
    return SettingsLoader


def load_yaml_text(text: str, source: str) -> Any:
    """yaml ``text`` read with :class:`SettingsLoader`; a python tag or a syntax error is one line naming
    ``source`` (e.g. ``config file x.yaml``)."""
    try:
        return yaml.load(text, Loader=SettingsLoader)
    except UnsafeYamlTagError as exc:
        raise UnsafeYamlTagError(f"{source}: {exc}") from exc
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(f"{source}: yaml syntax error{at}: {exc.problem or exc.context}; "
                          "fix the yaml (key: value, one per line)") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: not valid yaml ({' '.join(str(exc).split())})") from exc


def load_yaml_file(path: os.PathLike | str, what: str = "yaml file") -> Any:
    """The yaml file at ``path`` (see :func:`load_yaml_text`); errors name ``what`` and the path."""
    with open(path, encoding="utf-8") as f:
        return load_yaml_text(f.read(), f"{what} {path}")


# ---- sources -----------------------------------------------------------------------------------
def read_config_file(path: str) -> dict:
    """A yaml config file as a dict; a missing, unreadable or malformed file is one line naming it."""
    path = str(path)
    if os.path.isdir(path):
        raise ConfigError(f"config file {path} is a folder, not a yaml file; check --config_files")
    if not os.path.isfile(path):
        where = os.path.abspath(path)
        raise ConfigError(f"config file {path} not found (looked for {where}); check --config_files")
    try:
        with open(path, encoding="utf-8-sig") as f:
            text = f.read()
    except PermissionError as exc:
        raise ConfigError(f"config file {path} is not readable ({exc.strerror}); fix its permissions") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"config file {path} is not UTF-8 text ({exc.reason} at byte {exc.start}); "
                          "save it as UTF-8") from exc
    data = load_yaml_text(text, f"config file {path}")
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path}: holds a {type(data).__name__}, not key: value pairs; "
                          "write one 'key: value' per line")
    return data


def where_set(config: Any, key: str) -> str:
    """Where ``config[key]`` came from, in RecBole's precedence order (highest first)."""
    if key in (getattr(config, "cmd_config_dict", None) or {}):
        return "set on the command line"
    if key in (getattr(config, "variable_config_dict", None) or {}):
        return "set in config_dict"
    files = getattr(config, "_recbole_mm_file_sources", None) or {}
    if key in files:
        return f"set in config file {files[key]}"
    if key in (getattr(config, "file_config_dict", None) or {}):
        return "set in a config file"
    from recbole_mm import resources

    dataset_file = resources.dataset_config_file(str(getattr(config, "dataset", "")))
    if dataset_file.is_file():
        data = _quiet_yaml(dataset_file)
        overrides = (data.get("model_overrides") or {}).get(str(getattr(config, "model", ""))) or {}
        if key in data or key in overrides:
            return f"set in dataset config {dataset_file}"
    model_file = resources.model_properties_file(str(getattr(config, "model", "")))
    if model_file.is_file() and key in _quiet_yaml(model_file):
        return f"default in {model_file}"
    return "RecBole's default"


def _quiet_yaml(path: Path) -> dict:
    try:
        data = load_yaml_text(path.read_text(encoding="utf-8"), str(path))
    except (OSError, ConfigError):
        return {}
    return data if isinstance(data, dict) else {}


# ---- the checks --------------------------------------------------------------------------------
def _fail(config: Any, key: str, value: Any, allowed: str, hint: str = "") -> None:
    raise ConfigError(f"{key}: {value!r} ({where_set(config, key)}) is not allowed: it must be {allowed}{hint}")


def check_values(config: Any, values: dict, schema: dict[str, Spec]) -> None:
    """Every key of ``schema`` present in ``values`` satisfies its spec."""
    for key, spec in schema.items():
        if key in values:
            problem = spec.problem(values[key])
            if problem is not None:
                _fail(config, key, values[key], problem)


def _metric_names(config: Any, values: dict) -> list[str]:
    """The result keys RecBole's evaluator will report (``recall@20``; value metrics without @k)."""
    from recbole.evaluator import metric_types
    from recbole.utils import EvaluatorType

    metrics = values.get("metrics")
    metrics = [metrics] if isinstance(metrics, str) else list(metrics or [])
    topk = values.get("topk")
    topk = [topk] if _is_int(topk) else list(topk or [])
    names = []
    for metric in metrics:
        if metric.lower() not in metric_types:
            known = ", ".join(sorted(metric_types))
            raise ConfigError(f"metrics: {metric!r} is not a RecBole metric ({where_set(config, 'metrics')}); "
                              f"known (case-insensitive): {known}")
        if metric_types[metric.lower()] == EvaluatorType.RANKING:
            names += [f"{metric.lower()}@{k}" for k in topk]
        else:
            names.append(metric.lower())
    return names


def check_metrics(config: Any, values: dict) -> None:
    """``metrics`` are RecBole's, of one kind, and ``valid_metric`` is one of the results they produce
    (RecBole would fail with a KeyError only after the first training epoch)."""
    from recbole.evaluator import metric_types

    names = _metric_names(config, values)
    kinds = {metric_types[m.lower()] for m in ([values["metrics"]] if isinstance(values.get("metrics"), str)
                                               else values.get("metrics") or [])}
    if len(kinds) > 1:
        _fail(config, "metrics", values["metrics"], "ranking metrics (Recall, NDCG, ...) or value metrics "
              "(AUC, MAE, ...), not both")
    valid = values.get("valid_metric")
    if isinstance(valid, str) and valid.lower() not in names:
        hint = ""
        name, _, k = valid.partition("@")
        if name.lower() in metric_types and k.isdigit():
            hint = f" (or add {k} to topk / {name} to metrics)"
        elif "@" not in valid:
            hint = f"; ranking metrics need @k, {_VALUE_METRICS_NOTE}"
        _fail(config, "valid_metric", valid, "one of the metrics computed: " + ", ".join(names), hint)


def check_model_values(config: Any, model: str, model_class: Any, values: dict) -> None:
    """A plugin model's keys in ``values`` against :func:`model_schema` (its ``config_schema``, completed
    from ``properties/model/<model>.yaml``). Run by :func:`check_config` and, for RecBole's own
    ``Config``, which checks nothing, by ``MultiModalRecommender.__init__``."""
    from recbole_mm import resources

    check_values(config, values, model_schema(model_class, _quiet_yaml(resources.model_properties_file(model))))


def check_config(config: Any, values: dict | None = None) -> None:
    """Check a RecBole ``Config`` (or its merged ``values`` before RecBole's own validation)."""
    from recbole_mm import resources
    from recbole_mm.registry import is_plugin_model

    values = config.final_config_dict if values is None else values
    check_values(config, values, RECBOLE_SCHEMA)
    check_values(config, values, PLUGIN_SCHEMA)
    model = str(values.get("model") or getattr(config, "model", ""))
    model_class = getattr(config, "model_class", None)
    if is_plugin_model(model):
        check_model_values(config, model, model_class, values)
    else:  # RecBole's own model: the types of its yaml's defaults
        import recbole

        recbole_yaml = Path(recbole.__file__).parent / "properties" / "model" / f"{model}.yaml"
        check_values(config, values, model_schema(model_class, _quiet_yaml(recbole_yaml), strict=False))
        check_values(config, values, RECBOLE_MODEL_SCHEMAS.get(model, {}))
    check_metrics(config, values)
    check_pickle_settings(config, values)


def check_code_settings(config: Any, source: str | None = None) -> None:
    """The settings that RecBole's code runs (:data:`RECBOLE_MODEL_SCHEMAS`) hold one of the allowed
    names; on every ``Config`` (RecBole's own ``run_recbole`` too) and on a checkpoint's stored config
    (``source`` then says where the value came from)."""
    values = config.final_config_dict
    for key, spec in RECBOLE_MODEL_SCHEMAS.get(str(values.get("model") or ""), {}).items():
        problem = spec.problem(values.get(key)) if key in values else None
        if problem is not None:
            raise ConfigError(f"{key}: {values[key]!r} ({source or where_set(config, key)}) is not allowed: "
                              f"it must be {problem}")


# ---- pickled caches ----------------------------------------------------------------------------
# RecBole's dataset and dataloader caches are pickles (recbole/data/utils.py:61, :122): reading one runs any
# code it holds. Each path key with the switch that writes the file there.
PICKLE_CACHES = {"dataset_save_path": "save_dataset", "dataloaders_save_path": "save_dataloaders"}


def pickle_cache_problem(config: Any, key: str, value: Any) -> str:
    """The one-line refusal of a pickled-cache setting made without ``trust_pickle: True``."""
    where = where_set(config, key)
    if key in PICKLE_CACHES:
        return (f"{key}: {value!r} ({where}) names a pickled {key.split('_')[0]} cache, and unpickling a file "
                f"can run any code it holds; set trust_pickle: True as well if you wrote that file yourself, "
                f"or unset {key}")
    return (f"{key}: {value!r} ({where}) writes a pickled {key.split('_')[1]} cache, which later runs read "
            f"only with trust_pickle: True (unpickling can run code); set trust_pickle: True as well, or unset {key}")


def check_pickle_settings(config: Any, values: dict) -> None:
    """Without ``trust_pickle: True`` no setting may make RecBole write or read a pickled cache."""
    if values.get("trust_pickle") is True:
        return
    for path_key, switch in PICKLE_CACHES.items():
        for key in (path_key, switch):
            if values.get(key):
                raise ConfigError(pickle_cache_problem(config, key, values[key]))


# ---- unknown settings --------------------------------------------------------------------------
# Keys that exist only while a run starts: RecBole's launch arguments (run() takes them as arguments and
# puts them into config_dict), recbole_mm's command line, and what Config derives itself.
RUNTIME_SETTINGS = frozenset({
    "model", "dataset", "config_files", "resume", "nproc", "world_size", "ip", "port", "offset", "local_rank",
    "dist_backend", "single_spec", "device", "MODEL_TYPE", "MODEL_INPUT_TYPE", "eval_type", "valid_metric_bigger",
    "train_neg_sample_args", "valid_neg_sample_args", "test_neg_sample_args",
})
# config["key"], config.get("key"), config_dict["key"], config_choice(config, "key", ...): the keys a file reads.
_READS = re.compile(r"""(?:config(?:_dict)?\s*(?:\[|\.get\(|\.setdefault\()|config_choice\(\s*\w+\s*,)\s*['"]([A-Za-z_]\w*)['"]""")


@lru_cache(maxsize=None)
def _keys_read_in(path: str) -> frozenset[str]:
    """The setting names a Python source file reads from a config (a text scan, nothing is imported)."""
    try:
        return frozenset(_READS.findall(Path(path).read_text(encoding="utf-8")))
    except (OSError, UnicodeDecodeError):
        return frozenset()


def _yaml_keys(path: Path) -> set[str]:
    return {str(k) for k in _quiet_yaml(path)} if path.is_file() else set()


@lru_cache(maxsize=1)
def _global_settings() -> frozenset[str]:
    """Settings any model may be given: RecBole's defaults (overall, sample dataset and quick-start yamls),
    its argument lists, what RecBole's and recbole_mm's code outside the model classes reads, the
    schemas here and the runtime keys."""
    import recbole
    from recbole.utils import argument_list

    import recbole_mm
    from recbole_mm.registry import DATASET_ARGUMENTS

    recbole_root = Path(recbole.__file__).parent
    keys = set(RUNTIME_SETTINGS) | set(RECBOLE_SCHEMA) | set(PLUGIN_SCHEMA) | set(DATASET_ARGUMENTS)
    for name in ("general_arguments", "training_arguments", "evaluation_arguments", "dataset_arguments"):
        keys |= set(getattr(argument_list, name))
    properties = recbole_root / "properties"
    for path in [properties / "overall.yaml", properties / "dataset" / "sample.yaml",
                 *sorted((properties / "quick_start_config").glob("*.yaml"))]:
        keys |= _yaml_keys(path)
    # A model's own code counts for that model only (model_settings); HyperTuning's "choice", "uniform",
    # ... are the keys of its search-space dict, not settings.
    for root in (recbole_root, Path(recbole_mm.__file__).parent):
        for path in root.rglob("*.py"):
            parts = path.relative_to(root).parts
            if (parts[0] == "model" and len(parts) > 2) or parts == ("trainer", "hyper_tuning.py"):
                continue
            # recbole_mm's model classes count per model too; the checks here read keys to check them.
            if root.name == "recbole_mm" and (parts[0] == "model" or parts == ("config_check.py",)):
                continue
            keys |= _keys_read_in(str(path))
    return frozenset(keys)


def model_settings(model: str, model_class: Any) -> frozenset[str]:
    """Settings of one model: its yaml defaults (RecBole's or recbole_mm's), its ``config_schema`` and what
    the modules of its classes read."""
    import inspect

    import recbole

    from recbole_mm import resources

    keys = _yaml_keys(resources.model_properties_file(model))
    keys |= _yaml_keys(Path(recbole.__file__).parent / "properties" / "model" / f"{model}.yaml")
    keys |= set(RECBOLE_MODEL_SCHEMAS.get(model, {}))
    for cls in getattr(model_class, "__mro__", ()):
        keys |= set(getattr(cls, "config_schema", None) or {})
        try:
            source = inspect.getsourcefile(cls)
        except TypeError:  # a builtin base (object)
            source = None
        if source:
            keys |= _keys_read_in(source)
    return frozenset(keys)


def dataset_settings(model: str, dataset: str) -> set[str]:
    """Settings a dataset's config defines: recbole_mm's ``dataset_configs/<dataset>.yaml`` (with the
    model's ``model_overrides``) and RecBole's ``properties/dataset/<dataset>.yaml``."""
    import recbole

    from recbole_mm import resources

    data = _quiet_yaml(resources.dataset_config_file(dataset))
    overrides = data.pop("model_overrides", None) or {}
    keys = {str(k) for k in data} | {str(k) for k in (overrides.get(model) or {})}
    return keys | _yaml_keys(Path(recbole.__file__).parent / "properties" / "dataset" / f"{dataset}.yaml")


@lru_cache(maxsize=1)
def _settings_of_other_models() -> dict[str, tuple[str, ...]]:
    """Setting name -> the models whose yaml defaults or schema name it (RecBole's and recbole_mm's)."""
    import recbole

    from recbole_mm import registry, resources

    owners: dict[str, set[str]] = {}
    for path in sorted((Path(recbole.__file__).parent / "properties" / "model").glob("*.yaml")):
        for key in _yaml_keys(path):
            owners.setdefault(key, set()).add(path.stem)
    for model in registry.PLUGIN_MODELS:
        for key in _yaml_keys(resources.model_properties_file(model)):
            owners.setdefault(key, set()).add(model)
    for model, schema in RECBOLE_MODEL_SCHEMAS.items():
        for key in schema:
            owners.setdefault(key, set()).add(model)
    return {key: tuple(sorted(models)) for key, models in owners.items()}


def user_settings(config: Any) -> dict[str, str]:
    """The keys the user gave, each with where: ``command line``, ``config_dict`` or ``config file X``
    (the highest-precedence source when a key is given twice)."""
    files = getattr(config, "_recbole_mm_file_sources", None) or {}
    given = {key: f"config file {files[key]}" if key in files else "a config file"
             for key in getattr(config, "file_config_dict", None) or {}}
    given.update({key: "config_dict" for key in getattr(config, "variable_config_dict", None) or {}})
    given.update({key: "command line" for key in getattr(config, "cmd_config_dict", None) or {}})
    return given


def unknown_settings(config: Any) -> list[str]:
    """One message per setting the user gave that no default, schema, dataset config or code of the
    chosen model knows: the closest known name, or the models whose setting it is."""
    model, dataset = str(config.model), str(config.dataset)
    known = _global_settings() | model_settings(model, config.model_class) | dataset_settings(model, dataset)
    messages = []
    for key, where in user_settings(config).items():
        if key in known:
            continue
        owners = _settings_of_other_models().get(key)
        if owners:
            listed = ", ".join(owners[:6]) + (f" and {len(owners) - 6} more" if len(owners) > 6 else "")
            messages.append(f"setting '{key}' ({where}) is not read by {model}: it is a setting of {listed}")
            continue
        close = difflib.get_close_matches(key, sorted(known), n=1, cutoff=0.75)
        hint = f"; did you mean '{close[0]}'?" if close else f"; {model} and RecBole do not read it"
        messages.append(f"unknown setting '{key}' ({where}){hint}")
    return messages


def check_settings_known(config: Any) -> None:
    """A setting nothing reads (a typo, another model's key) is a ``recbole_mm: warning:`` line each, or
    one error under ``strict_config: True``. Warned once per run: not again in the other processes of a
    multi-process run."""
    messages = unknown_settings(config)
    if not messages:
        return
    if config.final_config_dict.get("strict_config") is True:
        raise ConfigError("; ".join(messages) + " (strict_config: True; remove or correct the setting)")
    if not config.final_config_dict.get("local_rank"):
        for message in messages:
            warn_user(message)


# ---- after RecBole's defaults --------------------------------------------------------------------
def _no_negatives(args: Any) -> bool:
    if args is None or args == "None":
        return True
    return isinstance(args, dict) and args.get("distribution") in (None, "none", "None")


def check_negative_sampling(config: Any) -> None:
    """A pairwise model (or ``loss_type``, e.g. BPR) needs negative items: with ``train_neg_sample_args``
    None its first batch failed with ``KeyError: 'neg_itemID'``, after the log was written."""
    from recbole.utils import InputType

    values = config.final_config_dict
    if values.get("MODEL_INPUT_TYPE") != InputType.PAIRWISE or not _no_negatives(values.get("train_neg_sample_args")):
        return
    # RecBole reads the input type from the model class, or from loss_type when the class has none.
    by_loss = not hasattr(config.model_class, "input_type")
    why = (f"loss_type {values.get('loss_type')!r} ({where_set(config, 'loss_type')}) makes {config.model} train"
           if by_loss else f"{config.model} trains")
    fix = " or a loss_type without negatives (e.g. CE)" if by_loss else ""
    raise ConfigError(f"train_neg_sample_args: None ({where_set(config, 'train_neg_sample_args')}) gives no "
                      f"negative items, but {why} on (positive, negative) pairs; set train_neg_sample_args: "
                      f"{{distribution: uniform, sample_num: 1}}{fix}")


def check_device(config: Any) -> None:
    """A GPU asked for (``device``, ``gpu_id`` or ``use_gpu`` set by the user) on a machine without one:
    one warning line, then the CPU; ``use_gpu`` is made to tell the truth."""
    import torch

    if torch.cuda.is_available():
        return
    user = {}
    for source in (getattr(config, "file_config_dict", {}), getattr(config, "variable_config_dict", {}),
                   getattr(config, "cmd_config_dict", {})):
        user.update(source or {})
    asked = []
    if "cuda" in str(user.get("device", "")).lower():
        asked.append(f"device={user['device']}")
    if "gpu_id" in user and str(user["gpu_id"]).strip() not in ("", "None"):
        asked.append(f"gpu_id={user['gpu_id']}")
    if user.get("use_gpu") is True:
        asked.append("use_gpu=True")
    if asked:
        warn_user(f"{', '.join(asked)} asked for a GPU, but torch sees no CUDA device here; running on the CPU")
    config.final_config_dict["use_gpu"] = False


def check_against_dataset(config: Any, dataset: Any) -> None:
    """Checks that need the loaded dataset: a split the dataset's file overrides (error), embedding tables
    larger than the memory there is (error), a ``knn_k`` at or above the catalogue (warning: clamped)."""
    check_split_source(config, dataset)
    check_model_size(config, dataset)
    k = config.final_config_dict.get("knn_k")
    n_items = getattr(dataset, "item_num", None)
    if _is_int(k) and n_items and k >= n_items - 1:
        warn_user(f"knn_k={k} ({where_set(config, 'knn_k')}) is not below the {n_items - 1} items of "
                  f"{config['dataset']}; every item graph links each item to all others (k is clamped)")


def _configured_split(config: Any) -> Any:
    """``eval_args['split']`` as the user or the dataset config set it (None when only RecBole's default
    applies): the dataset rewrites ``config['eval_args']`` once it has read its file's split."""
    from recbole_mm import resources

    sources = [getattr(config, name, None) or {} for name in ("cmd_config_dict", "variable_config_dict",
                                                              "file_config_dict")]
    data = _quiet_yaml(resources.dataset_config_file(str(config["dataset"])))
    sources += [(data.get("model_overrides") or {}).get(str(config["model"])) or {}, data]
    for source in sources:
        eval_args = source.get("eval_args")
        if isinstance(eval_args, dict) and eval_args.get("split"):
            return eval_args["split"]
    return None


def check_split_source(config: Any, dataset: Any) -> None:
    """A dataset whose file carries its split (MMRec's ``x_label`` column, RecBole's ``benchmark_filename``)
    is split by that file: an ``eval_args`` split given as well was silently replaced by it."""
    if not getattr(dataset, "benchmark_filename_list", None):
        return
    split = _configured_split(config)
    if not split or (isinstance(split, dict) and set(split) == {"x_label"}):  # the split as a run reports it
        return
    benchmark = config["benchmark_filename"]
    source = (f"its benchmark_filename files {', '.join(map(str, benchmark))}" if benchmark
              else "the x_label column of its interaction file")
    raise ConfigError(f"eval_args: split {split!r} ({where_set(config, 'eval_args')}) cannot apply: dataset "
                      f"{config['dataset']} brings its own train/valid/test split ({source}); remove 'split' "
                      f"from eval_args (its order, group_by and mode still apply)")


def available_memory(device: Any) -> int:
    """Bytes free for new tensors on ``device``: free GPU memory on CUDA, else available RAM."""
    import torch

    if getattr(device, "type", str(device)) == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    import psutil

    return int(psutil.virtual_memory().available)


def _bytes_text(n: float) -> str:
    if n < 1024:
        return f"{int(n)} B"
    for unit in ("KiB", "MiB", "GiB", "TiB"):
        n /= 1024
        if n < 1024:
            break
    return f"{n:.1f} {unit}"


def check_model_size(config: Any, dataset: Any) -> None:
    """An ``embedding_size`` whose embedding tables alone exceed the free memory is one line with the
    estimate, before anything is allocated (torch failed with "can't allocate N bytes" after the log was
    written). The estimate is a lower bound: float32 ID embeddings for the items (every model with an
    ``embedding_size`` embeds them) and, for recbole_mm's models, the users; weights, gradients and
    optimizer state come on top."""
    from recbole_mm.registry import is_plugin_model

    width = config.final_config_dict.get("embedding_size")
    if not _is_int(width) or "embedding_size" not in model_settings(str(config["model"]), config.model_class):
        return
    n_items = int(getattr(dataset, "item_num", 0) or 0)
    n_users = int(getattr(dataset, "user_num", 0) or 0) if is_plugin_model(str(config["model"])) else 0
    needed = 4 * width * (n_items + n_users)
    free = available_memory(config["device"])
    if needed > free:
        rows = f"{n_items:,} items" + (f" and {n_users:,} users" if n_users else "")
        raise ConfigError(f"embedding_size: {width} ({where_set(config, 'embedding_size')}) needs at least "
                          f"{_bytes_text(needed)} for the embedding tables of {rows} (float32), more than the "
                          f"{_bytes_text(free)} of memory free on {config['device']}; choose a smaller embedding_size")


def check_output_folder(config: Any, key: str = "checkpoint_dir") -> None:
    """The folder ``config[key]`` can be created (or is) and written, checked without creating it: a
    checkpoint folder under a file or in a read-only place failed only when training began."""
    folder = config.final_config_dict.get(key)
    if not isinstance(folder, str):
        return
    existing = Path(folder).absolute()
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        problem = f"{existing} is a file"
    elif not os.access(existing, os.W_OK | os.X_OK):
        problem = f"{existing} is not writable"
    else:
        return
    raise ConfigError(f"{key}: {folder!r} ({where_set(config, key)}) cannot be used: {problem}; "
                      f"set --{key} to a folder you can write to")


class CheckedConfig(Config):
    """RecBole's ``Config`` whose config files are read with file-naming errors and whose merged values
    pass :func:`check_config` (and :func:`check_settings_known`) before RecBole's own validation."""

    def _load_config_files(self, file_list):
        merged, self._recbole_mm_file_sources = {}, {}
        for file in file_list or []:
            data = read_config_file(file)
            merged.update(data)
            self._recbole_mm_file_sources.update({key: str(file) for key in data})
        return merged

    def _set_default_parameters(self):
        check_config(self, self.final_config_dict)
        check_settings_known(self)
        super()._set_default_parameters()
        check_negative_sampling(self)


def make_checked_config(model: Any = None, dataset: str | None = None, config_file_list: list[str] | None = None,
                        config_dict: dict | None = None) -> Any:
    """A :class:`CheckedConfig`, returned as a plain RecBole ``Config``, with its device checked; every
    configuration problem, RecBole's own checks included, is a :class:`ConfigError`."""
    try:
        config = CheckedConfig(model=model, dataset=dataset, config_file_list=config_file_list,
                               config_dict=config_dict)
    except RecBoleMMError:
        raise
    except (ValueError, TypeError, KeyError, SyntaxError, NotImplementedError, RuntimeError) as exc:
        # RecBole's own checks (eval_args, train_neg_sample_args, duplicate command-line keys, ...).
        message = " ".join(str(exc).strip("'\"").split())
        raise ConfigError(f"configuration: {message}") from exc
    config.__class__ = Config  # plain from here on: pickles and compares like RecBole's
    check_output_folder(config)
    check_device(config)
    return config

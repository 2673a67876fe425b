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
"""

from __future__ import annotations

import os
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


# ---- sources -----------------------------------------------------------------------------------
def read_config_file(path: str, loader: Any = None) -> dict:
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
    try:
        data = yaml.load(text, Loader=loader or yaml.FullLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(f"config file {path}: yaml syntax error{at}: {exc.problem or exc.context}; "
                          "fix the yaml (key: value, one per line)") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path}: not valid yaml ({' '.join(str(exc).split())})") from exc
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
        data = yaml.load(path.read_text(encoding="utf-8"), Loader=yaml.FullLoader)
    except (OSError, yaml.YAMLError):
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
    check_metrics(config, values)


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
    """Checks that need the loaded dataset: a ``knn_k`` at or above the catalogue is clamped (warning)."""
    k = config.final_config_dict.get("knn_k")
    n_items = getattr(dataset, "item_num", None)
    if _is_int(k) and n_items and k >= n_items - 1:
        warn_user(f"knn_k={k} ({where_set(config, 'knn_k')}) is not below the {n_items - 1} items of "
                  f"{config['dataset']}; every item graph links each item to all others (k is clamped)")


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
    pass :func:`check_config` before RecBole's own validation."""

    def _load_config_files(self, file_list):
        merged, self._recbole_mm_file_sources = {}, {}
        for file in file_list or []:
            data = read_config_file(file, self.yaml_loader)
            merged.update(data)
            self._recbole_mm_file_sources.update({key: str(file) for key in data})
        return merged

    def _set_default_parameters(self):
        check_config(self, self.final_config_dict)
        super()._set_default_parameters()

    def _convert_config_dict(self, config_dict):
        """RecBole's conversion of string values (``eval``, else true/false, else the string), except that
        a value whose ``eval`` raises anything is kept as the string: RecBole lets all but NameError,
        SyntaxError and TypeError through, so ``--resume=list.pth`` ended in an AttributeError traceback
        and ``--x=1/0`` in a ZeroDivisionError."""
        from enum import Enum

        for key, param in config_dict.items():
            if not isinstance(param, str):
                continue
            try:
                value = eval(param)  # noqa: S307  (RecBole's own parsing of the user's command line)
                if value is not None and not isinstance(value, (str, int, float, list, tuple, dict, bool, Enum)):
                    value = param
            except Exception:
                value = {"true": True, "false": False}.get(param.lower(), param)
            config_dict[key] = value
        return config_dict


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

"""Declared settings: the value types (:class:`Spec` and its kinds) and the schemas of RecBole's keys and
recbole_mm's switches that :mod:`recbole_mm.config_check` checks every configuration against.

Each plugin model declares its own keys in a ``config_schema`` class attribute (model authors import the
kinds from :mod:`recbole_mm.config_check`, where the checks are); a key of the model's
``properties/model/<Model>.yaml`` without a declaration gets a spec inferred from its default
(:func:`model_schema`).
"""

from __future__ import annotations

from typing import Any

from recbole_mm.errors import RecBoleMMError


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


def is_int(value: Any) -> bool:
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
        return is_int(value)


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
    "reuse_freed_memory": Bool(none_ok=True),  # speedups.reuse_freed_memory on CPU; unset: for models with tables > 32 MiB
}

# RecBole models whose code runs a setting: KD_DAGFM does eval(f"{config['teacher']}")
# (kd_dagfm.py:44), so its teacher must be one of the networks defined next to it.
RECBOLE_MODEL_SCHEMAS: dict[str, dict[str, Spec]] = {
    "KD_DAGFM": {"teacher": Choice("CrossNet", "CIN"),
                 "phase": Choice("teacher_training", "distillation", "finetuning")},
}

VALUE_METRICS_NOTE = "value metrics (AUC, MAE, ...) take no @k"


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

"""Configuration checks in one place: a declared type and range per key, checked before anything runs.

The rooms: :mod:`recbole_mm.config_specs` (value types and schemas), :mod:`recbole_mm.config_files`
(parsing settings and files, where a setting came from), :mod:`recbole_mm.config_known` (unknown
settings) and this module (the checks, and the checked ``Config`` that recbole_mm's entry points build).
Model files import the value types from here: ``from recbole_mm.config_check import Float, Int``.

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

import os
from pathlib import Path
from typing import Any

from recbole.config import Config

from recbole_mm.config_files import quiet_yaml, where_set
from recbole_mm.config_known import check_settings_known, model_settings
from recbole_mm.config_specs import (  # noqa: F401  (the value types: model files declare their schemas with them)
    PLUGIN_SCHEMA,
    RECBOLE_MODEL_SCHEMAS,
    RECBOLE_SCHEMA,
    VALUE_METRICS_NOTE,
    Bool,
    Choice,
    ConfigError,
    Float,
    Int,
    Keywords,
    ListOf,
    MappingOf,
    NegativeSampling,
    Spec,
    Str,
    is_int,
    model_schema,
)
from recbole_mm.errors import RecBoleMMError, warn_user


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
    topk = [topk] if is_int(topk) else list(topk or [])
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
            hint = f"; ranking metrics need @k, {VALUE_METRICS_NOTE}"
        _fail(config, "valid_metric", valid, "one of the metrics computed: " + ", ".join(names), hint)


def check_model_values(config: Any, model: str, model_class: Any, values: dict) -> None:
    """A plugin model's keys in ``values`` against :func:`model_schema` (its ``config_schema``, completed
    from ``properties/model/<model>.yaml``). Run by :func:`check_config` and, for RecBole's own
    ``Config``, which checks nothing, by ``MultiModalRecommender.__init__``."""
    from recbole_mm import resources

    check_values(config, values, model_schema(model_class, quiet_yaml(resources.model_properties_file(model))))


def check_config(config: Any, values: dict | None = None) -> None:
    """Check a RecBole ``Config`` (or its merged ``values`` before RecBole's own validation)."""
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
        check_values(config, values, model_schema(model_class, quiet_yaml(recbole_yaml), strict=False))
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
    if is_int(k) and n_items and k >= n_items - 1:
        warn_user(f"knn_k={k} ({where_set(config, 'knn_k')}) is not below the {n_items - 1} items of "
                  f"{config['dataset']}; every item graph links each item to all others (k is clamped)")


def _configured_split(config: Any) -> Any:
    """``eval_args['split']`` as the user or the dataset config set it (None when only RecBole's default
    applies): the dataset rewrites ``config['eval_args']`` once it has read its file's split."""
    from recbole_mm import resources

    sources = [getattr(config, name, None) or {} for name in ("cmd_config_dict", "variable_config_dict",
                                                              "file_config_dict")]
    data = quiet_yaml(resources.dataset_config_file(str(config["dataset"])))
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
    if not is_int(width) or "embedding_size" not in model_settings(str(config["model"]), config.model_class):
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
    """RecBole's ``Config`` whose merged values pass :func:`check_config` (and :func:`check_settings_known`)
    before RecBole's own validation (its config files are read, with file-naming errors and their keys'
    sources recorded, by every ``Config``: :mod:`recbole_mm.registry`)."""

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

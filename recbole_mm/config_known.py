"""Unknown settings: a key the user gave that no default, schema, dataset config or code of the chosen model
reads (a typo, another model's setting) is a warning with the closest known name, an error under
``strict_config: True``.
"""

from __future__ import annotations

import difflib
import re
from functools import lru_cache
from pathlib import Path
from typing import Any

from recbole_mm.config_files import FILE_SOURCES, quiet_yaml
from recbole_mm.config_specs import PLUGIN_SCHEMA, RECBOLE_MODEL_SCHEMAS, RECBOLE_SCHEMA, ConfigError
from recbole_mm.errors import warn_user


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
    return {str(k) for k in quiet_yaml(path)} if path.is_file() else set()


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
            # recbole_mm's model classes count per model too; the config_* modules read keys to check them.
            if root.name == "recbole_mm" and (parts[0] == "model" or parts[0].startswith("config_")):
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

    data = quiet_yaml(resources.dataset_config_file(dataset))
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
    files = getattr(config, FILE_SOURCES, None) or {}
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

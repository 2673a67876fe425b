"""Settings are data: how recbole_mm reads a setting's text (literals, never ``eval``), yaml (no
``!!python/...`` tags) and config files (one line naming the file when it cannot), installed on every RecBole
``Config`` by :mod:`recbole_mm.registry`; and where a merged setting came from (:func:`where_set`, from the
sources the merge recorded).
"""

from __future__ import annotations

import ast
import os
import re
from pathlib import Path
from typing import Any

import yaml

from recbole_mm.config_specs import ConfigError


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


# Where each setting of a Config came from, recorded by recbole_mm.registry while RecBole merges the layers
# (attribute names on the Config, each holding key → source): the config files' keys (later files win), and
# the keys the plugin's model and dataset yaml files set.
FILE_SOURCES = "_recbole_mm_file_sources"
INTERNAL_SOURCES = "_recbole_mm_internal_sources"


def where_set(config: Any, key: str) -> str:
    """Where ``config[key]`` came from, in RecBole's precedence order (highest first), as the merge recorded
    it (:mod:`recbole_mm.registry`: config files, the plugin's model and dataset yaml files)."""
    if key in (getattr(config, "cmd_config_dict", None) or {}):
        return "set on the command line"
    if key in (getattr(config, "variable_config_dict", None) or {}):
        return "set in config_dict"
    files = getattr(config, FILE_SOURCES, None) or {}
    if key in files:
        return f"set in config file {files[key]}"
    if key in (getattr(config, "file_config_dict", None) or {}):
        return "set in a config file"
    return (getattr(config, INTERNAL_SOURCES, None) or {}).get(key, "RecBole's default")


def quiet_yaml(path: Path) -> dict:
    try:
        data = load_yaml_text(path.read_text(encoding="utf-8"), str(path))
    except (OSError, ConfigError):
        return {}
    return data if isinstance(data, dict) else {}

"""The one model list: every model class in recbole_mm/model/general_recommender is found, registered with
RecBole and importable, without being listed anywhere by hand."""

from __future__ import annotations

import ast
import importlib
import sys
from pathlib import Path

import pytest

import recbole_mm  # noqa: F401  (registration)
from recbole_mm import registry
from recbole_mm.model import general_recommender
from recbole_mm.model.general_recommender import find_models

PACKAGE = Path(general_recommender.__file__).parent


def _classes_in_files() -> dict[str, str]:
    """Top-level public classes of the package's files, read from the source (not by importing)."""
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.name == "__init__.py":
            continue
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.ClassDef) and not node.name.startswith("_"):
                found[node.name] = path.stem
    return found


def test_every_model_file_is_registered_by_its_class_name():
    from recbole.utils import get_model

    in_files = _classes_in_files()
    # The old hand-written list in general_recommender/__init__.py lacked these two.
    assert {"FREEDOM", "LATTICE"} <= set(in_files)
    assert set(registry.PLUGIN_MODELS) == set(general_recommender.MODELS) == set(in_files)
    import recbole.trainer

    for name, stem in in_files.items():
        cls = getattr(general_recommender, name)
        assert cls.__module__ == f"{general_recommender.__name__}.{stem}"
        assert registry.PLUGIN_MODELS[name] == cls.__module__
        assert get_model(name) is cls
        assert registry.canonical_model_name(name) == name and registry.is_plugin_model(name)
        assert hasattr(recbole.trainer, f"{name}Trainer")
    assert sorted(general_recommender.__all__) == sorted(in_files)


def test_aliases_come_from_the_model_classes():
    assert registry.MODEL_ALIASES == {"MM-GEF": "MMGEF", "DA-MRS": "DAMRS"}
    assert registry.canonical_model_name("MM-GEF") == "MMGEF" and registry.is_plugin_model("MM-GEF")
    assert registry.canonical_model_name("DA-MRS") == "DAMRS" and registry.is_plugin_model("DA-MRS")


def _write_package(root: Path, name: str, files: dict[str, str]) -> None:
    for relative, text in {"__init__.py": "", **files}.items():
        path = root / name / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


MODEL_FILE = """
from torch import nn
from recbole_mm.model.abstract_recommender import MultiModalRecommender
from recbole_mm.model.general_recommender.vbpr import VBPR  # imported, not defined here: not this module's model

class _FamilyBase(MultiModalRecommender):  # private: a shared base, not a model
    pass

class Helper(nn.Module):  # not a recommender
    pass

class {name}(_FamilyBase):
    pass
"""


@pytest.fixture
def scratch_packages(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    for module in [m for m in sys.modules if m.startswith("scratch_models")]:
        del sys.modules[module]


def test_find_models_takes_each_modules_own_model_classes_sub_packages_included(scratch_packages):
    _write_package(scratch_packages, "scratch_models", {
        "newmodel.py": MODEL_FILE.format(name="NewModel"),
        "family/__init__.py": "",
        "family/other.py": MODEL_FILE.format(name="OtherModel"),
        "helpers.py": "def block():\n    return 1\n",
    })
    package = importlib.import_module("scratch_models")
    models = find_models(package)
    assert list(models) == ["OtherModel", "NewModel"]  # modules in name order: family.other, newmodel
    assert models["NewModel"].__module__ == "scratch_models.newmodel"


def test_two_models_of_one_name_are_refused(scratch_packages):
    _write_package(scratch_packages, "scratch_models_twice", {
        "a.py": MODEL_FILE.format(name="Twin"), "b.py": MODEL_FILE.format(name="Twin"),
    })
    with pytest.raises(ImportError, match="two recbole_mm models named Twin"):
        find_models(importlib.import_module("scratch_models_twice"))

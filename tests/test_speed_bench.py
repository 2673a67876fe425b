"""benchmarks/speed.py: its pure parts on fake cells, the Baby-shaped generator at a small size, and one
real 1-epoch cell on the planted dataset (no timed assertions: only that the numbers are there)."""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import numpy as np
import pytest
import yaml

from conftest import REPO

spec = importlib.util.spec_from_file_location("speed", REPO / "benchmarks" / "speed.py")
speed = importlib.util.module_from_spec(spec)
spec.loader.exec_module(speed)

# A copy of MMRec's src (GPL, never vendored); the checks against its files are skipped where there is none (CI).
MMREC_SRC = Path(os.environ.get("MMREC_SRC", "/work/MMRec/src"))
needs_mmrec = pytest.mark.skipif(not (MMREC_SRC / "models").is_dir(), reason=f"no MMRec copy at {MMREC_SRC}")


def fake_cell(model: str, seconds: float, evals: float, rss: float, losses: list[float], threads: int = 1) -> dict:
    return {"bench_dataset": "tiktok", "dataset": "tiktok", "model": model, "threads": threads,
            "train_seconds": seconds, "eval_seconds": evals, "peak_rss_mib": rss,
            "train_cpu_seconds": seconds / 2, "eval_cpu_seconds": evals / 2,
            "train_loss": losses, "valid_score": [0.1, 0.2]}


def fake_run(commit: str, cells: list[dict], dirty: bool = False) -> dict:
    return {"checkout": {"commit": commit, "subject": "s", "dirty": dirty, "path": "/x"}, "cells": cells,
            "machine": {"cpu": "cpu", "cores": 2, "python": "3", "torch": "2", "date": "today"}}


def test_ratios_pair_cells_and_compare_losses():
    after = [fake_cell("GUME", 5.0, 0.2, 900.0, [2.0, 1.0]), fake_cell("VBPR", 1.0, 0.3, 800.0, [1.0, 1.0]),
             {**fake_cell("MMGEF", 1, 1, 1, [1]), "failed": "boom"}]
    before = [fake_cell("GUME", 10.0, 0.4, 1200.0, [2.0, 1.01]), fake_cell("MMGEF", 2.0, 0.3, 800.0, [1.0])]
    rows = speed.ratios(after, before)
    assert [row["id"] for row in rows] == [("tiktok", "GUME", 1)]  # VBPR has no baseline; MMGEF failed
    row = rows[0]
    assert row["epoch"] == pytest.approx(0.5) and row["eval"] == pytest.approx(0.5)
    assert row["epoch_cpu"] == pytest.approx(0.5) and row["eval_cpu"] == pytest.approx(0.5)
    assert row["rss"] == pytest.approx(0.75)
    assert row["loss_diff"] == pytest.approx(0.01 / 1.01) and row["valid_diff"] == 0


def test_max_relative_difference_skips_missing_epochs():
    assert speed.max_relative_difference([1.0, None, 3.0], [1.0, 5.0, 2.0]) == pytest.approx(0.5)
    assert speed.max_relative_difference([], [1.0]) is None


def test_report_has_tables_commit_dirty_flag_and_ratios():
    new = fake_run("a" * 40, [fake_cell("GUME", 5.0, 0.2, 900.0, [2.0]), {**fake_cell("VBPR", 1, 1, 1, [1]),
                                                                         "failed": "ValueError: x"}], dirty=True)
    old = fake_run("b" * 40, [fake_cell("GUME", 10.0, 0.4, 1200.0, [2.0])])
    text = speed.format_report([new, old], "python benchmarks/speed.py --against bbb", note="shared machine")
    assert "`python benchmarks/speed.py --against bbb`" in text and "shared machine" in text
    assert f"`{'a' * 12}` (dirty" in text and f"`{'b' * 12}` —" in text
    assert "| tiktok | GUME | 1 | 5.00 | 0.200 | 2.50 | 0.100 | 900 | 1 | 2.0000 |" in text
    assert "failed: ValueError: x" in text
    assert f"## Ratios: {'a' * 12} / {'b' * 12}" in text
    assert "| tiktok | GUME | 1 | 0.50 | 0.50 | 0.50 | 0.50 | 0.75 | 0.0e+00 | 0.0e+00 |" in text
    single = speed.format_report([old], "cmd")
    assert "Ratios" not in single


def test_report_mode_rewrites_markdown_from_saved_cells(tmp_path):
    saved = tmp_path / "speed.json"
    saved.write_text(json.dumps({"command": "python benchmarks/speed.py", "note": "n",
                                 "runs": [fake_run("c" * 40, [fake_cell("GUME", 5.0, 0.2, 900.0, [2.0])])]}))
    out = tmp_path / "speed.md"
    speed.main(["--report", str(saved), "--out", str(out)])
    assert "| tiktok | GUME | 1 | 5.00 |" in out.read_text()


def test_generated_baby_has_mmrec_shapes_and_label(tmp_path, monkeypatch):
    monkeypatch.setattr(speed, "BABY_ITEMS", 5)
    monkeypatch.setattr(speed, "BABY_FEATURES", {"image": (7, "float64"), "text": (3, "float32")})
    root = speed.generate_baby(tmp_path / "gen")
    folder = root / "amazon-baby"
    image, text = np.load(folder / "image_feat.npy"), np.load(folder / "text_feat.npy")
    assert image.shape == (5, 7) and image.dtype == np.float64 and (image >= 0).all()
    assert text.shape == (5, 3) and text.dtype == np.float32
    assert (folder / "baby.inter").read_bytes() == (REPO / "dataset" / "amazon-baby" / "baby.inter").read_bytes()
    assert "cost, not accuracy" in (folder / "GENERATED.txt").read_text()
    again = speed.generate_baby(tmp_path / "gen")  # kept, not regenerated
    assert np.array_equal(np.load(again / "amazon-baby" / "image_feat.npy"), image)


def test_thread_pinning_of_a_cell(monkeypatch):
    command, env = speed.cell_command({"threads": 1}, REPO)
    assert env["OMP_NUM_THREADS"] == "1" and env["PYTHONPATH"] == str(REPO)
    if speed.shutil.which("taskset"):
        assert command[:2] == ["taskset", "-c"]
    command, env = speed.cell_command({"threads": 2}, REPO)
    assert command[0] != "taskset" and env["MKL_NUM_THREADS"] == "2"
    assert speed.thread_count("all") >= 1 and speed.thread_count("3") == 3


@pytest.mark.slow
def test_one_cell_on_the_planted_set(planted):
    root, config = planted
    config = {k: v for k, v in config.items() if k not in ("epochs", "show_progress", "state")}
    request = {"bench_dataset": "planted", "dataset": "planted", "model": "VBPR", "threads": 1, "epochs": 1,
               "config": config}
    cell = speed.run_cell_process(request, REPO)
    assert "failed" not in cell, cell.get("failed")
    assert cell["recbole_mm"] == str(REPO) and cell["torch_threads"] == 1
    assert len(cell["train_loss"]) == 1 and cell["train_seconds"] > 0 and cell["eval_seconds"] > 0
    assert cell["train_cpu_seconds"] > 0 and cell["eval_cpu_seconds"] > 0
    assert cell["peak_rss_mib"] > 50 and "recall@10" in cell["test"]


def test_report_merges_files_of_the_same_checkouts(tmp_path):
    for name, model in (("a", "GUME"), ("b", "VBPR")):
        runs = [fake_run("n" * 40, [fake_cell(model, 1.0, 0.1, 500.0, [1.0])]),
                fake_run("o" * 40, [fake_cell(model, 2.0, 0.2, 600.0, [1.0])])]
        (tmp_path / f"{name}.json").write_text(json.dumps({"command": f"cmd {name}", "note": "", "runs": runs}))
    out = tmp_path / "speed.md"
    speed.main(["--report", str(tmp_path / "a.json"), str(tmp_path / "b.json"), "--out", str(out)])
    text = out.read_text()
    assert text.count("## `") == 2 and "cmd a`; then `cmd b" in text
    assert "| tiktok | GUME | 1 | 0.50 |" in text and "| tiktok | VBPR | 1 | 0.50 |" in text


def test_report_rates_every_measured_checkout_against_the_shared_baseline(tmp_path):
    """Two files measured against one older commit (o) at different times: each file's own checkout
    gets its ratio table against o, and o is not rated against either."""
    files = []
    for name, commit, model in (("new", "n" * 40, "GUME"), ("earlier", "e" * 40, "VBPR")):
        runs = [fake_run(commit, [fake_cell(model, 1.0, 0.1, 500.0, [1.0])]),
                fake_run("o" * 40, [fake_cell(model, 4.0, 0.2, 600.0, [1.0])])]
        for run, against in zip(runs, (False, True)):
            run["against"] = against
        (tmp_path / f"{name}.json").write_text(json.dumps({"command": f"cmd {name}", "note": "", "runs": runs}))
        files.append(str(tmp_path / f"{name}.json"))
    out = tmp_path / "speed.md"
    speed.main(["--report", *files, "--out", str(out)])
    text = out.read_text()
    assert text.count("## Ratios") == 2
    assert f"## Ratios: {'n' * 12} / {'o' * 12}" in text and f"## Ratios: {'e' * 12} / {'o' * 12}" in text
    assert "| tiktok | GUME | 1 | 0.25 |" in text and "| tiktok | VBPR | 1 | 0.25 |" in text


def test_runs_of_one_commit_on_two_machines_stay_apart():
    a, b = fake_run("c" * 40, [fake_cell("GUME", 1, 1, 1, [1])]), fake_run("c" * 40, [fake_cell("VBPR", 1, 1, 1, [1])])
    b["machine"] = {**b["machine"], "cpu": "other"}
    assert len(speed.merge_runs([{**a, "against": False}, {**b, "against": False}])) == 2
    assert len(speed.merge_runs([{**a, "against": False}, {**a, "against": True}])) == 1


def test_loss_check_passes_rounding_and_fails_a_moved_loss_or_best_epoch():
    """--check: PASS within rtol and the same best epoch; FAIL otherwise; MMRec's cells are not checked."""
    def cell(model, losses, best):
        return {**fake_cell(model, 1.0, 0.1, 100.0, losses), "best_epoch": best}

    after = fake_run("aaa", [cell("VBPR", [2.0, 1.0], 1), cell("GUME", [2.0, 1.001], 1), cell("BM3", [3.0], 0)])
    before = {**fake_run("bbb", [cell("VBPR", [2.0, 1.000001], 1), cell("GUME", [2.0, 1.0], 1),
                                 cell("BM3", [3.0], 1)]), "against": True}
    mmrec = {**fake_run("MMRec", [cell("VBPR", [5.0, 4.0], 0)]), "against": True, "mmrec": True}
    lines, ok = speed.loss_check([after, before, mmrec], 1e-5)
    assert not ok and len(lines) == 3
    verdicts = {line.split()[2]: line.split()[0] for line in lines}
    assert verdicts == {"VBPR": "PASS", "GUME": "FAIL", "BM3": "FAIL"}
    lines, ok = speed.loss_check([after, before], 1e-2)
    assert [line.split()[0] for line in lines] == ["PASS", "PASS", "FAIL"]  # BM3's best epoch moved


def test_mmrec_models_are_ours_and_their_settings_our_tiktok_defaults():
    """Every model of the --mmrec table is one our registry runs, and each MMRec setting whose key our model also
    has holds our resolved TikTok value (model yaml + dataset_configs/tiktok.yaml overrides)."""
    from recbole.utils import get_model

    from recbole_mm.quick_start import make_config

    assert speed.MMREC_MODELS == list(speed.MMREC_SETTINGS) and len(speed.MMREC_MODELS) == len(
        set(speed.MMREC_MODELS))
    compared = 0
    for model in speed.MMREC_MODELS:
        assert get_model(model).__name__ == model
        config = make_config(model, "tiktok", config_dict={"state": "WARNING"})
        for key, value in speed.MMREC_SETTINGS[model].items():
            if key in config:
                assert config[key] == pytest.approx(value), (model, key)
                compared += 1
    assert compared >= 25  # every table entry but BPR's reg_weight and MMRec-only keys (SLMRec's reg, SMORE's k)


@needs_mmrec
def test_mmrec_table_covers_every_model_mmrec_has_and_pins_its_grids():
    """MMREC_MODELS are exactly the models of ours (recbole_mm's and RecBole's general ones) that MMRec's
    src/models has a file for; each table entry names keys of MMRec's model yaml and leaves no grid key with
    several values (MMRec would train every grid point); and the grid values MMRec then runs are ours where our
    model has the key."""
    import inspect

    import recbole.model.general_recommender as recbole_general
    from recbole.model.abstract_recommender import GeneralRecommender

    from recbole_mm import registry
    from recbole_mm.quick_start import make_config

    ours = set(registry.PLUGIN_MODELS) | {name for name, cls in vars(recbole_general).items()
                                          if inspect.isclass(cls) and issubclass(cls, GeneralRecommender)}
    files = {path.stem for path in (MMREC_SRC / "models").glob("*.py")}
    assert set(speed.MMREC_MODELS) == {name for name in ours if name.lower() in files}
    reference = speed._load_reference()
    for model in speed.MMREC_MODELS:
        mmrec_yaml = yaml.safe_load((MMREC_SRC / "configs" / "model" / f"{model}.yaml").read_text())
        settings = speed.MMREC_SETTINGS[model]
        assert set(settings) <= set(mmrec_yaml), (model, set(settings) - set(mmrec_yaml))
        assert reference.open_grid_keys(mmrec_yaml, settings) == [], model
        config = make_config(model, "tiktok", config_dict={"state": "WARNING"})
        for key in mmrec_yaml.get("hyper_parameters", []):
            value = settings.get(key, mmrec_yaml[key])
            value = value[0] if isinstance(value, list) else value
            if key in config:
                assert _same_setting(config[key], value), (model, key, config[key], value)


def _same_setting(ours, theirs) -> bool:
    """Equal settings; MMRec's yaml loader reads ``1e-04`` as a number, PyYAML's as a string."""
    if isinstance(ours, (int, float)) and isinstance(theirs, str):
        theirs = float(theirs)
    return ours == pytest.approx(theirs) if isinstance(ours, (int, float)) else ours == theirs


def test_grid_point_pins_grid_keys_and_refuses_an_open_grid(tmp_path):
    reference = speed._load_reference()
    (tmp_path / "configs" / "model").mkdir(parents=True)
    (tmp_path / "configs" / "model" / "M.yaml").write_text(
        "a: [1, 2]\nb: [3]\nc: 5\nhyper_parameters: [a, b]\n")
    config = reference.grid_point(tmp_path, "M", {"a": 2, "epochs": 1})
    assert config["a"] == [2] and config["epochs"] == 1 and config["seed"] == [999] and "b" not in config
    assert reference.open_grid_keys({"a": [1, 2], "b": [3], "hyper_parameters": ["a", "b"]}, {}) == ["a"]
    with pytest.raises(SystemExit, match="grid keys a hold several values"):
        reference.grid_point(tmp_path, "M", {"epochs": 1})


def test_models_mmrec_names_every_mmrec_model():
    args = speed.argparse.Namespace(models=["GUME", "mmrec", "VBPR"], datasets=["tiktok"], threads=["1"], epochs=1)
    models = [cell["model"] for cell in speed.plan_cells(args, Path("unused"))]
    assert models == ["GUME", *speed.MMREC_MODELS]


def test_report_has_one_ours_over_mmrec_row_per_model_in_mmrec_order():
    def cell(model, cpu, evals, rss, losses, best):
        return {**fake_cell(model, 2 * cpu, 2 * evals, rss, losses), "best_epoch": best}

    ours = {**fake_run("a" * 40, [cell("MGCN", 5.0, 0.4, 800.0, [21.0, 20.0], 1), cell("GUME", 1, 1, 1, [1], 0),
                                  cell("BPR", 1.0, 0.2, 700.0, [20.0], 0), cell("GRCN", 2.0, 0.3, 750.0, [3.0], 0)]),
            "against": False}
    mmrec = {**fake_run("MMRec", [cell("GRCN", 4.0, 0.6, 600.0, [3.3], 0), cell("MGCN", 10.0, 1.6, 640.0,
                                                                               [20.0, 19.0], 0),
                                  {**fake_cell("BPR", 1, 1, 1, [1]), "failed": "RuntimeError: x"}]),
             "against": True, "mmrec": True}
    text = speed.format_report([ours, mmrec], "cmd")
    assert "## Ratios" not in text  # MMRec's cells are not in the checkout ratio tables
    assert f"## Ours ({'a' * 12}) / MMRec's own implementation" in text
    rows = [line for line in text.splitlines() if line.startswith("| BPR") or line.startswith("| MGCN")
            or line.startswith("| GRCN")]
    assert rows == [
        "| BPR | 1 | MMRec failed: RuntimeError: x | | | | | | | | | | |",
        "| MGCN | 1 | 5.00 | 10.00 | 0.50 | 0.400 | 1.600 | 0.25 | 800 | 640 | 1.25 | 5.0e-02 | 1 / 0 |",
        "| GRCN | 1 | 2.00 | 4.00 | 0.50 | 0.300 | 0.600 | 0.50 | 750 | 600 | 1.25 | 9.1e-02 | 0 / 0 |",
    ]

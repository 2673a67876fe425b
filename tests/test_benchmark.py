"""The benchmark: selection on validation, resumability, failed runs reported, real end to end."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import yaml

import pytest

from recbole_mm.benchmark import cells as bench_cells
from recbole_mm.benchmark import plan as bench_plan
from recbole_mm.benchmark import report as bench_report
from recbole_mm.benchmark import runner as bench_runner

from conftest import planted_config, write_planted_dataset


def fake_cell(valid: float, test: float) -> dict:
    history = [{"epoch": 0, "train_loss": 1.0, "train_seconds": 0.5, "valid_score": valid, "valid_seconds": 0.1}]
    return {"valid": {"recall@20": valid}, "test": {"recall@20": test, "ndcg@20": test / 2},
            "best_valid_score": valid, "best_epoch": 0, "epochs": 1, "train_seconds": 0.5, "eval_seconds": 0.1,
            "peak_memory_mb": {"rss": 100.0}, "parameters": 10, "history": history, "checkpoint": None,
            "config": {}, "code": {"files": {}}}


def test_grid_is_chosen_on_validation_and_cells_are_resumable(tmp_path, monkeypatch):
    calls = []

    def fake_run(model, dataset, config, workdir, threads=None):
        calls.append((model, config["reg_weight"], config["seed"]))
        # reg 0.1 is best on validation, reg 0.0 would be best on test: validation must win.
        return fake_cell(valid=0.3 if config["reg_weight"] == 0.1 else 0.2,
                         test=0.1 if config["reg_weight"] == 0.1 else 0.5)

    monkeypatch.setattr(bench_runner, "_run_in_subprocess", fake_run)
    plan = {"datasets": ["d"], "seeds": [1, 2, 3], "runs": {"M": {"model": "M", "grid": {"reg_weight": [0.0, 0.1]}}}}
    chosen = bench_runner.Runner(tmp_path, tmp_path).run_plans([plan])["d"]
    assert chosen["M"]["point"] == {"reg_weight": 0.1}
    assert calls == [("M", 0.0, 1), ("M", 0.1, 1), ("M", 0.1, 2), ("M", 0.1, 3)]
    bench_runner.Runner(tmp_path, tmp_path).run_plans([plan])["d"]
    assert len(calls) == 4  # a rerun skips finished cells

    def failing_run(model, dataset, config, workdir, threads=None):
        calls.append((model, config["reg_weight"], config["seed"]))
        return {"failed": "RuntimeError: out of memory"}

    monkeypatch.setattr(bench_runner, "_run_in_subprocess", failing_run)
    plan["seeds"] = [1, 2, 3, 4]
    chosen = bench_runner.Runner(tmp_path, tmp_path).run_plans([plan])["d"]
    assert calls[4:] == [("M", 0.1, 4)] and chosen["M"]["cells"][3] == {"failed": "RuntimeError: out of memory"}
    monkeypatch.setattr(bench_runner, "_run_in_subprocess", fake_run)
    chosen = bench_runner.Runner(tmp_path, tmp_path).run_plans([plan])["d"]
    assert calls[5:] == [("M", 0.1, 4)] and "failed" not in chosen["M"]["cells"][3]  # a failed cell is retried


def test_table_writer_reports_failed_runs_and_mean_std(tmp_path):
    chosen = {
        "good": {"model": "A", "grid": None, "point": {}, "cells": [fake_cell(0.2, 0.1), fake_cell(0.2, 0.3)]},
        "broken": {"model": "B", "grid": None, "point": {}, "cells": [{"failed": "DataError: x.npy missing"}] * 2},
    }
    chosen["single"] = {"model": "A", "grid": None, "point": {}, "seeds": [1], "cells": [fake_cell(0.2, 0.1)]}
    md, csv_path = bench_report.write_tables("d", chosen, [1, 2], tmp_path, [])
    text = md.read_text()
    assert "| good | " in text and "0.2000 ± 0.1414" in text  # recall@20 mean ± sample std of 0.1, 0.3
    assert "| single | - | 0.1000 | - | 0.0500 |" in text  # one seed: its value, no "± 0"
    assert "| broken | failed: DataError: x.npy missing |" in text
    rows = list(csv.reader(open(csv_path)))
    assert rows[2][:2] == ["broken", "failed: DataError: x.npy missing"]


def test_header_says_what_the_test_metrics_rank():
    def entry(**config):
        return {"model": "A", "grid": None, "point": {}, "cells": [{**fake_cell(0.2, 0.1), "config": config}]}

    assert bench_report.ranking_scope({"w": entry()}) == "full ranking over all items"
    cold = bench_report.ranking_scope({"c": entry(cold_start_items=0.2)})
    assert cold.startswith("cold start") and "among themselves" in cold
    assert "among all items" in bench_report.ranking_scope({"c": entry(cold_start_items=0.2, cold_start_candidates="all")})
    mixed = bench_report.ranking_scope({"w": entry(), "c": entry(cold_start_items=0.2)})
    assert mixed.startswith("full ranking over all items, and for the cold-start runs the held-out items")


@pytest.mark.slow
def test_benchmark_end_to_end_on_a_generated_set(tmp_path):
    root = tmp_path / "data"
    write_planted_dataset(root)
    config = {k: v for k, v in planted_config(root).items() if k not in ("seed",)}
    plan = {"datasets": ["planted"], "seeds": [1, 2], "config": {**config, "epochs": 2, "topk": [10, 20]},
            "runs": {"BPR": {"model": "BPR"}, "VBPR small": {"model": "VBPR", "embedding_size": 8}}}
    (tmp_path / "plan.yaml").write_text(yaml.safe_dump(plan))
    out = subprocess.run([sys.executable, "-m", "recbole_mm.benchmark", "--plan", str(tmp_path / "plan.yaml"),
                          "--out", str(tmp_path / "results"), "--longtail"],
                         capture_output=True, text=True, cwd=tmp_path, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    md = (tmp_path / "results" / "planted.md").read_text()
    assert "| BPR | " in md and " ± " in md and "| VBPR small | " in md
    for image in ("planted-curves.png", "planted-longtail.png"):
        assert (tmp_path / "results" / image).read_bytes()[:4] == b"\x89PNG" and image in md
    cells = json.loads((tmp_path / "results" / "planted.cells.json").read_text())
    assert len(cells) == 4
    # RecBole's log folders of the cells are under --out, not in the working directory.
    # (four cells, and the two checkpoints that --longtail loads)
    assert len(list((tmp_path / "results" / "log").glob("*/*.log"))) == 4 + 2
    assert (tmp_path / "results" / "log_tensorboard").is_dir() and not (tmp_path / "log").exists()
    finished = [c for c in cells.values() if "failed" not in c]
    assert {c["config"]["seed"] for c in finished} == {1, 2} and all(c["code"]["hash"] for c in finished)
    # Each cell names the source files it ran: VBPR's cells its model file, BPR's (RecBole's) no plugin model.
    vbpr = next(c for c in finished if c["config"]["model"] == "VBPR")["code"]["files"]
    bpr = next(c for c in finished if c["config"]["model"] == "BPR")["code"]["files"]
    assert "recbole_mm/model/general_recommender/vbpr.py" in vbpr and "recbole_mm/trainer.py" in vbpr
    assert not any(name.startswith("recbole_mm/model/general_recommender/") and not name.endswith("__init__.py")
                   for name in bpr) and "recbole_mm/trainer.py" in bpr
    assert all(bench_cells.is_current(c) for c in finished)
    # Readable and portable: per run only what differs from the defaults, no absolute path anywhere.
    assert str(tmp_path) not in md and str(tmp_path) not in (tmp_path / "results" / "planted.configs.json").read_text()
    assert '"embedding_size": 8' in md and "ran now" in md
    configs = json.loads((tmp_path / "results" / "planted.configs.json").read_text())
    assert configs["VBPR small"]["1"]["embedding_size"] == 8 and configs["BPR"]["2"]["seed"] == 2
    # The charted cells keep their long-tail groups, so that a committed cache redraws the chart on a machine
    # without the checkpoints.
    charted = [c for c in cells.values() if c.get("longtail")]
    assert sorted(c["config"]["seed"] for c in charted) == [1, 1]
    for c in charted:
        Path(c["checkpoint"] if Path(c["checkpoint"]).is_absolute() else tmp_path / c["checkpoint"]).unlink()
    (tmp_path / "results" / "planted-longtail.png").unlink()
    again = subprocess.run([sys.executable, "-m", "recbole_mm.benchmark", "--plan", str(tmp_path / "plan.yaml"),
                            "--out", str(tmp_path / "results"), "--longtail", "--report-only"],
                           capture_output=True, text=True, cwd=tmp_path, timeout=900)
    assert again.returncode == 0 and "left out" not in again.stdout, again.stderr[-3000:]
    assert (tmp_path / "results" / "planted-longtail.png").read_bytes()[:4] == b"\x89PNG"


def test_parallel_jobs_run_every_cell_once_with_their_share_of_threads(tmp_path, monkeypatch):
    import threading
    import time

    import pytest

    calls, running, peak = [], [0], [0]
    lock = threading.Lock()

    def fake_run(model, dataset, config, workdir, threads=None):
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
            calls.append((dataset, model, config.get("fusion"), config["seed"], threads))
        started = time.time()
        time.sleep(0.05)
        with lock:
            running[0] -= 1
        return {**fake_cell(valid=0.3 if config.get("fusion") == "concat" else 0.2, test=0.1),
                "started": started, "finished": time.time(), "threads": threads}

    monkeypatch.setattr(bench_runner, "_run_in_subprocess", fake_run)
    monkeypatch.setattr(bench_runner.os, "cpu_count", lambda: 4)
    plans = [{"datasets": ["a"], "seeds": [1, 2, 3],
              "runs": {"M": {"model": "M", "grid": [{"fusion": "mean"}, {"fusion": "concat"}]},
                       "M ablation": {"model": "M", "seeds": [1]}}},
             {"datasets": ["b"], "seeds": [1, 2, 3], "runs": {"N": {"model": "N"}}}]
    chosen = bench_runner.Runner(tmp_path, tmp_path, jobs=2).run_plans(plans)
    assert peak[0] == 2 and {c[4] for c in calls} == {2}  # two at a time, 4 cores / 2 jobs threads each
    assert len(calls) == 2 + 2 + 1 + 3 and len(set(calls)) == len(calls)
    assert chosen["a"]["M"]["point"] == {"fusion": "concat"} and chosen["a"]["M"]["seeds"] == [1, 2, 3]
    assert chosen["a"]["M ablation"]["seeds"] == [1] and len(chosen["a"]["M ablation"]["cells"]) == 1
    assert list(chosen) == ["a", "b"] and list(chosen["a"]) == ["M", "M ablation"]
    # Single-seed extras wait until every full-seed cell has started.
    assert calls[-1][1:4] == ("M", None, 1)
    md, _ = bench_report.write_tables("a", chosen["a"], [1, 2, 3], tmp_path, [], "python -m recbole_mm.benchmark X")
    text = md.read_text()
    assert "Generated by `python -m recbole_mm.benchmark X`" in text and "Wall time: " in text
    all_cells = chosen["a"]["M"]["cells"] + chosen["a"]["M"]["grid_cells"] + chosen["a"]["M ablation"]["cells"]
    assert len(all_cells) == 5  # the unchosen grid point's time counts in the wall time
    assert bench_report.wall_time(chosen["a"])[1] == pytest.approx(sum(c["finished"] - c["started"] for c in all_cells))
    assert "grid [{'fusion': 'mean'}, {'fusion': 'concat'}] → {'fusion': 'concat'}: best valid" in text


def test_slots_start_waiting_cells_in_priority_order():
    import threading

    slots, order = bench_runner.Slots(1), []
    gate = threading.Event()

    def holder(ticket):
        with slots.hold(ticket):
            gate.wait()

    def waiter(ticket, priority):
        with slots.hold(ticket):
            order.append(priority)

    first = threading.Thread(target=holder, args=(slots.enqueue((0,)),))
    first.start()
    while slots.free:
        pass
    waiters = [threading.Thread(target=waiter, args=(slots.enqueue(p), p)) for p in [(2,), (1,), (3,)]]
    for t in waiters:
        t.start()
    gate.set()
    for t in [first, *waiters]:
        t.join()
    assert order == [(1,), (2,), (3,)]


def test_plan_errors_name_the_file_and_the_fix(tmp_path):
    import argparse

    import pytest

    from recbole_mm.errors import RecBoleMMError

    args = argparse.Namespace(datasets=None, seeds=None, models=None, epochs=None)
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"datasets": ["d"], "runs": {"A": {"model": "BPR"}}, "longtail": ["B"]}))
    with pytest.raises(RecBoleMMError, match=r"bad.yaml: longtail names \['B'\]"):
        bench_plan.load_plan(args, str(bad))
    bad.write_text(yaml.safe_dump({"datasets": ["d"], "runs": {"A": {"lr": 1}}}))
    with pytest.raises(RecBoleMMError, match="run 'A' needs a model"):
        bench_plan.load_plan(args, str(bad))
    with pytest.raises(RecBoleMMError, match="missing.yaml"):
        bench_plan.load_plan(args, str(tmp_path / "missing.yaml"))


def test_extras_fill_a_free_worker_while_the_last_full_seed_run_is_still_running(tmp_path, monkeypatch):
    import time

    spans = {}

    def fake_run(model, dataset, config, workdir, threads=None):
        started = time.time()
        time.sleep(0.6 if model == "Long" else 0.05)
        spans[(model, config["seed"])] = (started, time.time())
        return fake_cell(valid=0.2, test=0.1)

    monkeypatch.setattr(bench_runner, "_run_in_subprocess", fake_run)
    plan = {"datasets": ["d"], "seeds": [1, 2],
            "runs": {"Long": {"model": "Long", "seeds": [1, 2]}, "Extra": {"model": "Extra", "seeds": [1]}}}
    bench_runner.Runner(tmp_path, tmp_path, jobs=3).run_plans([plan])
    # Both Long cells are queued at once, so the third worker takes the extra without waiting for them.
    assert spans[("Extra", 1)][0] < min(spans[("Long", 1)][1], spans[("Long", 2)][1])


def test_cache_is_keyed_by_resolved_config_and_code(tmp_path, monkeypatch):
    calls = []

    def fake_run(model, dataset, config, workdir, threads=None):
        calls.append(config["seed"])
        return {**fake_cell(valid=0.2, test=0.1), "code": bench_cells.code_version()}

    resolved = {"learning_rate": 0.001}
    monkeypatch.setattr(bench_runner, "_run_in_subprocess", fake_run)
    monkeypatch.setattr(bench_cells, "resolve_config", lambda model, dataset, config: {**resolved, **config})
    monkeypatch.setattr(bench_cells, "code_version", lambda: {"hash": "aaaa", "commit": "c1"})
    plan = {"datasets": ["d"], "seeds": [1], "runs": {"M": {"model": "M"}}}
    bench_runner.Runner(tmp_path, tmp_path).run_plans([plan])["d"]
    bench_runner.Runner(tmp_path, tmp_path).run_plans([plan])["d"]
    assert calls == [1]  # same config, same code: from the cache
    runner = bench_runner.Runner(tmp_path, tmp_path)
    chosen = runner.run_plans([plan])["d"]
    assert calls == [1] and chosen["M"]["cells"][0]["from_cache"]
    md, _ = bench_report.write_tables("d", chosen, [1], tmp_path, [])
    assert "1 at commit c1 (package hash aaaa; 0 ran in this invocation, 1 from the cache)" in md.read_text()
    resolved["learning_rate"] = 0.01  # e.g. the dataset's yaml changed: the resolved config differs
    bench_runner.Runner(tmp_path, tmp_path).run_plans([plan])["d"]
    assert calls == [1, 1]
    monkeypatch.setattr(bench_cells, "code_version", lambda: {"hash": "bbbb", "commit": "c2"})
    chosen = bench_runner.Runner(tmp_path, tmp_path).run_plans([plan])["d"]
    assert calls == [1, 1, 1] and not chosen["M"]["cells"][0]["from_cache"]  # the code changed: runs again


def test_a_cell_is_run_again_only_when_a_file_it_ran_changes(tmp_path, monkeypatch):
    calls, digests = [], {"recbole_mm/model/general_recommender/m.py": "ast:a1", "recbole_mm/trainer.py": "ast:t1"}

    def fake_run(model, dataset, config, workdir, threads=None):
        calls.append(model)
        return {**fake_cell(valid=0.2, test=0.1), "code": {"hash": "h", "commit": "c", "files": dict(digests)}}

    monkeypatch.setattr(bench_runner, "_run_in_subprocess", fake_run)
    monkeypatch.setattr(bench_cells, "resolve_config", lambda model, dataset, config: {"model": model, **config})
    monkeypatch.setattr(bench_cells, "_current_digest", lambda path: digests.get(
        str(path.relative_to(bench_cells.Path(bench_cells.__file__).resolve().parents[2]))))
    monkeypatch.setattr(bench_cells, "code_version", lambda: {"hash": "other", "commit": "other"})
    plan = {"datasets": ["d"], "seeds": [1], "runs": {"M": {"model": "M"}}}
    bench_runner.Runner(tmp_path, tmp_path).run_plans([plan])
    bench_runner.Runner(tmp_path, tmp_path).run_plans([plan])
    assert calls == ["M"]  # another file of the package changed (its hash differs): the cell stands
    digests["recbole_mm/model/general_recommender/m.py"] = "ast:a2"  # the cell's own model file changed
    chosen = bench_runner.Runner(tmp_path, tmp_path).run_plans([plan])["d"]
    assert calls == ["M", "M"] and not chosen["M"]["cells"][0]["from_cache"]
    del digests["recbole_mm/trainer.py"]  # a file it ran is gone
    bench_runner.Runner(tmp_path, tmp_path).run_plans([plan])
    assert len(calls) == 3


def test_files_ran_names_the_model_its_bases_and_shared_code_but_not_other_models():
    import recbole_mm  # noqa: F401 - RecBole's get_model then finds the plugin's models
    from recbole.utils import get_model

    get_model("GUME")
    files = bench_cells.files_ran("GUME")
    assert "recbole_mm/model/general_recommender/gume.py" in files
    assert "recbole_mm/model/abstract_recommender.py" in files and "recbole_mm/model/graphs.py" in files
    assert "recbole_mm/model/general_recommender/vbpr.py" not in files
    assert not any(name.startswith("recbole_mm/benchmark/") for name in files)  # the harness
    # A building block that only another model reaches (DiffMM's diffusion module) is not GUME's code.
    get_model("DiffMM")
    assert "recbole_mm/model/diffusion.py" not in files
    assert "recbole_mm/model/diffusion.py" in bench_cells.files_ran("DiffMM")
    assert all(d.startswith("ast:") and len(d) == 20 for d in files.values())
    assert bench_cells.is_current({"code": {"files": files}})
    assert not bench_cells.is_current({"code": {"files": {**files, "recbole_mm/gone.py": "0" * 16}}})
    # A cell that recorded a harness file (cells before the harness was set apart did) is not held to it.
    assert bench_cells.is_current({"code": {"files": {**files, "recbole_mm/benchmark/report.py": "0" * 16}}})


def test_imports_inside_functions_and_relative_imports_are_found(tmp_path):
    import types

    source = tmp_path / "m.py"
    source.write_text("import os\ndef f():\n    from recbole_mm.model.graphs import knn_neighbours\n"
                      "    from .losses import bpr_loss\n    from .. import layers\n")
    module = types.ModuleType("recbole_mm.model.general_recommender.m")
    module.__file__ = str(source)
    found = bench_cells._imports_in(module)
    assert "recbole_mm.model.graphs" in found and "recbole_mm.model.general_recommender.losses" in found
    assert "recbole_mm.model.layers" in found and "os" in found


def test_code_digest_ignores_docstrings_comments_and_layout_but_not_code():
    base = bench_cells.code_digest(b'"""Module."""\nX = 1\n\ndef f(a):\n    """Doc."""\n    return a + X\n')
    same = bench_cells.code_digest(b'"""Module, now 2 s/epoch."""\nX = 1  # why\ndef f(a):\n    """Other doc."""\n'
                                   b'    # a comment\n    return (a +\n            X)\n')
    assert base == same
    assert bench_cells.code_digest(b'X = 1\ndef f(a):\n    return a - X\n') != base
    assert bench_cells.code_digest(b'X = 2\ndef f(a):\n    return a + X\n') != base
    # A docstring-only function keeps a body (pass), so it is not mistaken for another shape.
    assert bench_cells.code_digest(b'def f():\n    """Doc."""\n') == bench_cells.code_digest(b'def f():\n    pass\n')


def test_a_cell_recorded_by_file_sha256_is_compared_by_what_its_commit_s_file_does():
    import hashlib

    from conftest import REPO

    name = "recbole_mm/trainer.py"
    committed = subprocess.run(["git", "-C", str(REPO), "show", f"HEAD:{name}"], capture_output=True)
    if committed.returncode != 0:
        pytest.skip("not a git checkout")
    raw = hashlib.sha256(committed.stdout).hexdigest()[:16]
    same_code = (REPO / name).read_bytes() == committed.stdout or bench_cells.code_digest(
        committed.stdout) == bench_cells.code_digest((REPO / name).read_bytes())
    assert bench_cells.is_current({"code": {"commit": "HEAD", "files": {name: raw}}}) == same_code
    assert not bench_cells.is_current({"code": {"commit": "HEAD", "files": {name: "0" * 16}}})  # not that version
    assert not bench_cells.is_current({"code": {"commit": "HEAD+uncommitted changes", "files": {name: raw}}})


def test_code_version_hashes_the_package_and_its_yaml_files():
    version = bench_cells.code_version()
    assert len(version["hash"]) == 16 and int(version["hash"], 16) >= 0


def test_config_changes_show_only_what_differs_from_the_defaults():
    defaults = {"learning_rate": 0.001, "n_layers": 1, "seed": 2020}
    run = {"learning_rate": 0.001, "n_layers": 2, "seed": 999, "epochs": 5}
    assert bench_report.config_changes(run, defaults) == {"epochs": 5, "n_layers": 2}
    assert bench_cells.portable_config({"data_path": "/somewhere/else/tiktok", "show_progress": False, "a": 1}) == {
        "data_path": "<outside recbole_mm's dataset/>", "a": 1}


def test_report_only_runs_nothing_and_matches_cells_by_their_settings(tmp_path, monkeypatch):
    def fake_run(model, dataset, config, workdir, threads=None):
        cell = fake_cell(valid=0.2, test=0.3 if config.get("shuffle_features") else 0.1)
        cell["train_seconds"] = None  # e.g. Pop: nothing to train, the report must still be written
        return {**cell, "config": {"model": model, "dataset": dataset, **config}, "code": {"commit": "old"}}

    monkeypatch.setattr(bench_runner, "_run_in_subprocess", fake_run)
    monkeypatch.setattr(bench_cells, "resolve_config", lambda model, dataset, config: {"model": model, "dataset": dataset, **config})
    plan = {"datasets": ["d"], "seeds": [1], "runs": {"M": {"model": "M"}, "M shuffled": {"model": "M", "shuffle_features": True}}}
    bench_runner.Runner(tmp_path, tmp_path).run_plans([plan])["d"]
    monkeypatch.setattr(bench_runner, "_run_in_subprocess", lambda *a, **k: pytest.fail("report-only ran a cell"))
    monkeypatch.setattr(bench_cells, "code_version", lambda: {"hash": "new", "commit": "new"})  # other code now
    plan["runs"]["N"] = {"model": "N"}
    chosen = bench_runner.Runner(tmp_path, tmp_path, report_only=True).run_plans([plan])["d"]
    assert chosen["M"]["cells"][0]["test"]["recall@20"] == 0.1  # not its shuffled twin
    assert chosen["M shuffled"]["cells"][0]["test"]["recall@20"] == 0.3
    assert "not run yet" in chosen["N"]["cells"][0]["failed"]
    md, _ = bench_report.write_tables("d", chosen, [1], tmp_path, [])
    assert "at commit old" in md.read_text()


def test_a_report_from_a_partial_grid_says_which_points_ran(tmp_path, monkeypatch):
    def fake_run(model, dataset, config, workdir, threads=None):
        return {**fake_cell(valid=config["reg_weight"], test=0.1), "config": {"model": model, "dataset": dataset, **config}}

    monkeypatch.setattr(bench_runner, "_run_in_subprocess", fake_run)
    monkeypatch.setattr(bench_cells, "resolve_config", lambda model, dataset, config: {"model": model, "dataset": dataset, **config})
    plan = {"datasets": ["d"], "seeds": [1], "runs": {"M": {"model": "M", "grid": {"reg_weight": [0.1, 0.2]}}}}
    bench_runner.Runner(tmp_path, tmp_path).run_plans([plan])
    # The plan gains a grid point and a run whose points never ran; the report runs nothing.
    plan["runs"]["M"]["grid"]["reg_weight"].append(0.3)
    plan["runs"]["N"] = {"model": "N", "grid": {"reg_weight": [0.1, 0.2]}}
    monkeypatch.setattr(bench_runner, "_run_in_subprocess", lambda *a, **k: pytest.fail("report-only ran a cell"))
    chosen = bench_runner.Runner(tmp_path, tmp_path, report_only=True).run_plans([plan])["d"]
    assert chosen["M"]["point"] == {"reg_weight": 0.2}
    assert chosen["M"]["chosen_by"].endswith("among the 2 of 3 grid points that ran (1 not run or failed)")
    assert chosen["N"]["chosen_by"].startswith("none yet: no grid point of 2 has run")
    text = bench_report.write_tables("d", chosen, [1], tmp_path, [])[0].read_text()
    assert ("→ {'reg_weight': 0.2}: best valid score of seed 1 among the 2 of 3 grid points that ran "
            "(1 not run or failed)") in text
    assert "→ {'reg_weight': 0.1}: none yet: no grid point of 2 has run (the first is shown)" in text


def test_the_pairs_plan_runs_tiktok_plans_runs_key_for_key():
    """benchmarks/tiktok-pairs.yaml reports from tiktok.yaml's cached cells: its runs must be the same settings."""
    root = Path(__file__).resolve().parent.parent / "benchmarks"
    pairs = yaml.safe_load((root / "tiktok-pairs.yaml").read_text())
    full = yaml.safe_load((root / "tiktok.yaml").read_text())
    assert pairs["datasets"] == full["datasets"] and pairs["seeds"] == full["seeds"]
    for label, run in pairs["runs"].items():
        assert run == full["runs"][label], label
    assert pairs["reference"] in pairs["runs"]


KILLED_CELL = """
import json, os, signal, sys
import torch
torch.set_num_threads(1)
from recbole_mm import checkpoint
from recbole_mm.benchmark.cells import run_cell

config, kill_epoch = json.loads(sys.argv[1]), int(sys.argv[2])
real_save = torch.save

def save_then_die(state, f, *args, **kwargs):
    if isinstance(state, dict) and state.get("epoch") == kill_epoch and ".last.pth" in getattr(f, "name", str(f)):
        os.kill(os.getpid(), signal.SIGKILL)  # the session ends while the cell trains
    return real_save(state, f, *args, **kwargs)

checkpoint.torch.save = save_then_die
run_cell("BPR", "planted", config)
"""


def test_a_killed_cell_resumes_from_its_last_epoch_to_the_same_result(tmp_path, monkeypatch):
    """A benchmark cell killed part-way (the machine's session ended) continues from its last finished epoch in
    its checkpoint folder the next time it runs, and ends as the uninterrupted cell does."""
    import os
    import signal

    import torch

    from conftest import REPO

    monkeypatch.chdir(tmp_path)
    root = tmp_path / "data"
    write_planted_dataset(root)
    config = planted_config(root, epochs=6, stopping_step=10, learning_rate=0.01, train_batch_size=128)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the killed subprocess: the same arithmetic
    try:
        whole = bench_cells.run_cell("BPR", "planted", {**config, "checkpoint_dir": str(tmp_path / "whole")})
        cell_dir = tmp_path / "cell"
        assert bench_cells.interrupted_checkpoint(str(cell_dir)) is None  # a new cell starts afresh
        killed = subprocess.run([sys.executable, "-c", KILLED_CELL, json.dumps({**config, "checkpoint_dir": str(cell_dir)}),
                                 "3"], capture_output=True, text=True, cwd=tmp_path, timeout=600,
                                env={**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"})
        assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
        resume = bench_cells.interrupted_checkpoint(str(cell_dir))
        assert resume is not None and torch.load(resume, weights_only=True)["epoch"] == 2
        resumed = bench_cells.run_cell("BPR", "planted", {**config, "checkpoint_dir": str(cell_dir)})
    finally:
        torch.set_num_threads(threads)
    assert whole["resumed_from"] is None and resumed["resumed_from"] == resume
    assert resumed["test"] == whole["test"] and resumed["valid"] == whole["valid"]
    assert resumed["best_epoch"] == whole["best_epoch"] and resumed["epochs"] == whole["epochs"] == 6
    assert [h["train_loss"] for h in resumed["history"]] == [h["train_loss"] for h in whole["history"]]


def test_the_runner_gives_each_cell_its_own_checkpoint_folder(tmp_path, monkeypatch):
    """Cells run with checkpoint_dir <the plan's checkpoint_dir, default <workdir>/saved>/benchmark-<cell key>
    (where a killed one resumes); the key and the recorded config do not depend on it (a machine key)."""
    seen = []
    monkeypatch.setattr(bench_runner, "_run_in_subprocess",
                        lambda model, dataset, config, workdir, threads=None: seen.append((config, workdir))
                        or {"failed": "not run in this test"})
    root = tmp_path / "data"
    write_planted_dataset(root)
    plan = {"datasets": ["planted"], "seeds": [1], "runs": {"BPR": {"model": "BPR"}},
            "config": planted_config(root, epochs=1)}
    runner = bench_runner.Runner(tmp_path / "out", tmp_path, jobs=1)
    runner._run(tmp_path / "out" / "planted.cells.json", runner.slots.enqueue((0,)), "BPR", plan["runs"]["BPR"], {}, 1,
                plan, "planted")
    [(config, workdir)] = seen
    key = runner.key(plan, "planted", "BPR", {}, 1)
    assert config["checkpoint_dir"] == str(Path(plan["config"]["checkpoint_dir"]) / f"benchmark-{key}")
    assert "checkpoint_dir" in bench_cells.MACHINE_KEYS

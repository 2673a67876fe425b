"""Bad input is one ``recbole_mm: error:`` line and exit status 2, with nothing written.

Most cases call the command line's ``main`` in-process (as ``run_recbole_mm.py`` does, with
``sys.argv`` set) instead of a subprocess: the same code path, seconds instead of minutes.
"""

from __future__ import annotations

import ast
import contextlib
import io
import os
import sys
import tempfile
from pathlib import Path

import pytest
import torch
from conftest import REPO, planted_config, write_planted_dataset

from recbole_mm import cli
from recbole_mm.errors import RecBoleMMError, exit_on_user_error

TIKTOK = ("--dataset=tiktok",)


def run_main(monkeypatch, capsys, *args: str) -> str:
    """Run the CLI on ``args``; assert exit status 2 and one error line; return that line."""
    monkeypatch.setattr(sys, "argv", ["run_recbole_mm.py", *args])
    with pytest.raises(SystemExit) as exc:
        exit_on_user_error(cli.main)
    assert exc.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("recbole_mm: error:"), lines
    return lines[0]


def assert_nothing_written(folder: Path, before: set) -> None:
    assert set(folder.iterdir()) == before, "bad input must not write a log, checkpoint or partial file"


def test_errors_module_imports_nothing_of_ours():
    """errors.py is the bottom of the import graph (no cli -> quick_start -> checkpoint -> cli circle)."""
    tree = ast.parse((REPO / "recbole_mm" / "errors.py").read_text())
    imported = [n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
    imported += [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
    assert not [m for m in imported if m and m.startswith("recbole_mm")]
    assert cli.exit_on_user_error is exit_on_user_error  # still importable from the cli


CONFIG_CASES = [
    (("--model=GUME", "--learning_rate=abc"), ["learning_rate: 'abc'", "command line", "number > 0"]),
    (("--model=GUME", "--knn_k=0"), ["knn_k: 0", "integer >= 1"]),
    (("--model=GUME", "--knn_k=2.5"), ["knn_k: 2.5", "integer"]),
    (("--model=GUME", "--topk=[0]"), ["topk: [0]", "integer >= 1"]),
    (("--model=GUME", "--topk=abc"), ["topk: 'abc'"]),
    (("--model=GUME", "--valid_metric=Recall@50"), ["valid_metric: 'Recall@50'", "recall@20", "add 50 to topk"]),
    (("--model=GUME", "--valid_metric=Recall"), ["valid_metric: 'Recall'", "need @k"]),
    (("--model=GUME", "--metrics=Foo"), ["metrics: 'Foo'", "not a RecBole metric", "recall"]),
    (("--model=GUME", "--metrics=['Recall','AUC']"), ["metrics:", "not both"]),
    (("--model=GUME", "--epochs=2.5"), ["epochs: 2.5", "integer >= 1"]),
    (("--model=GUME", "--epochs=0"), ["epochs: 0"]),
    (("--model=GUME", "--embedding_size=0"), ["embedding_size: 0", "integer >= 1"]),
    (("--model=GUME", "--train_batch_size=-1"), ["train_batch_size: -1", "integer >= 1"]),
    (("--model=GUME", "--eval_batch_size=0"), ["eval_batch_size: 0"]),
    (("--model=GUME", "--stopping_step=0"), ["stopping_step: 0"]),
    (("--model=GUME", "--seed=abc"), ["seed: 'abc'"]),
    (("--model=GUME", "--weight_decay=-1"), ["weight_decay: -1"]),
    (("--model=GUME", "--learner=adamw"), ["learner: 'adamw'", "adam"]),
    (("--model=GUME", "--test_masking=foo"), ["test_masking: 'foo'", "train_valid, train"]),
    (("--model=GUME", "--negative_items=some"), ["negative_items: 'some'"]),
    (("--model=GUME", "--missing_feature=drop"), ["missing_feature: 'drop'", "error, mean, zero"]),
    (("--model=GUME", "--cold_start_items=1.5"), ["cold_start_items: 1.5"]),
    (("--model=GUME", "--learning_rate_scheduler=[0.9]"), ["learning_rate_scheduler: [0.9]", "2 values"]),
    (("--model=GUME", "--bm_temp=0"), ["bm_temp: 0", "> 0"]),
    (("--model=GUME", "--graph_enhancement=yes"), ["graph_enhancement: 'yes'", "True or False"]),
    (("--model=MMGEF", "--fusion=sum"), ["fusion: 'sum'", "mean, concat, late"]),
    (("--model=VBPR", "--feature_norm=max"), ["feature_norm: 'max'", "l2"]),
    (("--model=LightGCN", "--n_layers=x"), ["n_layers: 'x'", "number"]),  # a RecBole model's yaml types
    (("--model=GUME", "--epochs=3", "--epochs=4"), ["duplicate", "--epochs=4"]),
    (("--model=gume",), ["case-sensitive", "--model=GUME"]),
    (("--model=lightgcn",), ["case-sensitive", "--model=LightGCN"]),
    (("--model=NoSuchModel",), ["unknown model 'NoSuchModel'"]),
    (("--model=GUME", "--config_files=nothere.yaml"), ["nothere.yaml not found", "--config_files"]),
    (("--model=GUME", "--resume=nothere.pth"), ["nothere.pth does not exist"]),
    # RecBole evals every --key=value: these raised AttributeError / ZeroDivisionError tracebacks.
    (("--model=GUME", "--resume=list.pth"), ["list.pth does not exist"]),
    (("--model=GUME", "--learning_rate=1/0"), ["learning_rate: '1/0'", "number > 0"]),
    # Accepted before, failing later (after the log was written) or changing the run without a word.
    (("--model=GUME", "--clip_grad_norm=abc"), ["clip_grad_norm: 'abc'", "max_norm"]),
    (("--model=GUME", "--train_neg_sample_args={'sample_num':-1}"),
     ["train_neg_sample_args:", "sample_num an integer >= 1"]),
    (("--model=GUME", "--state=FOO"), ["state: 'FOO'", "WARNING"]),
    (("--model=GUME", "--shuffle_features=maybe"), ["shuffle_features: 'maybe'", "True or False"]),
    (("--model=GUME", "--knn_backend=annoy"), ["knn_backend: 'annoy'", "exact, faiss, auto"]),
    (("--model=GUME", "--cold_start_candidates=foo"), ["cold_start_candidates: 'foo'", "cold, all"]),
    (("--model=GUME", "--cold_start_valid_items=2"), ["cold_start_valid_items: 2", "< 1"]),
    (("--model=FREEDOM", "--mm_image_weight=2"), ["mm_image_weight: 2", "<= 1"]),
    (("--model=FREEDOM", "--dropout=1.5"), ["dropout: 1.5", "< 1"]),
    (("--model=BM3", "--dropout=-1"), ["dropout: -1", ">= 0"]),
    (("--model=LATTICE", "--cf_model=ngcf"), ["cf_model: 'ngcf'", "lightgcn, mf"]),
    (("--model=MGCN", "--cl_temp=0"), ["cl_temp: 0", "> 0"]),
    # Settings are data (tests/test_security.py): an expression is a string, never evaluated; RecBole's
    # pickled caches need trust_pickle; settings that failed late or changed the run without a word.
    (("--model=GUME", "--learning_rate=__import__('os').getcwd()"), ["learning_rate: \"__import__", "number > 0"]),
    (("--model=KD_DAGFM", "--teacher=__import__('os').getcwd()"), ["teacher:", "one of CrossNet, CIN"]),
    (("--model=VBPR", "--dataloaders_save_path=saved/x.pth"), ["dataloaders_save_path: 'saved/x.pth'", "trust_pickle"]),
    (("--model=VBPR", "--save_dataset=True"), ["save_dataset: True", "trust_pickle: True"]),
    (("--model=GUME", "--knn_kk=5", "--strict_config=True"), ["unknown setting 'knn_kk'", "did you mean 'knn_k'?"]),
    (("--model=VBPR", "--train_neg_sample_args=None"), ["train_neg_sample_args: None", "no negative items"]),
    (("--model=BPR", "--eval_args={'split':{'RS':[0.8,0.1,0.1]}}"), ["eval_args: split", "x_label column"]),
]


@pytest.mark.parametrize("args, expected", CONFIG_CASES, ids=[" ".join(a) for a, _ in CONFIG_CASES])
def test_bad_configuration_is_one_line(args, expected, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    line = run_main(monkeypatch, capsys, *args, *TIKTOK)
    for text in expected:
        assert text in line
    assert_nothing_written(tmp_path, set())


def test_config_file_errors_name_the_file(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    broken = tmp_path / "broken.yaml"
    broken.write_text("epochs: 3\nmetrics: [Recall, NDCG\n")
    line = run_main(monkeypatch, capsys, "--model=GUME", *TIKTOK, f"--config_files={broken}")
    assert str(broken) in line and "yaml syntax error" in line and "line" in line
    listed = tmp_path / "list.yaml"
    listed.write_text("- epochs\n- 3\n")
    line = run_main(monkeypatch, capsys, "--model=GUME", *TIKTOK, f"--config_files={listed}")
    assert str(listed) in line and "key: value" in line
    wrong = tmp_path / "wrong.yaml"
    wrong.write_text("epochs: 3\nknn_k: 0\n")
    line = run_main(monkeypatch, capsys, "--model=GUME", *TIKTOK, f"--config_files={wrong}")
    assert "knn_k: 0" in line and f"config file {wrong}" in line
    assert set(tmp_path.iterdir()) == {broken, listed, wrong}


def test_paths_that_cannot_work_are_one_line(tmp_path, monkeypatch, capsys):
    """A config file that is a folder, a checkpoint folder under a file (training failed only when it
    began, after the log was written), an empty dataset name, an interaction file that does not exist
    (was: 'is RecBole's atomic format')."""
    monkeypatch.chdir(tmp_path)
    folder = tmp_path / "configs"
    folder.mkdir()
    line = run_main(monkeypatch, capsys, "--model=GUME", *TIKTOK, f"--config_files={folder}")
    assert str(folder) in line and "is a folder" in line
    blocker = tmp_path / "afile"
    blocker.write_text("")
    line = run_main(monkeypatch, capsys, "--model=BPR", *TIKTOK, f"--checkpoint_dir={blocker}/saved")
    assert "checkpoint_dir:" in line and f"{blocker} is a file" in line
    line = run_main(monkeypatch, capsys, "--model=BPR", "--dataset=")
    assert "dataset: ''" in line
    line = run_main(monkeypatch, capsys, "--model=BPR", *TIKTOK, "--inter_file_name=nothere.inter")
    assert "nothere.inter: interaction file not found" in line
    assert set(tmp_path.iterdir()) == {folder, blocker}


def test_inter_file_name_with_an_atomic_file_is_one_line(tmp_path, monkeypatch, capsys):
    """RecBole's atomic reader opens <dataset>.inter whatever inter_file_name says: refused, not ignored."""
    monkeypatch.chdir(tmp_path)
    root = tmp_path / "data"
    folder = write_planted_dataset(root)
    (folder / "other.inter").write_text("user_id:token\titem_id:token\n1\t2\n")
    line = run_main(monkeypatch, capsys, *_planted_args(root, "--inter_file_name=other.inter"))
    assert "inter_file_name: 'other.inter' works for MMRec-layout files only" in line


def test_dataset_value_reports_its_dataset_config(tmp_path, monkeypatch, capsys):
    """A value from the dataset yaml is reported as such (here an overridden model default)."""
    from recbole_mm.config_files import where_set
    from recbole_mm.quick_start import make_config

    monkeypatch.setattr(sys, "argv", ["x"])
    config = make_config("GUME", "tiktok")
    assert where_set(config, "n_layers").startswith("set in dataset config")
    assert where_set(config, "um_noise_eps").startswith("default in")
    assert where_set(config, "eval_step") == "RecBole's default"


def test_where_set_reads_the_sources_the_merge_recorded(tmp_path, monkeypatch):
    """Provenance comes from the merge (later config files win), not from reading the yaml files again."""
    from recbole_mm import config_files
    from recbole_mm.config_files import where_set
    from recbole_mm.quick_start import make_config

    monkeypatch.setattr(sys, "argv", ["x"])
    first, second = tmp_path / "first.yaml", tmp_path / "second.yaml"
    first.write_text("n_layers: 3\nreg_weight: 0.001\n")
    second.write_text("n_layers: 2\n")
    config = make_config("GUME", "tiktok", [str(first), str(second)], {"epochs": 1})

    def no_reading(*args, **kwargs):
        raise AssertionError("where_set read a yaml file")

    monkeypatch.setattr(config_files, "load_yaml_text", no_reading)
    assert where_set(config, "n_layers") == f"set in config file {second}"
    assert where_set(config, "reg_weight") == f"set in config file {first}"
    assert where_set(config, "epochs") == "set in config_dict"
    assert where_set(config, "um_noise_eps").startswith("default in") and where_set(config, "um_noise_eps").endswith("GUME.yaml")
    assert where_set(config, "eval_step") == "RecBole's default"


def test_unknown_dataset_lists_the_existing_ones(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    line = run_main(monkeypatch, capsys, "--model=BPR", "--dataset=TikTok")
    assert "TikTok" in line and "tiktok" in line and "amazon-baby" in line and "case-sensitive" in line


def _planted_args(root: Path, *extra: str) -> tuple[str, ...]:
    return ("--model=BPR", "--dataset=planted", f"--data_path={root}", "--USER_ID_FIELD=userID",
            "--ITEM_ID_FIELD=itemID", "--epochs=1", "--show_progress=False", "--topk=[10]",
            "--valid_metric=Recall@10", *extra)


def test_bad_interaction_files(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    root = tmp_path / "data"
    folder = write_planted_dataset(root)
    inter = folder / "planted.inter"
    text = inter.read_text()
    before = set(tmp_path.iterdir())

    inter.unlink()  # missing: RecBole's bare "File ... not exist." before
    line = run_main(monkeypatch, capsys, *_planted_args(root))
    assert str(inter) in line and "interaction file not found" in line
    line = run_main(monkeypatch, capsys, *_planted_args(root, "--data_format=mmrec"))
    assert str(inter) in line and "interaction file not found" in line

    inter.write_text(text.replace("\t", ","))
    line = run_main(monkeypatch, capsys, *_planted_args(root))
    assert "not tab-separated" in line and "comma" in line

    inter.write_bytes(text.encode("utf-16"))
    line = run_main(monkeypatch, capsys, *_planted_args(root))
    assert str(inter) in line and "UTF-8" in line

    inter.unlink()
    inter.mkdir()
    line = run_main(monkeypatch, capsys, *_planted_args(root, "--data_format=mmrec"))
    assert "is a folder" in line
    assert_nothing_written(tmp_path, before)


def _train_bpr(root: Path) -> dict:
    from recbole_mm.quick_start import run_recbole

    return run_recbole("BPR", "planted", config_dict=planted_config(root, epochs=2), saved=False)["test_result"]


def test_windows_line_endings_and_bom_train_identically(tmp_path, monkeypatch):
    """A spreadsheet export (CRLF, UTF-8 BOM) trains, with the same numbers as the LF file."""
    monkeypatch.chdir(tmp_path)
    plain = tmp_path / "plain"
    write_planted_dataset(plain)
    expected = _train_bpr(plain)
    windows = tmp_path / "windows"
    inter = write_planted_dataset(windows) / "planted.inter"
    inter.write_bytes(b"\xef\xbb\xbf" + inter.read_text().replace("\n", "\r\n").encode())
    assert _train_bpr(windows) == expected


def test_atomic_file_with_bom_trains(tmp_path, monkeypatch):
    import pandas as pd

    from recbole_mm.quick_start import run_recbole

    monkeypatch.chdir(tmp_path)
    root = tmp_path / "data"
    inter = write_planted_dataset(root) / "planted.inter"
    table = pd.read_csv(inter, sep="\t")
    lines = ["user_id:token\titem_id:token\ttimestamp:float"]
    lines += [f"{u}\t{i}\t{k}" for k, (u, i) in enumerate(zip(table.userID, table.itemID))]
    inter.write_bytes(b"\xef\xbb\xbf" + ("\r\n".join(lines) + "\r\n").encode())
    config = planted_config(root)
    del config["USER_ID_FIELD"], config["ITEM_ID_FIELD"]
    result = run_recbole("BPR", "planted", config_dict=config, saved=False)
    assert result["test_result"]["recall@10"] >= 0
    # MMRec-split switches on an atomic file were ignored silently; now they are one line.
    for key, value in (("filter_cold_start_users", True), ("cold_start_items", 0.2)):
        with pytest.raises(RecBoleMMError, match=f"{key}: .* needs an MMRec-layout"):
            run_recbole("BPR", "planted", config_dict={**config, key: value}, saved=False)


def test_gpu_asked_without_cuda_warns_once_then_cpu(monkeypatch, capsys):
    if torch.cuda.is_available():
        pytest.skip("the machine has a GPU")
    from recbole_mm.quick_start import make_config

    for arg in ("--device=cuda", "--gpu_id=1"):
        monkeypatch.setattr(sys, "argv", ["x", arg])
        config = make_config("GUME", "tiktok")
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("recbole_mm: warning:") and arg[2:] in lines[0]
        assert config["device"].type == "cpu" and config["use_gpu"] is False


def test_knn_k_above_the_catalogue_warns(planted, capsys):
    from recbole_mm.quick_start import run_recbole

    root, config = planted
    run_recbole("GUME", "planted", config_dict={**config, "knn_k": 500}, saved=False)
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("recbole_mm: warning:")]
    assert len(warnings) == 1 and "knn_k=500" in warnings[0] and "60 items" in warnings[0]


# ---- damaged checkpoints -----------------------------------------------------------------------
@pytest.fixture
def bad_checkpoints(tmp_path) -> dict[str, Path]:
    good = tmp_path / "good.pth"
    torch.save({"state_dict": {"w": torch.ones(64)}, "config": {"model": "BPR"}}, good)
    data = good.read_bytes()
    files = {"truncated": data[: len(data) // 2], "garbage": b"this is not a checkpoint\n", "empty": b""}
    paths = {}
    for name, content in files.items():
        paths[name] = tmp_path / f"{name}.pth"
        paths[name].write_bytes(content)
    paths["not a checkpoint dict"] = tmp_path / "list.pth"
    torch.save([1, 2, 3], paths["not a checkpoint dict"])
    paths["missing"] = tmp_path / "missing.pth"
    return paths


def test_damaged_checkpoints_are_one_line(bad_checkpoints, tmp_path, monkeypatch, capsys):
    from recbole_mm import analysis, checkpoint
    from recbole_mm.quick_start import load_data_and_model

    monkeypatch.chdir(tmp_path)
    for name, path in bad_checkpoints.items():
        with pytest.raises(RecBoleMMError) as exc:
            load_data_and_model(str(path))
        assert str(path) in str(exc.value) and "\n" not in str(exc.value), name
        for entry in (lambda: checkpoint.main([str(path), str(tmp_path / "out.pth")]),
                      lambda: analysis.main(["longtail", str(path), "--out", str(tmp_path / "lt")])):
            with pytest.raises(SystemExit) as stop:
                exit_on_user_error(entry)
            assert stop.value.code == 2
            lines = capsys.readouterr().err.strip().splitlines()
            assert len(lines) == 1 and str(path) in lines[0], (name, lines)
    assert not (tmp_path / "out.pth").exists() and not list(tmp_path.glob("lt*")) and not (tmp_path / "log").exists()


# ---- the docs' bad-input table: generated from CONFIG_CASES, so it cannot drift -----------------
TABLE_PAGE = REPO / "docs" / "checkpoints.md"
TABLE_BEGIN = "<!-- bad-input table: written by `python tests/test_errors.py`; test_bad_input_table checks it -->"
TABLE_END = "<!-- end of bad-input table -->"


def observed_line(args: tuple[str, ...], cwd: Path) -> str:
    """What the user sees on stderr for ``run_recbole_mm.py ARGS`` run in ``cwd`` (paths shortened)."""
    err, argv, here = io.StringIO(), sys.argv, os.getcwd()
    sys.argv = ["run_recbole_mm.py", *args]
    os.chdir(cwd)
    try:
        with contextlib.redirect_stderr(err), pytest.raises(SystemExit):
            exit_on_user_error(cli.main)
    finally:
        sys.argv = argv
        os.chdir(here)
    return err.getvalue().strip().replace(str(cwd), ".").replace(str(REPO), "<checkout>")


def bad_input_table() -> str:
    with tempfile.TemporaryDirectory() as tmp:
        rows = [(" ".join([*args, *TIKTOK]), observed_line((*args, *TIKTOK), Path(tmp))) for args, _ in CONFIG_CASES]
    lines = ["| `run_recbole_mm.py` arguments | what you see (exit status 2, nothing written) |", "|---|---|"]
    lines += [f"| `{cmd}` | {msg.replace('|', chr(92) + '|')} |" for cmd, msg in rows]
    return "\n".join(lines)


def _page_table() -> str:
    text = TABLE_PAGE.read_text()
    return text[text.index(TABLE_BEGIN) + len(TABLE_BEGIN):text.index(TABLE_END)].strip()


def test_bad_input_table():
    assert _page_table() == bad_input_table(), f"{TABLE_PAGE}'s bad-input table is stale: run python tests/test_errors.py"


if __name__ == "__main__":  # rewrite the page's table from what the cases print today
    text = TABLE_PAGE.read_text()
    start, end = text.index(TABLE_BEGIN) + len(TABLE_BEGIN), text.index(TABLE_END)
    TABLE_PAGE.write_text(text[:start] + "\n" + bad_input_table() + "\n" + text[end:])
    print(f"wrote the bad-input table into {TABLE_PAGE}")


# ---- silent differences ------------------------------------------------------------------------
def test_recbole_run_recbole_finds_our_trainer_and_refuses_ignored_switches(planted):
    """RecBole's own run_recbole looks up <Model>Trainer: for plugin models it gets recbole_mm's Trainer
    (learning-rate schedule, history, resume), and protocol switches its data_preparation would ignore
    stop the run with one line instead of changing the result silently."""
    from recbole.quick_start import run_recbole as recbole_run
    from recbole.utils import ModelType, get_trainer

    from recbole_mm.trainer import Trainer

    assert get_trainer(ModelType.GENERAL, "GUME") is Trainer
    root, config = planted
    with pytest.raises(RecBoleMMError, match="test_masking: train would be ignored"):
        recbole_run(model="VBPR", dataset="planted", config_dict={**config, "test_masking": "train"})
    result = recbole_run(model="VBPR", dataset="planted", config_dict=config)
    assert result["test_result"]["recall@10"] >= 0


def test_wall_time_includes_start_up():
    from recbole_mm.cli import format_results, process_seconds

    assert process_seconds() > 0
    result = {"best_valid_result": {"recall@10": 0.5}, "test_result": {"recall@10": 0.4}, "history": [],
              "wall_seconds": 8.0, "process_seconds": 16.8, "best_epoch": 0}
    assert "wall time 16.8 s (8.8 s start-up)" in format_results(result)  # the process, not run_recbole
    del result["process_seconds"]
    assert "wall time 8.0 s (start-up not included)" in format_results(result)


def test_item_content_files_for_feature_extraction(tmp_path):
    from recbole_mm import features

    comma = tmp_path / "items.tsv"
    comma.write_text("itemID,text\n0,hello\n")
    with pytest.raises(RecBoleMMError, match="not tab-separated .* comma-separated"):
        features.read_items(str(comma))
    spreadsheet = tmp_path / "excel.tsv"
    spreadsheet.write_bytes(b"\xef\xbb\xbfitemID\ttext\r\n0\thello\r\n1\tworld\r\n")
    assert list(features.read_items(str(spreadsheet)).ids) == [0, 1]
    with pytest.raises(RecBoleMMError, match="item file not found"):
        features.read_items(str(tmp_path / "nothere.tsv"))


def test_benchmark_plan_errors_name_the_file(tmp_path, monkeypatch, capsys):
    from recbole_mm.benchmark import command as bench_command

    monkeypatch.chdir(tmp_path)
    broken = tmp_path / "plan.yaml"
    broken.write_text("runs: [\n")
    for plan in (tmp_path / "nothere.yaml", broken):
        with pytest.raises(SystemExit) as stop:
            exit_on_user_error(lambda: bench_command.main(["--plan", str(plan), "--out", str(tmp_path / "out")]))
        assert stop.value.code == 2
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and str(plan) in lines[0]
    assert not (tmp_path / "out").exists()


def test_damaged_feature_files_are_one_line(tmp_path):
    import numpy as np

    from recbole_mm.data.files import open_feature_file

    good = tmp_path / "good.npy"
    np.save(good, np.ones((5, 3), dtype=np.float32))
    data = good.read_bytes()
    for name, content in (("truncated", data[:-10]), ("empty", b""), ("text", b"1 2 3\n")):
        path = tmp_path / f"{name}.npy"
        path.write_bytes(content)
        with pytest.raises(RecBoleMMError, match="not a readable .npy array"):
            open_feature_file(str(path), "image", 5)


def test_dataset_arguments_are_declared_not_accumulated(monkeypatch):
    """recbole_mm's dataset keys take part in RecBole's saved-dataset/dataloader reuse check, and building
    configs no longer grows RecBole's global argument list with every dataset yaml's keys."""
    from recbole.utils.argument_list import dataset_arguments

    from recbole_mm.quick_start import make_config

    monkeypatch.setattr(sys, "argv", ["x"])
    before = list(dataset_arguments)
    for dataset in ("tiktok", "amazon-baby"):
        config = make_config("BPR", dataset)
    assert dataset_arguments == before
    assert {"cold_start_items", "cold_start_seed", "filter_cold_start_users"} <= set(dataset_arguments)
    assert "modalities" in config.parameters["Dataset"] and config.parameters["Dataset"] is not dataset_arguments


def test_config_dump_shows_the_split_and_device_used(planted):
    """The logged config tells the truth: the file's x_label split, and use_gpu False on a CPU run."""
    from recbole_mm.quick_start import make_config, _load_checked_dataset

    root, config_dict = planted
    config = make_config("BPR", "planted", config_dict=config_dict)
    dataset = _load_checked_dataset(config)
    split = config["eval_args"]["split"]["x_label"]
    assert split == {"train": 720, "valid": 120, "test": 120} and sum(split.values()) == len(dataset.inter_feat)
    if not torch.cuda.is_available():
        assert config["use_gpu"] is False and config["device"].type == "cpu"


def test_recbole_dataset_on_mmrec_file_is_one_line(planted):
    """RecBole's own run_recbole for a RecBole model on an MMRec-layout folder failed with 'not enough
    values to unpack'; now one line that points to recbole_mm's entry points."""
    from recbole.quick_start import run_recbole as recbole_run

    root, config = planted
    with pytest.raises(RecBoleMMError, match="untyped .*MMRec-layout.*recbole_mm.run_recbole"):
        recbole_run(model="LightGCN", dataset="planted", config_dict=config)

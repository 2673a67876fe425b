"""Settings, plans and checkpoints are data: nothing in them runs as code, and nothing is unpickled
without ``trust_pickle: True``.

The four routes by which a run executed code (issue 20) each have a test that plants a payload which
would create a file, and checks that the file never appears: 1. a command-line value, 2. a benchmark
plan value, 3. a checkpoint's stored config naming a pickle, 4. a pickle at RecBole's default cache path.
Then the settings checks that come with them: unknown keys, yaml python tags, KD_DAGFM's teacher, an
``eval_args`` split a dataset file overrides, pairwise training without negatives, ``--nproc`` above
the cores, embedding tables larger than memory, and ``--resume`` with another run's checkpoint.
"""

from __future__ import annotations

import builtins
import os
import pickle
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import REPO, planted_config, write_planted_dataset

from recbole_mm import analysis, cli, config_check, distributed, quick_start
from recbole_mm.benchmark import cells as bench_cells
from recbole_mm.benchmark import command as bench_command
from recbole_mm.benchmark import plan as bench_plan
from recbole_mm.config_files import parse_setting
from recbole_mm.config_specs import ConfigError
from recbole_mm.errors import CheckpointError, RecBoleMMError, exit_on_user_error


# ---- helpers -----------------------------------------------------------------------------------
def code_payload(marker: Path) -> str:
    """A setting that creates ``marker`` if anything evaluates it."""
    return f'__import__("os").system("touch {marker}")'


class _Touch:
    """Unpickling an instance creates the file: what a planted cache would do (no shell needed)."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


def write_pickle_payload(path: Path, marker: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps(_Touch(marker)))
    return path


def planted_args(root: Path, *extra: str, model: str = "BPR") -> tuple[str, ...]:
    return (f"--model={model}", "--dataset=planted", f"--data_path={root}", "--USER_ID_FIELD=userID",
            "--ITEM_ID_FIELD=itemID", "--epochs=1", "--show_progress=False", "--topk=[10]",
            "--valid_metric=Recall@10", f"--checkpoint_dir={root / 'saved'}", "--state=WARNING",
            "--modalities={'image':'image_feat.npy','text':'text_feat.npy'}", *extra)


def run_cli(monkeypatch, capsys, *args: str) -> tuple[int, list[str]]:
    """Run ``run_recbole_mm.py ARGS`` in-process; (exit status, stderr lines)."""
    monkeypatch.setattr(sys, "argv", ["run_recbole_mm.py", *args])
    code = 0
    try:
        exit_on_user_error(cli.main)
    except SystemExit as exc:
        code = exc.code
    return code, capsys.readouterr().err.strip().splitlines()


def one_error_line(monkeypatch, capsys, *args: str) -> str:
    code, lines = run_cli(monkeypatch, capsys, *args)
    assert code == 2 and len(lines) == 1 and lines[0].startswith("recbole_mm: error:"), (code, lines)
    return lines[0]


def files_under(folder: Path) -> set[Path]:
    return set(folder.rglob("*"))


@pytest.fixture
def no_eval(monkeypatch):
    """builtins.eval replaced by a recorder that refuses a call from RecBole's or recbole_mm's code (the
    Config, HyperTuning and KD_DAGFM call eval by that name) and any call on a payload: a configured
    value that reaches eval fails the test. Other libraries' own eval calls (sympy's import) pass."""
    calls = []
    real_eval = builtins.eval

    def refusing_eval(source, *args, **kwargs):
        caller = sys._getframe(1).f_globals.get("__name__", "")
        if caller.split(".")[0] in ("recbole", "recbole_mm") or "payload-ran" in str(source):
            calls.append(source)
            raise AssertionError(f"eval reached from {caller} with {source!r}")
        return real_eval(source, *args, **kwargs)

    monkeypatch.setattr(builtins, "eval", refusing_eval)
    yield calls
    assert calls == []


@pytest.fixture
def data(tmp_path, monkeypatch):
    """(data root, config_dict, payload marker): a planted dataset; cwd is tmp_path; sys.argv holds no
    ``--key=value`` (RecBole's Config reads it: pytest's own ``--durations=5`` would be a setting)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["x"])
    root = tmp_path / "data"
    write_planted_dataset(root)
    return root, planted_config(root), tmp_path / "payload-ran"


# ---- settings are parsed as literals -------------------------------------------------------------
LITERALS = [
    ("10", 10), ("-3", -3), ("1e-3", 0.001), ("0.5", 0.5), ("1_000", 1000), ("[10,20]", [10, 20]),
    ("{'RS':[0.8,0.1,0.1]}", {"RS": [0.8, 0.1, 0.1]}), ("None", None), ("True", True), ("true", True),
    ("TRUE", True), ("False", False), ("false", False), ("'x'", "x"), ("0,1", (0, 1)),
    ("abc", "abc"), ("saved/x.pth", "saved/x.pth"), ("1/0", "1/0"), ("{1,2}", "{1,2}"), ("1+2j", "1+2j"),
    ("[10]*2", "[10]*2"), ("none", "none"), ('__import__("os").getcwd()', '__import__("os").getcwd()'),
]


@pytest.mark.parametrize("text, value", LITERALS, ids=[t for t, _ in LITERALS])
def test_settings_are_parsed_as_literals_never_evaluated(text, value, no_eval):
    parsed = parse_setting(text)
    assert parsed == value and type(parsed) is type(value)


def test_recbole_config_reads_settings_as_data_after_import(tmp_path, monkeypatch, no_eval):
    """RecBole's own Config (what recbole.quick_start.run_recbole builds) after ``import recbole_mm``:
    the command line and config_dict keep their accepted spellings, and an expression is a string."""
    from recbole.config import Config

    monkeypatch.chdir(tmp_path)
    marker = tmp_path / "payload-ran"
    monkeypatch.setattr(sys, "argv", ["x", "--topk=[10,20]", "--learning_rate=1e-3", f"--note={code_payload(marker)}"])
    config = Config(model="BPR", dataset="tiktok", config_dict={
        "reg_weight": "0.5", "eval_args": "{'split': {'RS': [0.8, 0.1, 0.1]}, 'mode': 'full'}",
        "show_progress": "false", "other_note": code_payload(marker)})
    assert config["topk"] == [10, 20] and config["learning_rate"] == 0.001 and config["reg_weight"] == 0.5
    assert config["eval_args"]["split"] == {"RS": [0.8, 0.1, 0.1]} and config["show_progress"] is False
    assert config["note"] == code_payload(marker) and config["other_note"] == code_payload(marker)
    assert not marker.exists()


# ---- route 1: the command line -------------------------------------------------------------------
def test_route1_command_line_values_never_run(data, monkeypatch, capsys, no_eval):
    root, _, marker = data
    line = one_error_line(monkeypatch, capsys, *planted_args(root, f"--learning_rate={code_payload(marker)}"))
    assert "learning_rate: '__import__" in line and "a number > 0" in line
    assert not marker.exists() and not (root.parent / "log").exists()
    # An unknown key holding code: a warning naming it, then the run trains as if it were not there.
    code, lines = run_cli(monkeypatch, capsys, *planted_args(root, f"--note={code_payload(marker)}"))
    assert code == 0
    assert [line for line in lines if "warning" in line] == [
        "recbole_mm: warning: unknown setting 'note' (command line); BPR and RecBole do not read it"]
    assert not marker.exists()


def test_route1_python_entry_points_never_run_values(data, monkeypatch, no_eval):
    """recbole_mm.run_recbole, objective_function and RecBole's own run_recbole (after import) with a
    code value in config_dict and on the command line."""
    from recbole.quick_start import run_recbole as recbole_run_recbole

    import recbole_mm

    root, config, marker = data
    monkeypatch.setattr(sys, "argv", ["x", f"--cmd_note={code_payload(marker)}"])
    config = {**config, "note": code_payload(marker), "learning_rate": "0.01"}
    assert recbole_mm.run_recbole("BPR", "planted", config_dict=config, saved=False)["test_result"]
    assert recbole_mm.objective_function({**config, "model": "BPR", "dataset": "planted"}, saved=False)["test_result"]
    assert recbole_run_recbole(model="VBPR", dataset="planted", config_dict=config, saved=False)["test_result"]
    assert not marker.exists()


def test_hyper_tuning_params_file_is_read_as_data(data, no_eval):
    """RecBole's HyperTuning eval()ed each `choice` line (hyper_tuning.py:239)."""
    from recbole.trainer import HyperTuning

    import recbole_mm

    root, config, marker = data
    params = root.parent / "params.txt"
    params.write_text("learning_rate choice [0.01,0.005]\nreg_weight uniform 0,1\n")
    config_file = root.parent / "fixed.yaml"
    config_file.write_text(yaml.safe_dump({**config, "model": "BPR", "dataset": "planted"}))
    tuning = HyperTuning(recbole_mm.objective_function, params_file=str(params), fixed_config_file_list=[str(config_file)],
                         algo="random", max_evals=2)
    tuning.run()
    assert len(tuning.params2result) == 2
    params.write_text(f"learning_rate choice {code_payload(marker).replace(' ', '')}\n")
    with pytest.raises(ConfigError, match=rf"params file {params}, line 1: choice .* is not a list"):
        HyperTuning(recbole_mm.objective_function, params_file=str(params))
    params.write_text("learning_rate uniform 0.1\n")
    with pytest.raises(ConfigError, match="uniform needs 2 numbers"):
        HyperTuning(recbole_mm.objective_function, params_file=str(params))
    assert not marker.exists()


# ---- route 2: benchmark plans --------------------------------------------------------------------
def test_route2_plan_values_never_run(data, monkeypatch, capsys, no_eval):
    root, config, marker = data
    plan = {"datasets": ["planted"], "seeds": [1], "config": {**config, "epochs": 1},
            "runs": {"BPR": {"model": "BPR", "note": code_payload(marker)}}}
    plan_file = root.parent / "plan.yaml"
    plan_file.write_text(yaml.safe_dump(plan))
    out = root.parent / "results"
    exit_on_user_error(lambda: bench_command.main(["--plan", str(plan_file), "--out", str(out), "--report-only"]))
    assert (out / "planted.md").exists() and not marker.exists()
    # The config path a cell's process runs (benchmark --cell): resolved and trained.
    cell = bench_plan.cell_config(plan, plan["runs"]["BPR"], {}, 1)
    assert bench_cells.resolve_config("BPR", "planted", cell)["note"] == code_payload(marker)
    assert bench_cells.run_cell("BPR", "planted", cell)["test"]
    assert not marker.exists()


def test_plan_with_a_python_tag_is_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    plan_file = tmp_path / "plan.yaml"
    plan_file.write_text("datasets: [tiktok]\nruns:\n  BPR: {model: BPR, note: !!python/name:os.system }\n")
    with pytest.raises(SystemExit) as stop:
        exit_on_user_error(lambda: bench_command.main(["--plan", str(plan_file), "--out", str(tmp_path / "out")]))
    lines = capsys.readouterr().err.strip().splitlines()
    assert stop.value.code == 2 and len(lines) == 1 and str(plan_file) in lines[0] and "python/name" in lines[0]
    assert set(tmp_path.iterdir()) == {plan_file}


# ---- route 3: a checkpoint's stored config ------------------------------------------------------
@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(folder, data root, config_dict, checkpoint) of a one-epoch VBPR run on the planted set."""
    folder = tmp_path_factory.mktemp("trained")
    root = folder / "data"
    write_planted_dataset(root)
    config = planted_config(root)
    here, argv = os.getcwd(), sys.argv
    os.chdir(folder)
    sys.argv = ["x"]  # RecBole's Config reads --key=value words of sys.argv (pytest's too)
    try:
        result = quick_start.run_recbole("VBPR", "planted", config_dict=config)
    finally:
        os.chdir(here)
        sys.argv = argv
    return folder, root, config, Path(result["saved_model_file"])


def test_route3_checkpoint_config_cannot_point_loaders_at_a_pickle(trained, tmp_path, monkeypatch, capsys, no_eval):
    _, root, config, model_file = trained
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["x"])
    marker = tmp_path / "payload-ran"
    state = torch.load(model_file, weights_only=True)
    state["config"].update({
        "dataloaders_save_path": str(write_pickle_payload(tmp_path / "loaders.pth", marker)),
        "dataset_save_path": str(write_pickle_payload(tmp_path / "dataset.pth", marker)),
        "save_dataloaders": True, "save_dataset": True, "trust_pickle": True,
        "checkpoint_dir": str(tmp_path / "cache")})
    # ... and pickles at the default cache paths of the checkpoint_dir it names.
    write_pickle_payload(tmp_path / "cache" / "planted-for-VBPR-dataloader.pth", marker)
    write_pickle_payload(tmp_path / "cache" / "planted-MultiModalDataset.pth", marker)
    crafted = tmp_path / "crafted.pth"
    torch.save(state, crafted)

    from recbole_mm.quick_start import load_data_and_model

    loaded, model, *_ = load_data_and_model(str(crafted))
    assert loaded["dataloaders_save_path"] is None and loaded["trust_pickle"] is False and not loaded["save_dataset"]
    assert not marker.exists()
    analysis.main(["longtail", str(crafted), "--out", str(tmp_path / "lt")])
    assert (tmp_path / "lt.md").exists() and not marker.exists()
    err = capsys.readouterr().err
    assert "planted-for-VBPR-dataloader.pth (a pickled dataloaders cache at RecBole's default path) was not read" in err
    # --resume reads the stored state, never the stored config's caches.
    result = quick_start.run_recbole("VBPR", "planted", config_dict={**config, "epochs": 2}, resume=str(crafted))
    assert result["best_epoch"] is not None and not marker.exists()


def test_checkpoint_teacher_that_would_run_is_refused(trained, tmp_path, no_eval):
    """KD_DAGFM builds its teacher with eval(config['teacher']): a stored config cannot name code."""
    _, _, _, model_file = trained
    state = torch.load(model_file, weights_only=True)
    marker = tmp_path / "payload-ran"
    state["config"].update({"model": "KD_DAGFM", "teacher": code_payload(marker)})
    crafted = tmp_path / "teacher.pth"
    torch.save(state, crafted)
    with pytest.raises(CheckpointError, match=r"teacher: .* \(stored in checkpoint .*\) is not allowed: it must be "
                                              r"one of CrossNet, CIN"):
        quick_start.load_data_and_model(str(crafted))
    assert not marker.exists()


# ---- route 4: RecBole's default cache paths -----------------------------------------------------
def test_route4_pickles_at_default_cache_paths_are_not_read(data, capsys, no_eval):
    root, config, marker = data
    loaders = write_pickle_payload(root / "saved" / "planted-for-VBPR-dataloader.pth", marker)
    dataset = write_pickle_payload(root / "saved" / "planted-MultiModalDataset.pth", marker)
    assert quick_start.run_recbole("VBPR", "planted", config_dict=config, saved=False)["test_result"]
    assert not marker.exists()
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("recbole_mm: warning:")]
    assert len(warnings) == 2
    assert str(loaders) in warnings[1] and "trust_pickle: True" in warnings[1] and str(dataset) in warnings[0]


def test_trusted_caches_are_written_and_read(data, monkeypatch, capsys):
    """With trust_pickle: True RecBole's caches work as in RecBole (written, then read on the next run);
    without it the same files are left unread."""
    import recbole.data.utils as data_utils

    root, config, _ = data
    loads = []
    real_load = pickle.load

    def counting_load(file, *args, **kwargs):
        if str(getattr(file, "name", "")).startswith(str(root / "saved")):
            loads.append(file.name)
        return real_load(file, *args, **kwargs)

    monkeypatch.setattr(data_utils.pickle, "load", counting_load)
    trusted = {**config, "trust_pickle": True, "save_dataloaders": True, "save_dataset": True}
    first = quick_start.run_recbole("VBPR", "planted", config_dict=trusted, saved=False)
    assert loads == [] and (root / "saved" / "planted-for-VBPR-dataloader.pth").exists()
    second = quick_start.run_recbole("VBPR", "planted", config_dict=trusted, saved=False)
    assert sorted(Path(name).name for name in loads) == ["planted-MultiModalDataset.pth", "planted-for-VBPR-dataloader.pth"]
    assert second["test_result"] == first["test_result"]
    capsys.readouterr()
    quick_start.run_recbole("VBPR", "planted", config_dict=config, saved=False)
    assert len(loads) == 2 and capsys.readouterr().err.count("was not read") == 2


CACHE_SETTINGS = [("--dataloaders_save_path=saved/x.pth", "dataloaders_save_path: 'saved/x.pth'"),
                  ("--dataset_save_path=saved/y.pth", "dataset_save_path: 'saved/y.pth'"),
                  ("--save_dataloaders=True", "save_dataloaders: True"), ("--save_dataset=True", "save_dataset: True")]


@pytest.mark.parametrize("arg, expected", CACHE_SETTINGS, ids=[a for a, _ in CACHE_SETTINGS])
def test_cache_settings_need_trust_pickle(arg, expected, data, monkeypatch, capsys):
    root, _, _ = data
    before = files_under(root.parent)
    line = one_error_line(monkeypatch, capsys, *planted_args(root, arg, model="VBPR"))
    assert expected in line and "(set on the command line)" in line and "trust_pickle: True" in line
    assert files_under(root.parent) == before


def test_ldiffrec_embeddings_are_loaded_without_unpickling(tmp_path):
    """LDiffRec np.load()s item_emb.npy with allow_pickle=True (ldiffrec.py:232)."""
    import recbole.model.general_recommender.ldiffrec as ldiffrec

    numbers = tmp_path / "item_emb.npy"
    np.save(numbers, np.arange(6, dtype=np.float32).reshape(3, 2))
    assert ldiffrec.np.load(numbers, allow_pickle=True).tolist() == [[0, 1], [2, 3], [4, 5]]
    marker = tmp_path / "payload-ran"
    objects = tmp_path / "objects.npy"
    np.save(objects, np.array([_Touch(marker)], dtype=object), allow_pickle=True)
    with pytest.raises(RecBoleMMError, match="holds pickled Python objects"):
        ldiffrec.np.load(objects, allow_pickle=True)
    assert not marker.exists()


# ---- yaml tags -----------------------------------------------------------------------------------
def test_python_yaml_tags_are_refused_naming_the_file(data, monkeypatch, capsys):
    """Accepted by RecBole's FullLoader, the value failed after a training epoch."""
    from recbole.config import Config

    from recbole_mm import resources

    root, _, _ = data
    tagged = root.parent / "tagged.yaml"
    tagged.write_text("epochs: 1\nlearning_rate: !!python/name:os.system\n")
    before = files_under(root.parent)
    line = one_error_line(monkeypatch, capsys, *planted_args(root, f"--config_files={tagged}"))
    assert f"config file {tagged}: line 2: the tag !!python/name:os.system" in line
    monkeypatch.setattr(sys, "argv", ["x"])
    with pytest.raises(ConfigError, match=f"config file {tagged}: line 2"):  # RecBole's own Config
        Config(model="BPR", dataset="tiktok", config_file_list=[str(tagged)])
    dataset_config = root.parent / "planted.yaml"
    dataset_config.write_text("USER_ID_FIELD: userID\nmissing_feature: !!python/object/apply:os.getcwd []\n")
    real = resources.dataset_config_file
    monkeypatch.setattr(resources, "dataset_config_file",
                        lambda name: dataset_config if name == "planted" else real(name))
    line = one_error_line(monkeypatch, capsys, *planted_args(root))
    assert f"dataset config {dataset_config}: line 2: the tag !!python/object/apply:os.getcwd" in line
    model_yaml = root.parent / "VBPR.yaml"
    model_yaml.write_text("embedding_size: !!python/tuple [1, 2]\n")
    monkeypatch.setattr(resources, "model_properties_file", lambda name: model_yaml)
    monkeypatch.setattr(resources, "dataset_config_file", real)
    line = one_error_line(monkeypatch, capsys, *planted_args(root, model="VBPR"))
    assert f"model defaults {model_yaml}: line 1: the tag !!python/tuple" in line
    assert files_under(root.parent) == before | {dataset_config, model_yaml}


# ---- KD_DAGFM's teacher --------------------------------------------------------------------------
def test_kd_dagfm_teacher_must_be_one_of_its_networks(tmp_path, monkeypatch, no_eval):
    from recbole.config import Config

    monkeypatch.chdir(tmp_path)
    marker = tmp_path / "payload-ran"
    monkeypatch.setattr(sys, "argv", ["x"])
    for make in (lambda d: quick_start.make_config("KD_DAGFM", "ml-100k", config_dict=d),
                 lambda d: Config(model="KD_DAGFM", dataset="ml-100k", config_dict=d)):
        with pytest.raises(ConfigError, match=r"teacher: .* \(set in config_dict\) is not allowed: it must be one of "
                                              "CrossNet, CIN"):
            make({"teacher": code_payload(marker)})
        assert make({"teacher": "CIN"})["teacher"] == "CIN"
    assert not marker.exists()


# ---- unknown settings ----------------------------------------------------------------------------
UNKNOWN = [
    (("--model=GUME", "--knn_kk=5"), "unknown setting 'knn_kk' (command line); did you mean 'knn_k'?"),
    (("--model=VBPR", "--lerning_rate=0.1"), "unknown setting 'lerning_rate' (command line); did you mean 'learning_rate'?"),
    # A key of one plugin model (the list grows with every model that reads a key such as knn_k).
    (("--model=BPR", "--um_temp=0.5"), "setting 'um_temp' (command line) is not read by BPR: it is a setting of GUME"),
]


@pytest.mark.parametrize("args, expected", UNKNOWN, ids=[" ".join(a) for a, _ in UNKNOWN])
def test_unknown_settings_warn_or_fail_under_strict_config(args, expected, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["x", *args[1:]])
    config = quick_start.make_config(args[0].split("=")[1], "tiktok")
    assert capsys.readouterr().err.strip().splitlines() == [f"recbole_mm: warning: {expected}"]
    assert config["learning_rate"] == 0.001  # the run goes on with the defaults, as the line says
    line = one_error_line(monkeypatch, capsys, *args, "--dataset=tiktok", "--strict_config=True")
    assert expected in line and "strict_config: True" in line
    assert list(tmp_path.iterdir()) == []


def test_config_file_settings_name_their_file(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["x"])
    extra = tmp_path / "extra.yaml"
    extra.write_text("stoping_step: 3\n")
    quick_start.make_config("BPR", "tiktok", config_file_list=[str(extra)], config_dict={"mebedding_size": 8})
    assert capsys.readouterr().err.strip().splitlines() == [
        f"recbole_mm: warning: unknown setting 'stoping_step' (config file {extra}); did you mean 'stopping_step'?",
        "recbole_mm: warning: unknown setting 'mebedding_size' (config_dict); did you mean 'embedding_size'?"]


def test_runtime_and_launch_settings_are_known(tmp_path, monkeypatch, capsys):
    """RecBole's launch keys (run() puts them into config_dict), recbole_mm's own command line and the
    keys of a dataset config are no typos."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["run_recbole_mm.py", "--model=GUME", "--dataset=tiktok", "--nproc=1",
                                      "--world_size=-1", "--ip=localhost", "--port=5678", "--offset=0",
                                      "--config_files=", "--resume=x.pth"])
    dataset_keys = yaml.safe_load((REPO / "dataset_configs" / "tiktok.yaml").read_text())
    dataset_keys.pop("model_overrides")
    quick_start.make_config("GUME", "tiktok", config_dict={**dataset_keys, "dist_backend": "gloo",
                                                           "trust_pickle": False, "strict_config": True})
    assert capsys.readouterr().err == ""


@pytest.mark.slow
def test_shipped_benchmark_cells_do_not_warn(tmp_path, monkeypatch, capsys):
    """Every cell of every plan in benchmarks/ resolves without an unknown-setting line (they resolve
    once in the benchmark's process and again in the cell's)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["x"])
    cells = 0
    for plan_file in sorted((REPO / "benchmarks").glob("*.yaml")):
        plan = yaml.safe_load(plan_file.read_text())
        plan.setdefault("seeds", [999])
        for dataset in plan["datasets"]:
            for run in plan["runs"].values():
                for point in bench_plan.grid_points(run):
                    config = bench_plan.cell_config(plan, run, point, plan["seeds"][0])
                    quick_start.make_config(run["model"], dataset, config_dict={**config, "strict_config": True})
                    cells += 1
    assert cells > 40 and capsys.readouterr().err == ""


# ---- item 4: settings that failed late ----------------------------------------------------------
def test_split_that_the_dataset_file_overrides_is_one_line(data, monkeypatch, capsys):
    root, _, _ = data
    before = files_under(root.parent)
    line = one_error_line(monkeypatch, capsys,
                          *planted_args(root, "--eval_args={'split':{'RS':[0.8,0.1,0.1]},'mode':'full'}"))
    assert "eval_args: split {'RS': [0.8, 0.1, 0.1]} (set on the command line) cannot apply" in line
    assert "x_label column" in line and "remove 'split'" in line
    assert files_under(root.parent) == before
    # order, group_by and mode without a split still apply.
    code, _ = run_cli(monkeypatch, capsys, *planted_args(root, "--eval_args={'mode':'full','order':'RO'}"))
    assert code == 0


def test_pairwise_training_without_negatives_is_one_line(data, monkeypatch, capsys):
    root, _, _ = data
    before = files_under(root.parent)
    line = one_error_line(monkeypatch, capsys, *planted_args(root, "--train_neg_sample_args=None", model="VBPR"))
    assert "train_neg_sample_args: None (set on the command line) gives no negative items, but VBPR trains on " \
           "(positive, negative) pairs" in line
    assert files_under(root.parent) == before
    monkeypatch.setattr(sys, "argv", ["x"])
    with pytest.raises(ConfigError, match="loss_type 'BPR' .* makes SASRec train on .* or a loss_type without negatives"):
        quick_start.make_config("SASRec", "ml-100k", config_dict={"loss_type": "BPR", "train_neg_sample_args": None})


def test_nproc_above_the_cores_warns_and_far_above_fails(data, monkeypatch, capsys):
    root, _, _ = data
    monkeypatch.setattr(distributed, "available_cores", lambda: 2)
    distributed.check_nproc_against_cores(2)
    assert capsys.readouterr().err == ""
    distributed.check_nproc_against_cores(8)
    assert capsys.readouterr().err.strip().splitlines() == [
        "recbole_mm: warning: nproc=8 is more than the 2 CPU cores here; the processes share them and each runs "
        "slower (--nproc=2 uses every core once)"]
    before = files_under(root.parent)
    line = one_error_line(monkeypatch, capsys, *planted_args(root, "--nproc=9"))
    assert "nproc: 9 processes on a machine with 2 CPU cores (more than 4 per core)" in line
    assert files_under(root.parent) == before


def test_embedding_tables_larger_than_memory_are_one_line(data, monkeypatch, capsys):
    root, _, _ = data
    before = files_under(root.parent)
    line = one_error_line(monkeypatch, capsys, *planted_args(root, "--embedding_size=1000000000", model="VBPR"))
    # 60 items and 120 users (+1 padding row each): 4 bytes x 1e9 x 182.
    assert "embedding_size: 1000000000 (set on the command line) needs at least 678.0 GiB for the embedding " \
           "tables of 61 items and 121 users (float32), more than the" in line
    assert files_under(root.parent) == before
    monkeypatch.setattr(config_check, "available_memory", lambda device: 10**6)
    line = one_error_line(monkeypatch, capsys, *planted_args(root, "--embedding_size=5000"))  # items only: BPR
    assert "needs at least 1.2 MiB for the embedding tables of 61 items (float32), more than the 976.6 KiB" in line


def test_resume_with_another_runs_checkpoint_fails_before_the_data_loads(trained, tmp_path, monkeypatch, capsys):
    _, root, _, model_file = trained
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(quick_start, "_load_checked_dataset", lambda config: pytest.fail("the data was loaded"))
    line = one_error_line(monkeypatch, capsys, *planted_args(root, f"--resume={model_file}", model="BPR"))
    # (its .last.pth, which a resume reads)
    assert model_file.stem in line and "is a checkpoint of model VBPR, not BPR; resume with --model=VBPR" in line
    args = [a.replace("--dataset=planted", "--dataset=other") for a in planted_args(root, f"--resume={model_file}",
                                                                                   model="VBPR")]
    line = one_error_line(monkeypatch, capsys, *args)
    assert "is a checkpoint of dataset planted, not other; resume with --dataset=planted" in line
    assert list(tmp_path.iterdir()) == []  # no log, no checkpoint

"""Each shim of recbole_mm.compat, tested for the value RecBole computes, not only for "no crash"."""

from __future__ import annotations

import os
import pickle
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch

import recbole_mm
from recbole_mm import compat
from recbole_mm.compat import ensure_dir, hyper_tuning
from recbole_mm.checkpoint import config_from_plain, config_to_plain, load_checkpoint
from recbole_mm.errors import CheckpointError

ML100K_METRICS = {"metrics": ["Recall", "NDCG", "Precision"], "topk": [10, 20], "valid_metric": "Recall@10"}


def test_ray_tune_is_importable_and_report_works():
    """1-3: RecBole's `from ray import tune` succeeds (real ray or stub) and tune.report accepts metrics."""
    from ray import tune

    import recbole.quick_start.quick_start as qs

    assert qs.tune is tune
    tune.report(recall=0.5)  # the stub ignores it; a real ray outside a trial session may not
    if getattr(sys.modules["ray"], "__recbole_mm_stub__", False):
        assert not hasattr(np, "bool8") or np.__version__.startswith("1.")


def test_numpy_aliases_that_recbole_reads_exist():
    """4: Config() no longer touches np.float_, and the aliases RecBole reads later are right."""
    from recbole.config import Config

    Config(model="BPR", dataset="ml-100k", config_dict={"state": "WARNING"})
    assert np.float is np.float64 and np.bool is np.bool_ and np.str is np.str_ and np.int is np.int_


def test_dok_matrix_update_restored():
    """5: dok_matrix._update, used by LightGCN/NGCF to fill adjacency, stores the values."""
    matrix = sp.dok_matrix((3, 3), dtype=np.float32)
    matrix._update({(0, 1): 2.0, (2, 0): 1.0})
    assert matrix.toarray().tolist() == [[0, 2, 0], [0, 0, 0], [1, 0, 0]]


def test_exhaustive_search_visits_every_point_once():
    """7: HyperTuning(algo='exhaustive') works with the installed hyperopt and covers the grid."""
    from recbole.trainer import HyperTuning

    seen = []

    def objective(config_dict, config_file_list):
        seen.append((config_dict["a"], config_dict["b"]))
        return {"model": "x", "best_valid_score": config_dict["a"] + config_dict["b"],
                "valid_score_bigger": True, "best_valid_result": {}, "test_result": {}}

    tuner = HyperTuning(objective, params_dict={"choice": {"a": [1, 2, 3], "b": [10, 20]}}, algo="exhaustive", max_evals=6)
    tuner.run()
    assert sorted(seen) == [(a, b) for a in (1, 2, 3) for b in (10, 20)]
    assert tuner.best_score == 23


def _write_atomic_dataset(root: Path) -> None:
    """An atomic RecBole dataset with a token_seq item field and NaN float ratings."""
    folder = root / "seqnan"
    folder.mkdir(parents=True)
    inter = ["user_id:token\titem_id:token\trating:float"]
    for u in range(6):
        for i in range(5):
            rating = "" if (u + i) % 3 == 0 else str(float(u + i))
            inter.append(f"u{u}\ti{(u + i) % 8}\t{rating}")
    (folder / "seqnan.inter").write_text("\n".join(inter) + "\n")
    items = ["item_id:token\tgenre:token_seq"]
    genres = ["a b", "c", "a b c", "", "b", "c a", "a", "b c a"]
    items += [f"i{i}\t{g}" for i, g in enumerate(genres)]
    (folder / "seqnan.item").write_text("\n".join(items) + "\n")


def test_pandas3_token_seq_and_nan_fill_values(tmp_path, monkeypatch):
    """8, 9: token_seq lengths survive remapping (Series.agg(len)) and NaN ratings are mean-filled
    (chained fillna(inplace=True)); both silently wrong on pandas 3 without the shims."""
    from recbole.config import Config
    from recbole.data.dataset import Dataset

    monkeypatch.chdir(tmp_path)
    _write_atomic_dataset(tmp_path)
    config = Config(model="BPR", dataset="seqnan", config_dict={
        "data_path": str(tmp_path), "state": "WARNING",
        "load_col": {"inter": ["user_id", "item_id", "rating"], "item": ["item_id", "genre"]},
    })
    dataset = Dataset(config)
    ratings = dataset.inter_feat["rating"].to_numpy()
    raw = pd.read_csv(tmp_path / "seqnan" / "seqnan.inter", sep="\t")["rating:float"]
    assert not np.isnan(ratings).any()
    assert np.allclose(sorted(ratings[np.isclose(ratings, raw.mean())]), [raw.mean()] * int(raw.isna().sum()))
    genre_ids = dict(zip(dataset.field2id_token["item_id"], dataset.item_feat["genre"]))
    for i, genre in enumerate(["a b", "c", "a b c", "", "b", "c a", "a", "b c a"]):
        tokens = [dataset.field2id_token["genre"][t] for t in genre_ids[f"i{i}"] if t != 0]
        assert tokens == genre.split(), f"item i{i}"


def test_shims_only_act_for_recbole_callers():
    """Outside RecBole, pandas keeps its own semantics."""
    series = pd.Series([[1, 2], [3]])
    if int(pd.__version__.split(".")[0]) >= 3:
        assert series.agg(len) == 2  # pandas 3's own answer, untouched for non-RecBole callers
    filled = pd.Series([1.0, np.nan]).fillna(0.0)
    assert filled.tolist() == [1.0, 0.0]


def test_shims_are_installed_once():
    compat.install()
    compat.install()
    assert getattr(pd.Series.agg, "_recbole_mm", True)


# --- 6: checkpoints under torch >= 2.6 -----------------------------------------------------------
def _train_bpr(root: Path, saved: bool = True) -> dict:
    from conftest import planted_config, write_planted_dataset

    write_planted_dataset(root)
    return recbole_mm.run_recbole(model="BPR", dataset="planted", config_dict=planted_config(root), saved=saved)


def test_checkpoint_loads_with_weights_only_and_restores_config(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = _train_bpr(tmp_path / "data")
    raw = torch.load(result["saved_model_file"], weights_only=True)  # torch's safe path
    assert isinstance(raw["config"], dict)
    config = load_checkpoint(result["saved_model_file"])["config"]
    original = result["config"]
    for key in ("model", "dataset", "MODEL_TYPE", "MODEL_INPUT_TYPE", "eval_type", "device", "topk",
                "train_neg_sample_args", "eval_args", "data_path", "embedding_size"):
        assert config[key] == original[key], key
    assert type(config["MODEL_TYPE"]) is type(original["MODEL_TYPE"])
    assert config_to_plain(config_from_plain(config_to_plain(original))) == config_to_plain(original)


class _Exploit:
    marker: str = ""

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_checkpoint_is_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    marker = tmp_path / "pwned"
    _Exploit.marker = str(marker)
    evil = tmp_path / "evil.pth"
    torch.save({"config": _Exploit(), "state_dict": {}}, evil)
    with pytest.raises(CheckpointError, match="trust_pickle"):
        recbole_mm.load_data_and_model(str(evil))
    # RecBole's own readers (trainer.evaluate / resume_checkpoint) use torch's safe default too.
    with pytest.raises(pickle.UnpicklingError):
        torch.load(evil)
    assert not marker.exists()


def test_old_full_pickle_checkpoint_needs_trust(tmp_path, monkeypatch):
    """A checkpoint as plain RecBole writes it (the Config object pickled) loads only with trust_pickle."""
    from recbole.quick_start import load_data_and_model

    monkeypatch.chdir(tmp_path)
    result = _train_bpr(tmp_path / "data")
    state = torch.load(result["saved_model_file"], weights_only=True)
    state["config"] = result["config"]
    old = tmp_path / "old.pth"
    torch.save(state, old, pickle_protocol=4)
    with pytest.raises(CheckpointError):
        load_data_and_model(str(old))
    config, model, *_ = load_data_and_model(str(old), trust_pickle=True)
    assert config["model"] == "BPR"
    assert torch.equal(model.user_embedding.weight, state["state_dict"]["user_embedding.weight"])


# --- 10, 11: multi-process runs on CPU ------------------------------------------------------------
DDP_SCRIPT = """
import recbole_mm  # top level: spawned workers re-import this module and need the shims too
from recbole.quick_start import run

if __name__ == "__main__":
    result = run("BPR", "ml-100k", nproc=2, port="{port}", config_dict={{
        "epochs": 1, "show_progress": False, "state": "WARNING", "checkpoint_dir": "{saved}",
        "metrics": ["Recall"], "topk": [10], "valid_metric": "Recall@10"}})
    print("RECALL", result["test_result"]["recall@10"])
"""


@pytest.mark.slow
def test_two_process_run_on_cpu(tmp_path):
    """RecBole's run(nproc=2) trains with gloo on CPU; every rank loads the checkpoint rank 0 wrote."""
    import socket
    import subprocess

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    script = tmp_path / "ddp.py"
    script.write_text(DDP_SCRIPT.format(port=port, saved=tmp_path / "saved"))
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    recall = float(out.stdout.split("RECALL")[1])
    assert 0.0 < recall <= 1.0
    assert len(list((tmp_path / "saved").glob("BPR-*.pth"))) == 1


def test_other_parameter_roundtrip(tmp_path):
    """scipy sparse and numpy state (ItemKNN, EASE) survive the weights-only checkpoint encoding."""
    from recbole_mm.checkpoint import decode_other_parameter, encode_other_parameter

    state = {"w": sp.random(5, 4, density=0.4, format="csr", random_state=0), "pred": np.arange(6.0).reshape(2, 3),
             "cnt": torch.tensor([1, 2]), "k": 3}
    torch.save(encode_other_parameter(state), tmp_path / "other.pth")
    back = decode_other_parameter(torch.load(tmp_path / "other.pth", weights_only=True))
    assert back["w"].format == "csr" and (back["w"] != state["w"]).nnz == 0
    assert np.array_equal(back["pred"], state["pred"]) and torch.equal(back["cnt"], state["cnt"]) and back["k"] == 3


def test_runs_started_in_the_same_second_get_different_checkpoints(planted):
    """RecBole names checkpoints <Model>-<time to the second>.pth; two trainers built in the same second
    must not share (and overwrite) one file."""
    from recbole.data import data_preparation
    from recbole.trainer import Trainer
    from recbole.utils import get_model

    from recbole_mm.quick_start import create_dataset, make_config

    root, config_dict = planted
    config = make_config("BPR", "planted", config_dict=config_dict)
    train_data, _, _ = data_preparation(config, create_dataset(config))
    model = get_model("BPR")(config, train_data._dataset)
    names = {Trainer(config, model).saved_model_file for _ in range(3)}
    assert len(names) == 3 and all(name.endswith(".pth") and "BPR-" in name for name in names)


def test_ensure_dir_is_safe_for_concurrent_processes(tmp_path):
    """RecBole's ensure_dir (exists-check, then makedirs) let one DDP rank die with FileExistsError when
    another created ./log first; every module that imported it now has the race-free version."""
    import recbole.data.dataset.dataset
    import recbole.data.utils
    import recbole.trainer.trainer
    import recbole.utils
    import recbole.utils.logger
    import recbole.utils.utils

    modules = (recbole.utils.utils, recbole.utils, recbole.utils.logger, recbole.data.utils,
               recbole.data.dataset.dataset, recbole.trainer.trainer)
    assert all(m.ensure_dir is ensure_dir.ensure_dir for m in modules)
    target = tmp_path / "log"
    target.mkdir()  # the other rank won the race
    recbole.utils.logger.ensure_dir(str(target))  # must not raise FileExistsError
    ensure_dir.ensure_dir(str(tmp_path / "a" / "b"))
    assert (tmp_path / "a" / "b").is_dir()


def test_hyper_tuning_output_comes_in_whole_lines(planted, capsys, tmp_path):
    """15: under HyperTuning, hyperopt's progress bar re-routed stdout/stderr so that every write() was a
    line of its own: `print("running parameters:", d)` and each colour run of RecBole's log lines (colorama)
    came out on separate lines. The bar stays; lines arrive whole."""
    import logging
    import re

    import yaml
    from recbole.trainer import HyperTuning

    from recbole_mm import objective_function

    root, config = planted
    fixed = tmp_path / "fixed.yaml"
    fixed.write_text(yaml.safe_dump({**config, "model": "BPR", "dataset": "planted", "state": "INFO"}))
    params = tmp_path / "params.hyper"
    params.write_text("learning_rate choice [0.01,0.005]\n")
    handlers = logging.getLogger().handlers[:]
    try:
        tuning = HyperTuning(objective_function, algo="exhaustive", max_evals=2, params_file=str(params),
                             fixed_config_file_list=[str(fixed)])
        tuning.run()
    finally:
        logging.getLogger().handlers[:] = handlers  # the trials' handlers write to capsys's streams
    captured = capsys.readouterr()

    def lines(text: str) -> list[str]:  # what a terminal shows: the text after the bar's last \r
        return [re.sub(r"\x1b\[[0-9;]*m", "", line.split("\r")[-1]) for line in text.split("\n")]

    out, err = lines(captured.out), lines(captured.err)
    assert "running parameters: {'learning_rate': 0.01}" in out, out
    assert "running parameters: {'learning_rate': 0.005}" in out, out
    training = [line for line in err if "[Training]:" in line]
    assert len(training) == 2 and all("train_batch_size = [256] train_neg_sample_args: [" in line
                                      for line in training), err
    assert any("2/2" in part for part in captured.out.split("\r")), "hyperopt's progress bar is kept"
    assert sys.stdout is not None and not isinstance(sys.stdout, hyper_tuning._LineBufferedTqdmFile)


# --- 20: beyond-accuracy metrics in the evaluation collector ------------------------------------
def test_beyond_accuracy_metrics_collect_and_evaluate():
    """ItemCoverage and AveragePopularity from RecBole's own Collector and Evaluator equal the counts done by
    hand; RecBole 1.2.1 unpatched fails in get_data_struct on the int item count."""
    from collections import Counter

    from recbole.evaluator import Collector, Evaluator

    config = {"metrics": ["ItemCoverage", "AveragePopularity"], "topk": [2], "device": torch.device("cpu"),
              "eval_args": {"mode": {"test": "full"}}, "metric_decimal_place": 4, "ITEM_ID_FIELD": "item_id"}

    class TrainData:  # what data_collect reads from a train loader
        class dataset:
            iid_field = "item_id"
            item_counter = Counter({1: 5, 2: 1, 3: 2, 4: 7})

            @staticmethod
            def num(field):
                return 6

    collector = Collector(config)
    collector.data_collect(TrainData)
    scores = torch.tensor([[0.0, 0.9, 0.1, 0.8, 0.2, 0.3], [0.0, 0.1, 0.9, 0.2, 0.8, 0.3]])
    collector.eval_batch_collect(scores, None, torch.tensor([0]), torch.tensor([1]))
    result = Evaluator(config).evaluate(collector.get_data_struct())
    assert result["itemcoverage@2"] == round(4 / 6, 4)  # items 1, 3 and 2, 4 of six
    assert result["averagepopularity@2"] == round(((5 + 2) / 2 + (1 + 7) / 2) / 2, 4)

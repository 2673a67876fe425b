"""Property-based: random malformed input to the MMRec ``.inter`` reader and to the configuration
checks fails only as a one-line ``RecBoleMMError`` (never another exception type) and an accepted
input is never an impossible one."""

from __future__ import annotations

import math
import sys

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from recbole_mm.config_check import check_config
from recbole_mm.data.files import read_mmrec_inter
from recbole_mm.errors import RecBoleMMError

FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

# ---- the .inter reader ----------------------------------------------------------------------------
cells = st.one_of(st.integers(-3, 2**60).map(str), st.sampled_from(["", "x", "1.5", "nan", "2e3", " 1", "-0", "٣"]),
                  st.text(max_size=4))
rows = st.lists(st.lists(cells, min_size=0, max_size=4), max_size=12)
headers = st.one_of(st.just(["userID", "itemID", "x_label"]), st.just(["itemID", "userID", "x_label"]),
                    st.lists(st.sampled_from(["userID", "itemID", "x_label", "rating", "user_id:token", ""]),
                             max_size=4))


@FAST
@given(header=headers, body=rows, sep=st.sampled_from(["\t", "\t", ",", " "]),
       newline=st.sampled_from(["\n", "\r\n", "\r"]), bom=st.booleans())
@pytest.mark.slow
def test_inter_reader_fails_only_with_one_line(tmp_path_factory, header, body, sep, newline, bom):
    path = tmp_path_factory.mktemp("inter") / "x.inter"
    text = newline.join(sep.join(line) for line in [header, *body]) + newline
    path.write_bytes((b"\xef\xbb\xbf" if bom else b"") + text.encode("utf-8", "surrogatepass"))
    try:
        table = read_mmrec_inter(str(path), "userID", "itemID")
    except RecBoleMMError as exc:
        assert "\n" not in str(exc) and str(path) in str(exc)
        return
    # Accepted: every value is a non-negative integer id, labels are 0/1/2, every split has rows.
    assert set(table.columns) == {"userID", "itemID", "x_label"}
    assert all(table[c].dtype == np.int64 and (table[c] >= 0).all() for c in table.columns)
    assert set(table["x_label"]) == {0, 1, 2}


@FAST
@given(data=st.binary(max_size=200))
def test_inter_reader_on_random_bytes(tmp_path_factory, data):
    path = tmp_path_factory.mktemp("inter") / "x.inter"
    path.write_bytes(data)
    try:
        read_mmrec_inter(str(path), "userID", "itemID")
    except RecBoleMMError as exc:
        assert "\n" not in str(exc)


# ---- the configuration checks -------------------------------------------------------------------
values = st.one_of(st.none(), st.booleans(), st.integers(-10, 10**6), st.floats(allow_nan=True),
                   st.text(max_size=6), st.lists(st.integers(-2, 60), max_size=3),
                   st.lists(st.floats(-2, 2), max_size=3), st.dictionaries(st.text(max_size=3), st.integers(), max_size=2))
KEYS = ["epochs", "learning_rate", "train_batch_size", "eval_batch_size", "embedding_size", "topk", "valid_metric",
        "metrics", "stopping_step", "seed", "knn_k", "n_layers", "bm_temp", "test_masking", "negative_items",
        "learning_rate_scheduler", "cold_start_items", "reproducibility", "graph_enhancement", "weight_decay"]


def _positive_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 1


# What an accepted value must be, written independently of the schema: impossible values never pass.
ORACLE = {
    "epochs": _positive_int, "train_batch_size": _positive_int, "eval_batch_size": _positive_int,
    "stopping_step": _positive_int, "knn_k": _positive_int,
    "embedding_size": lambda v: v is None or _positive_int(v),
    "learning_rate": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0,
    "topk": lambda v: _positive_int(v) or (isinstance(v, list) and len(v) > 0 and all(map(_positive_int, v))),
    "bm_temp": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0,
    "reproducibility": lambda v: isinstance(v, bool),
    "test_masking": lambda v: v in (None, "train", "train_valid"),
}


@pytest.fixture(scope="module")
def gume_config():
    from recbole_mm.quick_start import make_config

    argv, sys.argv = sys.argv, ["x"]
    try:
        return make_config("GUME", "tiktok")
    finally:
        sys.argv = argv


@FAST
@given(key=st.sampled_from(KEYS), value=values)
def test_config_checks_fail_only_with_one_line(gume_config, key, value):
    merged = {**gume_config.final_config_dict, key: value}
    try:
        check_config(gume_config, merged)
    except RecBoleMMError as exc:
        message = str(exc)
        # The message names the key, or the key whose cross-check it broke (topk/metrics vs valid_metric).
        assert "\n" not in message and message.split(":")[0] in (key, "valid_metric", "metrics")
        return
    if key in ORACLE:
        assert ORACLE[key](value), f"{key}={value!r} was accepted"

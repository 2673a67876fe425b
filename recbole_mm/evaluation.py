"""Test-time details of a run, through RecBole's own evaluator path: each top-k metric's per-user
values (with the user ids) and RecBole's beyond-accuracy metrics.

RecBole's top-k metrics compute a ``[users, max(topk)]`` matrix of per-user values and report its
column means (``topk_result``). :class:`DetailedEvaluator` keeps the matrix that ``topk_result``
averages, so the mean of the stored per-user values *is* the reported metric (before RecBole rounds it
to ``metric_decimal_place``); nothing is recomputed. The same pass adds RecBole's ItemCoverage,
GiniIndex, AveragePopularity and TailPercentage, whose long tail is the benchmark's: the long-tail
degree groups of ``python -m recbole_mm.analysis longtail`` (all but the most popular group; see
:func:`tail_definition`).

The per-user values travel from a benchmark cell's process as base64 (:func:`encode_per_user`) and
are stored beside the cell cache as a float32 ``.npz`` (:func:`write_per_user`, :func:`read_per_user`).
"""

from __future__ import annotations

import base64
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from recbole.evaluator import Evaluator
from recbole.evaluator.metrics import TailPercentage

from recbole_mm.errors import RecBoleMMError
from recbole_mm.speedups import Collector

BEYOND_ACCURACY = ("ItemCoverage", "GiniIndex", "AveragePopularity", "TailPercentage")
# The number of degree groups of `python -m recbole_mm.analysis longtail` (its --groups default), which the
# benchmark's --longtail charts use; the tail is every group but the first (tests pin the two together).
LONGTAIL_GROUPS = 5


class ConfigView:
    """A RecBole ``Config`` seen with some keys replaced, without changing the run's own config."""

    def __init__(self, config: Any, **overrides: Any):
        self.config, self.overrides = config, overrides

    def __getitem__(self, key: str) -> Any:
        return self.overrides[key] if key in self.overrides else self.config[key]

    def __contains__(self, key: str) -> bool:
        return key in self.overrides or key in self.config


class PerUserCollector(Collector):
    """recbole_mm's collector that also keeps the user id of each evaluated row, in row order (the order
    of RecBole's ``rec.topk`` / ``rec.items`` matrices)."""

    def __init__(self, config: Any):
        super().__init__(config)
        self._batches: list[torch.Tensor] = []
        self.users = torch.zeros(0, dtype=torch.long)

    def eval_batch_collect(self, scores_tensor: torch.Tensor, interaction, positive_u: torch.Tensor,
                           positive_i: torch.Tensor) -> None:
        super().eval_batch_collect(scores_tensor, interaction, positive_u, positive_i)
        self._batches.append(interaction[self.config["USER_ID_FIELD"]].detach().cpu().long())

    def get_data_struct(self):
        struct = super().get_data_struct()  # beyond-accuracy entries: compat fix 20
        self.users = torch.cat(self._batches) if self._batches else torch.zeros(0, dtype=torch.long)
        self._batches = []
        return struct


class FastTailPercentage(TailPercentage):
    """RecBole's TailPercentage with its membership test vectorised: RecBole looks every recommended item
    up in a Python list of the tail items, a cost that grows with users × k × tail items and dominated
    a full evaluation on the shipped datasets; the same tail set, chosen by RecBole's own rule, through
    ``np.isin``. Pinned to RecBole's in tests/test_evaluation.py."""

    def get_tail(self, item_matrix: np.ndarray, count_items: dict) -> np.ndarray:
        if self.tail > 1:
            tail_items = [item for item, cnt in count_items.items() if cnt <= self.tail]
        else:  # RecBole's fraction rule: the lowest-count items, ties by item id
            ordered = sorted(count_items.items(), key=lambda kv: (kv[1], kv[0]))
            tail_items = [item for item, _ in ordered[: max(int(len(ordered) * self.tail), 1)]]
        return np.isin(item_matrix, np.asarray(tail_items, dtype=item_matrix.dtype)).astype(item_matrix.dtype)


class DetailedEvaluator(Evaluator):
    """RecBole's ``Evaluator`` over the run's ``metrics`` plus ``extra`` metrics, which keeps

    - ``per_user``: ``{"recall@20": float32 [users], ...}``, the per-user matrix each metric's
      ``topk_result`` averages (top-k metrics, AveragePopularity, TailPercentage), column k-1 per k;
    - ``extra``: the extra metrics' results, kept out of :meth:`evaluate`'s result so that the run's
      test result has exactly the keys it has without this evaluator.
    """

    def __init__(self, config: Any, reported: list[str]):
        super().__init__(config)
        self.reported = [m.lower() for m in reported]
        if "tailpercentage" in self.metric_class:
            self.metric_class["tailpercentage"] = FastTailPercentage(config)
        self.per_user: dict[str, np.ndarray] = {}
        self.extra: dict[str, float] = {}
        for metric in self.metric_class.values():
            if hasattr(metric, "topk_result"):
                metric.topk_result = self._capturing(metric)

    def _capturing(self, metric):
        original = metric.topk_result

        def topk_result(name: str, value: np.ndarray) -> dict:
            for k in metric.topk:
                self.per_user[f"{name}@{k}"] = np.asarray(value[:, k - 1], dtype=np.float32)
            return original(name, value)

        return topk_result

    def evaluate(self, dataobject) -> OrderedDict:
        self.per_user, result, extra = {}, OrderedDict(), OrderedDict()
        for name in self.metrics:
            (result if name in self.reported else extra).update(self.metric_class[name].calculate_metric(dataobject))
        self.extra = dict(extra)
        return result


def tail_definition(train_dataset: Any, n_groups: int = LONGTAIL_GROUPS) -> dict | None:
    """The long tail as the benchmark's long-tail charts define it, in RecBole's ``tail_ratio`` terms.

    :func:`recbole_mm.analysis.degree_groups` cuts the items with training interactions into
    ``n_groups`` groups by training degree, only where the degree changes; the tail is every group but
    the first (most popular), i.e. the items whose training degree is at most the second group's highest.
    RecBole's TailPercentage reads an integer ``tail_ratio`` > 1 as exactly that degree bound; a bound of 1
    is given as the fraction of items it covers (RecBole reads 1 as 100 %). Items without training
    interactions are outside RecBole's tail (its item counts come from training), as they form a group of
    their own in the charts. None when the degrees allow a single group (no tail).
    """
    from recbole_mm.analysis import degree_groups

    degree = np.bincount(train_dataset.inter_feat[train_dataset.iid_field].numpy(), minlength=train_dataset.item_num)
    _, bounds = degree_groups(degree, n_groups)
    seen = [b for b in bounds if tuple(b) != (0, 0)]
    if len(seen) < 2:
        return None
    top = int(seen[1][1])
    positive = degree[1:][degree[1:] > 0]
    n_tail = int((positive <= top).sum())
    ratio = top if top > 1 else (n_tail + 0.5) / len(positive)
    return {"tail_ratio": ratio, "max_degree": top, "items": n_tail,
            "groups": f"degree groups 2-{len(seen)} of {len(seen)}"}


def evaluate_test(trainer: Any, test_data: Any, train_data: Any, load_best_model: bool = True,
                  show_progress: bool = False) -> tuple[dict, dict | None]:
    """``trainer.evaluate(test_data)`` with its result unchanged, plus the details: ``{"users": raw user
    ids, "per_user": {metric@k: float32 values}, "beyond_accuracy": {...}, "tail": tail_definition}``.

    The details need a one-process full-sort ranking evaluation on a trainer with RecBole's collector and
    evaluator; otherwise they are None with ``{"unavailable": why}`` instead.
    """
    from recbole.data.dataloader import FullSortEvalDataLoader
    from recbole.utils import EvaluatorType

    config = trainer.config
    why = None
    if not config["single_spec"]:
        why = "per-user metrics need a one-process run"
    elif not isinstance(test_data, FullSortEvalDataLoader) or config["eval_type"] != EvaluatorType.RANKING:
        why = "per-user metrics need full-sort ranking evaluation (eval_args mode: full)"
    elif not hasattr(trainer, "eval_collector") or not hasattr(trainer, "evaluator"):
        why = f"{type(trainer).__name__} has no RecBole collector/evaluator"
    if why:
        return trainer.evaluate(test_data, load_best_model=load_best_model, show_progress=show_progress), \
            {"unavailable": why}
    reported = list(config["metrics"])
    lowered = {m.lower() for m in reported}
    tail = tail_definition(train_data.dataset)
    extra = [m for m in BEYOND_ACCURACY if m.lower() not in lowered and (m != "TailPercentage" or tail)]
    overrides: dict[str, Any] = {"metrics": reported + extra}
    if tail and "tailpercentage" not in lowered:  # a run that asked for TailPercentage keeps its tail_ratio
        overrides["tail_ratio"] = tail["tail_ratio"]
    view = ConfigView(config, **overrides)
    collector, evaluator = PerUserCollector(view), DetailedEvaluator(view, reported)
    collector.data_collect(train_data)
    saved = trainer.eval_collector, trainer.evaluator
    trainer.eval_collector, trainer.evaluator = collector, evaluator
    try:
        result = trainer.evaluate(test_data, load_best_model=load_best_model, show_progress=show_progress)
    finally:
        trainer.eval_collector, trainer.evaluator = saved
    dataset = test_data._dataset
    users = np.asarray(dataset.id2token(dataset.uid_field, collector.users.numpy())).astype(str)
    everything = {**(result or {}), **evaluator.extra}
    beyond = {k: float(v) for k, v in everything.items() if k.split("@")[0] in {m.lower() for m in BEYOND_ACCURACY}}
    return result, {"users": users, "per_user": evaluator.per_user, "beyond_accuracy": beyond,
                    "tail": tail if "tail_ratio" in overrides else None}


# ---- storage ------------------------------------------------------------------------------------
def encode_per_user(details: dict) -> dict:
    """Per-user values as JSON-safe base64 (float32 values, users as one newline-joined string)."""
    return {"users": "\n".join(details["users"].tolist()),
            "values": {name: base64.b64encode(np.ascontiguousarray(v, dtype="<f4").tobytes()).decode()
                       for name, v in details["per_user"].items()}}


def decode_per_user(encoded: dict) -> dict[str, np.ndarray]:
    """Inverse of :func:`encode_per_user`: ``{"users": str array, "<metric@k>": float32 array, ...}``."""
    users = np.asarray(encoded["users"].split("\n") if encoded["users"] else [], dtype=str)
    arrays = {"users": users}
    for name, text in encoded["values"].items():
        values = np.frombuffer(base64.b64decode(text), dtype="<f4").astype(np.float32)
        if len(values) != len(users):
            raise RecBoleMMError(f"per-user metric {name}: {len(values)} values for {len(users)} users")
        arrays[name] = values
    return arrays


def write_per_user(path: Path, arrays: dict[str, np.ndarray],
                   elsewhere: str = "give --out a folder you can write to") -> None:
    """Write ``arrays`` (users + float32 metrics) to ``path`` as a compressed ``.npz``, atomically
    (:func:`recbole_mm.storage.atomic_write`: a failed write is one line and leaves nothing behind)."""
    from recbole_mm import storage

    storage.make_folder(path.parent, "the per-user metrics folder", elsewhere)
    with storage.atomic_write(path, "per-user metrics", elsewhere) as tmp:
        np.savez_compressed(tmp.file, **arrays)


def read_per_user(path: Path) -> dict[str, np.ndarray]:
    """The arrays of a per-user ``.npz`` (plain arrays only: nothing is unpickled)."""
    try:
        with np.load(path, allow_pickle=False) as data:
            return {name: data[name] for name in data.files}
    except (OSError, ValueError) as err:
        raise RecBoleMMError(f"per-user metrics {path}: {err}; delete the file and rerun the benchmark with "
                             "--fill-missing to compute them again") from err


# ---- benchmark cells ----------------------------------------------------------------------------
def cell_fields(details: dict | None) -> dict:
    """What a benchmark cell's process reports of :func:`evaluate_test`'s details (JSON-safe)."""
    if not details or "unavailable" in details:
        return {"per_user": {"unavailable": (details or {}).get("unavailable", "no test details")}}
    return {"beyond_accuracy": details["beyond_accuracy"], "tail": details["tail"],
            "per_user_encoded": encode_per_user(details)}


def store_per_user(result: dict, out: Path, relative: str) -> dict:
    """A cell's result with its encoded per-user values written to ``out / relative`` (a ``.npz``) and
    replaced by ``per_user: {file, users, metrics}`` (the cache holds the reference, not the values)."""
    encoded = result.get("per_user_encoded")
    if encoded is None:
        return result
    arrays = decode_per_user(encoded)
    write_per_user(out / relative, arrays)
    rest = {k: v for k, v in result.items() if k != "per_user_encoded"}
    return {**rest, "per_user": {"file": relative, "users": int(len(arrays["users"])),
                                 "metrics": sorted(k for k in arrays if k != "users")}}


def has_per_user(cell: dict) -> bool:
    """Whether a finished cell says what its per-user metrics are (stored, or why there are none): cells
    cached before per-user metrics existed do not."""
    return "per_user" in cell


def run_values(out: Path, chosen: dict, metrics: list[str]) -> tuple[dict, list[str]]:
    """label → metric → :class:`recbole_mm.stats.RunValues` from the stored per-user values of each run's
    finished cells, and the labels left out (a cell without per-user values, or a file gone), with why."""
    from recbole_mm.stats import RunValues, user_means

    runs, untested = {}, []
    for label, entry in chosen.items():
        cells = [c for c in entry["cells"] if "failed" not in c]
        if not cells:
            continue
        stored = [c.get("per_user") or {} for c in cells]
        missing = [s.get("unavailable", "cached before per-user metrics existed") for s in stored if "file" not in s]
        gone = [s["file"] for s in stored if "file" in s and not (out / s["file"]).exists()]
        if missing or gone:
            untested.append(f"{label} ({missing[0] if missing else 'file ' + gone[0] + ' is missing'})")
            continue
        arrays = [read_per_user(out / s["file"]) for s in stored]
        runs[label] = {}
        for metric in metrics:
            if all(metric in a for a in arrays):
                users, means = user_means([(a["users"], a[metric]) for a in arrays])
                runs[label][metric] = RunValues(users, means, [float(c["test"][metric]) for c in cells])
    return runs, untested

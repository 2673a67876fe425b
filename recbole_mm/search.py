"""Search on validation inside a benchmark plan, with RecBole's ``HyperTuning`` (hyperopt).

A run of a plan may carry, instead of a ``grid``::

    search: {algo: tpe, max_evals: 20, seed: 0, space: {loguniform: {learning_rate: [-9.2, -4.6]},
                                                         choice: {reg_weight: [0.0, 1.0e-4]}}}

``algo``: ``random``, ``tpe`` (RecBole's ``bayes``) or ``exhaustive`` (every combination of a ``choice``-only
space; ``max_evals`` is then the space's size). ``space`` is RecBole's ``params_dict`` (``choice``,
``uniform``, ``quniform``, ``loguniform``; read as data, never evaluated). ``seed`` (default 0) seeds
hyperopt, so a rerun proposes the same points and finds them in the cache; ``early_stop`` (default
RecBole's 10) stops after that many trials without a better score. Each trial is a benchmark cell with
the run's first seed, scored by its best validation score (the run's ``valid_metric``: Recall@20 in
this repository's dataset configs); test metrics never reach the search. The chosen point then runs
the run's other seeds, as a grid's does.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

from recbole_mm.errors import RecBoleMMError

ALGOS = {"random": "random", "tpe": "bayes", "exhaustive": "exhaustive"}
SPACE_TYPES = {"choice": "a list of values", "uniform": "[low, high]", "quniform": "[low, high, q]",
               "loguniform": "[log low, log high]"}
_ARITY = {"uniform": 2, "quniform": 3, "loguniform": 2}


def check_search(search: Any, where: str) -> None:
    """A plan run's ``search`` is well-formed; otherwise one line naming ``where`` and the fix."""
    example = "e.g. search: {algo: tpe, max_evals: 20, space: {choice: {reg_weight: [0.0, 1.0e-4]}}}"
    if not isinstance(search, dict):
        raise RecBoleMMError(f"{where}: search must be a mapping, {example}")
    unknown = sorted(set(search) - {"algo", "max_evals", "space", "seed", "early_stop"})
    if unknown:
        raise RecBoleMMError(f"{where}: search has unknown keys {unknown}; it takes algo, max_evals, space, seed, "
                             f"early_stop ({example})")
    algo = search.get("algo")
    if algo not in ALGOS:
        raise RecBoleMMError(f"{where}: search algo {algo!r} is not one of {', '.join(ALGOS)}")
    for key in ("max_evals", "seed", "early_stop"):
        value = search.get(key)
        needed = key == "max_evals" and algo != "exhaustive"
        if (value is None and needed) or (value is not None and (not isinstance(value, int) or isinstance(value, bool)
                                                                 or value < (1 if key != "seed" else 0))):
            raise RecBoleMMError(f"{where}: search {key} must be a {'positive' if key != 'seed' else 'non-negative'} "
                                 f"integer, got {value!r} ({example})")
    space = search.get("space")
    if not isinstance(space, dict) or not space:
        raise RecBoleMMError(f"{where}: search space must map a kind ({', '.join(SPACE_TYPES)}) to "
                             f"{{parameter: range}}, {example}")
    for kind, params in space.items():
        if kind not in SPACE_TYPES:
            raise RecBoleMMError(f"{where}: search space kind {kind!r} is not one of {', '.join(SPACE_TYPES)}")
        if algo == "exhaustive" and kind != "choice":
            raise RecBoleMMError(f"{where}: exhaustive search enumerates choice lists only; {kind} is continuous "
                                 "(use algo random or tpe, or list the values under choice)")
        if not isinstance(params, dict) or not params:
            raise RecBoleMMError(f"{where}: search space {kind} must map parameter names to {SPACE_TYPES[kind]}")
        for name, values in params.items():
            ok = isinstance(values, list) and (len(values) > 0 if kind == "choice" else
                                               len(values) == _ARITY[kind] and all(isinstance(v, (int, float))
                                                                                   for v in values))
            if not ok:
                raise RecBoleMMError(f"{where}: search space {kind}.{name} must be {SPACE_TYPES[kind]}, got {values!r}")


def plain(value: Any) -> Any:
    """hyperopt's numpy scalars as Python values (a cell's config is plain data)."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value


class _TrialFailed(Exception):
    pass


def search_point(search: dict, label: str, score: Callable[[dict], float | None]) -> tuple[dict | None, list[dict]]:
    """Run RecBole's HyperTuning over ``search``; ``score(point)`` trains one cell and returns its best
    validation score (None when the cell failed, which hyperopt then skips). Returns the chosen point
    (RecBole's best: the first trial with the highest score; None when every trial failed) and every
    trial's point in order."""
    import hyperopt
    from recbole.trainer import HyperTuning

    class Tuner(HyperTuning):
        def trial(self, params):
            try:
                return super().trial(params)
            except _TrialFailed:
                return {"status": hyperopt.STATUS_FAIL}

        def run(self):
            # RecBole's run() leaves hyperopt unseeded: a rerun would propose other points than the cache holds.
            hyperopt.fmin(self.trial, self.space, algo=self.algo, max_evals=self.max_evals,
                          early_stop_fn=self.early_stop_fn, rstate=np.random.default_rng(int(search.get("seed", 0))),
                          show_progressbar=False)

    points: list[dict] = []

    def objective(config_dict: dict, config_file_list: Any = None) -> dict:
        point = {k: plain(v) for k, v in sorted(config_dict.items())}
        points.append(point)
        value = score(point)
        if value is None:
            raise _TrialFailed
        return {"model": label, "best_valid_score": value, "valid_score_bigger": True,
                "best_valid_result": {"score": value}, "test_result": "(not computed: the search sees validation only)"}

    tuner = Tuner(objective, params_dict=search["space"], algo=ALGOS[search["algo"]],
                  max_evals=search.get("max_evals") or 1, early_stop=search.get("early_stop", 10))
    tuner.run()
    if tuner.best_params is None:
        return None, points
    return {k: plain(v) for k, v in sorted(tuner.best_params.items())}, points

"""Fixes 7, 15, 16 (RecBole 1.2.1's ``recbole/trainer/hyper_tuning.py``): exhaustive search under hyperopt
>= 0.2.7, the trial log cut at every colour change, and the ``eval`` of a params file's ``choice`` lines.
Each can be deleted on its own when RecBole fixes that place."""

from __future__ import annotations

import contextlib
import re
import sys
from typing import Any

import numpy as np


# recbole/trainer/hyper_tuning.py:117 seeds a np.random.RandomState, but hyperopt >= 0.2.7 samples
# with the Generator API (rng.integers); the only hyperopt that imports without pkg_resources is
# 0.3.0. Same algorithm, with the generator type hyperopt expects.
def _hyperopt_rng(seed: Any) -> Any:
    from importlib.metadata import version

    major, minor, patch = (int(p) for p in re.findall(r"\d+", version("hyperopt"))[:3])
    if (major, minor, patch) >= (0, 2, 7):
        return np.random.default_rng(seed)
    return np.random.RandomState(seed)


def exhaustive_search(new_ids: list, domain: Any, trials: Any, seed: Any,
                      nbMaxSucessiveFailures: int = 1000) -> list:  # noqa: N803 (RecBole's name)
    """Draw configurations not tried before from ``domain`` (RecBole's exhaustive search)."""
    from hyperopt import pyll
    from hyperopt.base import miscs_update_idxs_vals

    def signature(vals: dict) -> int:
        return hash(frozenset((key, value[0] if len(value) > 0 else None) for key, value in vals.items()))

    seen = {signature(trial["misc"]["vals"]) for trial in trials.trials}
    rng = _hyperopt_rng(seed)
    docs = []
    for new_id in new_ids:
        for _attempt in range(nbMaxSucessiveFailures + 1):
            idxs, vals = pyll.rec_eval(
                domain.s_idxs_vals, memo={domain.s_new_ids: [new_id], domain.s_rng: rng}
            )
            if signature(vals) not in seen:
                break
        else:
            return []  # the space is exhausted
        result = domain.new_result()
        misc = dict(tid=new_id, cmd=domain.cmd, workdir=domain.workdir)
        miscs_update_idxs_vals([misc], idxs, vals)
        docs.extend(trials.new_trial_docs([new_id], [None], [result], [misc]))
    return docs


# hyper_tuning.py:413 runs hyperopt's fmin with its default progress bar, which sends stdout and
# stderr through hyperopt's DummyTqdmFile (std_out_err_redirect_tqdm.py): every write() becomes a
# line of its own. print(a, b) writes in pieces (hyper_tuning.py:347 "running parameters:" / dict),
# and RecBole's logger goes through colorama (utils/logger.py: colorama.init), which writes each
# colour run separately: every trial's log lines came out cut at each colour change. The same bar,
# with stdout and stderr passed on in whole lines.
class _LineBufferedTqdmFile:
    """A stream for use under a tqdm bar: text is passed to ``tqdm.write`` one whole line at a time."""

    def __init__(self, file: Any) -> None:
        self.file = file
        self._pending = ""

    def write(self, text: str) -> int:
        from tqdm import tqdm

        *lines, self._pending = (self._pending + text).split("\n")
        for line in lines:
            tqdm.write(line, file=self.file)
        return len(text)

    def flush(self) -> None:
        # No partial line here: colorama flushes after every colour run, in the middle of a line.
        getattr(self.file, "flush", lambda: None)()

    def finish(self) -> None:
        """Pass on a last line without its newline."""
        if self._pending:
            self.write("\n")

    def __getattr__(self, name: str) -> Any:  # isatty, encoding, fileno, ... of the real stream
        return getattr(self.file, name)


@contextlib.contextmanager
def hyperopt_progress(initial: int, total: int) -> Any:
    """hyperopt's progress bar (``tqdm_progress_callback``), with whole-line stdout/stderr under it."""
    from tqdm import tqdm

    streams = sys.stdout, sys.stderr
    wrapped = [_LineBufferedTqdmFile(stream) for stream in streams]
    sys.stdout, sys.stderr = wrapped
    try:
        with tqdm(total=total, file=streams[0], postfix={"best loss": "?"}, dynamic_ncols=True,
                  unit="trial", initial=initial) as bar:
            yield bar
    finally:
        for stream in wrapped:
            stream.finish()
        sys.stdout, sys.stderr = streams  # also drops colorama's wrappers added by the trials


def hyper_tuning_run(self: Any) -> None:
    """``HyperTuning.run`` with :func:`hyperopt_progress` as fmin's progress bar."""
    from hyperopt import fmin

    fmin(self.trial, self.space, algo=self.algo, max_evals=self.max_evals, early_stop_fn=self.early_stop_fn,
         show_progressbar=hyperopt_progress)
    if self.display_file is not None:
        self.plot_hyper()


# hyper_tuning.py:239 eval()s the value of every `choice` line of a params file; the same lines are read
# here with recbole_mm's literal parser (config_files.parse_setting), and a bad line is one error naming it.
def build_space_from_file(file: str) -> dict:
    """``HyperTuning._build_space_from_file``: ``name choice [v1, v2]``, ``name uniform low,high``,
    ``name quniform low,high,q``, ``name loguniform low,high`` per line, values parsed as data."""
    from hyperopt import hp

    from recbole_mm.config_files import parse_setting
    from recbole_mm.config_specs import ConfigError

    bounds = {"uniform": 2, "quniform": 3, "loguniform": 2}
    space = {}
    with open(file, encoding="utf-8") as fp:
        for number, line in enumerate(fp, start=1):
            parts = line.strip().split(" ")
            if len(parts) < 3:
                continue
            name, kind, text = parts[0], parts[1], "".join(parts[2:])
            where = f"params file {file}, line {number}"
            if kind == "choice":
                values = parse_setting(text)
                if not isinstance(values, (list, tuple)) or not values:
                    raise ConfigError(f"{where}: choice {text!r} is not a list of values; write e.g. "
                                      f"{name} choice [0.01,0.001]")
                space[name] = hp.choice(name, list(values))
            elif kind in bounds:
                numbers = [parse_setting(v) for v in text.split(",")]
                if len(numbers) != bounds[kind] or not all(
                        isinstance(v, (int, float)) and not isinstance(v, bool) for v in numbers):
                    raise ConfigError(f"{where}: {kind} needs {bounds[kind]} numbers separated by commas, got {text!r}")
                space[name] = getattr(hp, kind)(name, *(float(v) for v in numbers))
            else:
                raise ConfigError(f"{where}: unknown parameter type {kind!r}; use choice, uniform, quniform or loguniform")
    return space


def install() -> None:
    """Fix 7 (``exhaustive_search``), 15 (``HyperTuning.run``) and 16 (``_build_space_from_file``)."""
    import recbole.trainer.hyper_tuning as hyper_tuning

    hyper_tuning.exhaustive_search = exhaustive_search
    hyper_tuning.HyperTuning.run = hyper_tuning_run
    hyper_tuning.HyperTuning._build_space_from_file = staticmethod(build_space_from_file)

"""One-command comparison of models on datasets over seeds, through run_recbole's protocol.

    python -m recbole_mm.benchmark --datasets tiktok --models BPR LightGCN VBPR GUME MMGEF --seeds 999 1000 1001
    python -m recbole_mm.benchmark --plan benchmarks/tiktok.yaml benchmarks/amazon-baby.yaml --jobs 2

A plan (yaml) names ``datasets``, ``seeds`` and ``runs``: label → ``{model: NAME, <config overrides>,
grid: {key: [values, ...]}, seeds: [...]}`` (a run's own ``seeds`` replace the plan's, e.g. one seed for
ablations). Each cell (dataset, label, grid point, seed) runs in a fresh process, its result is cached
in ``<out>/<dataset>.cells.json`` under a key made of the cell's **resolved** RecBole config and a hash
of the code it runs (the package, its model and dataset yaml files): a rerun skips finished cells of the
same config and code, runs again what a change to either touched, and tries failed cells again (a
failed cell is reported with its error, not dropped); the report says which cells came from the cache
and from which commit. A grid is searched with the first seed and its point chosen by the best
**validation** score; the remaining seeds then run that point. ``--jobs N`` runs N cells at a time,
each with cores/N threads (full-seed runs before single-seed extras). Writes
``<out>/<name>.md`` / ``.csv`` (``<name>``: the dataset's, or the plan's ``report: NAME``, e.g. for a
cold-start plan beside a dataset's main one; test metrics at the best-validation epoch, mean ± std over seeds,
best epoch, seconds per training epoch and per evaluation, peak memory, parameter count, and per run
what its config changes from the dataset's and model's defaults), ``<name>.configs.json`` (every
run's full resolved config), ``<name>-curves.png`` (loss and valid score per epoch) and, with
``--longtail``, ``<name>-longtail.png`` (per-popularity-group metrics of each run's first seed; a
plan's ``longtail: [label, ...]`` charts only those runs).

Rigour (docs/benchmarks.md): each cell screens its split for leakage before training
(:mod:`recbole_mm.leakage`) and stores its per-user test metrics, from RecBole's evaluator, beside the cache
(``<out>/<dataset>.per-user/<key>.npz``, :mod:`recbole_mm.evaluation`) with RecBole's beyond-accuracy metrics
(ItemCoverage, GiniIndex, AveragePopularity, TailPercentage @20, tail = the long-tail charts' groups 2-5). The
report compares every run with the column's best and with the plan's ``reference: LABEL`` over the same users
(:mod:`recbole_mm.stats`: bootstrap interval, paired t and Wilcoxon, Holm) and marks significant differences. A
run may carry ``search: {algo: random|tpe|exhaustive, max_evals: N, space: {...}}`` instead of a grid
(:mod:`recbole_mm.search`, RecBole's HyperTuning on validation). ``--format latex`` also writes
``<name>.tex`` (:mod:`recbole_mm.latex`). ``--fill-missing`` reuses cached cells of matching settings from any code,
as ``--report-only`` does, and runs the missing ones and those without per-user metrics.

The package's rooms: :mod:`~recbole_mm.benchmark.plan` (reading and checking plans, the cells they make),
:mod:`~recbole_mm.benchmark.cells` (a cell's resolved config, code version, cache key, and the run of one
cell), :mod:`~recbole_mm.benchmark.cache` (the locked per-dataset cache),
:mod:`~recbole_mm.benchmark.runner` (the scheduler that runs missing cells in subprocesses),
:mod:`~recbole_mm.benchmark.report` (tables, charts) and :mod:`~recbole_mm.benchmark.command` (the command line).
"""

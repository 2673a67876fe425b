"""The rigour parts of a benchmark report: beyond-accuracy columns, significance marks and section,
the leakage-screen section and the LaTeX table (:mod:`recbole_mm.benchmark` wires them in).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from recbole_mm import latex, stats
from recbole_mm.evaluation import BEYOND_ACCURACY, run_values
from recbole_mm.leakage import report_lines

BEYOND_COLUMNS = [f"{m.lower()}@20" for m in BEYOND_ACCURACY]
SIGNIFICANCE_METRICS = ["recall@20", "ndcg@20"]
# Per-column digits: AveragePopularity is a count of training interactions, not a rate.
DIGITS = {"averagepopularity@20": 1}


def bigger_is_better(key: str) -> bool:
    """RecBole's direction of a metric (``smaller = True`` on GiniIndex, AveragePopularity, ...)."""
    from recbole.evaluator.register import smaller_metrics

    return key.split("@")[0] not in smaller_metrics


@dataclass
class Rigour:
    """What the report adds to each row and below the table."""

    main: list[str]  # runs with the plan's full seeds: ranked for bold, candidates for the column's best
    reference: str | None
    comparisons: list[stats.Comparison] = field(default_factory=list)
    marks: dict = field(default_factory=dict)
    untested: list[str] = field(default_factory=list)
    best: dict = field(default_factory=dict)  # column → labels shown in bold


def analyse(chosen: dict, seeds: list[int], out: Path, reference: str | None, rows: dict[str, dict]) -> Rigour:
    """Comparisons of the finished runs over their per-user metrics, and the bold places.

    ``rows``: label → :func:`recbole_mm.benchmark.report.summarize` row."""
    main = [label for label, entry in chosen.items() if len(entry.get("seeds", seeds)) >= len(seeds)]
    runs, untested = run_values(out, chosen, SIGNIFICANCE_METRICS)
    comparisons = stats.compare_table(runs, SIGNIFICANCE_METRICS, main, reference)
    rigour = Rigour(main, reference, comparisons, stats.marks(comparisons), untested)
    table = table_rows(chosen, rows, main)
    for key in columns_of(rows):
        rigour.best[key] = {label for label, rank in latex.ranks(table, latex.Column(key, bigger_is_better(key),
                                                                                      DIGITS.get(key, 4))).items()
                            if rank == 1}
    return rigour


def columns_of(rows: dict[str, dict]) -> list[str]:
    """Metric columns some row has a value for (benchmark METRICS and the beyond-accuracy ones)."""
    from recbole_mm.benchmark.report import METRICS

    return [key for key in METRICS + BEYOND_COLUMNS if any(key in row for row in rows.values())]


def table_rows(chosen: dict, rows: dict[str, dict], main: list[str]) -> list[latex.Row]:
    """The summarised rows as :class:`recbole_mm.latex.Row` (metric columns only), main runs flagged."""
    return [latex.Row(label, {k: v for k, v in row.items() if "@" in k}, label in main, row.get("failed"))
            for label, row in rows.items() if label in chosen]


def decorate(label: str, key: str, text: str, rigour: Rigour) -> str:
    """A markdown cell: bold when the column's best (among the full-seed runs), then its marks."""
    if text != "-" and label in rigour.best.get(key, ()):
        text = f"**{text}**"
    return text + rigour.marks.get((label, key), "")


def beyond_note(chosen: dict) -> str:
    """What the beyond-accuracy columns are, with the tail of this dataset."""
    tails = {(t["max_degree"], t["items"], t["groups"]) for e in chosen.values() for c in e["cells"]
             if "failed" not in c and (t := c.get("tail"))}
    tail = ("; tail = " + "; ".join(f"items with 1-{d} training interactions ({n} items: the long-tail chart's {g})"
                                    for d, n, g in sorted(tails))) if tails else ""
    return ("Beyond accuracy (RecBole's metrics on each run's test top-20 lists, mean ± std over seeds): "
            "itemcoverage@20 = share of all items recommended to someone (higher: more of the catalogue), "
            "giniindex@20 = inequality of how often items are recommended (lower: more even), "
            "averagepopularity@20 = mean training interactions of the recommended items (lower: less popular), "
            f"tailpercentage@20 = share of recommended items in the long tail (higher: more tail){tail}. "
            "A `-` in these four columns: a cell cached before they existed.")


def significance_lines(rigour: Rigour) -> list[str]:
    lines = stats.markdown_lines(rigour.comparisons, rigour.untested)
    if rigour.reference:
        lines.insert(2, f"Reference run (`reference` in the plan): {rigour.reference}.")
        lines.insert(3, "")
    return lines


def leakage_lines(chosen: dict) -> list[str]:
    cells = [c for e in chosen.values() for c in e["cells"] + e.get("grid_cells", []) if "failed" not in c]
    choices = [f"{label}: {e['chosen_by']}" for label, e in chosen.items() if e.get("chosen_by")]
    return report_lines(cells, choices)


def write_latex(path: Path, dataset: str, chosen: dict, rows: dict[str, dict], seeds: list[int], rigour: Rigour,
                command: str) -> Path:
    """``<name>.tex``: the main table (Recall and NDCG @10/@20, the beyond-accuracy columns)."""
    keys = [k for k in ["recall@10", "recall@20", "ndcg@10", "ndcg@20", *BEYOND_COLUMNS] if k in columns_of(rows)]
    columns = [latex.Column(k, bigger_is_better(k), DIGITS.get(k, 4)) for k in keys]
    reference = (f"; $^{{\\dagger}}$: from {latex.escape(rigour.reference)}" if rigour.reference else "")
    extras = " (rows below the line: their own seeds)" if any(label not in rigour.main for label in rows) else ""
    caption = (f"Test metrics on {latex.escape(dataset)}, mean $\\pm$ std over seeds "
               f"{latex.escape(', '.join(map(str, seeds)))}{extras}. Best in bold, "
               "second underlined among the runs with all seeds. $^{*}$: significantly different from the "
               f"column's best{reference} (paired t-test over test users, Holm-corrected, $p<{stats.ALPHA}$)."
               + (f" {latex.legend(columns)}; tail: the long-tail degree groups 2-5." if latex.legend(columns) else ""))
    text = latex.table(table_rows(chosen, rows, rigour.main), columns, rigour.marks, command, caption,
                       f"tab:{dataset}")
    from recbole_mm import storage

    storage.write_text(path, text, "benchmark LaTeX table", "give --out a folder you can write to")
    return path

"""The README and docs/ say what the repository holds: tables match the files they quote, and every link
stays inside the repository (or goes to a paper's or project's site)."""

from __future__ import annotations

import csv
import re
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import pandas as pd
import pytest

from conftest import REPO

README = REPO / "README.md"
PAGES = [README, *sorted((REPO / "docs").glob("*.md"))]
# Hand-written pages whose decimal figures must come from a results file or a test (the model specs
# quote papers and MMRec's logs, with their sources beside them).
OWN_PAGES = [README, *(REPO / "docs" / f"{name}.md" for name in (
    "install", "data", "command-line", "protocol", "benchmarks", "multi-process", "checkpoints", "recbole-compat"))]
# The only sites a page may link to: papers and the projects recbole_mm builds on or compares with.
# Anything else (a machine's path, a sibling checkout such as ../shared, a local server) is not there
# for a reader of a fresh clone.
ALLOWED_HOSTS = {"recbole.io", "github.com", "arxiv.org", "doi.org", "dl.acm.org", "pytorch.org", "pypi.org",
                 "drive.google.com"}

_LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")  # [text](target "title")
_REFERENCE = re.compile(r"^\s*\[[^\]]+\]:\s*(\S+)", re.M)  # [name]: target
_URL = re.compile(r"\bhttps?://[^\s)>\]`'\"]+", re.I)  # bare web addresses too


def links(text: str) -> list[str]:
    """Every link target in a markdown text: inline links and images, reference definitions, bare URLs."""
    found = _LINK.findall(text) + _REFERENCE.findall(text)
    bare = [url.rstrip(".,;:") for url in _URL.findall(text)]
    return found + [url for url in bare if url not in found]


def anchors(path: Path) -> set[str]:
    """GitHub's anchors for the headings of a markdown file."""
    out = set()
    for line in path.read_text(encoding="utf-8").splitlines():
        match = re.match(r"#{1,6}\s+(.*)", line)
        if match:
            title = re.sub(r"[^\w\- ]", "", match.group(1).strip().lower())
            out.add(title.replace(" ", "-"))
    return out


def link_problem(page: Path, target: str) -> str | None:
    """Why ``target`` (a link on ``page``) points outside the repository, or None if it does not."""
    parts = urlsplit(target)
    if parts.scheme:
        if parts.scheme not in ("http", "https"):
            return f"{parts.scheme}: links are not allowed"
        host = (parts.hostname or "").removeprefix("www.")
        if host not in ALLOWED_HOSTS:
            return f"host {host!r} is not a paper's or project's site (ALLOWED_HOSTS)"
        return None
    if target.startswith("/") or parts.netloc:
        return "an absolute path exists only on one machine"
    file = page if not parts.path else (page.parent / parts.path).resolve()
    if not file.is_relative_to(REPO.resolve()):
        return "leaves the repository"
    if not file.exists():
        return "no such file in the repository"
    if parts.fragment and file.suffix == ".md" and parts.fragment not in anchors(file):
        return f"{file.name} has no heading #{parts.fragment}"
    return None


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_links_stay_in_the_repository(page):
    text = page.read_text(encoding="utf-8")
    problems = [f"{target}: {why}" for target in links(text) if (why := link_problem(page, target))]
    # Paths into a sibling checkout or one machine's folders are wrong even when not written as links.
    problems += [f"mentions {word}" for word in ("../shared", "/work/", "/tmp/") if word in text]
    assert not problems, f"{page.name}: " + "; ".join(problems)


def test_link_rule_catches_what_a_clone_lacks(tmp_path):
    page = REPO / "docs" / "data.md"
    assert link_problem(page, "../results/tiktok.md") is None
    assert link_problem(page, "../README.md#datasets") is None
    assert link_problem(page, "https://arxiv.org/abs/2308.07222") is None
    assert "leaves the repository" in link_problem(page, "../../shared/docs/recbole-compat.md")
    assert "no such file" in link_problem(page, "recbole-compat-audit.md")
    assert "no heading" in link_problem(page, "../README.md#no-such-section")
    assert "absolute path" in link_problem(page, "/work/main/README.md")
    assert "not allowed" in link_problem(page, "file:///etc/passwd")
    assert "ALLOWED_HOSTS" in link_problem(page, "http://localhost:8000/x")
    assert links("[a](b.md) ![c](d.png \"t\")\n[e]: f.md\nsee https://pypi.org/x.") == \
        ["b.md", "d.png", "f.md", "https://pypi.org/x"]


# ---- tables quoted from results/*.csv ------------------------------------------------------------
def markdown_tables(text: str, marker: str) -> list[tuple[str, list[dict[str, str]]]]:
    """Tables that follow a ``<!-- {marker}: ARG -->`` comment line, as (ARG, rows by header)."""
    lines = text.splitlines()
    tables = []
    for i, line in enumerate(lines):
        match = re.fullmatch(rf"<!-- {re.escape(marker)}: (.*?) -->", line.strip())
        if not match:
            continue
        block = []
        for row in lines[i + 1:]:
            if not row.startswith("|"):
                break
            block.append([cell.strip() for cell in row.strip().strip("|").split("|")])
        header, body = block[0], block[2:]
        tables.append((match.group(1), [dict(zip(header, cells)) for cells in body]))
    return tables


def check_results_table(csv_name: str, rows: list[dict[str, str]]) -> list[str]:
    """Cells of a quoted table that differ from the results csv (row by model, column by header)."""
    with open(REPO / csv_name, newline="", encoding="utf-8") as f:
        source = {row["model"]: row for row in csv.DictReader(f)}
    wrong = []
    for row in rows:
        model = row["model"]
        if model not in source:
            wrong.append(f"{model}: not a row of {csv_name}")
            continue
        for column, cell in row.items():
            if column != "model" and source[model].get(column) != cell:
                wrong.append(f"{model} / {column}: {cell!r}, {csv_name} has {source[model].get(column)!r}")
    return wrong


def test_readme_results_table_matches_the_results_csv():
    tables = markdown_tables(README.read_text(encoding="utf-8"), "results table")
    assert tables, "the README's results table lost its <!-- results table: results/<name>.csv --> marker"
    for csv_name, rows in tables:
        assert not check_results_table(csv_name, rows)
        with open(REPO / csv_name, newline="", encoding="utf-8") as f:
            # "3", "1", "1 (2 failed)", or empty for a run without a finished seed
            multi_seed = [row["model"] for row in csv.DictReader(f) if int((row["seeds"] or "0").split()[0]) > 1]
        # Every model with more than one finished seed is there, not a chosen few.
        assert sorted(row["model"] for row in rows) == sorted(multi_seed)


def test_results_table_check_catches_a_changed_cell():
    rows = markdown_tables(README.read_text(encoding="utf-8"), "results table")[0][1]
    csv_name = markdown_tables(README.read_text(encoding="utf-8"), "results table")[0][0]
    changed = [dict(row) for row in rows]
    column = next(c for c in changed[0] if c != "model")
    changed[0][column] = "0.1052 ± 0.0023"  # the README's stale GUME cell before it was checked
    assert check_results_table(csv_name, changed) == [
        f"{changed[0]['model']} / {column}: '0.1052 ± 0.0023', {csv_name} has {rows[0][column]!r}"]
    assert check_results_table(csv_name, [{"model": "NoSuchModel", column: "0.1"}])


def test_figures_come_from_results_or_tests():
    """Four-decimal figures in the hand-written pages are cells of a results file or values a test checks."""
    sources = "".join(p.read_text(encoding="utf-8") for p in [*(REPO / "results").glob("*.csv"),
                                                              *(REPO / "results").glob("*.md"),
                                                              *(REPO / "tests").glob("test_*.py")])
    missing = {f"{page.name}: {number}" for page in OWN_PAGES
               for number in re.findall(r"(?<![\d.])\d\.\d{4}(?!\d)", page.read_text(encoding="utf-8"))
               if number not in sources}
    assert not missing, sorted(missing)


# ---- the datasets tables --------------------------------------------------------------------------
def _count(cell: str) -> int:
    return int(cell.replace(",", ""))


def _inter_file(name: str) -> Path:
    folder = REPO / "dataset" / name
    return next(folder.glob("*.inter"))


@pytest.mark.parametrize("page", [README, REPO / "docs" / "data.md"], ids=lambda p: p.name)
def test_datasets_tables_match_the_shipped_files(page):
    tables = markdown_tables(page.read_text(encoding="utf-8"), "datasets table")
    assert len(tables) == 1
    rows = tables[0][1]
    assert sorted(row["name"].split()[0].strip("`") for row in rows) == sorted(
        p.name for p in (REPO / "dataset").iterdir() if p.is_dir())
    for row in rows:
        name = row["name"].split()[0].strip("`")
        inter = pd.read_csv(_inter_file(name), sep="\t", usecols=["userID", "itemID", "x_label"])
        splits = inter["x_label"].value_counts()
        assert _count(row["users"]) == inter["userID"].nunique(), name
        assert _count(row["items"]) == inter["itemID"].nunique(), name
        assert [_count(c) for c in row["train / valid / test"].split("/")] == [int(splits[i]) for i in range(3)], name
        for modality, dim in re.findall(r"(\w+) (\d+)-d", row["features"]):
            shape = np.load(REPO / "dataset" / name / f"{modality}_feat.npy", mmap_mode="r").shape
            assert shape == (inter["itemID"].max() + 1, int(dim)), (name, modality)


# ---- commands quoted in the pages ----------------------------------------------------------------
def test_quoted_recbole_mm_commands_exist():
    """Every ``recbole-mm WORD`` in a page's code is a subcommand of the real command, or training."""
    from recbole_mm.cli import SUBCOMMANDS

    wrong = []
    for page in PAGES:
        for line in page.read_text(encoding="utf-8").splitlines():
            for word in re.findall(r"(?:^|[\s`])recbole-mm ([^\s`]+)", line):
                if not (word.startswith("-") or word in SUBCOMMANDS or word.isupper()):  # SUBCOMMAND, a placeholder
                    wrong.append(f"{page.name}: recbole-mm {word}")
    assert not wrong, wrong


# ---- the front page -------------------------------------------------------------------------------
def test_readme_is_a_short_front_page_that_opens_with_the_two_commands():
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) <= 150
    assert lines[3:5] == [
        "bash scripts/setup.sh && .venv/bin/python run_recbole_mm.py --model=GUME --dataset=tiktok   # main job",
        "bash scripts/setup.sh && .venv/bin/python -m pytest -q tests                                 # tests",
    ]
    # CI runs the README's test command.
    assert ".venv/bin/python -m pytest -q tests" in (REPO / ".ci" / "run").read_text(encoding="utf-8")


# ---- the package layout ----------------------------------------------------------------------------
def test_layout_table_names_every_module_of_the_package():
    """docs/layout.md's table is the note of what lives where: every module and sub-package of recbole_mm
    (model files aside) has a row, and every row names something that is there."""
    package = REPO / "recbole_mm"
    rows = markdown_tables((REPO / "docs" / "layout.md").read_text(encoding="utf-8"), "layout table")[0][1]
    listed = [row["module"].strip("`") for row in rows]
    present = {p.name + ("/" if p.is_dir() else "") for p in package.iterdir()
               if (p.is_dir() and (p / "__init__.py").is_file()) or p.suffix == ".py"}
    assert sorted(listed) == sorted(present)
    assert all(row["purpose"] for row in rows)


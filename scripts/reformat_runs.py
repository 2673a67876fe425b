"""Rewrite the "Runs" section of a benchmark report written before per-run config changes existed.

Older reports listed each run's whole resolved config (about 3,000 characters of JSON, including the
benchmark machine's absolute ``data_path``). This replaces each such config with what the benchmark now
prints: the keys that differ from the dataset's and the model's defaults as the current code resolves
them (``recbole_mm.benchmark.report.config_changes``). Keys introduced after a run are not listed for it. The hand-written notes (``<name>.notes.md``) are
spliced in afresh, as the benchmark appends them. Every number of the table stays as it was.

    python scripts/reformat_runs.py results/tiktok.md results/amazon-baby.md
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import recbole_mm  # noqa: F401  (shims before recbole)
from recbole_mm.benchmark.cells import portable_config, resolve_config
from recbole_mm.benchmark.report import config_changes

LINE = re.compile(r"^(  - seed \d+: valid [0-9.]+, best epoch \S+ of \d+); config `(\{.*\})`$")


def reformat(path: Path) -> int:
    """Rewrite ``path`` in place; returns the number of run lines changed."""
    lines, changed, defaults = path.read_text().splitlines(), 0, {}
    for i, line in enumerate(lines):
        match = LINE.match(line)
        if not match:
            continue
        config = json.loads(match.group(2))
        # The runs used the dataset folder of the checkout they ran in (another path than this one's), and
        # recorded RecBole's use_gpu = True that today's dump corrects to the device actually used (cpu).
        if str(config.get("data_path", "")).rstrip("/").endswith(f"dataset/{config['dataset']}"):
            config.pop("data_path")
        config.pop("use_gpu", None)
        config = portable_config(config)
        key = (config["model"], config["dataset"])
        if key not in defaults:
            defaults[key] = resolve_config(*key, {})
        # feature_source is the text of the missing-features message, reworded since; not a setting.
        changes = {k: v for k, v in config_changes(config, defaults[key]).items()
                   if k not in ("use_gpu", "feature_source")}
        lines[i] = (f"{match.group(1)}; changes `{json.dumps(changes, sort_keys=True, default=str)}` "
                    "(against today's defaults)")
        changed += 1
    notes = path.with_name(path.stem + ".notes.md")
    if notes.exists():  # the block between the last image and "## Runs" is the notes file, as written then
        images = max(i for i, line in enumerate(lines) if line.startswith("!["))
        runs = lines.index("## Runs")
        lines[images + 1:runs] = ["", notes.read_text().rstrip(), ""]
    if not any(line.startswith("Code: ") for line in lines):
        lines[3:3] = ["", "Code: these cells ran before the benchmark recorded the commit and code hash of each cell; "
                      "the table is kept as measured, its Runs section rewritten by `python scripts/reformat_runs.py`."]
    text = "\n".join(lines) + "\n"
    text = text.replace("the exact config of every run is listed under Runs",
                        "what each run's config changes from today's dataset and model defaults is listed under Runs "
                        "(keys introduced after a run are not listed for it)")
    path.write_text(text)
    return changed


if __name__ == "__main__":
    for name in sys.argv[1:]:
        print(f"{name}: {reformat(Path(name))} run lines rewritten")

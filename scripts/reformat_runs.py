"""Rewrite the "Runs" section of a benchmark report written before per-run config changes existed.

Older reports listed each run's whole resolved config (about 3,000 characters of JSON, including the
benchmark machine's absolute ``data_path``). This replaces each such config with what the benchmark now
prints: the keys that differ from the dataset's and the model's defaults as the current code resolves
them (``recbole_mm.benchmark.config_changes``). Only the Runs lines change; every number stays as it was.

    python scripts/reformat_runs.py results/tiktok.md results/amazon-baby.md
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import recbole_mm  # noqa: F401  (shims before recbole)
from recbole_mm.benchmark import config_changes, portable_config, resolve_config

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
        changes = {k: v for k, v in config_changes(config, defaults[key]).items() if k != "use_gpu"}
        lines[i] = (f"{match.group(1)}; changes `{json.dumps(changes, sort_keys=True, default=str)}` "
                    "(against today's defaults)")
        changed += 1
    text = "\n".join(lines) + "\n"
    text = text.replace("the exact config of every run is listed under Runs",
                        "what each run's config changes from today's dataset and model defaults is listed under Runs")
    path.write_text(text)
    return changed


if __name__ == "__main__":
    for name in sys.argv[1:]:
        print(f"{name}: {reformat(Path(name))} run lines rewritten")

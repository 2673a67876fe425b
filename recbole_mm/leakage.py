"""Leakage screen of a run's split, checked before training and summarised in benchmark reports.

A run is refused (:class:`LeakageError`) when

- a test (user, item) pair is also a training or a validation pair (test and valid must be disjoint),
- under the cold-start protocol, a held-out (valid or test) item has a training interaction,
- the epoch would be chosen on anything but the validation split (no valid split, or the valid loader
  is the test loader).

:func:`screen_split` returns the counts behind each check, which a benchmark cell records with what
chose its epoch; :func:`report_lines` turns the cells' records into the report's "Leakage screen".
"""

from __future__ import annotations

from typing import Any

import numpy as np

from recbole_mm.errors import RecBoleMMError


class LeakageError(RecBoleMMError):
    """The split lets test (or held-out) information into training or model selection."""


def _pairs(loader: Any) -> np.ndarray:
    """Distinct (user, item) pairs of a loader's interactions, as ``user * n_items + item``."""
    dataset = loader._dataset
    users = dataset.inter_feat[dataset.uid_field].numpy().astype(np.int64)
    items = dataset.inter_feat[dataset.iid_field].numpy().astype(np.int64)
    return np.unique(users * int(dataset.item_num) + items)


def screen_split(config: Any, train_data: Any, valid_data: Any, test_data: Any) -> dict:
    """The counts of the leakage checks on the loaders a run trains, validates and tests with."""
    train, test = _pairs(train_data), _pairs(test_data)
    valid = _pairs(valid_data) if valid_data else np.zeros(0, dtype=np.int64)
    screen = {
        "train_pairs": int(len(train)), "valid_pairs": int(len(valid)), "test_pairs": int(len(test)),
        "test_in_train": int(np.isin(test, train).sum()),
        "test_in_valid": int(np.isin(test, valid).sum()),
        "valid_in_train": int(np.isin(valid, train).sum()),
        "cold_start": None,
        # RecBole's early stopping keeps the epoch with the best valid_metric on the loader fit() validates on.
        "epoch_chosen_by": {"metric": str(config["valid_metric"]).lower(),
                            "split": "valid" if valid_data and valid_data is not test_data else
                            ("test" if valid_data is test_data and valid_data else "none (the last epoch)")},
    }
    groups = getattr(train_data._dataset, "cold_start_item_ids", None)
    if groups:
        dataset = train_data._dataset
        held_out = np.concatenate([groups["valid"], groups["test"]])
        train_items = dataset.inter_feat[dataset.iid_field].numpy()
        screen["cold_start"] = {"held_out_items": int(len(held_out)),
                                "held_out_in_train": int(np.isin(held_out, train_items).sum())}
    return screen


def problems(screen: dict) -> list[str]:
    """What a screen found wrong, one phrase each (empty: the split passes)."""
    found = []
    if screen["test_in_train"]:
        found.append(f"{screen['test_in_train']} of {screen['test_pairs']} test (user, item) pairs are also training pairs")
    if screen["test_in_valid"]:
        found.append(f"{screen['test_in_valid']} test (user, item) pairs are also validation pairs")
    cold = screen.get("cold_start")
    if cold and cold["held_out_in_train"]:
        found.append(f"{cold['held_out_in_train']} of the {cold['held_out_items']} cold-start held-out items have "
                     "training interactions")
    if screen["epoch_chosen_by"]["split"] != "valid":
        found.append(f"the epoch is chosen on {screen['epoch_chosen_by']['split']}, not on a validation split")
    return found


def check_split(config: Any, train_data: Any, valid_data: Any, test_data: Any) -> dict:
    """:func:`screen_split`, raising :class:`LeakageError` (one line) when a check fails."""
    screen = screen_split(config, train_data, valid_data, test_data)
    found = problems(screen)
    if found:
        raise LeakageError(f"leakage screen of dataset {config['dataset']}: " + "; ".join(found)
                           + "; fix the split (the .inter file's x_label or eval_args) before comparing models")
    return screen


def report_lines(cells: list[dict], choices: list[str]) -> list[str]:
    """The report's leakage-screen section from the finished cells' records and how each run's grid
    point or search point was chosen (``choices``, one phrase per run that chose one)."""
    screened = [c["leakage"] for c in cells if c.get("leakage")]
    unscreened = len(cells) - len(screened)
    lines = ["## Leakage screen", ""]
    if not cells:
        return lines + ["No finished cell to screen."]
    lines.append(f"Checked in each cell before training ({len(screened)} of {len(cells)} finished cells screened"
                 + (f"; {unscreened} ran before the screen existed, from the cache" if unscreened else "") + "):")
    if screened:
        def total(key):
            return sum(s[key] for s in screened)

        worst = [p for s in screened for p in problems(s)]
        lines += [
            f"- test (user, item) pairs also in train: {total('test_in_train')}; also in valid: "
            f"{total('test_in_valid')} (of {max(s['test_pairs'] for s in screened)} test pairs per cell)",
            f"- valid pairs also in train (reported, not refused): {total('valid_in_train')}",
        ]
        cold = [s["cold_start"] for s in screened if s.get("cold_start")]
        if cold:
            lines.append(f"- cold-start held-out items with training interactions: "
                         f"{sum(c['held_out_in_train'] for c in cold)} (of {max(c['held_out_items'] for c in cold)} "
                         f"held out; {len(cold)} cold-start cells)")
        chosen = sorted({f"{s['epoch_chosen_by']['metric']} on {s['epoch_chosen_by']['split']}" for s in screened})
        lines.append(f"- each cell's epoch chosen by early stopping on: {', '.join(chosen)}")
        if worst:
            lines.append(f"- **FAILED**: {'; '.join(sorted(set(worst)))}")
    lines.append("- grid and search points chosen on: " + ("; ".join(choices) if choices else "no run has a grid or search"))
    return lines

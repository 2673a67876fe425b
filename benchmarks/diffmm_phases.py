"""CPU seconds of DiffMM's phases on TikTok (seed 999, one thread): the diffusion pass, the graph rebuild and one
BPR batch (forward, views, contrast, backward), the breakdown of an epoch in docs/diffmm.md.

    OMP_NUM_THREADS=1 PYTHONPATH=$PWD python benchmarks/diffmm_phases.py

Prints one line per phase with ``time.process_time`` seconds (this process's CPU time).
"""

from __future__ import annotations

import sys
import time

import torch


def main() -> None:
    import recbole_mm  # noqa: F401  (registers the plugin models)
    from recbole.data import data_preparation
    from recbole.utils import get_model, init_seed

    from recbole_mm.quick_start import create_dataset, make_config

    torch.set_num_threads(1)
    sys.argv = sys.argv[:1]  # RecBole's Config reads --key=value words from the command line
    config = make_config("DiffMM", "tiktok", config_dict={"seed": 999, "state": "WARNING", "show_progress": False})
    train_data, _, _ = data_preparation(config, create_dataset(config))
    init_seed(config["seed"], True)
    model = get_model("DiffMM")(config, train_data._dataset)
    model.train()

    def timed(label: str, fn) -> None:
        start = time.process_time()
        fn()
        print(f"{label}: {time.process_time() - start:.2f} CPU s", flush=True)

    timed("diffusion pass (train_denoisers)", model.train_denoisers)
    timed("graph rebuild (rebuild_graphs)", model.rebuild_graphs)
    batch = next(iter(train_data))
    for _ in range(3):
        timed("one BPR batch (calculate_loss + backward)", lambda: model.calculate_loss(batch).backward())


if __name__ == "__main__":
    main()

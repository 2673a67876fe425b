"""Where a training step goes: ``torch.profiler``'s operator table over a few training batches of one model
on TikTok (one thread, seed 999), and the CPU seconds per batch (``time.process_time``, profiler included).

    OMP_NUM_THREADS=1 python benchmarks/step_profile.py LGMRec --batches 4
    OMP_NUM_THREADS=1 python benchmarks/step_profile.py PGL --batches 6 reg_weight=0.05
    OMP_NUM_THREADS=1 python benchmarks/step_profile.py DAMRS --batches 4 --shapes   # a row per input shape
    python benchmarks/make_shaped.py /tmp/elec --shape electronics     # GENERATED Electronics shape
    OMP_NUM_THREADS=1 python benchmarks/step_profile.py GUME --data-path /tmp/elec --batches 2 knn_backend=faiss

Each step is what recbole_mm's trainer does per batch (zero_grad, ``calculate_loss``, backward, the trainer's
optimizer step) on the first ``--batches`` + 1 batches of the training loader; the first batch is a warm-up and
is not profiled. The profiler's times are wall-clock per operator, so on a loaded machine read the table's shares,
not its absolute times. ``key=value`` settings override the model's defaults. ``--data-path`` runs on a data set
made by ``make_shaped.py --shape electronics`` under the shipped Amazon protocol (as ``electronics.py`` does).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model")
    parser.add_argument("settings", nargs="*", help="key=value")
    parser.add_argument("--batches", type=int, default=4)
    parser.add_argument("--rows", type=int, default=30, help="operators in the table")
    parser.add_argument("--data-path", type=Path, help="an Electronics-shaped data root (make_shaped.py)")
    parser.add_argument("--shapes", action="store_true", help="one row per operator and input shapes")
    args = parser.parse_intermixed_args()
    sys.argv = sys.argv[:1]  # RecBole's Config reads --key=value from the command line: give it none
    torch.set_num_threads(1)
    from recbole.utils import init_seed
    from torch.profiler import ProfilerActivity, profile

    from recbole_mm import quick_start
    from recbole_mm.config_files import parse_setting

    config_dict = {"seed": 999, "epochs": 1, "state": "WARNING", "show_progress": False, "save_dataset": False,
                   "save_dataloaders": False}
    config_dict.update({key: parse_setting(value) for key, value in (kv.split("=", 1) for kv in args.settings)})
    dataset_name = "tiktok"
    if args.data_path is not None:
        import electronics
        import make_shaped

        dataset_name = make_shaped.ELECTRONICS_NAME
        config_dict = {**electronics.dataset_config(args.data_path), **config_dict}
    config = quick_start.make_config(args.model, dataset_name, config_dict=config_dict)
    init_seed(config["seed"], config["reproducibility"])
    dataset = quick_start._load_checked_dataset(config)
    train_data, _, _ = quick_start.prepare_data(config, dataset)
    model = quick_start._build_model(config, train_data)
    optimizer = quick_start.make_trainer(config, model).optimizer
    model.train()
    batches = []
    for interaction in train_data:
        batches.append(interaction)
        if len(batches) > args.batches:
            break

    def step(interaction) -> None:
        optimizer.zero_grad()
        loss = model.calculate_loss(interaction)
        (sum(loss) if isinstance(loss, tuple) else loss).backward()
        optimizer.step()

    step(batches[0])
    start = time.process_time()
    with profile(activities=[ProfilerActivity.CPU], record_shapes=args.shapes) as prof:
        for interaction in batches[1:]:
            step(interaction)
    seconds = (time.process_time() - start) / (len(batches) - 1)
    print(f"{args.model}: {seconds:.3f} CPU s per batch (profiler included), {len(batches) - 1} batches")
    print(prof.key_averages(group_by_input_shape=args.shapes).table(
        sort_by="self_cpu_time_total", row_limit=args.rows, max_name_column_width=40, max_shapes_column_width=70))


if __name__ == "__main__":
    main()

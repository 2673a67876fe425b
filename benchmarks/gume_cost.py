"""GUME cost probes used for issue 14's notes (rerun on an older commit by pointing PYTHONPATH at it).

    epochs: OMP_NUM_THREADS=1 taskset -c 0 python benchmarks/gume_cost.py epochs 3
        GUME on TikTok through recbole_mm.run_recbole (seed 999): each epoch's wall and main-thread CPU
        seconds and training loss, and the run's peak RSS. CPU seconds are the steadier figure on a
        shared machine.
    memory: OMP_NUM_THREADS=1 python benchmarks/gume_cost.py memory amazon-baby 2 '{"data_path": "/tmp/shaped"}'
        peak RSS (MiB) after data, model construction, STEPS training steps and one validation pass.
"""

from __future__ import annotations

import itertools
import json
import sys
import time


def rss() -> dict:
    values = {}
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(("VmRSS", "VmHWM")):
                values[line[:5]] = round(int(line.split()[1]) / 1024)
    return values


def epochs(n: int) -> None:
    import recbole_mm
    from recbole_mm import trainer as trainers

    times = []
    original = trainers.Trainer._train_epoch

    def timed(self, *args, **kwargs):
        wall, cpu = time.perf_counter(), time.thread_time()
        result = original(self, *args, **kwargs)
        times.append((time.perf_counter() - wall, time.thread_time() - cpu))
        return result

    trainers.Trainer._train_epoch = timed
    result = recbole_mm.run_recbole(model="GUME", dataset="tiktok", saved=False,
                                    config_dict={"epochs": n, "seed": 999, "show_progress": False})
    print(json.dumps({"wall": [round(w, 2) for w, _ in times], "cpu": [round(c, 2) for _, c in times],
                      "loss": [h["train_loss"] for h in result["history"]], "peak": result["peak_memory_mb"]}))


def memory(dataset_name: str, steps: int, extra: dict) -> None:
    import torch
    from recbole.data import data_preparation
    from recbole.utils import get_model, get_trainer, init_seed

    from recbole_mm.quick_start import create_dataset, make_config

    config = make_config("GUME", dataset_name, config_dict={"epochs": 1, "show_progress": False, **extra})
    init_seed(config["seed"], config["reproducibility"])
    train_data, valid_data, _ = data_preparation(config, create_dataset(config))
    print("data", rss(), flush=True)
    model = get_model("GUME")(config, train_data._dataset)
    print("model", rss(), sum(p.numel() for p in model.parameters()), "parameters", flush=True)
    trainer = get_trainer(config["MODEL_TYPE"], config["model"])(config, model)
    model.train()
    for batch in itertools.islice(train_data, steps):
        trainer.optimizer.zero_grad()
        model.calculate_loss(batch).backward()
        trainer.optimizer.step()
    print("train", rss(), flush=True)
    with torch.no_grad():
        trainer.evaluate(valid_data, load_best_model=False, show_progress=False)
    print("eval", rss(), flush=True)


if __name__ == "__main__":
    if sys.argv[1] == "epochs":
        epochs(int(sys.argv[2]))
    else:
        memory(sys.argv[2], int(sys.argv[3]), json.loads(sys.argv[4]) if len(sys.argv) > 4 else {})

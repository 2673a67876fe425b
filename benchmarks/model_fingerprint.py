"""Fingerprint of a short training run: hashes of each model's per-epoch training losses, validation
scores and final ``state_dict``, to show that a refactoring of the model layer changes no number.

    OMP_NUM_THREADS=1 python benchmarks/model_fingerprint.py                     # the seven models, TikTok
    OMP_NUM_THREADS=1 python benchmarks/model_fingerprint.py --models GUME MGCN --epochs 3 --seed 999

Run it at two commits and compare the lines: equal hashes mean bit-identical losses and weights. Each
model goes through recbole_mm's own path (checked config, dataset, protocol, seeding, model, trainer, as
``run_recbole``), trains ``--epochs`` epochs with a validation pass after each (as a real run does: the
passes switch the models between train and eval mode), and nothing is written to disk. Losses, validation
scores and the best epoch are also printed in full (``repr``) so that a difference can be read, not only
detected.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

import recbole_mm  # noqa: E402
from recbole_mm import quick_start, registry  # noqa: E402
from recbole_mm.errors import exit_on_user_error  # noqa: E402


def state_hash(state: dict[str, torch.Tensor]) -> str:
    """sha256 over every entry's name, dtype, shape and bytes, in the state_dict's order."""
    digest = hashlib.sha256()
    for name, tensor in state.items():
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]


def text_hash(values: list) -> str:
    return hashlib.sha256(repr(values).encode()).hexdigest()[:16]


def fingerprint(model_name: str, dataset: str, seed: int, epochs: int) -> dict:
    """Train ``model_name`` for ``epochs`` epochs as ``run_recbole`` does; the numbers that identify the run."""
    with tempfile.TemporaryDirectory() as tmp:
        config = quick_start.make_config(model_name, dataset, config_dict={
            "seed": seed, "epochs": epochs, "eval_step": 1, "stopping_step": epochs + 1, "state": "WARNING",
            "show_progress": False, "checkpoint_dir": tmp, "save_dataset": False, "save_dataloaders": False,
        })
        from recbole.utils import init_seed

        init_seed(config["seed"], config["reproducibility"])
        dataset_ = quick_start._load_checked_dataset(config)
        train_data, valid_data, _ = quick_start.prepare_data(config, dataset_)
        model = quick_start._build_model(config, train_data)
        trainer = quick_start.make_trainer(config, model)
        trainer.fit(train_data, valid_data, saved=False, show_progress=False)
    losses = [record["train_loss"] for record in trainer.history]
    valid = [record.get("valid_score") for record in trainer.history]
    return {"model": model_name, "losses": losses, "loss_hash": text_hash(losses), "valid_hash": text_hash(valid),
            "state_hash": state_hash(model.state_dict()), "valid": valid, "best_epoch": trainer.best_epoch}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=sorted(registry.PLUGIN_MODELS))
    parser.add_argument("--dataset", default="tiktok")
    parser.add_argument("--seed", type=int, default=999)
    parser.add_argument("--epochs", type=int, default=3)
    args = parser.parse_args()
    sys.argv = sys.argv[:1]  # RecBole's Config reads --key=value from the command line: give it none
    print(f"# recbole_mm {recbole_mm.__version__}, torch {torch.__version__}, {torch.get_num_threads()} thread(s); "
          f"{args.dataset}, seed {args.seed}, {args.epochs} epochs")
    for name in args.models:
        result = fingerprint(name, args.dataset, args.seed, args.epochs)
        print(f"{result['model']:8} losses {result['loss_hash']} valid {result['valid_hash']} "
              f"state {result['state_hash']}  {result['losses']!r} valid {result['valid']!r} "
              f"best epoch {result['best_epoch']}", flush=True)


if __name__ == "__main__":
    exit_on_user_error(main)

"""recbole_mm's trainer: RecBole's ``Trainer`` plus a learning-rate schedule and a per-epoch record."""

from __future__ import annotations

import os
import random
import statistics
from time import perf_counter
from typing import Any

import numpy as np
import torch
from recbole.trainer import Trainer as RecBoleTrainer
from torch.optim.lr_scheduler import LambdaLR

from recbole_mm import checkpoint as ckpt
from recbole_mm.errors import CheckpointError, RecBoleMMError
from recbole_mm.speedups import (Collector, RowGradients, TableSteps, holds_large_tensors, multi_tensor,
                                 reuse_freed_memory)

LAST_SUFFIX = ".last.pth"


def last_checkpoint_file(best_file: str) -> str:
    """``saved/GUME-….pth`` → ``saved/GUME-….last.pth``: the state after the latest epoch."""
    stem = best_file[: -len(".pth")] if best_file.endswith(".pth") else best_file
    return stem + LAST_SUFFIX


def check_resume_file(resume_file: str, config: Any = None) -> str:
    """The checkpoint a resume will read (``<name>.last.pth`` when present), loaded once to check it,
    so a missing or damaged file, or (given the run's ``config``) one of another model or dataset, is one
    line before the data loads and anything is written."""
    resume_file = str(resume_file)
    last = resume_file if resume_file.endswith(LAST_SUFFIX) else last_checkpoint_file(resume_file)
    chosen = last if os.path.isfile(last) else resume_file
    stored = ckpt.load_checkpoint(chosen, map_location="cpu")["config"]
    if config is not None:
        check_same_run(stored, config, chosen)
    return chosen


def check_same_run(stored: Any, config: Any, path: str) -> None:
    """A checkpoint's stored config is of the model and dataset of ``config`` (else one line saying which)."""
    for key in ("model", "dataset"):
        if str(stored[key]) != str(config[key]):
            raise CheckpointError(f"{path} is a checkpoint of {key} {stored[key]}, not {config[key]}; resume "
                                  f"with --{key}={stored[key]} (and the run's other settings)")


def rng_state(generator: torch.Generator | None = None) -> dict:
    """The random states a training epoch consumes, as weights-only-loadable data: torch's global
    generator (model noise, dropout), numpy's (RecBole's negative sampler), Python's, and the train
    loader's own generator (its shuffle order)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "python": {"version": version, "internal": torch.tensor(internal, dtype=torch.int64), "gauss": gauss},
    }
    if generator is not None:
        state["loader"] = generator.get_state()
    return state


def set_rng_state(state: dict, generator: torch.Generator | None = None) -> None:
    """Inverse of :func:`rng_state`."""
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    p = state["python"]
    random.setstate((p["version"], tuple(int(v) for v in p["internal"].tolist()), p["gauss"]))
    if generator is not None and "loader" in state:
        generator.set_state(state["loader"])


def median_epoch_seconds(history: list[dict]) -> tuple[float | None, float | None]:
    """Median seconds per training epoch and per validation pass of a :class:`Trainer` history
    (medians: robust to a few epochs slowed by other work on the machine); None where absent."""
    train = [h["train_seconds"] for h in history]
    valid = [h["valid_seconds"] for h in history if "valid_seconds" in h]
    return (statistics.median(train) if train else None, statistics.median(valid) if valid else None)


def lr_factor(epoch: int, decay: float, every: float) -> float:
    """MMRec's schedule: the learning rate after ``epoch`` epochs is lr · decay^(epoch / every)."""
    return decay ** (epoch / every)


PROTOCOL_MARK = "_recbole_mm_protocol"  # set on a train loader once recbole_mm's protocol switches are applied


def check_protocol_applied(config: Any, train_data: Any) -> None:
    """Refuse to train when ``test_masking: train`` or ``negative_items: train`` is set but the loaders
    came from RecBole's own ``data_preparation`` (RecBole's ``run_recbole``), which ignores both."""
    if getattr(train_data, PROTOCOL_MARK, False):
        return
    asked = [f"{key}: {config[key]}" for key, default in (("test_masking", "train_valid"), ("negative_items", "all"))
             if (config[key] or default) != default]
    if asked:
        raise RecBoleMMError(
            f"{' and '.join(asked)} would be ignored: these dataloaders come from RecBole's data_preparation; "
            "use recbole_mm.run_recbole (or recbole_mm.quick_start.prepare_data) instead of RecBole's run_recbole")


class Trainer(RecBoleTrainer):
    """RecBole's ``Trainer`` that

    - on CPU, has malloc reuse freed pages (:func:`~recbole_mm.speedups.reuse_freed_memory`) when the model
      holds a tensor above glibc's largest mmap threshold (:func:`~recbole_mm.speedups.holds_large_tensors`;
      below it glibc reuses freed blocks already); ``reuse_freed_memory: True`` always, ``False`` never;
    - applies ``learning_rate_scheduler: [a, b]`` (lr · a^(epoch/b), stepped after each training epoch,
      as MMRec/GUME do; unset or ``[1.0, b]`` keeps the rate constant), for any model;
    - records, per epoch, the training loss and seconds, the validation score and seconds, and the
      best epoch on validation (``best_epoch``);
    - resumes a killed run exactly: next to RecBole's best-epoch checkpoint ``<name>.pth`` it writes
      ``<name>.last.pth`` after every epoch (atomically: a kill during the write leaves the previous
      one), holding the model, optimizer, lr schedule, early-stopping counter, best result so far,
      history and every random state; :meth:`resume_checkpoint` of either file continues from it.

    RecBole's own ``run_recbole`` finds it for plugin models through its ``<Model>Trainer`` lookup
    (:func:`register_trainers`), so that path trains with the same trainer as recbole_mm's.
    """

    def __init__(self, config, model):
        super().__init__(config, model)
        reuse = config["reuse_freed_memory"]
        if config["device"].type == "cpu" and (reuse or (reuse is None and holds_large_tensors(model))):
            reuse_freed_memory()  # the same numbers; each step reuses the last one's pages
        self.best_epoch: int | None = None
        self.history: list[dict] = []
        self._saving = False  # fit(saved=True) is running: write <name>.last.pth each epoch
        self._has_valid = False
        self._pending_rng: dict | None = None  # restored at the start of the resumed fit
        self._resumed_last = False
        self._resumed_finished = False
        schedule = config["learning_rate_scheduler"]
        self.lr_scheduler = None
        if schedule is not None:
            if not (isinstance(schedule, (list, tuple)) and len(schedule) == 2 and schedule[1] > 0):
                raise RecBoleMMError(f"learning_rate_scheduler: {schedule!r} must be [decay, every], e.g. [0.96, 50]")
            decay, every = float(schedule[0]), float(schedule[1])
            self.lr_scheduler = LambdaLR(self.optimizer, lambda epoch: lr_factor(epoch, decay, every))
        self.eval_collector = Collector(config)  # RecBole's results, without its dense positives matrix

    def _build_optimizer(self, **kwargs):
        """RecBole's optimizer with the per-step machinery every model gets (docs/adding-a-model.md):

        - Adam/AdamW run fused (torch's one-kernel-per-parameter update: the same update up to float
          rounding, several times faster on CPU than torch's default of one tensor at a time), or
          multi-tensor (``foreach``: bit for bit torch's default) for a model class that sets
          ``fused_adam = False``; RecBole's own models (LightGCN, BPR) trained here get it too;
        - embedding tables a model marks ``rows_only`` get row-sparse gradients, densified into a
          persistent buffer just before the step (:class:`~recbole_mm.speedups.RowGradients`); not with
          ``clip_grad_norm`` (which would see the sparse gradient) nor across processes (DDP);
        - feature tables a model projects whole are stepped inside the projection's backward, in row chunks,
          with the optimizer's own fused update and state (:class:`~recbole_mm.speedups.TableSteps`): no dense
          table gradient; same conditions, and only for fused Adam/AdamW.
        """
        fused = getattr(self.model, "fused_adam", True)
        optimizer = multi_tensor(super()._build_optimizer(**kwargs), fused=fused)
        self.row_gradients = self.table_steps = None
        if self.config["clip_grad_norm"] is None and self.config["single_spec"] is not False:
            self.row_gradients = RowGradients.attach(self.model, optimizer)
            self.table_steps = TableSteps.attach(self.model, optimizer)
        return optimizer

    def _train_epoch(self, train_data, epoch_idx, loss_func=None, show_progress=False):
        start = perf_counter()
        loss = super()._train_epoch(train_data, epoch_idx, loss_func=loss_func, show_progress=show_progress)
        # The last batch's gradients are dead (every batch starts with zero_grad, which sets them to None):
        # free them before evaluation allocates its score matrices, or they sit under the evaluation's peak.
        self.optimizer.zero_grad(set_to_none=True)
        total = sum(loss) if isinstance(loss, tuple) else loss
        record = {"epoch": epoch_idx, "train_loss": float(total), "train_seconds": perf_counter() - start,
                  "learning_rate": self.optimizer.param_groups[0]["lr"]}
        self.history.append(record)
        if self.lr_scheduler is not None:
            self.lr_scheduler.step()
        self._train_generator = train_data.generator if hasattr(train_data, "generator") else None
        if self._saving and not self._validates_after(epoch_idx):
            self.save_last_checkpoint(epoch_idx)
        return loss

    def _validates_after(self, epoch_idx: int) -> bool:
        return self.eval_step > 0 and self._has_valid and (epoch_idx + 1) % self.eval_step == 0

    def save_last_checkpoint(self, epoch_idx: int) -> None:
        """Write ``<name>.last.pth``: everything the next epoch needs to continue exactly."""
        if not self.config["single_spec"] and self.config["local_rank"] != 0:
            return
        finished = epoch_idx + 1 >= self.epochs or self.cur_step > self.stopping_step
        state = {
            "config": ckpt.config_to_plain(self.config),
            "epoch": epoch_idx,
            "cur_step": self.cur_step,
            "best_valid_score": float(self.best_valid_score),
            "best_valid_result": ckpt.to_plain(dict(self.best_valid_result or {}), "best_valid_result"),
            "best_epoch": self.best_epoch,
            "history": ckpt.to_plain(self.history, "history"),
            "state_dict": self.model.state_dict(),
            "other_parameter": ckpt.encode_other_parameter(self.model.other_parameter()),
            "optimizer": self.optimizer.state_dict(),
            "lr_scheduler": ckpt.to_plain(self.lr_scheduler.state_dict(), "lr_scheduler")
            if self.lr_scheduler is not None else None,
            "rng": rng_state(getattr(self, "_train_generator", None)),
            "best_model_file": os.path.basename(self.saved_model_file),
            "finished": finished,
        }
        ckpt.save_atomically(state, last_checkpoint_file(self.saved_model_file))

    def resume_checkpoint(self, resume_file):
        """Continue a run from ``<name>.last.pth`` (given it, or ``<name>.pth`` of a run that did not
        finish); otherwise (plain RecBole's checkpoint, a finished run's ``<name>.pth``) RecBole's resume
        from the checkpoint named."""
        resume_file = str(resume_file)
        last = resume_file if resume_file.endswith(LAST_SUFFIX) else last_checkpoint_file(resume_file)
        use_last = os.path.isfile(last) and (last == resume_file or not ckpt.load_checkpoint(last).get("finished"))
        state = ckpt.load_checkpoint(last if use_last else resume_file, map_location=self.device)
        check_same_run(state["config"], self.config, last if use_last else resume_file)
        if not use_last:
            if not os.path.isfile(last):
                self.logger.warning(f"no {last}: resuming from the best epoch in {resume_file}, not the last one")
            super().resume_checkpoint(resume_file)
            if self.lr_scheduler is not None:
                # Continue the schedule where it stopped: the rate for start_epoch, not for epoch 0.
                self.lr_scheduler.last_epoch = self.start_epoch - 1
                self.lr_scheduler.step()
            return
        self.model.load_state_dict(state["state_dict"])
        self.model.load_other_parameter(state.get("other_parameter"))
        self.optimizer.load_state_dict(state["optimizer"])
        if self.lr_scheduler is not None and state.get("lr_scheduler") is not None:
            self.lr_scheduler.load_state_dict(ckpt.from_plain(state["lr_scheduler"]))
        self.start_epoch = state["epoch"] + 1
        self.cur_step = state["cur_step"]
        self.best_valid_score = state["best_valid_score"]
        self.best_valid_result = state["best_valid_result"] or None
        self.best_epoch = state["best_epoch"]
        self.history = ckpt.from_plain(state["history"])
        self._pending_rng = state["rng"]
        self._resumed_last = True
        self._resumed_finished = bool(state.get("finished"))
        # Later improvements overwrite, and the test loads, the run's own best checkpoint.
        self.saved_model_file = os.path.join(os.path.dirname(last), state["best_model_file"])
        self.logger.info(f"Resuming from {last}: epoch {self.start_epoch}")

    def _valid_epoch(self, valid_data, show_progress=False):
        start = perf_counter()
        score, result = super()._valid_epoch(valid_data, show_progress=show_progress)
        if self.history:
            self.history[-1].update(valid_score=float(score), valid_seconds=perf_counter() - start)
        return score, result

    def fit(self, train_data, valid_data=None, verbose=True, saved=True, show_progress=False, callback_fn=None):
        def record_best(epoch_idx, valid_score):
            # RecBole's early_stopping resets cur_step to 0 exactly when the score improved.
            if self.cur_step == 0:
                self.best_epoch = epoch_idx
            if saved:
                self.save_last_checkpoint(epoch_idx)  # after early stopping updated its counter
            if callback_fn:
                callback_fn(epoch_idx, valid_score)

        check_protocol_applied(self.config, train_data)
        if self._resumed_last and (self._resumed_finished or self.start_epoch >= self.epochs):
            # The run had ended (epochs or early stopping): nothing left to train. RecBole would save the
            # current (last-epoch) model over the best one.
            return self.best_valid_score, self.best_valid_result
        if self._pending_rng is not None:
            # Every random state as it was after the epoch the resumed run stopped at.
            set_rng_state(self._pending_rng, getattr(train_data, "generator", None))
            self._pending_rng = None
        self._saving, self._has_valid = saved, bool(valid_data)
        try:
            return super().fit(train_data, valid_data, verbose=verbose, saved=saved,
                               show_progress=show_progress, callback_fn=record_best)
        finally:
            self._saving = False


def register_trainers(models: Any) -> None:
    """Make RecBole's ``get_trainer`` (``recbole.trainer.<Model>Trainer``) find this trainer for ``models``,
    unless RecBole already has a trainer of that name."""
    import recbole.trainer

    for name in models:
        if not hasattr(recbole.trainer, f"{name}Trainer"):
            setattr(recbole.trainer, f"{name}Trainer", Trainer)

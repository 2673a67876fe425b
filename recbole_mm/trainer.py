"""recbole_mm's trainer: RecBole's ``Trainer`` plus a learning-rate schedule and a per-epoch record."""

from __future__ import annotations

import statistics
from time import perf_counter

from recbole.trainer import Trainer as RecBoleTrainer
from torch.optim.lr_scheduler import LambdaLR

from recbole_mm.errors import RecBoleMMError
from recbole_mm.speedups import Collector, multi_tensor


def median_epoch_seconds(history: list[dict]) -> tuple[float | None, float | None]:
    """Median seconds per training epoch and per validation pass of a :class:`Trainer` history
    (medians: robust to a few epochs slowed by other work on the machine); None where absent."""
    train = [h["train_seconds"] for h in history]
    valid = [h["valid_seconds"] for h in history if "valid_seconds" in h]
    return (statistics.median(train) if train else None, statistics.median(valid) if valid else None)


def lr_factor(epoch: int, decay: float, every: float) -> float:
    """MMRec's schedule: the learning rate after ``epoch`` epochs is lr · decay^(epoch / every)."""
    return decay ** (epoch / every)


class Trainer(RecBoleTrainer):
    """RecBole's ``Trainer`` that

    - applies ``learning_rate_scheduler: [a, b]`` (lr · a^(epoch/b), stepped after each training epoch,
      as MMRec/GUME do; unset or ``[1.0, b]`` keeps the rate constant), for any model;
    - records, per epoch, the training loss and seconds, the validation score and seconds, and the
      best epoch on validation (``best_epoch``).
    """

    def __init__(self, config, model):
        super().__init__(config, model)
        self.best_epoch: int | None = None
        self.history: list[dict] = []
        schedule = config["learning_rate_scheduler"]
        self.lr_scheduler = None
        if schedule is not None:
            if not (isinstance(schedule, (list, tuple)) and len(schedule) == 2 and schedule[1] > 0):
                raise RecBoleMMError(f"learning_rate_scheduler: {schedule!r} must be [decay, every], e.g. [0.96, 50]")
            decay, every = float(schedule[0]), float(schedule[1])
            self.lr_scheduler = LambdaLR(self.optimizer, lambda epoch: lr_factor(epoch, decay, every))
        self.eval_collector = Collector(config)  # RecBole's results, without its dense positives matrix

    def _build_optimizer(self, **kwargs):
        """RecBole's optimizer, with Adam/AdamW run multi-tensor (``foreach``): torch's CPU default updates
        one tensor at a time; the multi-tensor path gives the same update bit for bit, 2-3x faster per
        step on embedding tables."""
        return multi_tensor(super()._build_optimizer(**kwargs))

    def _train_epoch(self, train_data, epoch_idx, loss_func=None, show_progress=False):
        start = perf_counter()
        loss = super()._train_epoch(train_data, epoch_idx, loss_func=loss_func, show_progress=show_progress)
        total = sum(loss) if isinstance(loss, tuple) else loss
        record = {"epoch": epoch_idx, "train_loss": float(total), "train_seconds": perf_counter() - start,
                  "learning_rate": self.optimizer.param_groups[0]["lr"]}
        self.history.append(record)
        if self.lr_scheduler is not None:
            self.lr_scheduler.step()
        return loss

    def resume_checkpoint(self, resume_file):
        super().resume_checkpoint(resume_file)
        if self.lr_scheduler is not None:
            # Continue the schedule where it stopped: the rate for start_epoch, not for epoch 0.
            self.lr_scheduler.last_epoch = self.start_epoch - 1
            self.lr_scheduler.step()

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
            if callback_fn:
                callback_fn(epoch_idx, valid_score)

        return super().fit(train_data, valid_data, verbose=verbose, saved=saved,
                           show_progress=show_progress, callback_fn=record_best)

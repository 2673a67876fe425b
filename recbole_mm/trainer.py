"""recbole_mm's trainer: RecBole's ``Trainer`` plus a learning-rate schedule and a per-epoch record."""

from __future__ import annotations

import statistics
from time import perf_counter

import torch
from recbole.evaluator import Collector as RecBoleCollector
from recbole.trainer import Trainer as RecBoleTrainer
from torch.optim.lr_scheduler import LambdaLR

from recbole_mm.errors import RecBoleMMError


def median_epoch_seconds(history: list[dict]) -> tuple[float | None, float | None]:
    """Median seconds per training epoch and per validation pass of a :class:`Trainer` history
    (medians: robust to a few epochs slowed by other work on the machine); None where absent."""
    train = [h["train_seconds"] for h in history]
    valid = [h["valid_seconds"] for h in history if "valid_seconds" in h]
    return (statistics.median(train) if train else None, statistics.median(valid) if valid else None)


def lr_factor(epoch: int, decay: float, every: float) -> float:
    """MMRec's schedule: the learning rate after ``epoch`` epochs is lr · decay^(epoch / every)."""
    return decay ** (epoch / every)


class Collector(RecBoleCollector):
    """RecBole's ``Collector`` with ``rec.topk`` (what Recall, NDCG, Precision, MAP, Hit, MRR read) built
    without RecBole's dense ``[users, items]`` int matrix of positives: membership of the top-k items in
    the batch's positive (user, item) pairs and the per-user positive counts give the same integers, at
    the cost of the top-k instead of two passes over the whole score matrix (and none of its memory)."""

    def eval_batch_collect(self, scores_tensor: torch.Tensor, interaction, positive_u: torch.Tensor,
                           positive_i: torch.Tensor) -> None:
        if not self.register.need("rec.topk"):
            return super().eval_batch_collect(scores_tensor, interaction, positive_u, positive_i)
        n_rows, n_items = scores_tensor.shape
        device = scores_tensor.device
        _, topk_idx = torch.topk(scores_tensor, max(self.topk), dim=-1)
        # Distinct positive pairs as keys row * n_items + item (RecBole sets each pair's cell to 1 once).
        keys = torch.unique(positive_u.to(device).long() * n_items + positive_i.to(device).long())
        rows = torch.arange(n_rows, device=device).unsqueeze(1)
        pos_idx = torch.isin(rows * n_items + topk_idx, keys).int()
        pos_len = torch.bincount(keys // n_items, minlength=n_rows).unsqueeze(1)  # int64, as RecBole's sum
        self.data_struct.update_tensor("rec.topk", torch.cat((pos_idx, pos_len), dim=1))
        # Everything else (rec.items, rec.meanrank, rec.score, data.label) exactly as RecBole collects it.
        setattr(self.register, "rec.topk", False)
        try:
            super().eval_batch_collect(scores_tensor, interaction, positive_u, positive_i)
        finally:
            setattr(self.register, "rec.topk", True)


class Trainer(RecBoleTrainer):
    """RecBole's ``Trainer`` that

    - applies ``learning_rate_scheduler: [a, b]`` (lr · a^(epoch/b), stepped after each training epoch,
      as MMRec/GUME do; unset or ``[1.0, b]`` keeps the rate constant), for any model;
    - records, per epoch, the training loss and seconds, the validation score and seconds, and the
      best epoch on validation (``best_epoch``);
    - runs Adam/AdamW multi-tensor (``foreach``; torch's CPU default is one tensor at a time: the same
      update bit for bit, 2-3x faster on embedding tables) and collects full-sort top-k without a dense
      positives matrix (:class:`Collector`).
    """

    def __init__(self, config, model):
        super().__init__(config, model)
        self.eval_collector = Collector(config)
        self.best_epoch: int | None = None
        self.history: list[dict] = []
        schedule = config["learning_rate_scheduler"]
        self.lr_scheduler = None
        if schedule is not None:
            if not (isinstance(schedule, (list, tuple)) and len(schedule) == 2 and schedule[1] > 0):
                raise RecBoleMMError(f"learning_rate_scheduler: {schedule!r} must be [decay, every], e.g. [0.96, 50]")
            decay, every = float(schedule[0]), float(schedule[1])
            self.lr_scheduler = LambdaLR(self.optimizer, lambda epoch: lr_factor(epoch, decay, every))

    def _build_optimizer(self, **kwargs):
        optimizer = super()._build_optimizer(**kwargs)
        if isinstance(optimizer, (torch.optim.Adam, torch.optim.AdamW)) and optimizer.defaults.get("foreach") is None:
            for group in optimizer.param_groups:
                group["foreach"] = True
        return optimizer

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

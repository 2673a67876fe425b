"""recbole_mm's trainer: RecBole's ``Trainer`` plus a per-epoch record of losses, scores and times."""

from __future__ import annotations

from time import perf_counter

from recbole.trainer import Trainer as RecBoleTrainer


class Trainer(RecBoleTrainer):
    """RecBole's ``Trainer`` that also records, per epoch, the training loss and seconds, the
    validation score and seconds, and which epoch was the best on validation (``best_epoch``).
    """

    def __init__(self, config, model):
        super().__init__(config, model)
        self.best_epoch: int | None = None
        self.history: list[dict] = []

    def _train_epoch(self, train_data, epoch_idx, loss_func=None, show_progress=False):
        start = perf_counter()
        loss = super()._train_epoch(train_data, epoch_idx, loss_func=loss_func, show_progress=show_progress)
        total = sum(loss) if isinstance(loss, tuple) else loss
        self.history.append({"epoch": epoch_idx, "train_loss": float(total), "train_seconds": perf_counter() - start})
        return loss

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

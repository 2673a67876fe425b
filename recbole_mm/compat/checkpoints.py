"""Fix 6 (torch >= 2.6): RecBole 1.2.1 pickles its ``Config`` into checkpoints, which ``weights_only`` loading
refuses; checkpoints are written as plain data and read by recbole_mm's safe loader. Delete when RecBole
writes loadable checkpoints (recbole_mm.checkpoint would then only read the old ones)."""

from __future__ import annotations

from typing import Any


# trainer.py:308 pickles the whole Config into every checkpoint; torch >= 2.6 loads with
# weights_only=True and refuses it at trainer.py:583/:323 and quick_start.py:250. Instead of
# loading unsafely, checkpoints are written as plain data (recbole_mm.checkpoint) and every
# reader of RecBole's checkpoints goes through the safe loader.
def install() -> None:
    import recbole.quick_start
    import recbole.quick_start.quick_start as qs
    from recbole.model.abstract_recommender import AbstractRecommender
    from recbole.trainer.trainer import Trainer

    from recbole_mm import checkpoint

    Trainer._save_checkpoint = checkpoint.save_trainer_checkpoint
    original_load_other = AbstractRecommender.load_other_parameter

    def load_other_parameter(self: Any, para: Any) -> None:
        original_load_other(self, checkpoint.decode_other_parameter(para))

    AbstractRecommender.load_other_parameter = load_other_parameter
    qs.load_data_and_model = load_data_and_model
    recbole.quick_start.load_data_and_model = load_data_and_model


def load_data_and_model(model_file: str, *args: Any, **kwargs: Any) -> Any:
    """RecBole's ``load_data_and_model`` through :func:`recbole_mm.quick_start.load_data_and_model`
    (imported when called: this fix is installed while recbole_mm's own modules may still be importing)."""
    from recbole_mm import quick_start

    return quick_start.load_data_and_model(model_file, *args, **kwargs)

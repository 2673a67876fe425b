"""General (user-item) recommenders of recbole_mm."""

from recbole_mm.model.general_recommender.gume import GUME
from recbole_mm.model.general_recommender.mmgef import MMGEF
from recbole_mm.model.general_recommender.vbpr import VBPR

__all__ = ["GUME", "MMGEF", "VBPR"]

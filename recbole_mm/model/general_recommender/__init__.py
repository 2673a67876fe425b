"""General (user-item) recommenders of recbole_mm."""

from recbole_mm.model.general_recommender.bm3 import BM3
from recbole_mm.model.general_recommender.gume import GUME
from recbole_mm.model.general_recommender.mgcn import MGCN
from recbole_mm.model.general_recommender.mmgef import MMGEF
from recbole_mm.model.general_recommender.vbpr import VBPR

__all__ = ["BM3", "GUME", "MGCN", "MMGEF", "VBPR"]

"""Multimodal data: MMRec-layout readers and RecBole's Dataset with item features."""

from recbole_mm.data.dataset import MultiModalDataset

__all__ = ["MultiModalDataset"]

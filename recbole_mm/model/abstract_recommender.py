"""The shared base of recbole_mm's models: RecBole's GeneralRecommender plus item features."""

from __future__ import annotations

import torch
from recbole.model.abstract_recommender import GeneralRecommender

from recbole_mm.data.dataset import MultiModalDataset
from recbole_mm.errors import DataError


class MultiModalRecommender(GeneralRecommender):
    """A ``GeneralRecommender`` that receives per-modality item features from the dataset.

    Features arrive as non-persistent buffers (they follow ``.to(device)`` but are not written into
    checkpoints: the dataset supplies them again on load). Models never open files themselves.

    Evaluation caches: :meth:`cached` memoises full-graph results while the model is in eval mode,
    so ``full_sort_predict`` computes them once per evaluation pass; ``train()``/``eval()`` clear it.
    """

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        if not isinstance(dataset, MultiModalDataset):
            raise DataError(
                f"model {config['model']} needs recbole_mm's MultiModalDataset, got {type(dataset).__name__}; "
                "import recbole_mm before building the dataset (it registers the dataset class)"
            )
        self.modalities: list[str] = list(dataset.item_features)
        for name, features in dataset.item_features.items():
            self.register_buffer(f"features_{name}", features, persistent=False)
        self._cache: dict[str, object] = {}

    def item_features(self, name: str) -> torch.Tensor:
        """Float32 ``[n_items, dim]`` features of one modality (row 0 = padding)."""
        return getattr(self, f"features_{name}")

    @property
    def fused_features(self) -> torch.Tensor:
        """All modalities concatenated along the feature axis, in declaration order."""
        return torch.cat([self.item_features(name) for name in self.modalities], dim=1)

    def cached(self, key: str, compute):
        """``compute()`` once per evaluation pass; recomputed every call while training."""
        if self.training:
            return compute()
        if key not in self._cache:
            self._cache[key] = compute()
        return self._cache[key]

    def train(self, mode: bool = True):
        self._cache.clear()
        return super().train(mode)

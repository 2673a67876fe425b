"""The shared base of recbole_mm's models: RecBole's GeneralRecommender plus item features."""

from __future__ import annotations

import torch
from recbole.model.abstract_recommender import GeneralRecommender

from recbole_mm.data.dataset import MultiModalDataset
from recbole_mm.errors import DataError, config_choice
from recbole_mm.model.graphs import KNN_BACKENDS, sparse_matmul


FEATURE_NORMS = ("none", "l2", "standard")


def normalize_features(features: torch.Tensor, how: str) -> torch.Tensor:
    """Per-modality feature scaling (``feature_norm``): ``none``; ``l2`` (each item's row to unit length);
    ``standard`` (each column to zero mean, unit variance over the items). Row 0 (padding) stays zero;
    a new tensor is returned, the dataset's is never modified.
    """
    if how == "none":
        return features
    if how not in FEATURE_NORMS:
        raise DataError(f"feature_norm: {how!r} is not one of {', '.join(FEATURE_NORMS)}; fix the model config")
    items = features[1:]
    if how == "l2":
        items = torch.nn.functional.normalize(items, dim=1)
    else:
        items = (items - items.mean(dim=0)) / items.std(dim=0).clamp_min(1e-8)
    return torch.cat([torch.zeros_like(features[:1]), items])


class _CsrCache(dict):
    """CSR copies of registered graphs; copies of the model (RecBole deep-copies it to count FLOPs)
    start empty, since CSR tensors cannot be deep-copied and are rebuilt on demand anyway."""

    def __deepcopy__(self, memo):
        return _CsrCache()


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
        # How the models' kNN item graphs are searched (graphs.knn_neighbours): exact | faiss | auto.
        self.knn_backend = config_choice(config, "knn_backend", KNN_BACKENDS, default="auto")
        how = config["feature_norm"] or "none"
        for name, features in dataset.item_features.items():
            self.register_buffer(f"features_{name}", normalize_features(features, how), persistent=False)
        self._cache: dict[str, object] = {}
        self._csr = _CsrCache()

    def item_features(self, name: str) -> torch.Tensor:
        """Float32 ``[n_items, dim]`` features of one modality (row 0 = padding)."""
        return getattr(self, f"features_{name}")

    def fused_features(self, items: torch.Tensor | None = None) -> torch.Tensor:
        """The modalities concatenated along the feature axis (declaration order), for ``items`` or all."""
        parts = [self.item_features(name) for name in self.modalities]
        if items is not None:
            parts = [part[items] for part in parts]
        return torch.cat(parts, dim=1)

    def register_graph(self, name: str, graph: torch.Tensor) -> None:
        """Keep a sparse COO graph as a buffer (it follows ``.to(device)``; not in checkpoints: it is
        rebuilt from the data)."""
        self.register_buffer(name, graph.coalesce(), persistent=False)

    def propagate(self, name: str, dense: torch.Tensor) -> torch.Tensor:
        """``graph @ dense`` for a graph registered with :meth:`register_graph`, through CSR copies of
        the graph and its transpose made once per device (much faster than COO on CPU)."""
        graph = getattr(self, name)
        key = (name, graph.device)
        if key not in self._csr:
            self._csr[key] = (graph.to_sparse_csr(), graph.t().coalesce().to_sparse_csr())
        return sparse_matmul(*self._csr[key], dense)

    def _apply(self, fn, recurse=True):
        self._csr.clear()  # device or dtype changes: rebuild the CSR copies from the moved buffers
        return super()._apply(fn, recurse)

    def cached(self, key: str, compute):
        """``compute()`` once per evaluation pass; recomputed every call while training."""
        if self.training:
            return compute()
        if key not in self._cache:
            self._cache[key] = compute()
        return self._cache[key]

    def user_item_vectors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Final (users, items) representations whose dot product is the score; ``forward`` by
        default, computed once per evaluation pass."""
        return self.cached("forward", self.forward)

    def predict(self, interaction) -> torch.Tensor:
        users, items = self.user_item_vectors()
        return (users[interaction[self.USER_ID]] * items[interaction[self.ITEM_ID]]).sum(dim=1)

    def full_sort_predict(self, interaction) -> torch.Tensor:
        users, items = self.user_item_vectors()
        return (users[interaction[self.USER_ID]] @ items.T).reshape(-1)

    def train(self, mode: bool = True):
        self._cache.clear()
        return super().train(mode)

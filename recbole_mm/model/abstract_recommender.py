"""The shared base of recbole_mm's models: RecBole's GeneralRecommender plus item features."""

from __future__ import annotations

from typing import Callable, Sequence

import torch
from recbole.model.abstract_recommender import GeneralRecommender
from torch import nn

from recbole_mm.config_check import Choice, Int, check_model_values
from recbole_mm.data.dataset import MultiModalDataset
from recbole_mm.errors import DataError, RecBoleMMError
from recbole_mm.model.graphs import (KNN_BACKENDS, adjacency_block, csr_pair, csr_rows, graph_from_neighbours,
                                    knn_neighbours, sparse_matmul)
from recbole_mm.model.losses import dot_bpr_loss
from recbole_mm.speedups import release_free_heap


FEATURE_NORMS = ("none", "l2", "standard")

# ``feature_dtype``: the dtype the feature projections multiply in (FeatureLinear).
FEATURE_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
# The schema entry of a model whose feature layers all go through FeatureLinear and projection_input
# (it declares it in its own config_schema); MultiModalRecommender's own entry allows float32 only, so a
# model that reads its features some other way refuses bfloat16 instead of silently ignoring it.
BFLOAT16_FEATURES = Choice(*FEATURE_DTYPES, none_ok=True)
FLOAT32_FEATURES_ONLY = Choice("float32", none_ok=True)
FLOAT32_FEATURES_ONLY.allowed = ("float32 (or unset): this model's feature layers have no bfloat16 path "
                                 "(docs/command-line.md lists the models that have one)")


def normalize_features(features: torch.Tensor, how: str) -> torch.Tensor:
    """Per-modality feature scaling (``feature_norm``): ``none``; ``l2`` (each item's row to unit length);
    ``standard`` (each column to zero mean, unit variance over the items). Row 0 (padding) stays zero;
    a new tensor is returned, the dataset's is never modified. The configured value is validated by
    :class:`MultiModalRecommender`'s schema; another ``how`` is a caller's bug (ValueError).
    """
    if how == "none":
        return features
    if how not in FEATURE_NORMS:
        raise ValueError(f"how must be one of {FEATURE_NORMS}, got {how!r}")
    items = features[1:]
    if how == "l2":
        items = torch.nn.functional.normalize(items, dim=1)
    else:
        items = (items - items.mean(dim=0)) / items.std(dim=0).clamp_min(1e-8)
    return torch.cat([torch.zeros_like(features[:1]), items])


# Widths up to this take exact principal components (an eigendecomposition of the covariance); wider
# tables (e.g. 4096-d CNN features) a randomized SVD, whose covariance would cost width² · items.
EXACT_PCA_MAX_WIDTH = 1024


def pca_features(features: torch.Tensor, n: int) -> torch.Tensor:
    """``feature_pca``: the items' features projected once onto their ``n`` leading principal components
    (centred over the items with content), float32 ``[n_items, n]``. Rows without content (all zero: the
    padding row 0, items a modality lacks) stay zero. A table no wider than ``n`` is returned as it is.

    Exact up to ``EXACT_PCA_MAX_WIDTH`` columns; wider tables use torch's randomized SVD (4 power
    iterations, drawn from a fixed seed without touching the global random stream, so a model's own
    random draws are the same with or without it). Each component's sign is fixed (its largest entry
    positive), so the result does not depend on the solver's sign choice.
    """
    if n >= features.shape[1]:
        return features
    content = features.abs().sum(dim=1) > 0
    content[0] = False
    rows = features[content].double()
    centred = rows - rows.mean(dim=0)
    if features.shape[1] <= EXACT_PCA_MAX_WIDTH:
        _, vectors = torch.linalg.eigh(centred.T @ centred)
        components = vectors.flip(1)[:, :n]  # eigh orders eigenvalues ascending
    else:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            _, _, components = torch.svd_lowrank(centred, q=min(n + 10, *centred.shape), niter=4)
        components = components[:, :n]
    largest = components.abs().argmax(dim=0)
    components = components * torch.sign(components[largest, torch.arange(n)])
    out = features.new_zeros(features.shape[0], n)
    out[content] = (centred @ components).to(features.dtype)
    return out


class FeatureLinear(nn.Linear):
    """``nn.Linear`` applied to item features, whose product runs in ``compute_dtype`` (``feature_dtype``).

    ``compute_dtype`` None (float32, the default): exactly ``nn.Linear``. bfloat16: the input and the
    weight are cast to bfloat16 for the matrix product (fp32 accumulation in the CPU's bf16 kernels, the
    result rounded to bf16) and the result is handed on as float32 with the float32 bias added, so the rest
    of the model, its weights and Adam's state stay float32 (the weight is a float32 master cast per call;
    an input already in bf16, :meth:`MultiModalRecommender.projection_input`, is not copied). Same
    parameters, names and random draws as ``nn.Linear``, so checkpoints and seeds carry over.
    """

    compute_dtype: torch.dtype | None = None
    # Set by recbole_mm's trainer (speedups.TableSteps): a trainable feature table read whole is then stepped
    # by the optimizer inside this layer's backward, in row chunks, instead of getting a dense gradient.
    table_steps = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.compute_dtype is None:
            if self.table_steps is not None and self.table_steps.reads(x):
                return self.table_steps.project(x, self.weight, self.bias)
            return super().forward(x)
        out = nn.functional.linear(x.to(self.compute_dtype), self.weight.to(self.compute_dtype)).float()
        return out if self.bias is None else out + self.bias


class _CsrCache(dict):
    """Tensors derived from buffers on demand (CSR copies of registered graphs, projection_input's bf16
    casts); copies of the model (RecBole deep-copies it to count FLOPs) start empty, since CSR tensors
    cannot be deep-copied and everything here is rebuilt on demand anyway."""

    def __deepcopy__(self, memo):
        return _CsrCache()


class GraphRecommender(GeneralRecommender):
    """RecBole's ``GeneralRecommender`` plus the graph machinery recbole_mm's models share: ID embeddings,
    the training edges, sparse graphs kept as buffers (:meth:`register_graph`, :meth:`propagate`) and the
    evaluation cache. It reads no item features, so a model on it (a collaborative baseline: LayerGCN)
    trains on any RecBole dataset, feature files or not; :class:`MultiModalRecommender` adds the features.

    Evaluation caches: :meth:`cached` memoises full-graph results while the model is in eval mode,
    so ``full_sort_predict`` computes them once per evaluation pass; ``train()``/``eval()`` clear it.
    """

    # The trainer runs Adam/AdamW fused for every model (recbole_mm.speedups.multi_tensor: the same update up
    # to float rounding); a model whose update must equal torch's default bit for bit sets this to False.
    fused_adam = True

    config_schema: dict = {}

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        # recbole_mm's entry points check the schema before anything runs; RecBole's own Config (plain
        # run_recbole after `import recbole_mm`) knows none, so a model built from it is checked here.
        check_model_values(config, config["model"], type(self), config.final_config_dict)
        self._cache: dict[str, object] = {}
        self._csr = _CsrCache()
        self._row_blocks: dict = {}  # (graph, device) → the last row block of it (propagate's rows)
        self._epoch_graphs: set[str] = set()  # learned graphs kept for the rest of this training epoch
        # Rows a training step of this process sees: the original models divide their L2 terms by the
        # configured batch size; under DDP each process draws train_batch_size // world_size rows and the
        # gradients are averaged over processes, so this keeps the terms' weight equal to a one-process run's.
        world_size = 1 if config["single_spec"] else config["world_size"]
        self.batch_size = max(1, config["train_batch_size"] // world_size)

    # ---- building blocks of a model's __init__ ---------------------------------------------------
    # Each creates its parameters in a fixed order (users before items, modalities in declaration
    # order), so a model that calls them where its reference creates the same tensors keeps the
    # reference's random draws.
    def id_embeddings(self, dim: int, xavier: bool = True) -> tuple[nn.Embedding, nn.Embedding]:
        """User and item ID embeddings, ``[n_users, dim]`` and ``[n_items, dim]``, re-initialised with
        ``xavier_uniform_`` (users first) as the MMRec models do. ``xavier=False`` leaves nn.Embedding's
        own init for a model whose reference applies xavier later (after creating other layers: GUME,
        BM3), so that the model does it at that point and its random draws stay in the reference's order.
        Assign them as ``self.user_embedding, self.item_embedding = self.id_embeddings(d)``."""
        users, items = nn.Embedding(self.n_users, dim), nn.Embedding(self.n_items, dim)
        if xavier:
            nn.init.xavier_uniform_(users.weight)
            nn.init.xavier_uniform_(items.weight)
        return users, items

    def interaction_edges(self, dataset) -> tuple[torch.Tensor, torch.Tensor]:
        """The training interactions as ``(users, items)`` long tensors, each pair once, sorted by user and
        then item: the edges of the user-item graph (``graphs.bipartite_adjacency``)."""
        inter = dataset.inter_matrix(form="coo")
        keys = torch.unique(torch.from_numpy(inter.row).long() * self.n_items + torch.from_numpy(inter.col).long())
        return keys // self.n_items, keys % self.n_items

    def register_graph(self, name: str, graph: torch.Tensor) -> None:
        """Keep a sparse COO graph as a buffer (it follows ``.to(device)``; not in checkpoints: it is
        rebuilt from the data; not synchronised by DDP, see :meth:`broadcast_data_buffers`)."""
        self.register_buffer(name, graph.coalesce(), persistent=False)
        # Re-registering a name (e.g. FREEDOM's graph re-sampled every epoch) drops its CSR copies.
        for key in [key for key in self._csr if key[0] == name]:
            del self._csr[key]
        for key in [key for key in self._row_blocks if key[0] == name]:
            del self._row_blocks[key]

    # ---- learned graphs, rebuilt once per training epoch (LATTICE's schedule) ---------------------
    def epoch_graph_ready(self, name: str) -> bool:
        """Whether :meth:`keep_epoch_graph` kept graph ``name`` in this training epoch. LATTICE's schedule:
        a learned graph is built with gradient on an epoch's first training batch and reused, detached, by
        the others; RecBole's trainer calls ``train()`` at the start of every epoch, which drops it. Always
        False outside training (evaluation rebuilds it from the current weights)."""
        return self.training and name in self._epoch_graphs

    def keep_epoch_graph(self, name: str, graph: torch.Tensor) -> None:
        """Register ``graph`` (detached) as graph ``name`` for the rest of this training epoch."""
        self.register_graph(name, graph.detach())
        self._epoch_graphs.add(name)

    def draw_epoch_graph(self, name: str, draw: Callable[[], torch.Tensor]) -> None:
        """Register graph ``name`` from ``draw()`` at the first training forward pass of each epoch, and keep
        it for the epoch's other batches and for evaluation (a graph never drawn yet, e.g. after loading a
        checkpoint, is drawn on first use). The references draw such graphs in ``pre_epoch_processing``
        (FREEDOM's and LayerGCN's pruned user-item graphs, DualGNN's user graph); RecBole's trainer calls
        ``train()`` at the start of every epoch, which makes the next draw due."""
        if (self.training and name not in self._epoch_graphs) or name not in self._buffers:
            self.keep_epoch_graph(name, draw())

    # ---- multi-process (DDP) runs ---------------------------------------------------------------
    def data_buffer_names(self) -> list[str]:
        """The model's own non-persistent buffers: item features, graphs and whatever else a model
        derives from the dataset (MM-GEF's fused inputs). They are the ones checkpoints leave out."""
        return sorted(self._non_persistent_buffers_set)

    @property
    def _ddp_params_and_buffers_to_ignore(self) -> list[str]:
        """Read by ``DistributedDataParallel`` when it wraps the model: these buffers are not broadcast,
        neither at wrapping (its ``_sync_module_states`` cannot broadcast sparse tensors: "No support for
        sparse tensors") nor before every training step (``broadcast_buffers``, which would send all
        item features, hundreds of MB on real data, once per batch). Every rank builds them from the same
        files, and :meth:`broadcast_data_buffers` makes rank 0's copy everyone's once, before wrapping."""
        return self.data_buffer_names() + list(self.__dict__.get("_ddp_extra_ignored", ()))

    @_ddp_params_and_buffers_to_ignore.setter
    def _ddp_params_and_buffers_to_ignore(self, names) -> None:
        # DistributedDataParallel._set_params_and_buffers_to_ignore_for_model assigns the attribute;
        # names given that way are ignored in addition to the data buffers.
        self.__dict__["_ddp_extra_ignored"] = list(names)

    def broadcast_data_buffers(self, src: int = 0) -> None:
        """Replace every rank's data buffers by rank ``src``'s (a collective: all ranks call it).

        On one machine the copies are already identical (same files, same deterministic builders; the
        2-process test checks it bit for bit), but across machines the similarity matmuls behind the kNN
        graphs may round differently and flip a tie, giving ranks different graphs. Sparse graphs are
        sent as (indices, values), which any backend can broadcast.
        """
        import torch.distributed as dist

        for name in self.data_buffer_names():
            buffer = getattr(self, name)
            if not buffer.is_sparse:
                dist.broadcast(buffer, src)
                continue
            buffer = buffer.coalesce()
            nnz = torch.tensor([buffer._nnz()], device=buffer.device)
            dist.broadcast(nnz, src)
            indices = buffer.indices().contiguous()
            values = buffer.values().contiguous()
            if dist.get_rank() != src:
                indices = indices.new_empty((indices.shape[0], int(nnz)))
                values = values.new_empty((int(nnz),))
            dist.broadcast(indices, src)
            dist.broadcast(values, src)
            graph = torch.sparse_coo_tensor(indices, values, buffer.shape, is_coalesced=True, check_invariants=False)
            self.register_buffer(name, graph, persistent=False)
        self._csr.clear()
        self._row_blocks.clear()
        self._cache.clear()

    def propagate(self, name: str, dense: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
        """``graph @ dense`` for a graph registered with :meth:`register_graph`, through CSR copies of
        the graph and its transpose made once per device (much faster than COO on CPU). ``rows``: only
        those rows of the product, ``(graph @ dense)[rows]``, at the cost of their entries only."""
        graph = getattr(self, name)
        key = (name, graph.device)
        if key not in self._csr:
            self._csr[key] = csr_pair(graph)
        if rows is None:
            return sparse_matmul(*self._csr[key], dense)
        # One batch usually asks for the same rows of a graph more than once (GUME: two propagations).
        last = self._row_blocks.get(key)
        if last is None or last[0] is not rows:
            last = self._row_blocks[key] = (rows, *csr_rows(self._csr[key][0], rows))
        return sparse_matmul(last[1], last[2], dense)

    def mean_propagation(self, name: str, embeddings: torch.Tensor, n_layers: int,
                         rows: torch.Tensor | None = None) -> torch.Tensor:
        """LightGCN's layer combination (1/(L+1)) Σ_{l=0..L} A^l E over the registered graph ``name``.

        ``rows``: only those rows of the result (a training batch's nodes), the same numbers as
        ``mean_propagation(...)[rows]``: the last layer is then propagated for those rows only.
        """
        # A running sum: stacking the L+1 layers would hold them all for the mean.
        total, layer = embeddings, embeddings
        for step in range(n_layers):
            if rows is not None and step == n_layers - 1:
                total, layer = total[rows], self.propagate(name, layer, rows)
            else:
                layer = self.propagate(name, layer)
            total = total + layer
        if rows is not None and n_layers == 0:
            total = total[rows]
        return total / (n_layers + 1)

    def bipartite_layers(self, name: str, user_input: torch.Tensor, item_inputs: Sequence[torch.Tensor],
                         n_layers: int) -> list[tuple[list[torch.Tensor], list[torch.Tensor]]]:
        """The layers A^l [E_U; X_v], l = 0..``n_layers``, of several views that share their user input E_U
        (SLMRec's ID and modality views), over a registered bipartite user-item graph ``name`` (users first,
        no user-user or item-item entries). One ``(user_layers, item_layers)`` pair of lists per item input.

        On a bipartite graph A^l [E_U; X] has user rows from E_U at even l and from X at odd l (items the other
        way round), so the views' layers are A^l [E_U; 0] + A^l [0; X_v] with one term zero in every row: the
        E_U chain is propagated once for all views and each X_v chain over one block of the graph per layer
        (the same numbers as propagating each view over the whole graph, at (1 + views) / (2 views) of the
        sparse work). Layers are shared tensors across views: :meth:`layer_means` gathers each once."""
        graph = getattr(self, name)
        key = (name, graph.device, "blocks")
        if key not in self._csr:
            users_end, nodes = self.n_users, self.n_users + self.n_items
            user_rows = adjacency_block(graph, (0, users_end), (users_end, nodes))  # [users, items]
            item_rows = adjacency_block(graph, (users_end, nodes), (0, users_end))  # [items, users]
            if user_rows._nnz() + item_rows._nnz() != graph.coalesce()._nnz():
                raise RecBoleMMError(f"graph {name!r} has user-user or item-item entries: bipartite_layers needs a "
                                     "bipartite user-item graph (use mean_propagation)")
            self._csr[key] = (csr_pair(user_rows), csr_pair(item_rows))
        user_rows, item_rows = self._csr[key]

        def chain(start: torch.Tensor, blocks: tuple) -> list[torch.Tensor]:
            layers = [start]
            for layer in range(n_layers):
                layers.append(sparse_matmul(*blocks[layer % 2], layers[-1]))
            return layers

        shared = chain(user_input, (item_rows, user_rows))  # users at even l, items at odd l
        views = []
        for item_input in item_inputs:
            own = chain(item_input, (user_rows, item_rows))  # items at even l, users at odd l
            views.append(([shared[k] if k % 2 == 0 else own[k] for k in range(n_layers + 1)],
                          [own[k] if k % 2 == 0 else shared[k] for k in range(n_layers + 1)]))
        return views

    @staticmethod
    def layer_means(stacks: Sequence[Sequence[torch.Tensor]], rows: torch.Tensor | None = None) -> list[torch.Tensor]:
        """LightGCN's layer mean (1/(L+1)) Σ_l of each list of layers in ``stacks`` (summed in layer order, as
        :meth:`mean_propagation`: the same numbers), of the rows ``rows`` only when given: the batch's rows
        are gathered before the sum, and a layer object shared by several lists is gathered once."""
        gathered: dict[int, torch.Tensor] = {}

        def rows_of(layer: torch.Tensor) -> torch.Tensor:
            if rows is None:
                return layer
            if id(layer) not in gathered:
                gathered[id(layer)] = layer[rows]
            return gathered[id(layer)]

        means = []
        for layers in stacks:
            total = rows_of(layers[0])
            for layer in layers[1:]:
                total = total + rows_of(layer)
            means.append(total / len(layers))
        return means

    def _apply(self, fn, recurse=True):
        self._csr.clear()  # device or dtype changes: rebuild the CSR copies from the moved buffers
        self._row_blocks.clear()
        return super()._apply(fn, recurse)

    def cached(self, key: str, compute):
        """``compute()`` once per evaluation pass; recomputed every call while training."""
        if self.training:
            return compute()
        if key not in self._cache:
            self._cache[key] = compute()
            # The full-graph forward's freed temporaries below the mapping threshold stay in the heap: handed
            # back before the pass's score matrices are allocated on top (GUME at the Electronics shape: the
            # validation pass peaked ~0.5 GiB higher with them).
            release_free_heap()
        return self._cache[key]

    def batch_nodes(self, interaction) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """The batch's distinct nodes (users, then items offset by ``n_users``; sorted) and the positions of
        its users, positives and negatives among them: for models whose row-wise part is computed for the
        batch's nodes only (MGCN, SMORE)."""
        batch = torch.cat([interaction[self.USER_ID], interaction[self.ITEM_ID] + self.n_users,
                           interaction[self.NEG_ITEM_ID] + self.n_users])
        nodes, rows = torch.unique(batch, return_inverse=True)
        users, pos, neg = rows.chunk(3)
        return nodes, users, pos, neg

    def batch_bpr(self, interaction, user_vectors: torch.Tensor, item_vectors: torch.Tensor
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """BPR of the batch's (user, positive, negative) triples scored by dot products of ``user_vectors`` and
        ``item_vectors`` (indexed by internal id), and the rows it gathered: ``(loss, users, positives,
        negatives)``, for the terms a model adds to it."""
        u = user_vectors[interaction[self.USER_ID]]
        pos, neg = item_vectors[interaction[self.ITEM_ID]], item_vectors[interaction[self.NEG_ITEM_ID]]
        return dot_bpr_loss(u, pos, neg), u, pos, neg

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
        if mode:
            self._epoch_graphs.clear()
        if mode != self.training:
            release_free_heap()  # training's freed temporaries, before evaluation's score matrices and back
        return super().train(mode)


class MultiModalRecommender(GraphRecommender):
    """A :class:`GraphRecommender` that receives per-modality item features from the dataset.

    Features arrive as non-persistent buffers (they follow ``.to(device)`` but are not written into
    checkpoints: the dataset supplies them again on load). Models never open files themselves.
    """

    # Keys every multimodal model reads (recbole_mm.config_check); a subclass adds its own. Each key is
    # validated here, in its schema, and nowhere else: the models read the values as they are.
    config_schema = {
        "feature_norm": Choice(*FEATURE_NORMS, none_ok=True),
        # Project every modality's features to this many principal components once, at model build
        # (pca_features; changes the model: an opt-in for wide features). Unset: the features as loaded.
        "feature_pca": Int(min=1, none_ok=True),
        # How the kNN item graphs are searched (graphs.knn_neighbours); unset: auto.
        "knn_backend": Choice(*KNN_BACKENDS, none_ok=True),
        # The dtype the feature projections multiply in (FeatureLinear; changes the model: an opt-in for
        # speed). A model with a bfloat16 path declares BFLOAT16_FEATURES in its own schema.
        "feature_dtype": FLOAT32_FEATURES_ONLY,
    }

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        if not isinstance(dataset, MultiModalDataset):
            raise DataError(
                f"model {config['model']} needs recbole_mm's MultiModalDataset, got {type(dataset).__name__}; "
                "import recbole_mm before building the dataset (it registers the dataset class)"
            )
        self.modalities: list[str] = list(dataset.item_features)
        self.knn_backend: str = config["knn_backend"] or "auto"
        self.feature_dtype: torch.dtype = FEATURE_DTYPES[config["feature_dtype"] or "float32"]
        self._feature_casts = _CsrCache()  # (modality, device) → projection_input's bf16 copy; fused tables
        how = config["feature_norm"] or "none"
        for name, features in dataset.item_features.items():
            features = normalize_features(features, how)
            if config["feature_pca"]:
                features = pca_features(features, config["feature_pca"])
            self.register_buffer(f"features_{name}", features, persistent=False)

    def item_features(self, name: str) -> torch.Tensor:
        """Float32 ``[n_items, dim]`` features of one modality (row 0 = padding), whatever ``feature_dtype``
        says: the kNN graphs and every other reader see the features as loaded."""
        if f"features_{name}" not in self._buffers and getattr(self, "_features_released", False):
            raise RecBoleMMError(f"{type(self).__name__} released its fixed '{name}' features after building "
                                 "(release_fixed_features): read its trainable tables, or do not release them")
        return getattr(self, f"features_{name}")

    def release_fixed_features(self, dataset) -> None:
        """Drop the fixed feature buffers and the dataset's loaded copy, for a model that trains copies of its
        features (:meth:`trainable_feature_tables`) and reads the fixed ones only while it builds (kNN
        graphs): the last line of such a model's ``__init__``. Saves a copy of every feature table for the
        whole run (GUME at the Electronics shape: 1 GiB); the dataset loads the files again if anything
        reads its features later (:meth:`MultiModalDataset.release_item_features`)."""
        for name in self.modalities:
            delattr(self, f"features_{name}")
        self._feature_casts.clear()
        self._features_released = True
        dataset.release_item_features()

    def _apply(self, fn, recurse=True):
        self.__dict__.get("_feature_casts", {}).clear()  # cast again from the moved float32 buffers
        return super()._apply(fn, recurse)

    def _kept(self, key: tuple, sources: Sequence[torch.Tensor], build: Callable[[], torch.Tensor]) -> torch.Tensor:
        """``build()``'s tensor derived from ``sources``, kept under ``key`` until a source changes in place
        (its version counter: a broadcast under DDP, a user's edit) or the model moves (:meth:`_apply`)."""
        stamp = tuple(source._version for source in sources)
        entry = self._feature_casts.get(key)
        if entry is None or entry[0] != stamp:
            entry = self._feature_casts[key] = (stamp, build())
        return entry[1]

    def projection_input(self, name: str) -> torch.Tensor:
        """One modality's fixed features as a :class:`FeatureLinear` reads them: :meth:`item_features`, or
        under ``feature_dtype: bfloat16`` a bf16 copy of it, cast once (per device, on first use) instead of
        on every call. Not a buffer: not in checkpoints, rebuilt after ``.to(device)``."""
        features = self.item_features(name)
        if self.feature_dtype == torch.float32:
            return features
        return self._kept((name, features.device), (features,), lambda: features.to(self.feature_dtype))

    def trainable_feature_tables(self, rows_only: bool = False) -> torch.nn.ModuleDict:
        """Per modality, a trainable ``nn.Embedding`` initialised from the features (a copy: the buffer
        stays as loaded, for building graphs), for models that fine-tune their raw features (the MMRec
        models' ``from_pretrained(feat, freeze=False)``: FREEDOM, LATTICE, BM3, MGCN).

        The tables stay float32 under ``feature_dtype: bfloat16``: they are the master copy Adam updates
        (its steps, ~lr per entry, are mostly below bf16's resolution of feature values, 2^-8 relative,
        so a bf16 table would barely move); the :class:`FeatureLinear` reading them casts per call.

        ``rows_only=True``: the model reads the tables only by calling them on the batch's item ids (never
        ``.weight`` as a whole); the trainer then gives them row-sparse gradients and the same optimizer
        step (:class:`recbole_mm.speedups.RowGradients`), which saves a dense ``[items, dim]`` gradient per
        table and step. The tables stay ordinary dense-gradient embeddings outside recbole_mm's trainer."""
        tables = torch.nn.ModuleDict({
            m: torch.nn.Embedding.from_pretrained(self.item_features(m).clone(), freeze=False) for m in self.modalities
        })
        for table in tables.values():
            table.rows_only = rows_only
            table.feature_table = True  # read whole otherwise: speedups.TableSteps
        return tables

    # ---- feature building blocks of a model's __init__ (same fixed order as the base's) ------------
    def feature_linear(self, in_features: int, out_features: int, bias: bool = True) -> FeatureLinear:
        """An ``nn.Linear`` for item features (same init and random draws) that multiplies in the
        configured ``feature_dtype`` (:class:`FeatureLinear`)."""
        layer = FeatureLinear(in_features, out_features, bias=bias)
        if self.feature_dtype != torch.float32:
            layer.compute_dtype = self.feature_dtype
        return layer

    def feature_projections(self, dim: int) -> nn.ModuleDict:
        """Per modality an ``nn.Linear(feature width, dim)`` with torch's default init (the MMRec models'
        ``image_trs``/``text_trs``), created in modality order, multiplying in ``feature_dtype``
        (:meth:`feature_linear`)."""
        return nn.ModuleDict({m: self.feature_linear(self.item_features(m).shape[1], dim) for m in self.modalities})

    def modality_weights(self, image_weight: float) -> dict[str, float]:
        """Fixed weights that mix per-modality item graphs (FREEDOM's ``mm_image_weight``): ``image_weight``
        for the image modality and the rest shared equally by the others (image + text: 0.1 / 0.9, the
        original); equal weights without an image modality or with a single one."""
        if "image" not in self.modalities or len(self.modalities) == 1:
            return {m: 1.0 / len(self.modalities) for m in self.modalities}
        rest = (1.0 - image_weight) / (len(self.modalities) - 1)
        return {m: image_weight if m == "image" else rest for m in self.modalities}

    def item_neighbours(self, k: int, features: dict[str, torch.Tensor] | None = None
                        ) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """Per modality (or per entry of ``features``, ``[n_items, dim]`` tables) the top-``k`` cosine
        neighbours of every real item: ``(indices, similarities)`` from :func:`graphs.knn_neighbours` over
        rows 1.. (item 0 is RecBole's padding and is nobody's neighbour), so index j means item j + 1.
        Searched with the configured ``knn_backend``; the features as loaded (not the trainable copies)."""
        if features is None:
            features = {m: self.item_features(m) for m in self.modalities}
        return {name: knn_neighbours(x[1:], k, backend=self.knn_backend) for name, x in features.items()}

    def knn_item_graphs(self, k: int, weighted: bool = True, normalization: str = "sym",
                        features: dict[str, torch.Tensor] | None = None,
                        neighbours: dict[str, tuple[torch.Tensor, torch.Tensor]] | None = None
                        ) -> dict[str, torch.Tensor]:
        """Per modality (or per entry of ``features``) the sparse ``[n_items, n_items]`` kNN item graph of
        :func:`graphs.graph_from_neighbours`: each real item linked to its top-``k`` neighbours, weighted
        by the similarity (or 1 with ``weighted=False``), normalised (``sym``: D^-1/2 S D^-1/2, ``row``:
        D^-1 S, ``none``); node 0 (padding) isolated. Built once in ``__init__`` from the features as
        loaded; pass ``neighbours`` (from :meth:`item_neighbours`) when the model also needs them."""
        if neighbours is None:
            neighbours = self.item_neighbours(k, features)
        return {name: graph_from_neighbours(indices, sims, weighted=weighted, normalization=normalization, offset=1)
                for name, (indices, sims) in neighbours.items()}

    def fused_features(self, items: torch.Tensor | None = None, projection: bool = False) -> torch.Tensor:
        """The modalities concatenated along the feature axis (declaration order), for ``items`` or all;
        ``projection``: of :meth:`projection_input` (the input of a :class:`FeatureLinear`).

        The concatenated table is built once per device and kept (not a buffer; rebuilt after ``.to()``), so
        a batch gathers its rows in one ``index_select`` instead of one per modality and a concatenation
        (docs/vbpr.md measures it). It holds one copy of the features, as MMRec's VBPR does
        (``item_raw_features``); with one modality it is the table itself."""
        read = self.projection_input if projection else self.item_features

        def concatenated() -> torch.Tensor:
            parts = [read(name) for name in self.modalities]
            return parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)

        # Stamped by the feature buffers themselves (a bf16 cast is a new tensor whenever they change).
        sources = [self.item_features(name) for name in self.modalities]
        table = self._kept(("fused", projection, sources[0].device), sources, concatenated)
        # index_select copies whole rows; advanced indexing (table[items]) is slower on CPU.
        return table if items is None else table.index_select(0, items)

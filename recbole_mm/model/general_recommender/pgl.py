"""PGL — Yu, Tan, Lu & Bao, "Mind Individual Information! Principal Graph Learning for Multimedia
Recommendation", AAAI 2025. Specification: docs/pgl.md (the authors' code, as MMRec ships it in pgl.py).

No item ID embeddings: an item's representation is its modalities' projected features, each L2-normalised,
side by side, x_i = [n(W_m f_i^m + b_m)]_m; a user has one free embedding per modality, side by side. A frozen
item-item graph S = Σ_m w_m Â^m (binary kNN graph of each modality, D^-1/2 A D^-1/2, mixed by fixed weights)
smooths the items, h = S^L x. LightGCN's layer mean over a *principal* user-item graph while training, over the
full normalised graph Â for evaluation (``principal_graph``):
- local (default): a sub-graph of Â's edges, a share kept degree-sensitively (∝ 1/sqrt(d_u d_i)), re-drawn
  every epoch and re-normalised;
- global: the entries ≥ 1e-3 in magnitude of a rank-reduced Â, Σ_i s_i s_{d-t+i} u_i v_iᵀ over its t = d/4
  leading singular triplets (s: Â's d leading singular values), built once.
Final u = LightGCN_u, i = LightGCN_i + h. Loss: BPR plus ``reg_weight`` × the mean of two InfoNCE terms (τ),
each between two dropout views of the batch's users' (positives') final vectors. Any number of modalities ≥ 1.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from recbole.utils import InputType
from torch import nn

from recbole_mm.config_check import Choice, Float, Int
from recbole_mm.errors import RecBoleMMError
from recbole_mm.model.abstract_recommender import BFLOAT16_FEATURES, MultiModalRecommender
from recbole_mm.model.graphs import bipartite_adjacency, degree_sensitive_keep, principal_graph, user_item_block
from recbole_mm.model.losses import info_nce


class PGL(MultiModalRecommender):
    input_type = InputType.PAIRWISE
    config_schema = {
        "feature_dtype": BFLOAT16_FEATURES,  # its feature layers all have the bf16 path
        "principal_graph": Choice("local", "global"), "edge_keep_rate": Float(min=0, max=1, min_open=True),
        "knn_k": Int(min=1), "n_mm_layers": Int(min=0), "n_ui_layers": Int(min=0), "feat_embed_dim": Int(min=1),
        "mm_image_weight": Float(min=0, max=1), "dropout": Float(min=0, max=1, max_open=True),
        "reg_weight": Float(min=0), "temperature": Float(min=0, min_open=True),
    }

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        d = config["embedding_size"]
        # Which principal graph trains the model: local (sampled) | global (SVD); the reference's ``mode`` (a key
        # named so would be taken for --model by the command line's abbreviations).
        self.mode = config["principal_graph"]
        self.edge_keep_rate = config["edge_keep_rate"]  # share of user-item edges a local sub-graph keeps
        self.n_mm_layers = config["n_mm_layers"]  # hops on the frozen item graph
        self.n_ui_layers = config["n_ui_layers"]  # LightGCN layers on the user-item graph
        self.dropout = config["dropout"]  # dropout of the two contrastive views
        self.reg_weight = config["reg_weight"]  # weight of the contrastive term
        self.temperature = config["temperature"]
        if config["feat_embed_dim"] != d:
            raise RecBoleMMError(f"PGL feat_embed_dim: {config['feat_embed_dim']} must equal embedding_size ({d}): "
                                 "users and items are scored by one dot product over the modalities' blocks")

        # One user table per modality; the reference creates them (torch's normal init) and then applies
        # xavier in modality order, so the draws follow that order.
        self.user_embeddings = nn.ModuleDict({m: nn.Embedding(self.n_users, d) for m in self.modalities})
        for m in self.modalities:
            nn.init.xavier_uniform_(self.user_embeddings[m].weight)
        # Trainable raw features (the item graph is built once from the loaded values), projected whole.
        self.raw_features = self.trainable_feature_tables()
        self.projections = self.feature_projections(d)
        self._build_graphs(config, dataset, d)
        self.release_fixed_features(dataset)  # the graphs are built; training reads the tables

    # ---- graphs: the frozen item graph, the full user-item graph, the principal graph -------------------
    def _build_graphs(self, config, dataset, d: int) -> None:
        mixing = self.modality_weights(config["mm_image_weight"])
        graphs = self.knn_item_graphs(config["knn_k"], weighted=False)
        parts = [mixing[m] * graphs[m] for m in self.modalities]
        self.register_graph("item_graph", sum(parts[1:], parts[0]))
        edge_users, edge_items = self.interaction_edges(dataset)
        self.register_buffer("edge_users", edge_users, persistent=False)
        self.register_buffer("edge_items", edge_items, persistent=False)
        self.register_graph("norm_adj", bipartite_adjacency(edge_users, edge_items, self.n_users, self.n_items))
        if self.mode == "global":
            # Â is [users + items]-square with d = embedding_size singular triplets kept, as the reference.
            self.register_graph("principal_adj", principal_graph(
                user_item_block(self.norm_adj, self.n_users, self.n_items), rank=d))

    def local_graph(self) -> torch.Tensor:
        """This epoch's local principal graph: ``edge_keep_rate`` of the user-item edges drawn without
        replacement ∝ 1/sqrt(d_u d_i), re-normalised (the reference's ``pre_epoch_processing``)."""
        keep = degree_sensitive_keep(self.edge_users, self.edge_items, self.n_users, self.n_items,
                                     1.0 - self.edge_keep_rate)
        return bipartite_adjacency(self.edge_users[keep], self.edge_items[keep], self.n_users, self.n_items)

    # ---- forward --------------------------------------------------------------------------------
    def forward(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(users, items) final representations: over the principal graph while training, else the full one."""
        if not self.training:
            graph = "norm_adj"
        elif self.mode == "global":
            graph = "principal_adj"
        else:
            self.draw_epoch_graph("local_adj", self.local_graph)
            graph = "local_adj"
        items = torch.cat([F.normalize(self.projections[m](self.raw_features[m].weight), dim=1)
                           for m in self.modalities], dim=1)
        h = items
        for _ in range(self.n_mm_layers):
            h = self.propagate("item_graph", h)
        users = torch.cat([self.user_embeddings[m].weight for m in self.modalities], dim=1)
        out = self.mean_propagation(graph, torch.cat([users, items]), self.n_ui_layers)
        return out[: self.n_users], out[self.n_users:] + h

    def calculate_loss(self, interaction) -> torch.Tensor:
        loss, u, pos, _ = self.batch_bpr(interaction, *self.forward())
        if self.reg_weight:
            # Two independent dropout views of the same rows, users' masks drawn before the positives'.
            views = [F.dropout(x, self.dropout, self.training) for x in (u, u, pos, pos)]
            contrast = (info_nce(views[0], views[1], self.temperature)
                        + info_nce(views[2], views[3], self.temperature)) / 2
            loss = loss + self.reg_weight * contrast
        return loss

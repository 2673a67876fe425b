"""MGCN — Yu et al., "Multi-View Graph Convolutional Network for Multimedia Recommendation", ACM MM 2023
(arXiv 2308.03588). Specification: docs/mgcn.md (paper + the authors' code, as in MMRec).

User-item view: H = LightGCN([E_U; E_I]) (layer mean). Per modality m, behaviour-guided purification
x̃^m = E_I ⊙ σ(W_g (W_m f^m + b_m) + b_g) of trainable raw features f^m; item-item view: (S^m)^L x̃^m on
a frozen kNN graph S^m of the initial raw features, users get R̃ · (S^m)^L x̃^m. Behaviour-aware fuser:
attention-weighted common part plus behaviour-gated specific parts (layers.attentive_fusion) → side
representation s. Final o = H + s. Loss: BPR + L2 on the batch's final vectors + InfoNCE between s and H
(users and positive items). Any number of modalities ≥ 1 (with one, the fuser degenerates: s = x/2).
"""

from __future__ import annotations

from logging import getLogger

import torch
from recbole.utils import InputType
from torch import nn

from recbole_mm.config_check import Float, Int
from recbole_mm.model.abstract_recommender import BFLOAT16_FEATURES, MultiModalRecommender
from recbole_mm.model.graphs import bipartite_adjacency, user_item_block
from recbole_mm.model.layers import attentive_fusion
from recbole_mm.model.losses import bpr_side_contrast


class MGCN(MultiModalRecommender):
    input_type = InputType.PAIRWISE
    config_schema = {
        "feature_dtype": BFLOAT16_FEATURES,  # its feature layers all have the bf16 path
        "knn_k": Int(min=1), "n_layers": Int(min=0), "n_ui_layers": Int(min=0), "reg_weight": Float(min=0),
        "cl_loss": Float(min=0), "cl_temp": Float(min=0, min_open=True),
    }

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        d = config["embedding_size"]
        self.knn_k = config["knn_k"]
        self.n_layers = config["n_layers"]  # hops on the item-item graphs
        self.n_ui_layers = config["n_ui_layers"]  # LightGCN layers on the user-item graph
        self.reg_weight = config["reg_weight"]
        self.cl_loss = config["cl_loss"]
        self.cl_temp = config["cl_temp"]
        if len(self.modalities) == 1:
            getLogger().warning("MGCN with one modality: the fuser degenerates (common part = the modality, "
                                "no specific part)")

        self.user_embedding, self.item_embedding = self.id_embeddings(d)
        # Raw features are trainable tables initialised from the files (as the original); the item-item
        # graphs below are built once from these initial values. Linear layers keep torch's default init.
        self.raw_features = self.trainable_feature_tables()
        self.projections = self.feature_projections(d)
        self.purifiers = nn.ModuleDict({m: nn.Sequential(nn.Linear(d, d), nn.Sigmoid()) for m in self.modalities})
        self.attention = nn.Sequential(nn.Linear(d, d), nn.Tanh(), nn.Linear(d, 1, bias=False))
        self.preference_gates = nn.ModuleDict({m: nn.Sequential(nn.Linear(d, d), nn.Sigmoid())
                                               for m in self.modalities})

        for m, graph in self.knn_item_graphs(self.knn_k, weighted=True, normalization="sym").items():
            self.register_graph(f"item_graph_{m}", graph)
        adjacency = bipartite_adjacency(*self.interaction_edges(dataset), self.n_users, self.n_items)
        self.register_graph("norm_adj", adjacency)
        self.register_graph("user_item_graph", user_item_block(adjacency, self.n_users, self.n_items))
        self.release_fixed_features(dataset)  # the graphs are built; training reads the tables

    def forward(self, nodes: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Node representations (users first): ``o`` (final), ``side`` (fused modalities), ``h_id``
        (user-item view) and ``attention`` ([N, M] fuser weights), for every node or, given ``nodes``,
        for those rows only (in that order)."""
        items = self.item_embedding.weight
        h_id = self.mean_propagation("norm_adj", torch.cat([self.user_embedding.weight, items]), self.n_ui_layers)
        views = []
        for m in self.modalities:
            x = items * self.purifiers[m](self.projections[m](self.raw_features[m].weight))
            for _ in range(self.n_layers):
                x = self.propagate(f"item_graph_{m}", x)
            views.append(torch.cat([self.propagate("user_item_graph", x), x]))
        if nodes is not None:
            # The fuser is row-wise: a training step needs it on the batch's rows only (~4k of the 16k
            # nodes on TikTok), not on the whole table as the reference computes it (same values).
            h_id, views = h_id.index_select(0, nodes), [v.index_select(0, nodes) for v in views]
        side, weights = attentive_fusion(views, self.attention, [self.preference_gates[m] for m in self.modalities],
                                         h_id)
        return {"o": h_id + side, "side": side, "h_id": h_id, "attention": weights}

    def calculate_loss(self, interaction) -> torch.Tensor:
        nodes, users, pos, neg = self.batch_nodes(interaction)
        out = self.forward(nodes)
        return bpr_side_contrast(out["o"], out["side"], out["h_id"], users, pos, neg, self.reg_weight,
                                 self.cl_loss, self.cl_temp, self.batch_size)

    def user_item_vectors(self) -> tuple[torch.Tensor, torch.Tensor]:
        o = self.cached("o", lambda: self.forward()["o"])
        return o[: self.n_users], o[self.n_users:]

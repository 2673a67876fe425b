"""FREEDOM — Zhou & Shen, "A Tale of Two Graphs: Freezing and Denoising Graph Structures for Multimodal
Recommendation", ACM MM 2023 (arXiv 2211.06924). Specification: docs/freedom.md (paper + MMRec's code).

A frozen item-item graph S = Σ_m w_m Â^m (binary kNN graph of each modality's raw features, D^-1/2 A D^-1/2,
mixed by fixed weights); item ID embeddings propagated over it, h = S^L E_I. LightGCN over the user-item graph,
whose edges are pruned degree-sensitively (re-sampled every epoch) while training and kept whole for evaluation.
Final u = LightGCN_u, i = LightGCN_i + h. Loss: BPR on (u, i) plus ``reg_weight`` × one BPR term per modality
scoring the users against the projected raw features. Any number of modalities ≥ 1.
"""

from __future__ import annotations

import torch
from recbole.utils import InputType

from recbole_mm.config_check import Float, Int
from recbole_mm.errors import RecBoleMMError
from recbole_mm.model.abstract_recommender import BFLOAT16_FEATURES, MultiModalRecommender
from recbole_mm.model.graphs import bipartite_adjacency, degree_sensitive_keep
from recbole_mm.model.losses import dot_bpr_loss


class FREEDOM(MultiModalRecommender):
    input_type = InputType.PAIRWISE
    config_schema = {
        "feature_dtype": BFLOAT16_FEATURES,  # its feature layers all have the bf16 path
        "knn_k": Int(min=1), "n_mm_layers": Int(min=0), "n_ui_layers": Int(min=0), "feat_embed_dim": Int(min=1),
        "mm_image_weight": Float(min=0, max=1), "dropout": Float(min=0, max=1, max_open=True),
        "reg_weight": Float(min=0),
    }

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        d = config["embedding_size"]
        self.knn_k = config["knn_k"]
        self.n_mm_layers = config["n_mm_layers"]  # hops on the frozen item graph
        self.n_ui_layers = config["n_ui_layers"]  # LightGCN layers on the user-item graph
        self.reg_weight = config["reg_weight"]  # weight of the modality BPR terms
        self.dropout = config["dropout"]  # share of user-item edges pruned per epoch
        if config["feat_embed_dim"] != d:
            raise RecBoleMMError(f"FREEDOM feat_embed_dim: {config['feat_embed_dim']} must equal embedding_size ({d}): "
                                 "the modality BPR terms score users against the projected features")

        self.user_embedding, self.item_embedding = self.id_embeddings(d)
        # Raw features are trainable tables initialised from the files (as the original); the item graph
        # is built once from these initial values. Read only by the batch's rows (calculate_loss).
        self.raw_features = self.trainable_feature_tables(rows_only=True)
        self.projections = self.feature_projections(d)
        self._build_graphs(config, dataset)
        self.release_fixed_features(dataset)  # the graphs are built; training reads the tables

    # ---- graphs, built once (the pruned one once per epoch) ---------------------------------------
    def _build_graphs(self, config, dataset) -> None:
        # S = Σ_m w_m Â^m over binary kNN graphs, mixed by the fixed weights.
        self.mixing = self.modality_weights(config["mm_image_weight"])
        graphs = self.knn_item_graphs(self.knn_k, weighted=False)
        parts = [self.mixing[m] * graphs[m] for m in self.modalities]
        self.register_graph("item_graph", sum(parts[1:], parts[0]))
        edge_users, edge_items = self.interaction_edges(dataset)
        self.register_buffer("edge_users", edge_users, persistent=False)
        self.register_buffer("edge_items", edge_items, persistent=False)
        self.register_graph("norm_adj", bipartite_adjacency(self.edge_users, self.edge_items, self.n_users, self.n_items))

    def pruned_graph(self) -> torch.Tensor:
        """This epoch's degree-sensitively pruned user-item graph (drawn once per training epoch, see
        docs/freedom.md: the original re-samples in pre_epoch_processing)."""
        keep = degree_sensitive_keep(self.edge_users, self.edge_items, self.n_users, self.n_items, self.dropout)
        return bipartite_adjacency(self.edge_users[keep], self.edge_items[keep], self.n_users, self.n_items)

    # ---- forward --------------------------------------------------------------------------------
    def forward(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(users, items) final representations: over the pruned graph while training, else the full one."""
        pruned = self.training and self.dropout > 0
        if pruned:
            self.draw_epoch_graph("pruned_adj", self.pruned_graph)
        h = self.item_embedding.weight
        for _ in range(self.n_mm_layers):
            h = self.propagate("item_graph", h)
        ego = torch.cat([self.user_embedding.weight, self.item_embedding.weight])
        out = self.mean_propagation("pruned_adj" if pruned else "norm_adj", ego, self.n_ui_layers)
        return out[: self.n_users], out[self.n_users:] + h

    def calculate_loss(self, interaction) -> torch.Tensor:
        pos, neg = interaction[self.ITEM_ID], interaction[self.NEG_ITEM_ID]
        loss, u, _, _ = self.batch_bpr(interaction, *self.forward())
        if self.reg_weight:
            for m in self.modalities:
                pos_f = self.projections[m](self.raw_features[m](pos))
                neg_f = self.projections[m](self.raw_features[m](neg))
                loss = loss + self.reg_weight * dot_bpr_loss(u, pos_f, neg_f)
        return loss

"""LATTICE — Zhang et al., "Mining Latent Structures for Multimedia Recommendation", ACM MM 2021
(arXiv 2104.09036). Specification: docs/lattice.md (paper, the authors' code and MMRec's).

Per modality m: a frozen kNN graph Â^m of the raw features (similarity-weighted, D^-1/2 S D^-1/2) and a
learned one, the top-k cosine neighbours of the projected features W_m f^m. With w = softmax(modal_weight):
S = (1 - λ) · sym(Σ_m w_m topk(cos(W_m f^m))) + λ · Σ_m w_m Â^m; h = S^L E_I. CF backbone (LightGCN over
D^-1 (A + I), or MF); final u = e_u, i = e_i + h / ‖h‖. Loss: BPR + ``reg_weight`` · ½‖u, i⁺, i⁻‖² / batch size.
The learned graph is rebuilt, with gradient, on the first batch of every epoch and used detached by the
others, as in the original. Any number of modalities ≥ 1.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from recbole.utils import InputType
from torch import nn

from recbole_mm.config_check import Choice, Float, Int, ListOf
from recbole_mm.model.abstract_recommender import BFLOAT16_FEATURES, MultiModalRecommender
from recbole_mm.model.graphs import bipartite_adjacency, edge_propagate, learned_knn_graph
from recbole_mm.model.losses import squared_l2

CF_MODELS = ("lightgcn", "mf")  # the original's ngcf backbone is not ported


class LATTICE(MultiModalRecommender):
    input_type = InputType.PAIRWISE
    config_schema = {
        "feature_dtype": BFLOAT16_FEATURES,  # its feature layers all have the bf16 path
        "knn_k": Int(min=1), "feat_embed_dim": Int(min=1), "weight_size": ListOf(Int(min=1), min_length=0),
        "lambda_coeff": Float(min=0, max=1), "n_layers": Int(min=0), "cf_model": Choice(*CF_MODELS),
        "reg_weight": Float(min=0),
    }

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        d = config["embedding_size"]
        self.knn_k = config["knn_k"]
        self.lambda_coeff = config["lambda_coeff"]  # weight of the frozen graph against the learned one
        self.n_layers = config["n_layers"]  # hops on the item graph
        self.n_ui_layers = len(config["weight_size"])  # LightGCN layers (the original's weight_size list)
        self.reg_weight = config["reg_weight"]
        self.cf_model = config["cf_model"]

        self.user_embedding, self.item_embedding = self.id_embeddings(d)
        # Raw features are trainable tables initialised from the files (as the original).
        self.raw_features = self.trainable_feature_tables()
        self.projections = self.feature_projections(config["feat_embed_dim"])
        self.modal_weight = nn.Parameter(torch.full((len(self.modalities),), 0.5))
        # The frozen graphs Â^m: similarity-weighted, D^-1/2 S D^-1/2.
        for m, graph in self.knn_item_graphs(self.knn_k, weighted=True, normalization="sym").items():
            self.register_graph(f"item_graph_{m}", graph)
        self.register_graph("norm_adj", bipartite_adjacency(*self.interaction_edges(dataset), self.n_users, self.n_items,
                                                            self_loops=True, normalization="row"))
        self.release_fixed_features(dataset)  # the graphs are built; training reads the tables

    # ---- the learned item graph -----------------------------------------------------------------
    def learned_graph(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(rows, cols, values, w)``: the normalised learned graph sym(Σ_m w_m topk(cos(W_m f^m))) as
        COO triplets, differentiable in its values, and the modality weights w = softmax(modal_weight)."""
        weights = torch.softmax(self.modal_weight, dim=0)
        projected = [self.projections[m](self.raw_features[m].weight)[1:] for m in self.modalities]
        rows, cols, values = learned_knn_graph(projected, weights, self.knn_k, self.n_items, offset=1,
                                               backend=self.knn_backend)
        return rows, cols, values, weights

    def item_propagation(self) -> torch.Tensor:
        """h = S^L E_I over the mixed graph S; on all but the first training batch of an epoch, S is that
        batch's graph, detached."""
        h = self.item_embedding.weight
        if self.epoch_graph_ready("epoch_item_graph"):
            for _ in range(self.n_layers):
                h = self.propagate("epoch_item_graph", h)
            return h
        rows, cols, values, weights = self.learned_graph()
        if self.training:
            # Detached, S is one fixed sparse matrix for the rest of the epoch: CSR propagation is much
            # faster than the differentiable gather/scatter, and sums S as the original does.
            learned = torch.sparse_coo_tensor(torch.stack([rows, cols]), values.detach(), (self.n_items, self.n_items))
            frozen = [weights[j].item() * getattr(self, f"item_graph_{m}") for j, m in enumerate(self.modalities)]
            self.keep_epoch_graph("epoch_item_graph", (1 - self.lambda_coeff) * learned
                                  + self.lambda_coeff * sum(frozen[1:], frozen[0]))
        for _ in range(self.n_layers):
            frozen = sum(weights[j] * self.propagate(f"item_graph_{m}", h) for j, m in enumerate(self.modalities))
            h = (1 - self.lambda_coeff) * edge_propagate(rows, cols, values, h, self.n_items) + self.lambda_coeff * frozen
        return h

    # ---- forward --------------------------------------------------------------------------------
    def forward(self) -> tuple[torch.Tensor, torch.Tensor]:
        h = F.normalize(self.item_propagation(), dim=1)
        if self.cf_model == "mf":
            return self.user_embedding.weight, self.item_embedding.weight + h
        ego = torch.cat([self.user_embedding.weight, self.item_embedding.weight])
        out = self.mean_propagation("norm_adj", ego, self.n_ui_layers)
        return out[: self.n_users], out[self.n_users:] + h

    def calculate_loss(self, interaction) -> torch.Tensor:
        loss, u, pos, neg = self.batch_bpr(interaction, *self.forward())
        return loss + self.reg_weight * squared_l2(u, pos, neg, denominator=self.batch_size)

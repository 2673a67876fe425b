"""DualGNN — Wang, Wei, Yin, Li, Zhu & Nie, "DualGNN: Dual Graph Neural Network for Multimedia
Recommendation", IEEE TMM 2021. Specification: docs/dualgnn.md (paper + MMRec's code).

Per modality m: x_m = normalize([P_m; MLP_m(f_m)]) (a user preference table stacked on the items' encoded
features, every row to unit length), propagated over the user-item graph Â, r_m = Σ_{l=0..L} Â^l x_m.
Items i = Σ_m r_m. Users fuse the modalities with learned per-user weights, u = Σ_m w_um r̃_m, where, as in the
reference, the first modality's slot holds the sum of all modalities (r̃_1 = Σ_m r_m, r̃_m = r_m after), and
then add their neighbours on the user co-occurrence graph G (top-k users by shared items, padded and
softmax-weighted once per epoch): u ← u + G u. Loss: BPR with log2, plus ``reg_weight`` × (the mean squared
preference rows of the batch's users + the mean squared fusion weights). Any number of modalities ≥ 1.
"""

from __future__ import annotations

import math
from logging import getLogger

import torch
from recbole.utils import InputType
from torch import nn

from recbole_mm.config_check import Choice, Float, Int
from recbole_mm.model.abstract_recommender import MultiModalRecommender
from recbole_mm.model.graphs import bipartite_adjacency, sampled_neighbour_graph, user_cooccurrence_neighbours


class DualGNN(MultiModalRecommender):
    input_type = InputType.PAIRWISE
    config_schema = {
        "n_layers": Int(min=0), "aggr_mode": Choice("add", "mean"), "reg_weight": Float(min=0),
        "user_graph_k": Int(min=1), "user_aggr": Choice("softmax", "mean"),
    }

    # DualGNN regularises per-item fusion weights it never uses (§3 of its doc); DRAGON, built on this class,
    # has none.
    item_fusion_weights = True

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        d = config["embedding_size"]
        self.dim = d
        self.n_layers = config["n_layers"]  # hops over the user-item graph
        self.reg_weight = config["reg_weight"]
        self.user_aggr = config["user_aggr"]  # weights of a user's sampled neighbours
        fused = len(self.modalities) > 1
        if not fused:
            getLogger().warning(
                f"{type(self).__name__} with one modality: users take that modality's representation "
                f"directly; there are no fusion weights to learn (docs/{type(self).__name__.lower()}.md)")

        # Parameters in the reference's order: fusion weights (users, items), then per modality the user
        # preferences and the two-layer feature encoder.
        if fused:
            self.user_fusion = nn.Parameter(self._fusion_weights(self.n_users))
            if self.item_fusion_weights:
                # The reference regularises item fusion weights it never uses in the forward pass; kept so the
                # loss is its loss (docs/dualgnn.md).
                self.item_fusion = nn.Parameter(self._fusion_weights(self.n_items))
        self.preferences = nn.ParameterDict()
        self.encoders = nn.ModuleDict()
        for m in self.modalities:
            self.preferences[m] = nn.Parameter(nn.init.xavier_normal_(torch.empty(self.n_users, d)))
            width = self.item_features(m).shape[1]
            self.encoders[m] = nn.Sequential(nn.Linear(width, 4 * d), nn.LeakyReLU(), nn.Linear(4 * d, d))

        users, items = self.interaction_edges(dataset)
        normalization = "sym" if config["aggr_mode"] == "add" else "row"
        self.register_graph("ui_graph", bipartite_adjacency(users, items, self.n_users, self.n_items,
                                                            normalization=normalization))
        # The user co-occurrence lists, built here from the training interactions (the reference reads
        # them from a file a separate script writes); the graph itself is re-drawn every epoch.
        neighbours, counts = user_cooccurrence_neighbours(users, items, self.n_users, self.n_items,
                                                          config["user_graph_k"])
        self.register_buffer("user_neighbours", neighbours, persistent=False)
        self.register_buffer("user_counts", counts, persistent=False)

    def _fusion_weights(self, n: int) -> torch.Tensor:
        """``[n, M, 1]`` weights, xavier-normal then softmax over the modalities (the reference's init)."""
        return torch.softmax(nn.init.xavier_normal_(torch.empty(n, len(self.modalities), 1)), dim=1)

    # ---- the user-user graph, re-drawn once per training epoch ------------------------------------
    def sampled_user_graph(self) -> torch.Tensor:
        """This epoch's user graph: each user's top-k co-occurring users, padded to k by resampling and
        weighted by the softmax of the counts (graphs.sampled_neighbour_graph). Drawn once per training
        epoch (the reference: pre_epoch_processing); evaluation keeps the last training epoch's graph, as the
        reference's scores do."""
        return sampled_neighbour_graph(self.user_neighbours, self.user_counts, self.user_aggr)

    # ---- forward --------------------------------------------------------------------------------
    def modality_representations(self) -> list[torch.Tensor]:
        """Per modality r_m = Σ_{l=0..L} Â^l x_m over all users and items, ``[n_users + n_items, d]``."""
        x = torch.cat([
            nn.functional.normalize(torch.cat([self.preferences[m], self.encoders[m](self.item_features(m))]))
            for m in self.modalities], dim=1)
        # All modalities share the graph: one propagation of the side-by-side tables per hop.
        total, layer = x, x
        for _ in range(self.n_layers):
            layer = self.propagate("ui_graph", layer)
            total = total + layer
        return list(total.split(self.dim, dim=1))

    def forward(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(users, items) final representations."""
        self.draw_epoch_graph("user_graph", self.sampled_user_graph)
        reps = self.modality_representations()
        items = reps[0]
        for r in reps[1:]:
            items = items + r
        if len(reps) == 1:
            users = reps[0][: self.n_users]
        else:
            # The reference adds the other modalities into the first one's tensor in place before fusing the
            # users, so the first slot carries the sum (docs/dualgnn.md, "quirks").
            slots = [items] + reps[1:]
            users = sum(self.user_fusion[:, m] * slot[: self.n_users] for m, slot in enumerate(slots))
        users = users + self.propagate("user_graph", users)
        return users, items[self.n_users:]

    def calculate_loss(self, interaction) -> torch.Tensor:
        user = interaction[self.USER_ID]
        # The reference's BPR uses log2: the natural-log BPR divided by ln 2.
        loss = self.batch_bpr(interaction, *self.forward())[0] / math.log(2.0)
        reg = sum((self.preferences[m][user] ** 2).mean() for m in self.modalities)
        if len(self.modalities) > 1:
            # Over the real rows (RecBole's padding row 0 would shift the means).
            reg = reg + (self.user_fusion[1:] ** 2).mean()
            if self.item_fusion_weights:
                reg = reg + (self.item_fusion[1:] ** 2).mean()
        return loss + self.reg_weight * reg

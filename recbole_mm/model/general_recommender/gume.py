"""GUME — Lin et al., "GUME: Graphs and User Modalities Enhancement for Long-Tail Multimodal
Recommendation", CIKM 2024 (arXiv 2407.12338). Specification: docs/gume.md (paper + authors' code).

Per modality m: a kNN item graph Â^m built once from the initial raw features; semantic-neighbour
edges (items in the top-k of every modality) added to the user-item graph (graph enhancement);
explicit features X^m = [R̃ X_I^m; X_I^m] with X_I^m = (Â^m)^L (E_I ⊙ purifier_m(f^m)); extended
features H^m = LightGCN([P^m; X_I^m]); attribute separation into a coarse (attention) and fine
(gated residual) part; final o = H^id + z. Losses: BPR, internal alignment (L_VT), external alignment
(L_BM), user-modality enhancement (L_UM) and two L2 terms. Any number of modalities ≥ 1.
"""

from __future__ import annotations

from logging import getLogger

import torch
from recbole.utils import InputType
from torch import nn

from recbole_mm.config_check import Float, Int
from recbole_mm.model.abstract_recommender import BFLOAT16_FEATURES, MultiModalRecommender
from recbole_mm.model.graphs import augmented_adjacency, semantic_neighbours, user_item_block
from recbole_mm.model.layers import attentive_fusion
from recbole_mm.model.losses import dot_bpr_loss, gaussian_alignment, info_nce, perturb_rows, squared_l2


class GUME(MultiModalRecommender):
    input_type = InputType.PAIRWISE
    # Types and ranges of properties/model/GUME.yaml's keys (checked before anything runs); the
    # switches' bool type comes from their defaults.
    config_schema = {
        "feature_dtype": BFLOAT16_FEATURES,  # its feature layers all have the bf16 path
        "knn_k": Int(min=1), "n_layers": Int(min=0), "n_ui_layers": Int(min=0),
        "reg_weight_1": Float(min=0), "reg_weight_2": Float(min=0), "vt_loss": Float(min=0),
        "bm_loss": Float(min=0), "um_loss": Float(min=0), "bm_temp": Float(min=0, min_open=True),
        "um_temp": Float(min=0, min_open=True), "um_noise_eps": Float(min=0),
    }
    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        d = config["embedding_size"]
        self.knn_k = config["knn_k"]
        self.n_layers = config["n_layers"]  # hops on the item graphs
        self.n_ui_layers = config["n_ui_layers"]  # LightGCN layers on the augmented user-item graph
        self.reg_weight_1 = config["reg_weight_1"]
        self.reg_weight_2 = config["reg_weight_2"]
        self.vt_loss = config["vt_loss"] if config["internal_alignment"] else 0.0
        self.bm_loss = config["bm_loss"] if config["external_alignment"] else 0.0
        self.bm_temp = config["bm_temp"]
        self.use_um = bool(config["user_modality_enhancement"])
        self.um_loss = config["um_loss"]
        self.um_temp = config["um_temp"]
        self.noise_eps = config["um_noise_eps"]
        if len(self.modalities) == 1:
            getLogger().warning("GUME with one modality: no internal alignment, and the coarse/fine "
                                "attribute separation degenerates (coarse = the single modality)")

        # Xavier init comes after the other layers are created, as in the original (same random draws).
        self.user_embedding, self.item_embedding = self.id_embeddings(d, xavier=False)
        # Raw features are trainable tables initialised from the files (as the original); the graphs
        # below are built once from these initial values. freeze_features: the feature buffers
        # themselves, fixed (no trainable copy, no gradient table, no optimizer state).
        self.freeze_features = bool(config["freeze_features"])
        self.raw_features = nn.ModuleDict() if self.freeze_features else self.trainable_feature_tables()
        self.purifiers = nn.ModuleDict({
            m: nn.Sequential(self.feature_linear(self.item_features(m).shape[1], d), nn.Linear(d, d), nn.Sigmoid())
            for m in self.modalities
        })
        # P^m exist only with user-modality enhancement (nothing else reads them).
        self.extended_users = nn.ParameterDict(
            {m: nn.Parameter(torch.empty(self.n_users, d)) for m in self.modalities} if self.use_um else {}
        )
        self.attention = nn.Sequential(nn.Linear(d, d), nn.Tanh(), nn.Linear(d, 1, bias=False))
        self.fine_gates = nn.ModuleDict({m: nn.Sequential(nn.Linear(d, d), nn.Sigmoid()) for m in self.modalities})
        for weight in [self.user_embedding.weight, self.item_embedding.weight, *self.extended_users.values()]:
            nn.init.xavier_uniform_(weight)
        self._build_graphs(config, dataset)
        if not self.freeze_features:  # the graphs are built; training reads the tables
            self.release_fixed_features(dataset)

    # ---- graphs, built once ---------------------------------------------------------------------
    def _build_graphs(self, config, dataset) -> None:
        neighbours = self.item_neighbours(self.knn_k)
        graphs = self.knn_item_graphs(self.knn_k, weighted=True, normalization="sym", neighbours=neighbours)
        for m, graph in graphs.items():
            self.register_graph(f"item_graph_{m}", graph)
        # Semantic neighbours, as item ids (the neighbour indices count from item 1).
        item_edges = (semantic_neighbours([indices for indices, _ in neighbours.values()]) + 1
                      if config["graph_enhancement"] else None)
        adjacency = augmented_adjacency(*self.interaction_edges(dataset), self.n_users, self.n_items,
                                        item_edges=item_edges, symmetric=bool(config["symmetric_graph"]))
        self.register_graph("norm_adj", adjacency)
        # R̃: the normalised user→item block of Ã, used for the explicit user features.
        self.register_graph("user_item_graph", user_item_block(adjacency, self.n_users, self.n_items))
        self.n_semantic_edges = 0 if item_edges is None else item_edges.shape[1]

    def lightgcn(self, embeddings: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
        """(1/(L+1)) Σ_l Ã^l Z on the augmented graph (only its ``rows``, when given)."""
        return self.mean_propagation("norm_adj", embeddings, self.n_ui_layers, rows)

    # ---- forward --------------------------------------------------------------------------------
    def _explicit(self) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Per modality the two blocks of the explicit features X^m = [R̃ X_I^m; X_I^m]: R̃ X_I^m
        ([n_users, d]) and X_I^m ([n_items, d]). Kept apart: a training step reads X^m's rows of its batch
        and L_VT's statistics, neither of which needs the [N, d] concatenation."""
        items = self.item_embedding.weight
        user_parts, item_parts = [], []
        for m in self.modalities:
            x_item = items * self.purifiers[m](self.raw_table(m))
            for _ in range(self.n_layers):
                x_item = self.propagate(f"item_graph_{m}", x_item)
            user_parts.append(self.propagate("user_item_graph", x_item))
            item_parts.append(x_item)
        return user_parts, item_parts

    def raw_table(self, m: str) -> torch.Tensor:
        """f^m for every item: the trainable table, or the fixed features with ``freeze_features`` (as the
        purifier's first layer reads them: ``projection_input``)."""
        return self.projection_input(m) if self.freeze_features else self.raw_features[m].weight

    def _extended(self, item_parts: list[torch.Tensor], rows: torch.Tensor | None = None) -> torch.Tensor:
        """H^ext = mean_m LG([P^m; X_I^m]), computed as LG(mean_m [P^m; X_I^m]): LightGCN is linear, so
        one propagation serves every modality (only its ``rows``, when given)."""
        # No name for the mean of P^m: it would stay alive through the propagation, beside the concatenation.
        return self.lightgcn(torch.cat([sum(self.extended_users[m] for m in self.modalities) / len(self.modalities),
                                        sum(item_parts) / len(item_parts)]), rows)

    def _integrate(self, explicit: list[torch.Tensor], h_id: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Attribute separation and integration, row by row: (z, attention weights) for the given rows
        of the explicit features and of H^id (all nodes, or only those a batch uses)."""
        return attentive_fusion(explicit, self.attention, [self.fine_gates[m] for m in self.modalities], h_id)

    def forward(self) -> dict[str, torch.Tensor]:
        """All node representations: ``o`` (final), ``z`` (integrated modality), ``h_id``, ``h_ext``
        (None without user-modality enhancement) and ``explicit`` (one [N, d] X^m per modality)."""
        h_id = self.lightgcn(torch.cat([self.user_embedding.weight, self.item_embedding.weight]))
        user_parts, item_parts = self._explicit()
        explicit = [torch.cat(parts) for parts in zip(user_parts, item_parts)]
        z, weights = self._integrate(explicit, h_id)
        h_ext = self._extended(item_parts) if self.use_um else None
        return {"o": h_id + z, "z": z, "h_id": h_id, "h_ext": h_ext, "explicit": explicit, "attention": weights}

    def calculate_loss(self, interaction) -> torch.Tensor:
        users = interaction[self.USER_ID]
        pos = interaction[self.ITEM_ID] + self.n_users
        neg = interaction[self.NEG_ITEM_ID] + self.n_users
        n = len(users)
        # The full-graph part (propagations, and X^m for L_VT) is computed for every node, but the
        # last LightGCN layer only for the batch's distinct nodes; the row-wise part (attention, gates,
        # z, o) only for those nodes too.
        nodes, where = torch.unique(torch.cat([users, pos, neg]), return_inverse=True)
        h_nodes = self.lightgcn(torch.cat([self.user_embedding.weight, self.item_embedding.weight]), nodes)
        user_parts, item_parts = self._explicit()
        n_user_nodes = int(torch.searchsorted(nodes, self.n_users))
        user_nodes, item_nodes = nodes[:n_user_nodes], nodes[n_user_nodes:] - self.n_users
        explicit_nodes = [torch.cat([u[user_nodes], i[item_nodes]]) for u, i in zip(user_parts, item_parts)]
        z_nodes, _ = self._integrate(explicit_nodes, h_nodes)
        o = (h_nodes + z_nodes)[where]
        o_users, o_pos, o_neg = o[:n], o[n:2 * n], o[2 * n:]
        loss = dot_bpr_loss(o_users, o_pos, o_neg)
        loss = loss + self.reg_weight_1 * squared_l2(o_users, o_pos, o_neg, denominator=self.batch_size)
        if self.vt_loss:
            # Over real users and items only: RecBole's padding user 0 and item 0 are not in the original.
            real = [(u[1:], i[1:]) for u, i in zip(user_parts, item_parts)]
            loss = loss + self.vt_loss * gaussian_alignment(real)
        if not (self.bm_loss or self.use_um):
            return loss
        # The InfoNCE terms over the distinct users / positive items with their multiplicities: every
        # row of L_BM and L_UM depends only on the row's node (duplicates are identical rows, the noise
        # included), so this is the loss of the full 2048-row batch, duplicates and all (losses.info_nce).
        user_ids, user_counts = torch.unique(users, return_counts=True)
        user_rows = torch.searchsorted(nodes, user_ids)
        z_users = z_nodes[user_rows]
        if self.bm_loss:
            pos_ids, pos_counts = torch.unique(pos, return_counts=True)
            pos_rows = torch.searchsorted(nodes, pos_ids)
            loss = loss + self.bm_loss * (
                info_nce(z_users, h_nodes[user_rows], self.bm_temp, counts=user_counts)
                + info_nce(z_nodes[pos_rows], h_nodes[pos_rows], self.bm_temp, counts=pos_counts))
        if self.use_um:
            h_ext = self._extended(item_parts, nodes)  # the rows of the batch's nodes
            ext_users = h_ext[user_rows]
            eps, tau = self.noise_eps, self.um_temp
            # perturb(x)[users]: noise for the batch's distinct users only (same distribution).
            um = (info_nce(ext_users, z_users, tau, counts=user_counts)
                  + info_nce(perturb_rows(z_users, user_ids, eps), perturb_rows(z_users, user_ids, eps), tau,
                             counts=user_counts)
                  + info_nce(perturb_rows(ext_users, user_ids, eps), perturb_rows(ext_users, user_ids, eps), tau,
                             counts=user_counts))
            loss = loss + self.um_loss * um
            loss = loss + self.reg_weight_2 * squared_l2(h_ext[where[n:2 * n]], denominator=self.batch_size)
        return loss

    def user_item_vectors(self) -> tuple[torch.Tensor, torch.Tensor]:
        o = self.cached("o", lambda: self.forward()["o"])
        return o[: self.n_users], o[self.n_users:]

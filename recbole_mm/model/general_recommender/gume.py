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

from recbole_mm.model.abstract_recommender import MultiModalRecommender
from recbole_mm.model.graphs import augmented_adjacency, graph_from_neighbours, knn_neighbours, semantic_neighbours
from recbole_mm.model.losses import bpr_loss, gaussian_alignment, info_nce, perturb, squared_l2


class GUME(MultiModalRecommender):
    input_type = InputType.PAIRWISE

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
        self.batch_size = config["train_batch_size"]  # the original divides the L2 terms by it
        if len(self.modalities) == 1:
            getLogger().warning("GUME with one modality: no internal alignment, and the coarse/fine "
                                "attribute separation degenerates (coarse = the single modality)")

        self.user_embedding = nn.Embedding(self.n_users, d)
        self.item_embedding = nn.Embedding(self.n_items, d)
        # Raw features are trainable tables initialised from the files (as the original); the graphs
        # below are built once from these initial values.
        self.raw_features = nn.ModuleDict({
            m: nn.Embedding.from_pretrained(self.item_features(m).clone(), freeze=False) for m in self.modalities
        })
        self.purifiers = nn.ModuleDict({
            m: nn.Sequential(nn.Linear(self.item_features(m).shape[1], d), nn.Linear(d, d), nn.Sigmoid())
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

    # ---- graphs, built once ---------------------------------------------------------------------
    def _build_graphs(self, config, dataset) -> None:
        neighbours = []
        for m in self.modalities:
            # Item 0 is RecBole's padding: graphs cover items 1.. and leave node 0 isolated.
            indices, sims = knn_neighbours(self.item_features(m)[1:], self.knn_k, backend=self.knn_backend)
            neighbours.append(indices)
            graph = graph_from_neighbours(indices, sims, weighted=True, normalization="sym", offset=1)
            self.register_graph(f"item_graph_{m}", graph)
        item_edges = semantic_neighbours(neighbours) + 1 if config["graph_enhancement"] else None
        inter = dataset.inter_matrix(form="coo")
        adjacency = augmented_adjacency(
            torch.from_numpy(inter.row), torch.from_numpy(inter.col), self.n_users, self.n_items,
            item_edges=item_edges, symmetric=bool(config["symmetric_graph"]),
        )
        self.register_graph("norm_adj", adjacency)
        # R̃: the normalised user→item block of Ã, used for the explicit user features.
        rows, cols = adjacency.indices()
        block = (rows < self.n_users) & (cols >= self.n_users)
        user_item = torch.sparse_coo_tensor(
            torch.stack([rows[block], cols[block] - self.n_users]), adjacency.values()[block],
            (self.n_users, self.n_items), check_invariants=False,
        ).coalesce()
        self.register_graph("user_item_graph", user_item)
        self.n_semantic_edges = 0 if item_edges is None else item_edges.shape[1]

    def lightgcn(self, embeddings: torch.Tensor) -> torch.Tensor:
        """(1/(L+1)) Σ_l Ã^l Z on the augmented graph."""
        layers = [embeddings]
        for _ in range(self.n_ui_layers):
            layers.append(self.propagate("norm_adj", layers[-1]))
        return torch.stack(layers).mean(dim=0)

    # ---- forward --------------------------------------------------------------------------------
    def forward(self) -> dict[str, torch.Tensor]:
        """All node representations: ``o`` (final), ``z`` (integrated modality), ``h_id``, ``h_ext``
        (None without user-modality enhancement) and ``explicit`` (one [N, d] X^m per modality)."""
        items = self.item_embedding.weight
        h_id = self.lightgcn(torch.cat([self.user_embedding.weight, items]))
        explicit, extended = [], []
        for m in self.modalities:
            x_item = items * self.purifiers[m](self.raw_features[m].weight)
            for _ in range(self.n_layers):
                x_item = self.propagate(f"item_graph_{m}", x_item)
            explicit.append(torch.cat([self.propagate("user_item_graph", x_item), x_item]))
            if self.use_um:
                extended.append(self.lightgcn(torch.cat([self.extended_users[m], x_item])))
        scores = torch.cat([self.attention(x) for x in explicit], dim=1)
        weights = torch.softmax(scores, dim=1)
        coarse = sum(weights[:, j:j + 1] * x for j, x in enumerate(explicit))
        fine = [self.fine_gates[m](h_id) * (x - coarse) for m, x in zip(self.modalities, explicit)]
        z = (sum(fine) + coarse) / (len(fine) + 1)
        h_ext = torch.stack(extended).mean(dim=0) if extended else None
        return {"o": h_id + z, "z": z, "h_id": h_id, "h_ext": h_ext, "explicit": explicit, "attention": weights}

    def calculate_loss(self, interaction) -> torch.Tensor:
        users = interaction[self.USER_ID]
        pos = interaction[self.ITEM_ID] + self.n_users
        neg = interaction[self.NEG_ITEM_ID] + self.n_users
        out = self.forward()
        o = out["o"]
        loss = bpr_loss((o[users] * o[pos]).sum(dim=1), (o[users] * o[neg]).sum(dim=1))
        loss = loss + self.reg_weight_1 * squared_l2(o[users], o[pos], o[neg], denominator=self.batch_size)
        if self.vt_loss:
            # Over real users and items only: RecBole's padding user 0 and item 0 are not in the original.
            real = [torch.cat([x[1:self.n_users], x[self.n_users + 1:]]) for x in out["explicit"]]
            loss = loss + self.vt_loss * gaussian_alignment(real)
        if self.bm_loss:
            z, h_id = out["z"], out["h_id"]
            loss = loss + self.bm_loss * (info_nce(z[users], h_id[users], self.bm_temp)
                                          + info_nce(z[pos], h_id[pos], self.bm_temp))
        if self.use_um:
            z_users, ext_users = out["z"][: self.n_users], out["h_ext"][: self.n_users]
            um = (info_nce(ext_users[users], z_users[users], self.um_temp)
                  + info_nce(perturb(z_users, self.noise_eps)[users], perturb(z_users, self.noise_eps)[users], self.um_temp)
                  + info_nce(perturb(ext_users, self.noise_eps)[users], perturb(ext_users, self.noise_eps)[users],
                             self.um_temp))
            loss = loss + self.um_loss * um
            loss = loss + self.reg_weight_2 * squared_l2(out["h_ext"][pos], denominator=self.batch_size)
        return loss

    def user_item_vectors(self) -> tuple[torch.Tensor, torch.Tensor]:
        o = self.cached("o", lambda: self.forward()["o"])
        return o[: self.n_users], o[self.n_users:]

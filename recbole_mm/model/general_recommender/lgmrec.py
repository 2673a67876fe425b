"""LGMRec — Guo, Li, Li, Wang, Shi & Ruan, "LGMRec: Local and Global Graph Learning for Multimodal
Recommendation", AAAI 2024 (authors' code: github georgeguo-cn/LGMRec; MMRec's lgmrec.py). Specification:
docs/lgmrec.md.

Local: collaborative embeddings E_c = LightGCN(ID embeddings) over Â (D^-1/2 A D^-1/2), plus per modality m
E_m = Â^K [mean of the user's items' X_m W_m; X_m W_m] (frozen features, a learned linear map, K hops, no layer
mean). Global: per modality learnable hyperedges, item-hyperedge memberships H_i = GumbelSoftmax(X_m V_m) and
user memberships H_u = GumbelSoftmax(R X_m V_m) (τ = ``temperature``), dropped out at rate 1 - ``keep_rate``
while training; hypergraph passes over the items' collaborative embeddings, Z_i = (H_i H_iᵀ)^L E_c,items and
Z_u = H_u H_iᵀ (H_i H_iᵀ)^(L-1) E_c,items. Final = E_c + Σ_m normalize(E_m) + α · normalize(Σ_m [Z_u; Z_i]).
Loss: mean BPR + ``cl_weight`` · hypergraph contrast (per modality pair, users and positive items, InfoNCE
against all users / all items, summed) + ``reg_weight`` · Σ‖final rows of the batch‖ / batch rows.
Any number of modalities ≥ 1 (one: no contrast term).
"""

from __future__ import annotations

import itertools
from logging import getLogger

import torch
import torch.nn.functional as F
from recbole.utils import InputType
from torch import nn

from recbole_mm.config_check import Choice, Float, Int
from recbole_mm.errors import RecBoleMMError
from recbole_mm.model.abstract_recommender import MultiModalRecommender
from recbole_mm.model.graphs import bipartite_adjacency
from recbole_mm.model.losses import candidate_nce, frobenius_norms


class LGMRec(MultiModalRecommender):
    input_type = InputType.PAIRWISE
    config_schema = {
        "feat_embed_dim": Int(min=1), "cf_model": Choice("lightgcn", "mf"), "n_ui_layers": Int(min=0),
        "n_mm_layers": Int(min=0), "n_hyper_layer": Int(min=1), "hyper_num": Int(min=1),
        "keep_rate": Float(min=0, max=1, min_open=True), "alpha": Float(min=0), "cl_weight": Float(min=0),
        "reg_weight": Float(min=0), "temperature": Float(min=0, min_open=True),
    }

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        d = config["embedding_size"]
        if config["feat_embed_dim"] != d:
            raise RecBoleMMError(f"LGMRec feat_embed_dim: {config['feat_embed_dim']} must equal embedding_size ({d}): "
                                 "the modality embeddings are added to the collaborative ones")
        self.lightgcn = config["cf_model"] == "lightgcn"  # else plain ID embeddings ("mf")
        self.n_ui_layers = config["n_ui_layers"]  # LightGCN layers of the collaborative embeddings
        self.n_mm_layers = config["n_mm_layers"]  # hops of the modality embeddings on the user-item graph
        self.n_hyper_layers = config["n_hyper_layer"]  # hypergraph passes
        self.drop_rate = 1.0 - config["keep_rate"]  # dropout on the hyperedge memberships while training
        self.alpha = config["alpha"]  # weight of the global (hypergraph) embeddings
        self.cl_weight = config["cl_weight"]
        self.reg_weight = config["reg_weight"]
        self.temperature = config["temperature"]
        if len(self.modalities) == 1:
            getLogger().warning("LGMRec with one modality: no hypergraph contrast (it contrasts modality pairs)")

        self.user_embedding, self.item_embedding = self.id_embeddings(d)
        # Per modality, in the original's order: the feature map, then the hyperedges (xavier, no bias).
        self.feature_maps, self.hyperedges = nn.ParameterDict(), nn.ParameterDict()
        for m in self.modalities:
            width = self.item_features(m).shape[1]
            self.feature_maps[m] = nn.Parameter(nn.init.xavier_uniform_(torch.empty(width, d)))
            self.hyperedges[m] = nn.Parameter(nn.init.xavier_uniform_(torch.empty(width, config["hyper_num"])))

        users, items = self.interaction_edges(dataset)
        self.register_graph("norm_adj", bipartite_adjacency(users, items, self.n_users, self.n_items))
        shape = (self.n_users, self.n_items)
        # R (sums over a user's items) and D_u^-1 R (means).
        self.register_graph("user_items", torch.sparse_coo_tensor(
            torch.stack([users, items]), torch.ones(len(users)), shape, check_invariants=False))
        degree = torch.bincount(users, minlength=self.n_users).float()
        self.register_graph("user_mean", torch.sparse_coo_tensor(
            torch.stack([users, items]), 1.0 / degree[users], shape, check_invariants=False))

    # ---- forward --------------------------------------------------------------------------------
    def _modality_embeddings(self, m: str) -> torch.Tensor:
        """Â^K [mean over each user's items of X_m W_m; X_m W_m] over all nodes."""
        items = self.item_features(m) @ self.feature_maps[m]
        x = torch.cat([self.propagate("user_mean", items), items])
        for _ in range(self.n_mm_layers):
            x = self.propagate("norm_adj", x)
        return x

    def embeddings(self) -> tuple[torch.Tensor, torch.Tensor, dict[str, tuple[torch.Tensor, torch.Tensor]]]:
        """(users, items, hypergraph embeddings): the final representations over all ids, and per modality
        (Z_u, Z_i) over the real users and items (row r = id r + 1) for the contrast."""
        # Random draws in the original's order: every modality's Gumbel noise (items, then users), then
        # every modality's dropout masks (items, then users). Hyperedges span the real users and items only.
        memberships = {}
        for m in self.modalities:
            items = self.item_features(m) @ self.hyperedges[m]
            users = self.propagate("user_items", items)
            memberships[m] = (F.gumbel_softmax(items[1:], tau=self.temperature, dim=1),
                              F.gumbel_softmax(users[1:], tau=self.temperature, dim=1))
        ego = torch.cat([self.user_embedding.weight, self.item_embedding.weight])
        collaborative = self.mean_propagation("norm_adj", ego, self.n_ui_layers) if self.lightgcn else ego
        local = collaborative
        for m in self.modalities:
            local = local + F.normalize(self._modality_embeddings(m))

        item_inputs = collaborative[self.n_users + 1:]
        hyper, global_users, global_items = {}, 0, 0
        for m in self.modalities:
            item_h, user_h = (F.dropout(h, self.drop_rate, self.training) for h in memberships[m])
            z_items = item_inputs
            for _ in range(self.n_hyper_layers):
                latent = item_h.T @ z_items
                z_items = item_h @ latent
            hyper[m] = (user_h @ latent, z_items)
            global_users, global_items = global_users + hyper[m][0], global_items + z_items
        pad = ego.new_zeros(1, ego.shape[1])
        global_all = F.normalize(torch.cat([pad, global_users, pad, global_items]))
        out = local + self.alpha * global_all
        return out[: self.n_users], out[self.n_users:], hyper

    def forward(self) -> tuple[torch.Tensor, torch.Tensor]:
        users, items, _ = self.embeddings()
        return users, items

    def calculate_loss(self, interaction) -> torch.Tensor:
        users = interaction[self.USER_ID]
        pos = interaction[self.ITEM_ID]
        user_vectors, item_vectors, hyper = self.embeddings()
        loss, u, p, n = self.batch_bpr(interaction, user_vectors, item_vectors)
        if self.cl_weight:
            # A batch's repeated users (and positives) have identical rows: each distinct one contrasts once,
            # weighted by its count (the same sum over the batch's rows, at a fraction of the cost).
            user_ids, user_counts = torch.unique(users - 1, return_counts=True)
            item_ids, item_counts = torch.unique(pos - 1, return_counts=True)
            contrast = 0
            for a, b in itertools.combinations(self.modalities, 2):
                (users_a, items_a), (users_b, items_b) = hyper[a], hyper[b]
                contrast = contrast + candidate_nce(users_a[user_ids], users_b[user_ids], users_b, self.temperature,
                                                    counts=user_counts)
                contrast = contrast + candidate_nce(items_a[item_ids], items_b[item_ids], items_b, self.temperature,
                                                    counts=item_counts)
            loss = loss + self.cl_weight * contrast
        # Norms, not squared, divided by the batch's rows (the original's reg_loss).
        return loss + self.reg_weight * frobenius_norms(u, p, n, denominator=len(users))

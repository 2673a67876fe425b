"""VBPR — He & McAuley, "VBPR: Visual Bayesian Personalized Ranking from Implicit Feedback", AAAI 2016.

Score(u, i) = [γ_u; θ_u] · [γ_i; E f_i], with f_i the item's modalities concatenated (as MMRec's
port, without the bias terms). Trained with BPR and an L2 penalty on the batch's embeddings.
"""

from __future__ import annotations

import torch
from recbole.model.init import xavier_normal_initialization
from recbole.model.loss import BPRLoss
from recbole.utils import InputType
from torch import nn

from recbole_mm.config_check import Float
from recbole_mm.model.abstract_recommender import BFLOAT16_FEATURES, MultiModalRecommender
from recbole_mm.model.losses import frobenius_norms


class VBPR(MultiModalRecommender):
    input_type = InputType.PAIRWISE
    # types/ranges of properties/model/VBPR.yaml's keys; its feature projection has the bf16 path
    config_schema = {"reg_weight": Float(min=0), "feature_dtype": BFLOAT16_FEATURES}

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        dim = config["embedding_size"]
        self.reg_weight = config["reg_weight"]
        self.user_embedding = nn.Embedding(self.n_users, dim * 2)  # [γ_u; θ_u]
        self.item_embedding = nn.Embedding(self.n_items, dim)  # γ_i
        # MMRec's port draws its ID tables xavier-uniform (plain Parameters, which its xavier-normal pass over
        # modules never reaches) and only the projection xavier-normal: the same distributions here.
        nn.init.xavier_uniform_(self.user_embedding.weight)
        nn.init.xavier_uniform_(self.item_embedding.weight)
        self.feature_projection = self.feature_linear(self.fused_features().shape[1], dim)  # E
        xavier_normal_initialization(self.feature_projection)
        self.bpr_loss = BPRLoss()

    def item_vectors(self, items: torch.Tensor | None = None) -> torch.Tensor:
        """[γ_i; E f_i] for the given item ids (all items when None)."""
        projected = self.feature_projection(self.fused_features(items, projection=True))
        ids = self.item_embedding.weight if items is None else self.item_embedding(items)
        return torch.cat([ids, projected], dim=1)

    def forward(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.user_embedding.weight, self.item_vectors()

    def calculate_loss(self, interaction) -> torch.Tensor:
        # Only the batch's items are projected: a full forward per batch would cost n_items x dim work.
        u = self.user_embedding(interaction[self.USER_ID])
        # Positives and negatives in one call: one feature gather and one projection GEMM, not two.
        pos, neg = self.item_vectors(torch.cat([interaction[self.ITEM_ID], interaction[self.NEG_ITEM_ID]])).split(len(u))
        loss = self.bpr_loss((u * pos).sum(dim=1), (u * neg).sum(dim=1))
        return loss + self.reg_weight * frobenius_norms(u, pos, neg, denominator=len(u))

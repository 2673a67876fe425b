"""BM3 — Zhou et al., "Bootstrap Latent Representations for Multi-modal Recommendation", WWW 2023
(arXiv 2207.05969). Specification: docs/bm3.md (paper + the authors' code, as in MMRec).

Online representations: LightGCN over the user-item graph (users h_u; items h_i + e_i, the ID embedding
added back) and one linear projection f^m = W_m x^m + b_m per modality of trainable raw features. Target
views: dropout copies of the online ones under stop-gradient. A shared predictor p(·) maps online
representations towards the targets; the loss aligns p(user) with the item's target and p(item) with
the user's target, and each modality's p(f^m) with the item's target (alignment) and with its own
dropout copy (masked reconstruction), plus a norm penalty. No negative sampling. Any number of
modalities ≥ 1. Scores: p(h_u) · p(h_i).
"""

from __future__ import annotations

import torch
from recbole.utils import InputType
from torch import nn

from recbole_mm.config_check import Float, Int
from recbole_mm.errors import RecBoleMMError
from recbole_mm.model.abstract_recommender import BFLOAT16_FEATURES, MultiModalRecommender
from recbole_mm.model.graphs import bipartite_adjacency
from recbole_mm.model.losses import cosine_alignment, frobenius_norms
from recbole_mm.speedups import dropout_mask, dropout_rows


class BM3(MultiModalRecommender):
    # No negatives: RecBole's TrainDataLoader yields (user, item) rows when train_neg_sample_args is
    # None (properties/model/BM3.yaml), as for its own non-sampling models.
    input_type = InputType.POINTWISE
    config_schema = {
        "feature_dtype": BFLOAT16_FEATURES,  # its feature layers all have the bf16 path
        "n_layers": Int(min=0), "dropout": Float(min=0, max=1, max_open=True), "reg_weight": Float(min=0),
        "cl_weight": Float(min=0),
    }

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        if config["train_neg_sample_args"]["distribution"] != "none":
            # With a POINTWISE model RecBole would add sampled negatives as extra rows, which BM3 would
            # then align as if they were interactions.
            raise RecBoleMMError(
                f"BM3 trains without negatives, but train_neg_sample_args is {config['train_neg_sample_args']}; "
                "set train_neg_sample_args: ~ (a dataset config's value needs model_overrides: {BM3: ...})")
        d = config["embedding_size"]
        self.n_layers = config["n_layers"]
        self.reg_weight = config["reg_weight"]
        self.cl_weight = config["cl_weight"]
        self.dropout = config["dropout"]

        # Xavier init comes after the other layers are created, as in the original (same random draws).
        self.user_embedding, self.item_embedding = self.id_embeddings(d, xavier=False)
        self.predictor = nn.Linear(d, d)
        # Raw features are trainable tables initialised from the files (as the original).
        # Read by the batch's rows only (calculate_loss): row-sparse gradients in recbole_mm's trainer.
        self.raw_features = self.trainable_feature_tables(rows_only=True)
        self.projections = self.feature_projections(d)
        nn.init.xavier_uniform_(self.user_embedding.weight)
        nn.init.xavier_uniform_(self.item_embedding.weight)
        for layer in [self.predictor, *self.projections.values()]:
            nn.init.xavier_normal_(layer.weight)  # biases keep nn.Linear's default init, as the original

        self.register_graph("norm_adj", bipartite_adjacency(*self.interaction_edges(dataset), self.n_users, self.n_items))
        self.release_fixed_features(dataset)  # training reads the trainable tables only

    def forward(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Online (users, items): LightGCN layer mean, with the item ID embeddings added to the items."""
        items = self.item_embedding.weight
        h = self.mean_propagation("norm_adj", torch.cat([self.user_embedding.weight, items]), self.n_layers)
        return h[: self.n_users], h[self.n_users:] + items

    def calculate_loss(self, interaction) -> torch.Tensor:
        users, items = interaction[self.USER_ID], interaction[self.ITEM_ID]
        u_online, i_online = self.forward()
        u_rows, i_rows = u_online[users], i_online[items]
        # Only the batch's rows of the projected features enter the loss (the targets are stop-gradient
        # dropout copies of the same rows), so only those rows are projected: the reference projects every
        # item, and its raw tables would get a dense gradient that is zero outside the batch.
        features = {m: self.projections[m](self.raw_features[m](items)) for m in self.modalities}
        with torch.no_grad():  # target views: dropout copies, no gradient
            # The masks are drawn over the whole tables, users, items, then the modalities (the same random
            # draws as F.dropout on each table), and applied to the batch's rows only.
            masks = [dropout_mask(t.shape, self.dropout, t.device) for t in (u_online, i_online)]
            masks += [dropout_mask((self.n_items, f.shape[1]), self.dropout, f.device) for f in features.values()]
            u_target = dropout_rows(u_rows.detach(), masks[0][users], self.dropout)
            i_target = dropout_rows(i_rows.detach(), masks[1][items], self.dropout)
            f_target = {m: dropout_rows(f.detach(), mask[items], self.dropout)
                        for (m, f), mask in zip(features.items(), masks[2:])}
        loss = (cosine_alignment(self.predictor(u_rows), i_target) + cosine_alignment(self.predictor(i_rows), u_target))
        # Over real users and items only (the original has no padding rows), divided by its item count.
        loss = loss + self.reg_weight * frobenius_norms(u_online[1:], i_online[1:], denominator=self.n_items - 1)
        for m, f in features.items():
            f_online = self.predictor(f)
            loss = loss + self.cl_weight * (cosine_alignment(f_online, i_target)
                                            + cosine_alignment(f_online, f_target[m]))
        return loss

    def user_item_vectors(self) -> tuple[torch.Tensor, torch.Tensor]:
        def compute():
            users, items = self.forward()
            return self.predictor(users), self.predictor(items)
        return self.cached("forward", compute)

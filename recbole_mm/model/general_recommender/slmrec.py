"""SLMRec — Tao et al., "Self-supervised Learning for Multimedia Recommendation", IEEE TMM 2022
(github zltao/SLMRec; MMRec's src/models/slmrec.py). Specification: docs/slmrec.md.

One LightGCN per view over the same user-item graph (D^-1/2 A D^-1/2, mean of layers 0..L): the ID view
propagates [E_U; E_I], each modality's view [E_U; W_m x̂_m + b_m] (x̂_m the unit-length features). The
views are concatenated (``mm_fusion_mode: concat``, or averaged: ``mean``) and mapped by one linear layer
for users and one for items: u = F_U([h_u^id ‖ h_u^1 ‖ ...]), i = F_I([h_i^id ‖ h_i^1 ‖ ...]).
Loss: in-batch InfoNCE of the batch's (user, positive) pairs on cosine / ``temp`` (no sampled
negatives), plus ``ssl_alpha`` × one self-supervised task (``ssl_task``):

- ``FAC`` (fine and coarse, the default): the batch items' ID view and modality views are contrasted in
  a hierarchy of spaces: the first modalities in d-wide "fine" spaces down a chain of linear maps from the
  ID view, the last one in a d/2-wide "coarse" space (raw dot products / ``ssl_temp``).
- ``FD`` (feature dropout): two copies of every view propagated with dropout on each layer's output.
- ``FM`` (feature masking): two copies in which one randomly chosen view each (ID or a modality) has its
  item inputs zeroed; ``FD+FM`` both.
  For FD/FM, the two copies' fused, normalised user rows and item rows of the batch are contrasted
  (InfoNCE on cosine / ``ssl_temp``, users plus items).

Scores: u · i. Any number of modalities ≥ 1.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from recbole.utils import InputType
from torch import nn

from recbole_mm.config_check import Choice, Float, Int
from recbole_mm.errors import RecBoleMMError
from recbole_mm.model.abstract_recommender import MultiModalRecommender
from recbole_mm.model.graphs import bipartite_adjacency
from recbole_mm.model.losses import dot_info_nce, info_nce

SSL_TASKS = ("FAC", "FD", "FM", "FD+FM")
ID_VIEW = "id"


class SLMRec(MultiModalRecommender):
    # The loss uses in-batch negatives only: RecBole's TrainDataLoader yields (user, item) rows when
    # train_neg_sample_args is None (properties/model/SLMRec.yaml), as for BM3.
    input_type = InputType.POINTWISE
    config_schema = {
        "n_layers": Int(min=0), "ssl_task": Choice(*SSL_TASKS), "ssl_alpha": Float(min=0),
        "ssl_temp": Float(min=0, min_open=True), "temp": Float(min=0, min_open=True),
        "dropout_rate": Float(min=0, max=1, max_open=True), "mm_fusion_mode": Choice("concat", "mean"),
    }

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        if config["train_neg_sample_args"]["distribution"] != "none":
            # A POINTWISE model would receive sampled negatives as extra rows and treat them as interactions.
            raise RecBoleMMError(
                f"SLMRec trains without sampled negatives, but train_neg_sample_args is "
                f"{config['train_neg_sample_args']}; set train_neg_sample_args: ~ (a dataset config's value "
                "needs model_overrides: {SLMRec: {train_neg_sample_args: ~}})")
        d = config["embedding_size"]
        self.n_layers = config["n_layers"]  # LightGCN layers of every view
        self.ssl_task = config["ssl_task"]
        self.ssl_alpha = config["ssl_alpha"]  # weight of the self-supervised task
        self.ssl_temp = config["ssl_temp"]  # temperature of the self-supervised task
        self.temp = config["temp"]  # temperature of the main in-batch InfoNCE
        self.dropout_rate = config["dropout_rate"]  # FD / FD+FM: dropout on each propagated layer
        self.fusion_mode = config["mm_fusion_mode"]
        if self.ssl_task == "FAC" and len(self.modalities) > 1 and d < 2:
            raise RecBoleMMError(f"SLMRec embedding_size: {d} leaves no coarse space (d/2 = 0) for ssl_task FAC; "
                                 "use embedding_size >= 2")
        self.views = [ID_VIEW, *self.modalities]

        # Parameters in the reference's order (its random draws): ID tables, then per modality its
        # projection (xavier weight right after creation), then the two fusion layers, then FAC's maps.
        self.user_embedding, self.item_embedding = self.id_embeddings(d)
        for m in self.modalities:  # the reference normalises the features to unit rows inside the model
            self.register_buffer(f"features_{m}", F.normalize(self.item_features(m), dim=1), persistent=False)
        self.projections = nn.ModuleDict()
        for m in self.modalities:
            self.projections[m] = nn.Linear(self.item_features(m).shape[1], d)
            nn.init.xavier_uniform_(self.projections[m].weight)
        fused = d * len(self.views) if self.fusion_mode == "concat" else d
        self.item_fusion, self.user_fusion = nn.Linear(fused, d), nn.Linear(fused, d)
        nn.init.xavier_uniform_(self.item_fusion.weight)
        nn.init.xavier_uniform_(self.user_fusion.weight)
        if self.ssl_task == "FAC":
            self._build_fac(d)

        users, items = self.interaction_edges(dataset)
        self.register_graph("norm_adj", bipartite_adjacency(users, items, self.n_users, self.n_items))

    def _build_fac(self, d: int) -> None:
        """The fine-and-coarse hierarchy. The authors' has three levels for (vision, audio, text): the ID view
        mapped into a fine space shared with vision, a further fine map into audio's space, a d/2 map into
        text's coarse space. Here every modality but the last takes a fine level (at least two fine levels,
        so that two modalities keep the authors' empty middle level, as MMRec's version does) and the last
        modality the coarse one; a single modality has one fine level only (the authors' Kwai branch)."""
        m_count = len(self.modalities)
        self.fine_modalities = self.modalities[:-1] if m_count > 1 else self.modalities
        self.coarse_modality = self.modalities[-1] if m_count > 1 else None
        n_fine = 1 if m_count == 1 else max(m_count - 1, 2)
        self.fac_id = nn.Linear(d, d)  # the ID view into the first fine space
        self.fac_hops = nn.ModuleList()  # fine level k -> k + 1
        self.fac_heads = nn.ModuleDict()  # each modality's view into its own level's space
        layers = [self.fac_id]
        for level in range(n_fine):
            if level > 0:
                self.fac_hops.append(nn.Linear(d, d))
                layers.append(self.fac_hops[-1])
            if level < len(self.fine_modalities):
                self.fac_heads[self.fine_modalities[level]] = nn.Linear(d, d)
                layers.append(self.fac_heads[self.fine_modalities[level]])
        if self.coarse_modality is not None:
            self.fac_coarse = nn.Linear(d, d // 2)  # last fine level into the coarse space
            self.fac_heads[self.coarse_modality] = nn.Linear(d, d // 2)
            layers += [self.fac_coarse, self.fac_heads[self.coarse_modality]]
        for layer in layers:  # biases keep nn.Linear's default init, as the reference
            nn.init.xavier_uniform_(layer.weight)

    # ---- forward --------------------------------------------------------------------------------
    def _item_inputs(self) -> dict[str, torch.Tensor]:
        """Each view's item-side input: the item ID table, each modality's projected unit features."""
        inputs = {ID_VIEW: self.item_embedding.weight}
        for m in self.modalities:
            inputs[m] = self.projections[m](self.item_features(m))
        return inputs

    def _view_layers(self, inputs: dict[str, torch.Tensor]) -> list[tuple[list[torch.Tensor], list[torch.Tensor]]]:
        """Each view's LightGCN layers over the user-item graph, (user layers, item layers), in ``self.views``
        order: every view's user input is the user ID table, so its chain is propagated once for all."""
        return self.bipartite_layers("norm_adj", self.user_embedding.weight, [inputs[v] for v in self.views],
                                     self.n_layers)

    def _fuse(self, parts: list[torch.Tensor], layer: nn.Linear) -> torch.Tensor:
        return layer(torch.cat(parts, dim=1) if self.fusion_mode == "concat" else torch.stack(parts).mean(dim=0))

    def forward(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(users, items) final representations of every user and item."""
        views = self._view_layers(self._item_inputs())
        return (self._fuse(self.layer_means([u for u, _ in views]), self.user_fusion),
                self._fuse(self.layer_means([i for _, i in views]), self.item_fusion))

    def calculate_loss(self, interaction) -> torch.Tensor:
        users, items = interaction[self.USER_ID], interaction[self.ITEM_ID]
        inputs = self._item_inputs()
        views = self._view_layers(inputs)
        # Only the batch's rows are averaged and fused (the reference averages and fuses every row; the
        # layer mean and the fusion layers are row-wise, so the batch's rows are the same numbers).
        user_parts = self.layer_means([u for u, _ in views], users)
        item_parts = self.layer_means([i for _, i in views], items)
        u, i = self._fuse(user_parts, self.user_fusion), self._fuse(item_parts, self.item_fusion)
        loss = info_nce(u, i, self.temp)
        if self.ssl_alpha:
            if self.ssl_task == "FAC":
                ssl = self.fac_loss(dict(zip(self.views, item_parts)))
            else:
                ssl = self.two_view_loss(inputs, users, items)
            loss = loss + self.ssl_alpha * ssl
        return loss

    # ---- self-supervised tasks ------------------------------------------------------------------
    def fac_loss(self, item_views: dict[str, torch.Tensor]) -> torch.Tensor:
        """Fine and coarse: Σ over modalities of the in-batch InfoNCE (raw dot products / ssl_temp) between
        the ID view carried down the chain to the modality's level and the modality's view mapped there."""
        x = self.fac_id(item_views[ID_VIEW])
        loss = 0.0
        for level in range(len(self.fac_hops) + 1):
            if level > 0:
                x = self.fac_hops[level - 1](x)
            if level < len(self.fine_modalities):
                m = self.fine_modalities[level]
                loss = loss + dot_info_nce(x, self.fac_heads[m](item_views[m]), self.ssl_temp)
        if self.coarse_modality is not None:
            m = self.coarse_modality
            loss = loss + dot_info_nce(self.fac_coarse(x), self.fac_heads[m](item_views[m]), self.ssl_temp)
        return loss

    def two_view_loss(self, inputs: dict[str, torch.Tensor], users: torch.Tensor, items: torch.Tensor
                      ) -> torch.Tensor:
        """FD / FM / FD+FM: two perturbed copies of every view, fused; InfoNCE between the copies' batch
        users plus between their batch items (cosine / ssl_temp)."""
        masked = self.masked_views() if self.ssl_task in ("FM", "FD+FM") else (None, None)
        dropout = self.ssl_task in ("FD", "FD+FM")
        parts = ([], [], [], [])  # users copy 1, items copy 1, users copy 2, items copy 2
        ego_users = self.user_embedding.weight
        for name, item_input in inputs.items():
            egos = [torch.cat([ego_users, torch.zeros_like(item_input) if masked[c] == name else item_input])
                    for c in (0, 1)]
            layers, sums = list(egos), list(egos)
            for _ in range(self.n_layers):
                layers = [self.propagate("norm_adj", x) for x in layers]
                if dropout:
                    layers = [self.layer_dropout(x) for x in layers]
                # The reference's copy 1 adds copy 2's propagated layers to its own layer 0 and vice versa.
                sums = [sums[0] + layers[1], sums[1] + layers[0]]
            for c, total in enumerate(sums):
                out = total / (self.n_layers + 1)
                parts[2 * c].append(out[users])
                parts[2 * c + 1].append(out[self.n_users + items])
        u1, u2 = self._fuse(parts[0], self.user_fusion), self._fuse(parts[2], self.user_fusion)
        i1, i2 = self._fuse(parts[1], self.item_fusion), self._fuse(parts[3], self.item_fusion)
        return info_nce(u1, u2, self.ssl_temp) + info_nce(i1, i2, self.ssl_temp)

    def masked_views(self) -> tuple[str | None, str | None]:
        """FM: the view whose item inputs each copy zeroes, two different ones drawn uniformly among the ID
        view and the modalities (the reference draws them with NumPy; here torch's generator)."""
        first, second = torch.randperm(len(self.views))[:2].tolist()
        return self.views[first], self.views[second]

    def layer_dropout(self, x: torch.Tensor) -> torch.Tensor:
        """FD: dropout (rate ``dropout_rate``) on one propagated layer of one copy."""
        return F.dropout(x, self.dropout_rate, self.training)

"""MENTOR — Xu, Chen, Yang, Li, Wang & Ngai, "MENTOR: Multi-level Self-supervised Learning for Multimodal
Recommendation", AAAI 2025 (arXiv 2402.19407). Specification: docs/mentor.md (paper + the authors' code,
Jinfeng-Xu/MENTOR, built on MMRec's DRAGON).

Encoders (DRAGON's heterogeneous part without its user-user graph): per table t, x_t = normalize([P_t; MLP_t(f_t)])
(a user preference table stacked on the items' encoded inputs, rows to unit length), r_t = Σ_{l=0..L} Â^l x_t
over the user-item graph. Tables: one per modality m, one on a trainable item ID table (the "guide"), and two
more per modality whose every hop is perturbed SimGCL-style (h ← h + sign(h) ⊙ ε/‖ε‖ · eps, ε ~ U(0,1)).
Item rows then hop over the frozen kNN item graph S (FREEDOM's): i_t = r_t + S^{L'} r_t.
Views (M modalities, each M · d wide): fused u = [w_u1 u_1 | … | w_uM u_M], i = [i_1 | … | i_M] (scores);
guide [id | … | id]; per modality [m | … | m]; the two noisy views fused like the main one.
Loss: log2 BPR on the fused view + reg_weight (batch users' Σ_m mean P_m² + mean w²)
+ align_weight Σ_{pairs of views among fused, guide, m} |Var a − Var b| + |Mean a − Mean b| (multilevel alignment)
+ mask_weight_g (InfoNCE(noisy₁, noisy₂) over all users + over all items) (graph perturbation)
+ mask_weight_f (2 − cos(dropout(u), W u) − cos(dropout(i), W i)), computed without gradient as the reference
does (feature masking: it moves the reported loss, not the training; docs/mentor.md §2). Any number of
modalities ≥ 1.
"""

from __future__ import annotations

import math
from logging import getLogger

import torch
import torch.nn.functional as F
from recbole.utils import InputType
from torch import nn

from recbole_mm.config_check import Float, Int
from recbole_mm.model.abstract_recommender import MultiModalRecommender
from recbole_mm.model.graphs import bipartite_adjacency
from recbole_mm.model.losses import gaussian_alignment, info_nce, perturb_blocks

GUIDE = "id"  # the table on item IDs (the reference's id_gcn)
NOISY = ("n1", "n2")  # suffixes of the two perturbed tables per modality


class MENTOR(MultiModalRecommender):
    input_type = InputType.PAIRWISE
    config_schema = {
        "n_layers": Int(min=0), "n_mm_layers": Int(min=0), "knn_k": Int(min=1),
        "mm_image_weight": Float(min=0, max=1), "reg_weight": Float(min=0), "align_weight": Float(min=0),
        "mask_weight_g": Float(min=0), "mask_weight_f": Float(min=0),
        "temp": Float(min=0, min_open=True), "dropout": Float(min=0, max=1, max_open=True),
        "noise_eps": Float(min=0),
    }

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        d = config["embedding_size"]
        self.dim = d
        self.n_layers = config["n_layers"]  # hops over the user-item graph
        self.n_mm_layers = config["n_mm_layers"]  # hops of the item rows over the frozen item graph
        self.reg_weight = config["reg_weight"]
        self.align_weight = config["align_weight"]
        self.mask_weight_g = config["mask_weight_g"]
        self.mask_weight_f = config["mask_weight_f"]
        self.temp = config["temp"]
        self.dropout = config["dropout"]  # feature masking's dropout rate
        self.noise_eps = config["noise_eps"]  # norm of the perturbation of each noisy hop
        n_modalities = len(self.modalities)
        if n_modalities == 1:
            getLogger().warning(
                "MENTOR with one modality: users take that modality's representation directly (no fusion weights), "
                "and the fused and the modality's view coincide, so their alignment term is zero (docs/mentor.md)")

        # Parameters in the reference's order: the feature-masking projection, the user fusion weights, per
        # modality its main table then its two noisy tables, the item ID table, the guide table.
        width = n_modalities * d
        self.mask_projection = nn.Linear(width, width)
        # The reference applies it under torch.no_grad(): it never trains (docs/mentor.md §2).
        self.mask_projection.requires_grad_(False)
        if n_modalities > 1:
            self.user_fusion = nn.Parameter(torch.softmax(
                nn.init.xavier_normal_(torch.empty(self.n_users, n_modalities, 1)), dim=1))
        self.preferences = nn.ParameterDict()
        self.encoders = nn.ModuleDict()
        self._inputs_of: dict[str, str] = {}  # table → the modality whose features it encodes (GUIDE: ID table)
        for m in self.modalities:
            for table in (m, *(f"{m}_{s}" for s in NOISY)):
                self._add_table(table, m, self.item_features(m).shape[1])
        self.item_ids = nn.Parameter(nn.init.xavier_normal_(torch.empty(self.n_items, d)))
        self._add_table(GUIDE, GUIDE, d)
        self.main_tables = list(self.modalities)
        # Columns of the side-by-side propagation: the unperturbed tables first, then the noisy ones.
        self.train_tables = [*self.main_tables, GUIDE, *(f"{m}_{s}" for s in NOISY for m in self.modalities)]

        users, items = self.interaction_edges(dataset)
        self.register_graph("ui_graph", bipartite_adjacency(users, items, self.n_users, self.n_items))
        # S = Σ_m α_m Â^m over binary kNN graphs of the features as loaded (FREEDOM's and DRAGON's graph).
        mixing = self.modality_weights(config["mm_image_weight"])
        graphs = self.knn_item_graphs(config["knn_k"], weighted=False)
        parts = [mixing[m] * graphs[m] for m in self.modalities]
        self.register_graph("item_graph", sum(parts[1:], parts[0]))

    def _add_table(self, name: str, source: str, width: int) -> None:
        """One encoder table: user preferences ``[n_users, d]`` and a two-layer MLP of the item inputs (the
        reference's GCN: xavier-normal preferences, then MLP (width → 4d) and MLP_1 (4d → d))."""
        d = self.dim
        self.preferences[name] = nn.Parameter(nn.init.xavier_normal_(torch.empty(self.n_users, d)))
        self.encoders[name] = nn.Sequential(nn.Linear(width, 4 * d), nn.LeakyReLU(), nn.Linear(4 * d, d))
        self._inputs_of[name] = source

    # ---- forward --------------------------------------------------------------------------------
    def table_representations(self, tables: list[str], n_noisy: int = 0
                              ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Per table (users ``[n_users, d]``, items ``[n_items, d]``): r = Σ_{l=0..L} Â^l x over the user-item
        graph, the last ``n_noisy`` tables perturbed at every hop, then items i = r + S^{L'} r. All tables go
        side by side through each sparse product."""
        x = torch.cat([F.normalize(torch.cat([self.preferences[t], self.encoders[t](self._item_input(t))]))
                       for t in tables], dim=1)
        clean = (len(tables) - n_noisy) * self.dim
        total, layer = x, x
        for _ in range(self.n_layers):
            layer = self.propagate("ui_graph", layer)
            if n_noisy:
                layer = torch.cat([layer[:, :clean], perturb_blocks(layer[:, clean:], self.dim, self.noise_eps)],
                                  dim=1)
            total = total + layer
        users, items = total[: self.n_users], total[self.n_users:]
        h = items
        for _ in range(self.n_mm_layers):
            h = self.propagate("item_graph", h)
        items = items + h
        return list(users.split(self.dim, dim=1)), list(items.split(self.dim, dim=1))

    def _item_input(self, table: str) -> torch.Tensor:
        source = self._inputs_of[table]
        return self.item_ids if source == GUIDE else self.item_features(source)

    def _fuse(self, users: list[torch.Tensor], items: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """[w_u1 u_1 | … | w_uM u_M] and [i_1 | … | i_M] (one modality: the table itself)."""
        if len(users) > 1:
            users = [self.user_fusion[:, m] * u for m, u in enumerate(users)]
        return torch.cat(users, dim=1), torch.cat(items, dim=1)

    def forward(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(users, items) of the fused view, ``M · embedding_size`` wide: the scoring vectors."""
        return self._fuse(*self.table_representations(self.main_tables))

    def calculate_loss(self, interaction) -> torch.Tensor:
        user = interaction[self.USER_ID]
        n_mod = len(self.modalities)
        users, items = self.table_representations(self.train_tables, n_noisy=len(NOISY) * n_mod)
        by_table = {t: (u, i) for t, u, i in zip(self.train_tables, users, items)}
        fused_u, fused_i = self._fuse(users[:n_mod], items[:n_mod])

        # The reference's BPR uses log2: the natural-log BPR divided by ln 2.
        loss = self.batch_bpr(interaction, fused_u, fused_i)[0] / math.log(2.0)
        reg = sum((self.preferences[m][user] ** 2).mean() for m in self.modalities)
        if n_mod > 1:
            reg = reg + (self.user_fusion[1:] ** 2).mean()  # real rows: padding row 0 would shift the mean
        loss = loss + self.reg_weight * reg

        # Multilevel alignment: the mean and variance of every view's real rows, all pairs, summed.
        def rows(u_: torch.Tensor, i_: torch.Tensor) -> torch.Tensor:
            return torch.cat([u_[1:], i_[1:]])

        views = [rows(fused_u, fused_i),
                 rows(*(torch.cat([part] * n_mod, dim=1) for part in by_table[GUIDE]))]
        views += [rows(*(torch.cat([part] * n_mod, dim=1) for part in by_table[m])) for m in self.modalities]
        n_pairs = len(views) * (len(views) - 1) // 2
        loss = loss + self.align_weight * n_pairs * gaussian_alignment(views)

        # Graph perturbation: the two noisy fused views against each other, over all real users and items (the
        # costliest term, n² per step: skipped at weight 0).
        if self.mask_weight_g:
            (u1, i1), (u2, i2) = [self._fuse(*zip(*(by_table[f"{m}_{s}"] for m in self.modalities))) for s in NOISY]
            loss = loss + self.mask_weight_g * (info_nce(u1[1:], u2[1:], self.temp)
                                                + info_nce(i1[1:], i2[1:], self.temp))

        if self.mask_weight_f:
            loss = loss + self.mask_weight_f * self._feature_masking(fused_u[1:], fused_i[1:])
        return loss

    @torch.no_grad()
    def _feature_masking(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """(1 − mean cos(dropout(u), W u)) + (1 − mean cos(dropout(i), W i)), without gradient, as the reference
        computes it (all of it inside torch.no_grad()): a value added to the loss (docs/mentor.md §2)."""
        projected = [self.mask_projection(users), self.mask_projection(items)]
        dropped = [F.dropout(users, self.dropout), F.dropout(items, self.dropout)]
        return sum(1 - F.cosine_similarity(a, b).mean() for a, b in zip(dropped, projected))

"""DRAGON — Zhou, Zhou, Zhang, Liu, Wei & Shen, "Enhancing Dyadic Relations with Homogeneous Graphs for
Multimodal Recommendation", ECAI 2023 (arXiv 2301.12097). Specification: docs/dragon.md (paper + MMRec's code).

DualGNN's heterogeneous part (per modality r_m = Σ_{l=0..L} Â^l normalize([P_m; MLP_m(f_m)]) over the user-item
graph) and its user co-occurrence graph G, with DRAGON's construction: modalities are concatenated, not summed.
Items i = [r_1 | … | r_M] + S^{L'} [r_1 | … | r_M], S the frozen item graph (each modality's binary kNN graph,
D^-1/2 A D^-1/2, mixed by FREEDOM's fixed weights); users u = [w_u1 r_1 | … | w_uM r_M] + G (the same).
Loss: BPR with log2, plus ``reg_weight`` × (the batch users' mean squared preferences + the mean squared user
fusion weights). Any number of modalities ≥ 1.
"""

from __future__ import annotations

import torch

from recbole_mm.config_check import Float, Int
from recbole_mm.model.general_recommender.dualgnn import DualGNN


class DRAGON(DualGNN):
    config_schema = {"knn_k": Int(min=1), "n_mm_layers": Int(min=0), "mm_image_weight": Float(min=0, max=1)}
    item_fusion_weights = False  # DRAGON's reference creates weight_i but neither uses nor regularises it

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        self.n_mm_layers = config["n_mm_layers"]  # hops of the items over the frozen item graph
        # S = Σ_m w_m Â^m over binary kNN graphs of the features as loaded (FREEDOM's graph).
        mixing = self.modality_weights(config["mm_image_weight"])
        graphs = self.knn_item_graphs(config["knn_k"], weighted=False)
        parts = [mixing[m] * graphs[m] for m in self.modalities]
        self.register_graph("item_graph", sum(parts[1:], parts[0]))

    def forward(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(users, items) final representations, ``M · embedding_size`` wide."""
        self.draw_epoch_graph("user_graph", self.sampled_user_graph)
        reps = self.modality_representations()
        items = torch.cat(reps, dim=1)[self.n_users:]
        if len(reps) == 1:
            users = reps[0][: self.n_users]
        else:
            users = torch.cat([self.user_fusion[:, m] * r[: self.n_users] for m, r in enumerate(reps)], dim=1)
        h = items
        for _ in range(self.n_mm_layers):
            h = self.propagate("item_graph", h)
        return users + self.propagate("user_graph", users), items + h

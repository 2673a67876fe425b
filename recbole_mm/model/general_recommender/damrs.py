"""DA-MRS — Xu et al., "Improving Multi-modal Recommender Systems by Denoising and Aligning Multi-modal Content
and User Feedback", KDD 2024 (MMRec's damrs.py; the authors' XMUDM/DA-MRS). Specification: docs/damrs.md.

Views (all built from the item ID embeddings E_I): per modality m, h^m = S_m^L E_I over a denoised kNN item graph
S_m (binary top-k of the modality's cosine similarities, searched only among the items whose similarity is at or
above the mean in *every* modality); a behaviour view h^b = B^L E_I over the item-item behaviour graph B (self loop
plus each item's top-k items sharing at least two training users). Behaviour: (U, I) = LightGCN([E_U; E_I]).
Score: u · (i + c) with c = mean of the views.
Loss: BPR whose two directions are weighted by how much the views agree on the pair (denoised user feedback)
+ neighbor_weight · neighbour discrimination (per view, an InfoNCE towards the neighbours all views agree on and
towards the view's own next neighbours) + kl_weight · symmetric KL between σ(u · î) and σ(u · ĉ) over the batch's
users × items (aligning user preference with content). Any number of modalities ≥ 1 (the behaviour view is always
there, so the views never fall below two).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from recbole.utils import InputType

from recbole_mm.config_check import Float, Int
from recbole_mm.errors import DataError
from recbole_mm.model.abstract_recommender import MultiModalRecommender
from recbole_mm.model.graphs import agreed_neighbours, behaviour_graph, bipartite_adjacency, graph_from_neighbours
from recbole_mm.model.losses import neighbour_discrimination, symmetric_bernoulli_kl


class DAMRS(MultiModalRecommender):
    aliases = ("DA-MRS",)  # the paper's spelling, accepted by recbole_mm's entry points (registry)
    input_type = InputType.PAIRWISE
    config_schema = {
        "knn_k": Int(min=1), "n_mm_layers": Int(min=0), "n_ui_layers": Int(min=0),
        "item_graph_k": Int(min=1), "item_graph_min_count": Int(min=1),
        "kl_weight": Float(min=0), "neighbor_weight": Float(min=0),
        "cl_temp": Float(min=0, min_open=True), "n_pseudo_positives": Int(min=1),
    }

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        d = config["embedding_size"]
        self.n_mm_layers = config["n_mm_layers"]  # hops of the item ID embeddings on each item-item graph
        self.n_ui_layers = config["n_ui_layers"]  # LightGCN layers on the user-item graph
        self.kl_weight = config["kl_weight"]
        self.neighbor_weight = config["neighbor_weight"]
        self.cl_temp = config["cl_temp"]
        self.n_pseudo_positives = config["n_pseudo_positives"]
        if 2 * self.n_pseudo_positives > self.n_items - 1:
            # The two positive sets of every anchor are disjoint top-k lists over the items.
            raise DataError(f"DA-MRS n_pseudo_positives: {self.n_pseudo_positives} needs at least "
                            f"{2 * self.n_pseudo_positives} items, the dataset has {self.n_items - 1}; "
                            "lower n_pseudo_positives")

        # The reference creates image_trs / text_trs after these and never uses them; they draw after the ID
        # embeddings, so leaving them out changes no initial weight (docs/damrs.md).
        self.user_embedding, self.item_embedding = self.id_embeddings(d)
        users, items = self.interaction_edges(dataset)
        self.register_graph("norm_adj", bipartite_adjacency(users, items, self.n_users, self.n_items))
        neighbours = agreed_neighbours([self.item_features(m)[1:] for m in self.modalities], config["knn_k"])
        self.view_graphs = []
        for m, indices in zip(self.modalities, neighbours):
            graph = graph_from_neighbours(indices, torch.ones(indices.shape), weighted=False, normalization="sym",
                                          offset=1)
            self.register_graph(f"item_graph_{m}", graph)
            self.view_graphs.append(f"item_graph_{m}")
        self.register_graph("behaviour_graph", behaviour_graph(users, items, self.n_users, self.n_items,
                                                               config["item_graph_k"],
                                                               config["item_graph_min_count"]))
        self.view_graphs.append("behaviour_graph")

    def forward(self) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
        """(users, items) of LightGCN and the item views (modalities in order, then behaviour), all items."""
        items = self.item_embedding.weight
        out = self.mean_propagation("norm_adj", torch.cat([self.user_embedding.weight, items]), self.n_ui_layers)
        views = []
        for name in self.view_graphs:
            h = items
            for _ in range(self.n_mm_layers):
                h = self.propagate(name, h)
            views.append(h)
        return out[: self.n_users], out[self.n_users:], views

    def calculate_loss(self, interaction) -> torch.Tensor:
        users = interaction[self.USER_ID]
        pos, neg = interaction[self.ITEM_ID], interaction[self.NEG_ITEM_ID]
        user_emb, item_emb, views = self.forward()
        content = sum(views) / len(views)

        batch_items = torch.unique(torch.cat([pos, neg]))
        discrimination = neighbour_discrimination(views, batch_items, self.n_pseudo_positives, self.cl_temp)

        batch_users = user_emb[torch.unique(users)]
        kl = symmetric_bernoulli_kl(batch_users @ F.normalize(item_emb[batch_items], dim=1).T,
                                    batch_users @ F.normalize(content[batch_items], dim=1).T).mean()

        u = user_emb[users]
        pos_weight, neg_weight = _feedback_weights(u, [v[pos] for v in views], [v[neg] for v in views])
        final = item_emb + content
        margin = (u * final[pos]).sum(dim=1) - (u * final[neg]).sum(dim=1)
        bpr = -(F.logsigmoid(margin) * pos_weight + F.logsigmoid(-margin) * neg_weight).mean()
        return bpr + self.neighbor_weight * discrimination + self.kl_weight * kl

    def user_item_vectors(self) -> tuple[torch.Tensor, torch.Tensor]:
        def compute():
            users, items, views = self.forward()
            return users, items + sum(views) / len(views)

        return self.cached("vectors", compute)


# ---- helpers ------------------------------------------------------------------------------------
def _feedback_weights(users: torch.Tensor, pos_views: list[torch.Tensor], neg_views: list[torch.Tensor]
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """DA-MRS's per-pair BPR weights (constants). With P_v = σ(u · ĥ^v_pos) over the views v and N̄ the mean of
    σ(u · ĥ^v_neg) over views *and* batch: w+ = clamp(mean_v P · exp(−var_v P)², 0, 1) (var unbiased), and
    w− = clamp(max_v P − N̄, 0, 1) where mean_v P < N̄, else 0 (the pair looks like noise: train it backwards)."""
    with torch.no_grad():
        p = torch.sigmoid(torch.stack([(users * F.normalize(v, dim=1)).sum(dim=1) for v in pos_views]))
        n = torch.sigmoid(torch.stack([(users * F.normalize(v, dim=1)).sum(dim=1) for v in neg_views]))
        mean, negative = p.mean(dim=0), n.mean()
        pos_weight = (mean * torch.exp(-p.var(dim=0)) ** 2).clamp(0, 1)
        neg_weight = ((p.max(dim=0).values - negative) * (mean < negative)).clamp(0, 1)
    return pos_weight, neg_weight

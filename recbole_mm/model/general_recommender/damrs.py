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
from recbole_mm.model.graphs import (NO_NEIGHBOUR, bipartite_adjacency, graph_from_neighbours, normalize_adjacency,
                                     user_cooccurrence_neighbours)


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
        neighbours = _agreed_neighbours([self.item_features(m)[1:] for m in self.modalities], config["knn_k"])
        self.view_graphs = []
        for m, indices in zip(self.modalities, neighbours):
            graph = graph_from_neighbours(indices, torch.ones(indices.shape), weighted=False, normalization="sym",
                                          offset=1)
            self.register_graph(f"item_graph_{m}", graph)
            self.view_graphs.append(f"item_graph_{m}")
        self.register_graph("behaviour_graph", _behaviour_graph(users, items, self.n_users, self.n_items,
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
        discrimination = _neighbour_discrimination(views, batch_items, self.n_pseudo_positives, self.cl_temp)

        batch_users = user_emb[torch.unique(users)]
        kl = _symmetric_bernoulli_kl(batch_users @ F.normalize(item_emb[batch_items], dim=1).T,
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
# belongs in recbole_mm/model/graphs.py (moved after the benchmark runs)
def _agreed_neighbours(features: list[torch.Tensor], k: int, chunk_size: int = 1024) -> list[torch.Tensor]:
    """Per modality, each row's top-``k`` cosine neighbours among the rows whose similarity to it is at or above
    the mean of all n² similarities in every modality (DA-MRS's denoised kNN graphs): ``[n, min(k, n)]`` index
    tensors, :data:`NO_NEIGHBOUR` where fewer rows qualify. The row itself qualifies (similarity 1). Rows of zeros
    (items without content) have no neighbours and are nobody's. Row chunks: no n × n matrix is formed; the mean
    is |Σ_i u_i|² / n² over the unit rows u_i."""
    units = [F.normalize(x.float(), dim=1) for x in features]
    n = units[0].shape[0]
    k = min(k, n)
    means = [u.sum(dim=0).pow(2).sum() / (n * n) for u in units]
    has_content = torch.stack([x.abs().sum(dim=1) > 0 for x in features]).all(dim=0)
    out = [torch.full((n, k), NO_NEIGHBOUR, dtype=torch.long) for _ in units]
    rows = max(1, min(chunk_size, (1 << 26) // max(n * len(units), 1)))
    for start in range(0, n, rows):
        sims = [u[start:start + rows] @ u.T for u in units]
        agreed = has_content[start:start + rows, None] & has_content[None, :]
        for s, mean in zip(sims, means):
            agreed &= s >= mean
        for indices, s in zip(out, sims):
            values, cols = torch.topk(s.masked_fill(~agreed, float("-inf")), k, dim=1)
            indices[start:start + rows] = torch.where(values > float("-inf"), cols, NO_NEIGHBOUR)
        del sims, agreed
    return out


# belongs in recbole_mm/model/graphs.py (moved after the benchmark runs)
def _behaviour_graph(user_ids: torch.Tensor, item_ids: torch.Tensor, n_users: int, n_items: int, k: int,
                     min_count: int) -> torch.Tensor:
    """DA-MRS's item-item behaviour graph, ``[n_items, n_items]``: every real item linked to itself and to its
    top-``k`` items by number of shared training users (ties to the lower id), counting only pairs sharing at least
    ``min_count`` users; binary, D^-1/2 A D^-1/2 with D the row sums. Padding item 0 stays isolated."""
    neighbours, counts = user_cooccurrence_neighbours(item_ids, user_ids, n_items, n_users, k)
    neighbours[counts < min_count] = NO_NEIGHBOUR  # rows are sorted by count: this keeps the top k of the rest
    real = torch.arange(1, n_items)
    rows = torch.cat([real, torch.arange(n_items).repeat_interleave(neighbours.shape[1])])
    cols = torch.cat([real, neighbours.reshape(-1)])
    keep = cols != NO_NEIGHBOUR
    return normalize_adjacency(rows[keep], cols[keep], torch.ones(int(keep.sum())), n_items, "sym")


# belongs in recbole_mm/model/losses.py (moved after the benchmark runs)
def _symmetric_bernoulli_kl(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """KL(σ(a) ‖ σ(b)) + KL(σ(b) ‖ σ(a)) of Bernoulli variables, entry-wise, from the logits: it equals
    (σ(a) − σ(b)) · (a − b), finite where σ saturates (the reference's logs of σ reach log 0 there)."""
    return (torch.sigmoid(a) - torch.sigmoid(b)) * (a - b)


# belongs in recbole_mm/model/losses.py (moved after the benchmark runs)
def _neighbour_discrimination(views: list[torch.Tensor], items: torch.Tensor, n_positives: int,
                              temperature: float) -> torch.Tensor:
    """DA-MRS's neighbour discrimination, the mean over views. For view v and anchor item i (rows ``items`` of
    the ``[n_items, d]`` views; candidates the real items 1..): cosine c_ij, p_v = softmax_j(c) (no gradient);
    A = top-``n_positives`` of Σ_{w≠v} p_w + 2 p_v (neighbours the views agree on), S = the next
    ``n_positives`` of p_v outside A; with e_j = exp(c_ij / τ), T = Σ_j e_j:
    loss_i = −log(Σ_A e / T + 1e-9) − log(Σ_S e / (T − Σ_A e) + 1e-9), averaged over the anchors."""
    anchors = [F.normalize(v[items], dim=1) for v in views]
    candidates = [F.normalize(v[1:], dim=1) for v in views]
    cosines = [a @ b.T for a, b in zip(anchors, candidates)]
    with torch.no_grad():
        probs = [torch.softmax(c, dim=1) for c in cosines]
        total = sum(probs)
    losses = []
    for a, b, c, p in zip(anchors, candidates, cosines, probs):
        agreed = torch.topk(total + p, n_positives, dim=1).indices
        single = torch.topk(p.scatter_(1, agreed, 0.0), n_positives, dim=1).indices  # p is not needed after this
        everything = torch.exp(c / temperature).sum(dim=1)
        # The positives' similarities from their rows ([anchors, n_positives, d]), as the reference scores them:
        # gathering them from the anchors × items matrix would give that matrix a second, scattered gradient.
        on_agreed = torch.exp((a.unsqueeze(1) * b[agreed]).sum(dim=2) / temperature).sum(dim=1)
        on_single = torch.exp((a.unsqueeze(1) * b[single]).sum(dim=2) / temperature).sum(dim=1)
        losses.append((-torch.log(on_agreed / everything + 1e-9)
                       - torch.log(on_single / (everything - on_agreed) + 1e-9)).mean())
    return sum(losses) / len(losses)


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

"""LayerGCN — Zhou, Lin, Liu, Miao, Wei & Shen, "Layer-refined Graph Convolutional Networks for
Recommendation", ICDE 2023 (arXiv 2207.11088). Specification: docs/layergcn.md (paper + MMRec's code).

A collaborative baseline: no item features, so it trains on any RecBole dataset. Over the user-item
graph Â (D^-1/2 A D^-1/2), each layer refines its output by its cosine similarity to the ego layer:
x_l = cos(Â x_{l-1}, x_0) ⊙ Â x_{l-1}, and the final representation is Σ_{l=1..L} x_l (the ego layer
itself left out). While training, Â is rebuilt every epoch from a share ``1 - dropout`` of the edges,
drawn alternately degree-sensitively (P ∝ 1/sqrt(d_u d_i): edges between popular nodes go first) and
uniformly; evaluation uses the whole graph. Loss: Σ_batch -log σ(s_pos - s_neg) (a sum, not a mean)
+ ``reg_weight`` · ½ Σ‖ego rows of the batch‖².
"""

from __future__ import annotations

import torch
from recbole.utils import InputType

from recbole_mm.config_check import Float, Int
from recbole_mm.model.abstract_recommender import GraphRecommender
from recbole_mm.model.graphs import bipartite_adjacency, degree_sensitive_keep
from recbole_mm.model.losses import squared_l2


_EPS = 1e-8  # F.cosine_similarity's: each norm is clamped to at least this


def _row_dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Σ_k a_nk b_nk per row, as a batched 1×d by d×1 product (one pass, no n×d temporary)."""
    return torch.bmm(a.unsqueeze(1), b.unsqueeze(2)).view(-1)


class _Refine(torch.autograd.Function):
    """y = cos(x, e) ⊙ x row by row (LayerGCN's layer refinement, F.cosine_similarity with its clamped
    norms), with a hand-written backward: autograd's chain for the same expression makes a dozen passes over
    the n×d operands per layer and dominated a training step; this makes a few.

    With w = x·e / (‖x‖‖e‖) and s = g·x (g the gradient of y):
    dL/dx = w g + s/(‖x‖‖e‖) e − s w/‖x‖² x and dL/de = s/(‖x‖‖e‖) x − s w/‖e‖² e (zero rows of x give 0).
    ``e_norm``: ‖e‖ per row, clamped, computed once per forward pass for all layers.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, ego: torch.Tensor, ego_norm: torch.Tensor) -> torch.Tensor:
        x_norm = torch.linalg.vector_norm(x, dim=1).clamp_min_(_EPS)
        norms = x_norm * ego_norm
        w = _row_dot(x, ego).div_(norms)
        ctx.save_for_backward(x, ego, ego_norm, x_norm, norms, w)
        return x * w.unsqueeze(1)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: torch.Tensor):
        x, ego, ego_norm, x_norm, norms, w = ctx.saved_tensors
        s = _row_dot(grad, x)
        a = (s / norms).unsqueeze(1)
        sw = s * w
        grad_x = grad_ego = None
        if ctx.needs_input_grad[0]:
            grad_x = grad * w.unsqueeze(1)
            grad_x.addcmul_(ego, a).addcmul_(x, (sw / x_norm.square()).neg_().unsqueeze(1))
        if ctx.needs_input_grad[1]:
            grad_ego = x * a
            grad_ego.addcmul_(ego, (sw / ego_norm.square()).neg_().unsqueeze(1))
        return grad_x, grad_ego, None


class LayerGCN(GraphRecommender):
    input_type = InputType.PAIRWISE
    config_schema = {
        "n_layers": Int(min=1), "reg_weight": Float(min=0), "dropout": Float(min=0, max=1, max_open=True),
    }

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        self.n_layers = config["n_layers"]  # refined layers summed into the final representation
        self.reg_weight = config["reg_weight"]  # weight of ½‖ego rows‖² (not divided by the batch size)
        self.dropout = config["dropout"]  # share of user-item edges dropped per training epoch

        self.user_embedding, self.item_embedding = self.id_embeddings(config["embedding_size"])
        edge_users, edge_items = self.interaction_edges(dataset)
        self.register_buffer("edge_users", edge_users, persistent=False)
        self.register_buffer("edge_items", edge_items, persistent=False)
        self.register_graph("norm_adj", bipartite_adjacency(edge_users, edge_items, self.n_users, self.n_items))
        self._uniform_next = False  # the first epoch prunes degree-sensitively, the next uniformly, and so on

    # ---- the pruned graph, drawn once per training epoch ------------------------------------------
    def pruned_graph(self) -> torch.Tensor:
        """This epoch's pruned user-item graph, alternating the two draws (degree-sensitive, then uniform)."""
        n_edges = len(self.edge_users)
        if self._uniform_next:
            keep = torch.randperm(n_edges, device=self.edge_users.device)[: int(n_edges * (1.0 - self.dropout))]
        else:
            keep = degree_sensitive_keep(self.edge_users, self.edge_items, self.n_users, self.n_items, self.dropout)
        self._uniform_next = not self._uniform_next
        return bipartite_adjacency(self.edge_users[keep], self.edge_items[keep], self.n_users, self.n_items)

    # ---- forward --------------------------------------------------------------------------------
    def forward(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(users, items): Σ_l of the layer-refined propagations, over the pruned graph while training."""
        pruned = self.training and self.dropout > 0
        if pruned:
            self.draw_epoch_graph("pruned_adj", self.pruned_graph)
        graph = "pruned_adj" if pruned else "norm_adj"
        ego = torch.cat([self.user_embedding.weight, self.item_embedding.weight])
        with torch.no_grad():
            ego_norm = torch.linalg.vector_norm(ego, dim=1).clamp_min_(_EPS)
        layer, total = ego, None
        for _ in range(self.n_layers):
            layer = _Refine.apply(self.propagate(graph, layer), ego, ego_norm)
            total = layer if total is None else total + layer
        return total[: self.n_users], total[self.n_users:]

    def calculate_loss(self, interaction) -> torch.Tensor:
        users = interaction[self.USER_ID]
        pos, neg = interaction[self.ITEM_ID], interaction[self.NEG_ITEM_ID]
        # The original sums the BPR term over the batch (its L2 term is not divided by the batch size either).
        loss = self.batch_bpr(interaction, *self.forward())[0] * len(users)
        reg = squared_l2(self.user_embedding(users), self.item_embedding(pos), self.item_embedding(neg), denominator=1)
        return loss + self.reg_weight * reg

"""GRCN — Wei et al., "Graph-Refined Convolutional Network for Multimedia Recommendation with Implicit
Feedback", ACM MM 2020 (arXiv 2111.02036). Specification: docs/grcn.md (paper + the authors' code, as in MMRec).

Graph refining: per modality m, item content c^m_i = normalize(leaky_relu(W_m f^m_i + b_m)) and a user
preference p^m_u (normalised); one attention layer over the user-item graph in both directions, with logits
p^m_u · c^m_i softmax-normalised over each node's neighbours, gives the modality's representation
x^m + Σ α^m x^m_neighbour and, per directed edge, the attention α^m. The edge weight is
relu(max_m α^m_e · κ_{src(e), m}) with κ a learned confidence per node and modality: edges that no modality
supports are pruned (weight 0). Graph convolution: the normalised ID embeddings propagated twice over the
weighted graph, e + A_w e + A_w² e. Final representation: [id; x^1; ...; x^M] (concatenation); score u·i.
Loss: BPR + ``reg_weight`` × (L2 of the batch's ID embeddings and preferences, and of all image preferences).
Any number of modalities ≥ 1.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from recbole.utils import InputType
from torch import nn

from recbole_mm.config_check import Choice, Float, Int
from recbole_mm.model.abstract_recommender import BFLOAT16_FEATURES, MultiModalRecommender
from recbole_mm.model.graphs import edge_propagate, edge_structure, segment_softmax, weighted_propagate


class GRCN(MultiModalRecommender):
    input_type = InputType.PAIRWISE
    config_schema = {
        "feature_dtype": BFLOAT16_FEATURES,  # its feature layers all have the bf16 path
        "latent_embedding": Int(min=1), "n_layers": Int(min=0), "reg_weight": Float(min=0),
        "routing": Choice("reference", "paper"),
    }

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        d = config["embedding_size"]  # width of the ID embeddings
        d_content = config["latent_embedding"]  # width of each modality's preference and content vectors
        self.n_routing = config["n_layers"]  # routing iterations (only with routing: paper; see docs/grcn.md)
        self.routing = config["routing"]
        self.reg_weight = config["reg_weight"]
        n_nodes = self.n_users + self.n_items

        # Parameters in the reference's order and init (xavier-normal over the joint shapes).
        self.node_embedding = nn.Parameter(nn.init.xavier_normal_(torch.empty(n_nodes, d)))
        self.preferences = nn.ParameterDict()
        self.projections = nn.ModuleDict()
        for m in self.modalities:
            self.preferences[m] = nn.Parameter(nn.init.xavier_normal_(torch.empty(self.n_users, d_content)))
            self.projections[m] = self.feature_linear(self.item_features(m).shape[1], d_content)
            nn.init.xavier_normal_(self.projections[m].weight)
        self.confidence = nn.Parameter(nn.init.xavier_normal_(torch.empty(n_nodes, len(self.modalities))))

        # The directed edges of the user-item graph in CSR order of the target node (users first): the E
        # item → user edges by (user, item), then the E user → item edges by (item, user). A pair's logit is
        # computed once, in (user, item) order; ``by_item`` puts it in the second half's order.
        users, items = self.interaction_edges(dataset)
        by_item = torch.argsort(items * self.n_users + users)
        items = items + self.n_users
        self.register_buffer("edge_users", users, persistent=False)
        self.register_buffer("edge_items", items, persistent=False)
        self.register_buffer("by_item", by_item, persistent=False)
        self.register_buffer("edge_src", torch.cat([items, users[by_item]]), persistent=False)
        self.register_buffer("edge_dst", torch.cat([users, items[by_item]]), persistent=False)
        self.edges = edge_structure(self.edge_dst, self.edge_src, (n_nodes, n_nodes))

    def _apply(self, fn, recurse=True):
        module = super()._apply(fn, recurse)
        edges = self.__dict__.get("edges")
        if edges is not None:  # the CSR pattern follows the edge buffers to the model's device
            self.edges = type(edges)(*(fn(t) if torch.is_tensor(t) else t for t in edges))
        return module

    # ---- graph refining: per-modality attention over the user-item graph ------------------------
    def _route(self, preference: torch.Tensor, content: torch.Tensor) -> torch.Tensor:
        """The paper's routing (``routing: paper``): each user's preference moves towards its items' content,
        weighted by the attention over the user's items, then is normalised again."""
        users, items = self.edge_users, self.edge_items - self.n_users
        for _ in range(self.n_routing):
            alpha = segment_softmax((preference[users] * content[items]).sum(dim=1), users, self.n_users)
            preference = F.normalize(edge_propagate(users, items, alpha, content, self.n_users) + preference)
        return preference

    def refine(self, m: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Modality ``m``'s node representations ``[n_users + n_items, latent_embedding]`` and its attention
        on every directed edge ``[2E]`` (in ``edge_dst``/``edge_src`` order)."""
        content = F.normalize(F.leaky_relu(self.projections[m](self.projection_input(m))))
        preference = F.normalize(self.preferences[m])
        if self.routing == "paper":
            preference = self._route(preference, content)
        x = torch.cat([preference, content])
        n = x.shape[0]
        # One logit per undirected edge serves both directions; each is normalised over the target's edges.
        logits = (x.index_select(0, self.edge_users) * x.index_select(0, self.edge_items)).sum(dim=1)
        to_users = segment_softmax(logits, self.edge_users, n)
        to_items = segment_softmax(logits, self.edge_items, n).index_select(0, self.by_item)
        alpha = torch.cat([to_users, to_items])
        return x + weighted_propagate(self.edges, alpha, x), alpha

    def forward(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(users, items) final representations ``[n, embedding_size + M · latent_embedding]``."""
        contents, weights = [], []
        for j, m in enumerate(self.modalities):
            rep, alpha = self.refine(m)
            contents.append(rep)
            # An edge's weight in modality m: its attention times the source node's confidence in m.
            weights.append(alpha * self.confidence[:, j].index_select(0, self.edge_src))
        weight = torch.relu(torch.stack(weights).amax(dim=0))  # pruning: no supporting modality → 0

        # Graph convolution of the ID embeddings over the refined graph (two layers, no activation).
        e = F.normalize(self.node_embedding)
        h1 = weighted_propagate(self.edges, weight, e)
        h2 = weighted_propagate(self.edges, weight, h1)
        out = torch.cat([e + h1 + h2, *contents], dim=1)
        return out[: self.n_users], out[self.n_users:]

    def calculate_loss(self, interaction) -> torch.Tensor:
        users = interaction[self.USER_ID]
        pos, neg = interaction[self.ITEM_ID], interaction[self.NEG_ITEM_ID]
        loss = self.batch_bpr(interaction, *self.forward())[0]
        if not self.reg_weight:
            return loss
        # The reference's terms: the batch's raw ID embeddings (items: mean over the positives and negatives),
        # each modality's preferences of the batch's users, and all image preferences (see docs/grcn.md).
        emb = self.node_embedding
        reg = emb[users].pow(2).mean() + (emb[self.n_users + pos].pow(2).mean()
                                          + emb[self.n_users + neg].pow(2).mean()) / 2
        for m in self.modalities:
            reg = reg + self.preferences[m][users].pow(2).mean()
        if "image" in self.preferences:
            reg = reg + self.preferences["image"][1:].pow(2).mean()
        return loss + self.reg_weight * reg

"""MMGCN — Wei, Wang, Nie, He, Hong & Chua, "MMGCN: Multi-modal Graph Convolution Network for Personalized
Recommendation of Micro-video", ACM MM 2019. Specification: docs/mmgcn.md (paper + the authors' code + MMRec's).

One graph network per modality over the user-item graph (both directions, no self-loops). Node inputs per
modality m: users' modality-specific preference vectors P_m, items' features (through an MLP to a latent width
where configured), concatenated and L2-normalised row-wise: x⁰. Each layer l (equations 1 and 5 of the paper):

    h = leaky_relu(Agg(x W_l))                      aggregation: mean (D^-1 A) or sum (A) over neighbours
    x̂ = leaky_relu(Lin_l(x)) + E                    E: the shared ID embeddings of users and items
    x = leaky_relu(G_l([h ‖ x̂]))  (concat)   or   leaky_relu(G_l(h) + x̂)

The node representation is the mean of the modalities' last x; score = dot product. Loss: BPR plus
``reg_weight`` × (mean square of the batch's ID-embedding rows + mean square of the first modality's P).
As in both reference codes, E and P are fixed random draws unless ``train_embeddings`` is set (docs/mmgcn.md).
"""

from __future__ import annotations

import math
from logging import getLogger

import torch
import torch.nn.functional as F
from recbole.utils import InputType
from torch import nn

from recbole_mm.config_check import Bool, Choice, Float, Int, MappingOf
from recbole_mm.model.abstract_recommender import MultiModalRecommender
from recbole_mm.model.graphs import bipartite_adjacency
from recbole_mm.model.losses import dot_bpr_loss


def _xavier_normal_padded(rows: list[int], dim: int) -> torch.Tensor:
    """A ``[sum(rows) + len(rows), dim]`` table: for each block of real rows a zero padding row, then the
    rows of one ``torch.rand`` + ``xavier_normal_`` draw over all real rows (the references' tensors have no
    padding rows, so drawing over the real rows only keeps their random stream and their xavier scale)."""
    table = nn.init.xavier_normal_(torch.rand(sum(rows), dim))
    parts, start = [], 0
    for n in rows:
        parts += [torch.zeros(1, dim), table[start:start + n]]
        start += n
    return torch.cat(parts)


class _ModalityGCN(nn.Module):
    """One modality's graph network: the users' preference vectors, the item MLP (optional) and
    ``n_layers`` of (aggregation weight W_l, Lin_l, G_l), created in the references' order."""

    def __init__(self, n_real_users: int, feature_dim: int, latent_dim: int | None, id_dim: int, n_layers: int,
                 concat: bool, train_embeddings: bool):
        super().__init__()
        in_dim = latent_dim or feature_dim
        preference = _xavier_normal_padded([n_real_users], in_dim)
        if train_embeddings:
            self.preference = nn.Parameter(preference)
        else:
            self.register_buffer("preference", preference)
        self.mlp = nn.Linear(feature_dim, latent_dim) if latent_dim else None
        self.conv_weights = nn.ParameterList()
        self.linears, self.gates = nn.ModuleList(), nn.ModuleList()
        for layer in range(n_layers):
            d_in = in_dim if layer == 0 else id_dim
            conv = torch.empty(d_in, d_in)
            # The references' conv weight is first drawn uniform(±1/sqrt(d_in)) (PyG's init) and then
            # overwritten by xavier_normal_; the first draw is kept so a seed gives their weights.
            bound = 1.0 / math.sqrt(d_in)
            nn.init.uniform_(conv, -bound, bound)
            nn.init.xavier_normal_(conv)
            self.conv_weights.append(nn.Parameter(conv))
            linear = nn.Linear(d_in, id_dim)
            nn.init.xavier_normal_(linear.weight)
            gate = nn.Linear(d_in + id_dim if concat else d_in, id_dim)
            if layer == 0:  # only the first layer's G is xavier-initialised in both references
                nn.init.xavier_normal_(gate.weight)
            self.linears.append(linear)
            self.gates.append(gate)


class MMGCN(MultiModalRecommender):
    input_type = InputType.PAIRWISE
    config_schema = {
        "n_layers": Int(min=1),
        "latent_dims": MappingOf(Int(min=1), example="{image: 256}"),
        "concat": Bool(),
        "aggregation": Choice("mean", "add"),
        "train_embeddings": Bool(),
        "reg_weight": Float(min=0),
    }

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        d = config["embedding_size"]
        self.n_layers = config["n_layers"]  # graph layers per modality (MMRec's code always runs 3)
        self.concat = config["concat"]  # G_l([h ‖ x̂]) rather than G_l(h) + x̂
        self.reg_weight = config["reg_weight"]
        latent_dims = dict(config["latent_dims"] or {})
        absent = sorted(set(latent_dims) - set(self.modalities))
        if absent:
            # The default names image; a dataset without one runs with its modalities' raw features.
            getLogger().warning(f"MMGCN latent_dims names {', '.join(absent)}, not a modality of this dataset "
                                f"({', '.join(self.modalities)}): those entries are unused; set latent_dims "
                                "for this dataset's modalities (or ~) to silence this")

        # Modalities in declaration order, then the ID embeddings: the references' creation order.
        self.branches = nn.ModuleDict({
            m: _ModalityGCN(self.n_users - 1, self.item_features(m).shape[1], latent_dims.get(m), d, self.n_layers,
                            self.concat, config["train_embeddings"])
            for m in self.modalities
        })
        # E over the users, then the items; rows 0 and n_users are padding.
        id_embedding = _xavier_normal_padded([self.n_users - 1, self.n_items - 1], d)
        if config["train_embeddings"]:
            self.id_embedding = nn.Parameter(id_embedding)
        else:
            self.register_buffer("id_embedding", id_embedding)

        users, items = self.interaction_edges(dataset)
        normalization = "row" if config["aggregation"] == "mean" else "none"
        self.register_graph("graph", bipartite_adjacency(users, items, self.n_users, self.n_items,
                                                         normalization=normalization))

    def _while_fixed(self, key: str, source: torch.Tensor, build) -> torch.Tensor:
        """``build()``, kept between steps while ``source`` is a fixed buffer (recomputed if it changes in place);
        computed afresh, with its gradient, when ``source`` is trained (``train_embeddings``)."""
        if source.requires_grad:
            return build()
        return self._kept((key, source.device), (source,), build)

    def _modality_forward(self, m: str, nodes: torch.Tensor | None = None) -> torch.Tensor:
        """Modality ``m``'s last layer x for every node, or for ``nodes`` only (a training batch's distinct
        nodes: the last layer's row-wise maps Lin and G then run on those rows; its aggregation and every
        earlier layer need all rows). Layer 0 multiplies the user and item rows separately, so that fixed
        preferences get no input gradient (the reference's product over [P; items] computes one for all)."""
        branch = self.branches[m]
        features = self.item_features(m)
        items = branch.mlp(features) if branch.mlp is not None else features
        # Layer 0's input as (user rows, item rows); F.normalize is row-wise, so these are the rows of the
        # reference's normalised [P; items].
        users = self._while_fixed(f"mmgcn_users_{m}", branch.preference, lambda: F.normalize(branch.preference))
        x = (users, F.normalize(items))

        def rowwise(op, x):
            return torch.cat([op(part) for part in x]) if isinstance(x, tuple) else op(x)

        for layer, (conv, linear, gate) in enumerate(zip(branch.conv_weights, branch.linears, branch.gates)):
            h = F.leaky_relu(self.propagate("graph", rowwise(lambda part: part @ conv, x)))
            embedding = self.id_embedding
            if nodes is not None and layer == len(branch.linears) - 1:
                x = torch.cat(x)[nodes] if isinstance(x, tuple) else x[nodes]
                h, embedding = h[nodes], embedding[nodes]
            x_hat = F.leaky_relu(rowwise(linear, x)) + embedding
            x = F.leaky_relu(gate(torch.cat([h, x_hat], dim=1)) if self.concat else gate(h) + x_hat)
        return x

    def node_vectors(self, nodes: torch.Tensor | None = None) -> torch.Tensor:
        """The mean over the modalities of each one's last layer, users then items (rows ``nodes`` only when
        given)."""
        return sum(self._modality_forward(m, nodes) for m in self.modalities) / len(self.modalities)

    def forward(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(users, items): the mean over the modalities of each one's last layer."""
        out = self.node_vectors()
        return out[: self.n_users], out[self.n_users:]

    def calculate_loss(self, interaction) -> torch.Tensor:
        users = interaction[self.USER_ID]
        pos, neg = interaction[self.ITEM_ID], interaction[self.NEG_ITEM_ID]
        nodes, user_rows, pos_rows, neg_rows = self.batch_nodes(interaction)
        out = self.node_vectors(nodes)
        loss = dot_bpr_loss(out[user_rows], out[pos_rows], out[neg_rows])
        if not self.reg_weight:
            return loss
        # The references' mean over their [2B, d] (user, item) pairs: each user row twice, each item once.
        e_user, e_pos, e_neg = (self.id_embedding[users], self.id_embedding[self.n_users + pos],
                                self.id_embedding[self.n_users + neg])
        id_term = (2 * e_user.pow(2).sum() + e_pos.pow(2).sum() + e_neg.pow(2).sum()) / (2 * e_user.numel())
        # Only the first modality's preferences (the references' visual one), over the real users; a constant
        # while they are fixed, so kept between steps.
        preference = self.branches[self.modalities[0]].preference
        preference_term = self._while_fixed("mmgcn_reg", preference, lambda: preference[1:].pow(2).mean())
        return loss + self.reg_weight * (id_term + preference_term)

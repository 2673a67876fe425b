"""MM-GEF — Wu, Ariza-Casabona, Twardowski, Wijaya, "Multi-modal representation meet collaborative
filtering" (arXiv 2308.07222): Multi-Modal recommendation with Graph Early-Fusion.

No code was published; this follows docs/mm-gef.md, which fixes one faithful reading of the paper
and makes every open choice a config switch: early fusion of ℓ2-normalised modality features
(``fusion``), a linear transformation, a multimodal kNN item graph and a collaborative
item-user-item graph merged by soft attention (``graph_attention``), GCN on the merged item graph,
and a LightGCN backbone into which the item content is injected (``inject``). Two other readings,
LATTICE's way (docs/mm-gef.md, "Other readings"): ``mm_graph: learned`` mixes the fixed multimodal graph with
a kNN graph of the projected features, rebuilt during training (S = (1 - λ) learned + λ fixed), and
``item_graph_input: id`` propagates the item ID embeddings over the item graph instead of the projected
content.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from recbole.utils import InputType
from torch import nn

from recbole_mm.config_check import Choice, Float, Int
from recbole_mm.errors import RecBoleMMError
from recbole_mm.model.abstract_recommender import MultiModalRecommender
from recbole_mm.model.graphs import bipartite_adjacency, cooccurrence_graph, edge_propagate, learned_knn_graph
from recbole_mm.model.losses import bpr_loss, squared_l2

FUSIONS = ("mean", "concat", "late")
ATTENTIONS = ("global", "item", "mean")
INJECTIONS = ("output", "input", "both")
MM_GRAPHS = ("fixed", "learned")
GRAPH_INPUTS = ("content", "id")


class MMGEF(MultiModalRecommender):
    input_type = InputType.PAIRWISE
    aliases = ("MM-GEF",)  # the paper's spelling, accepted by recbole_mm's entry points (registry)
    # Types and ranges of properties/model/MMGEF.yaml's keys (checked before anything runs).
    config_schema = {
        "knn_k": Int(min=1), "n_item_layers": Int(min=0), "n_ui_layers": Int(min=0), "reg_weight": Float(min=0),
        "fusion": Choice(*FUSIONS), "graph_attention": Choice(*ATTENTIONS), "inject": Choice(*INJECTIONS),
        "mm_graph": Choice(*MM_GRAPHS), "lambda_coeff": Float(min=0, max=1), "item_graph_input": Choice(*GRAPH_INPUTS),
    }

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        d = config["embedding_size"]
        self.knn_k = config["knn_k"]
        self.n_item_layers = config["n_item_layers"]
        self.n_ui_layers = config["n_ui_layers"]
        self.reg_weight = config["reg_weight"]
        self.fusion = config["fusion"]
        self.graph_attention = config["graph_attention"]
        self.inject = config["inject"]
        self.graphs = [g for g, on in (("mm", config["use_mm_graph"]), ("cf", config["use_cf_graph"])) if on]
        if not self.graphs:
            raise RecBoleMMError("use_mm_graph and use_cf_graph are both False; keep at least one item graph")
        self.mm_graph = config["mm_graph"] or "fixed"
        if self.mm_graph == "learned" and "mm" not in self.graphs:
            raise RecBoleMMError("mm_graph: learned needs use_mm_graph: True (it learns the multimodal item graph)")
        self.lambda_coeff = config["lambda_coeff"]  # weight of the fixed graph against the learned one
        self.item_graph_input = config["item_graph_input"] or "content"

        # Fused inputs: one "branch" for early fusion, one per modality for late fusion.
        unit = {m: self._unit_rows(self.item_features(m)) for m in self.modalities}
        if self.fusion == "mean":
            dims = {m: u.shape[1] for m, u in unit.items()}
            if len(set(dims.values())) > 1:
                raise RecBoleMMError(f"fusion: mean needs modalities of equal width (got {dims}); "
                                     "use fusion: concat (or late)")
            branches = {"fused": torch.stack(list(unit.values())).mean(dim=0)}
        elif self.fusion == "concat":
            branches = {"fused": torch.cat(list(unit.values()), dim=1)}
        else:
            branches = unit
        self.branches = list(branches)
        for name, x in branches.items():
            self.register_buffer(f"input_{name}", x, persistent=False)
        # The projected content is what the item graph propagates, or (item_graph_input: id) what the
        # learned graph is built from; with the ID embeddings on a fixed graph it has no use.
        uses_content = self.item_graph_input == "content" or self.mm_graph == "learned"
        self.projections = nn.ModuleDict({name: nn.Linear(x.shape[1], d) for name, x in branches.items()
                                          if uses_content})

        self.user_embedding, self.item_embedding = self.id_embeddings(d)
        if self.graph_attention == "global":
            self.graph_scores = nn.Parameter(torch.zeros(len(self.graphs)))
        elif self.graph_attention == "item":
            self.attention = nn.Sequential(nn.Linear(d, d), nn.Tanh(), nn.Linear(d, 1, bias=False))
        self._build_graphs(config, dataset, branches)

    @staticmethod
    def _unit_rows(features: torch.Tensor) -> torch.Tensor:
        return F.normalize(features, dim=1)  # the padding row stays zero

    def _build_graphs(self, config, dataset, branches: dict[str, torch.Tensor]) -> None:
        users, items = self.interaction_edges(dataset)
        if "mm" in self.graphs:
            # Built once from the fixed fused features.
            graphs = self.knn_item_graphs(self.knn_k, weighted=True, normalization="sym", features=branches)
            for name, graph in graphs.items():
                self.register_graph(f"mm_graph_{name}", graph)
        if "cf" in self.graphs:
            self.register_graph("cf_graph", cooccurrence_graph(users, items, self.n_users, self.n_items, self.knn_k))
        self.register_graph("ui_graph", bipartite_adjacency(users, items, self.n_users, self.n_items))

    # ---- item side -------------------------------------------------------------------------------
    def graph_weights(self, hops: dict[str, torch.Tensor]) -> torch.Tensor:
        """Soft-attention weights over the item graphs: [1, G] (global/mean) or [n_items, G] (item)."""
        if len(self.graphs) == 1 or self.graph_attention == "mean":
            return torch.full((1, len(self.graphs)), 1.0 / len(self.graphs), device=self.item_embedding.weight.device)
        if self.graph_attention == "global":
            return torch.softmax(self.graph_scores, dim=0).unsqueeze(0)
        scores = torch.cat([self.attention(hops[g]) for g in self.graphs], dim=1)
        return torch.softmax(scores, dim=1)

    def multimodal_graph(self, name: str, content: torch.Tensor | None):
        """``x ↦ Â^mm x`` for branch ``name``: the fixed kNN graph, or (``mm_graph: learned``, LATTICE's way)
        (1 - λ) sym(topk(cos(content))) + λ Â^mm, the learned part differentiable in ``content`` on the first
        training batch of an epoch and reused detached by the others (as LATTICE)."""
        fixed, epoch = f"mm_graph_{name}", f"epoch_mm_graph_{name}"
        if self.mm_graph == "fixed":
            return lambda x: self.propagate(fixed, x)
        if self.epoch_graph_ready(epoch):
            return lambda x: self.propagate(epoch, x)
        lam = self.lambda_coeff
        rows, cols, values = learned_knn_graph([content[1:]], content.new_ones(1), self.knn_k, self.n_items,
                                               offset=1, backend=self.knn_backend)
        if self.training:
            learned = torch.sparse_coo_tensor(torch.stack([rows, cols]), values.detach(), (self.n_items, self.n_items))
            self.keep_epoch_graph(epoch, (1 - lam) * learned + lam * getattr(self, fixed))
        return lambda x: (1 - lam) * edge_propagate(rows, cols, values, x, self.n_items) + lam * self.propagate(fixed, x)

    def item_content(self) -> tuple[torch.Tensor, torch.Tensor]:
        """h: the items' representation after the merged item-graph GCN — of their projected content, or
        of their ID embeddings (``item_graph_input: id``) — summed over branches (one branch unless fusion
        is late); also the graph attention weights of the last branch."""
        total, weights = 0, None
        for name in self.branches:
            content = self.projections[name](getattr(self, f"input_{name}")) if name in self.projections else None
            h = content if self.item_graph_input == "content" else self.item_embedding.weight
            graphs = {"cf": lambda x: self.propagate("cf_graph", x)}
            if "mm" in self.graphs:
                graphs["mm"] = self.multimodal_graph(name, content)
            # One propagation per graph and layer; the first layer's also drive item-level attention.
            hops = {g: graphs[g](h) for g in self.graphs}
            weights = self.graph_weights(hops)
            for layer in range(self.n_item_layers):
                if layer:
                    hops = {g: graphs[g](h) for g in self.graphs}
                h = sum(weights[:, j:j + 1] * hops[g] for j, g in enumerate(self.graphs))
            total = total + h
        return total, weights

    # ---- forward ---------------------------------------------------------------------------------
    def forward(self) -> tuple[torch.Tensor, torch.Tensor]:
        h, _ = self.item_content()
        items = self.item_embedding.weight
        if self.inject in ("input", "both"):
            items = items + h
        layers = [torch.cat([self.user_embedding.weight, items])]
        for _ in range(self.n_ui_layers):
            layers.append(self.propagate("ui_graph", layers[-1]))
        out = torch.stack(layers).mean(dim=0)
        users, items = out[: self.n_users], out[self.n_users:]
        if self.inject in ("output", "both"):
            items = items + F.normalize(h, dim=1)
        return users, items

    def calculate_loss(self, interaction) -> torch.Tensor:
        user, pos, neg = interaction[self.USER_ID], interaction[self.ITEM_ID], interaction[self.NEG_ITEM_ID]
        users, items = self.forward()
        loss = bpr_loss((users[user] * items[pos]).sum(dim=1), (users[user] * items[neg]).sum(dim=1))
        ego = (self.user_embedding(user), self.item_embedding(pos), self.item_embedding(neg))
        return loss + self.reg_weight * squared_l2(*ego, denominator=len(user))

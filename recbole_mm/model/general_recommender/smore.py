"""SMORE — Ong & Khong, "Spectrum-based Modality Representation Fusion Graph Convolutional Network for
Multimodal Recommendation", WSDM 2025 (arXiv 2412.14978). Specification: docs/smore.md (paper + the authors'
code, as in MMRec).

User-item view: H = LightGCN([E_U; E_I]) (layer mean). Spectrum fusion: the projected features of each modality
go to the frequency domain along the embedding axis, z^m = rfft(W_m f^m + b_m); each is filtered by a learned
complex filter, x^m = irfft(z^m ⊙ w^m) (denoising), and the product of all spectra by a fusion filter,
x^F = irfft(Π_m z^m ⊙ w^F) (fusion: a product of spectra is a circular convolution of the modalities).
Each filtered signal gates the item ID embedding, E_I ⊙ σ(W x + b), and is propagated over its item-item graph
(the modality's kNN graph S^m; for fusion the entry-wise maximum of the S^m), users get R̃ times their items.
Modality-aware preference: side = mean over the views of softmax_d(Q_m(X^F)) ⊙ X^m ⊙ σ(P_m H) (modalities)
and X^F ⊙ σ(P_F H) (fusion), the preference gates under dropout. Final o = H + side. Loss: BPR + L2 on the
batch's final vectors + InfoNCE between side and H (users and positive items). Any number of modalities ≥ 1.
"""

from __future__ import annotations

from logging import getLogger

import torch
from recbole.utils import InputType
from torch import nn

from recbole_mm.config_check import ConfigError, Float, Int, MappingOf
from recbole_mm.model.abstract_recommender import BFLOAT16_FEATURES, MultiModalRecommender
from recbole_mm.model.graphs import bipartite_adjacency, max_pool_graphs, user_item_block
from recbole_mm.model.losses import bpr_side_contrast


def spectra(signals: list[torch.Tensor]) -> list[torch.Tensor]:
    """Real FFT of each ``[n, d]`` signal along its last axis (orthonormal scaling): ``[n, d // 2 + 1]``."""
    return [torch.fft.rfft(x, dim=1, norm="ortho") for x in signals]


def filtered_signal(spectrum: torch.Tensor, weight: torch.Tensor, d: int) -> torch.Tensor:
    """The ``d``-wide real signal of ``spectrum`` times the complex filter ``weight`` (``[..., d // 2 + 1, 2]``:
    real and imaginary parts), inverse real FFT with orthonormal scaling."""
    return torch.fft.irfft(spectrum * torch.view_as_complex(weight), n=d, dim=1, norm="ortho")


class SMORE(MultiModalRecommender):
    input_type = InputType.PAIRWISE
    config_schema = {
        "feature_dtype": BFLOAT16_FEATURES,  # its feature layers all have the bf16 path
        "knn_k": Int(min=1), "modality_knn_k": MappingOf(Int(min=1), "{image: 40, text: 15}"),
        "n_layers": Int(min=0), "n_ui_layers": Int(min=0), "reg_weight": Float(min=0),
        "cl_loss": Float(min=0), "cl_temp": Float(min=0, min_open=True),
        "dropout_rate": Float(min=0, max=1, max_open=True),
    }

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        d = config["embedding_size"]
        self.n_layers = config["n_layers"]  # hops on the item-item graphs
        self.n_ui_layers = config["n_ui_layers"]  # LightGCN layers on the user-item graph
        self.reg_weight = config["reg_weight"]
        self.cl_loss = config["cl_loss"]
        self.cl_temp = config["cl_temp"]
        knn = dict(config["modality_knn_k"] or {})
        unknown = sorted(set(knn) - set(self.modalities))
        if unknown:
            raise ConfigError(f"modality_knn_k names {', '.join(unknown)}, not a modality of this dataset "
                              f"({', '.join(self.modalities)}); use those names or drop the entry")
        self.knn_k = {m: knn.get(m, config["knn_k"]) for m in self.modalities}
        if len(self.modalities) == 1:
            getLogger().warning("SMORE with one modality: the fusion view is a second spectral filter of the "
                                "same modality over the same item graph")

        # Parameters in the order the reference creates them (its random draws): ID embeddings (xavier),
        # projections, queries, denoising gates, fusion gate, preference gates, then the complex filters
        # (standard normal, real and imaginary parts).
        self.user_embedding, self.item_embedding = self.id_embeddings(d)
        self.raw_features = self.trainable_feature_tables()
        self.projections = self.feature_projections(d)
        self.queries = nn.ModuleDict({m: nn.Sequential(nn.Linear(d, d), nn.Tanh(), nn.Linear(d, d, bias=False))
                                      for m in self.modalities})
        self.denoise_gates = nn.ModuleDict({m: nn.Sequential(nn.Linear(d, d), nn.Sigmoid()) for m in self.modalities})
        self.fusion_gate = nn.Sequential(nn.Linear(d, d), nn.Sigmoid())
        self.preference_gates = nn.ModuleDict({m: nn.Sequential(nn.Linear(d, d), nn.Sigmoid())
                                               for m in self.modalities})
        self.fusion_preference_gate = nn.Sequential(nn.Linear(d, d), nn.Sigmoid())
        # [1, d // 2 + 1, 2]: one complex coefficient per frequency, shared by all items.
        self.filters = nn.ParameterDict({m: nn.Parameter(torch.randn(1, d // 2 + 1, 2)) for m in self.modalities})
        self.fusion_filter = nn.Parameter(torch.randn(1, d // 2 + 1, 2))
        self.dropout = nn.Dropout(p=config["dropout_rate"])

        graphs = {}
        for m in self.modalities:  # one search per modality: each has its own k
            graphs.update(self.knn_item_graphs(self.knn_k[m], weighted=True, normalization="sym",
                                               features={m: self.item_features(m)}))
        for m, graph in graphs.items():
            self.register_graph(f"item_graph_{m}", graph)
        self.register_graph("fusion_item_graph", max_pool_graphs(list(graphs.values())))
        adjacency = bipartite_adjacency(*self.interaction_edges(dataset), self.n_users, self.n_items)
        self.register_graph("norm_adj", adjacency)
        self.register_graph("user_item_graph", user_item_block(adjacency, self.n_users, self.n_items))
        self.release_fixed_features(dataset)  # the graphs are built; training reads the tables

    def item_item_view(self, graph: str, items: torch.Tensor) -> torch.Tensor:
        """[users; items] of one view: ``items`` propagated ``n_layers`` times over ``graph``, users R̃ · that."""
        for _ in range(self.n_layers):
            items = self.propagate(graph, items)
        return torch.cat([self.propagate("user_item_graph", items), items])

    def forward(self, nodes: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Node representations (users first): ``o`` (final), ``side`` (the fused modality views) and ``h_id``
        (user-item view), for every node or, given ``nodes``, for those rows only (in that order)."""
        items = self.item_embedding.weight
        d = items.shape[1]
        h_id = self.mean_propagation("norm_adj", torch.cat([self.user_embedding.weight, items]), self.n_ui_layers)

        z = spectra([self.projections[m](self.raw_features[m].weight) for m in self.modalities])
        views = [self.item_item_view(f"item_graph_{m}",
                                     items * self.denoise_gates[m](filtered_signal(spectrum, self.filters[m], d)))
                 for m, spectrum in zip(self.modalities, z)]
        product = z[0]
        for spectrum in z[1:]:
            product = product * spectrum
        fusion = self.item_item_view("fusion_item_graph",
                                     items * self.fusion_gate(filtered_signal(product, self.fusion_filter, d)))

        if nodes is not None:
            # The preference module is row-wise: a training step needs it on the batch's rows only.
            h_id, fusion = h_id.index_select(0, nodes), fusion.index_select(0, nodes)
            views = [v.index_select(0, nodes) for v in views]
        # Preference gates first, then their dropout masks in view order (the reference's order of draws).
        gates = [self.preference_gates[m](h_id) for m in self.modalities] + [self.fusion_preference_gate(h_id)]
        gates = [self.dropout(gate) for gate in gates]
        parts = [torch.softmax(self.queries[m](fusion), dim=1) * x * gate
                 for m, x, gate in zip(self.modalities, views, gates)]
        side = (sum(parts) + fusion * gates[-1]) / (len(self.modalities) + 1)
        return {"o": h_id + side, "side": side, "h_id": h_id}

    def calculate_loss(self, interaction) -> torch.Tensor:
        nodes, users, pos, neg = self.batch_nodes(interaction)
        out = self.forward(nodes)
        return bpr_side_contrast(out["o"], out["side"], out["h_id"], users, pos, neg, self.reg_weight,
                                 self.cl_loss, self.cl_temp, self.batch_size)

    def user_item_vectors(self) -> tuple[torch.Tensor, torch.Tensor]:
        o = self.cached("o", lambda: self.forward()["o"])
        return o[: self.n_users], o[self.n_users:]

"""PGL — Yu, Tan, Lu & Bao, "Mind Individual Information! Principal Graph Learning for Multimedia
Recommendation", AAAI 2025. Specification: docs/pgl.md (the authors' code, as MMRec ships it in pgl.py).

No item ID embeddings: an item's representation is its modalities' projected features, each L2-normalised,
side by side, x_i = [n(W_m f_i^m + b_m)]_m; a user has one free embedding per modality, side by side. A frozen
item-item graph S = Σ_m w_m Â^m (binary kNN graph of each modality, D^-1/2 A D^-1/2, mixed by fixed weights)
smooths the items, h = S^L x. LightGCN's layer mean over a *principal* user-item graph while training, over the
full normalised graph Â for evaluation (``principal_graph``):
- local (default): a sub-graph of Â's edges, a share kept degree-sensitively (∝ 1/sqrt(d_u d_i)), re-drawn
  every epoch and re-normalised;
- global: the entries ≥ 1e-3 in magnitude of a rank-reduced Â, Σ_i s_i s_{d-t+i} u_i v_iᵀ over its t = d/4
  leading singular triplets (s: Â's d leading singular values), built once.
Final u = LightGCN_u, i = LightGCN_i + h. Loss: BPR plus ``reg_weight`` × the mean of two InfoNCE terms (τ),
each between two dropout views of the batch's users' (positives') final vectors. Any number of modalities ≥ 1.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch
import torch.nn.functional as F
from recbole.utils import InputType
from scipy.sparse.linalg import svds
from torch import nn

from recbole_mm.config_check import Choice, Float, Int
from recbole_mm.errors import RecBoleMMError
from recbole_mm.model.abstract_recommender import MultiModalRecommender
from recbole_mm.model.graphs import bipartite_adjacency, degree_sensitive_keep, user_item_block
from recbole_mm.model.losses import bpr_loss, info_nce

# The reference's constants of the global principal graph: the share of the d leading singular triplets kept,
# and the magnitude below which an entry of the rank-reduced graph is dropped.
PRINCIPAL_SHARE = 0.25
PRINCIPAL_THRESHOLD = 1e-3


class PGL(MultiModalRecommender):
    input_type = InputType.PAIRWISE
    config_schema = {
        "principal_graph": Choice("local", "global"), "edge_keep_rate": Float(min=0, max=1, min_open=True),
        "knn_k": Int(min=1), "n_mm_layers": Int(min=0), "n_ui_layers": Int(min=0), "feat_embed_dim": Int(min=1),
        "mm_image_weight": Float(min=0, max=1), "dropout": Float(min=0, max=1, max_open=True),
        "reg_weight": Float(min=0), "temperature": Float(min=0, min_open=True),
    }

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        d = config["embedding_size"]
        # Which principal graph trains the model: local (sampled) | global (SVD); the reference's ``mode`` (a key
        # named so would be taken for --model by the command line's abbreviations).
        self.mode = config["principal_graph"]
        self.edge_keep_rate = config["edge_keep_rate"]  # share of user-item edges a local sub-graph keeps
        self.n_mm_layers = config["n_mm_layers"]  # hops on the frozen item graph
        self.n_ui_layers = config["n_ui_layers"]  # LightGCN layers on the user-item graph
        self.dropout = config["dropout"]  # dropout of the two contrastive views
        self.reg_weight = config["reg_weight"]  # weight of the contrastive term
        self.temperature = config["temperature"]
        if config["feat_embed_dim"] != d:
            raise RecBoleMMError(f"PGL feat_embed_dim: {config['feat_embed_dim']} must equal embedding_size ({d}): "
                                 "users and items are scored by one dot product over the modalities' blocks")

        # One user table per modality; the reference creates them (torch's normal init) and then applies
        # xavier in modality order, so the draws follow that order.
        self.user_embeddings = nn.ModuleDict({m: nn.Embedding(self.n_users, d) for m in self.modalities})
        for m in self.modalities:
            nn.init.xavier_uniform_(self.user_embeddings[m].weight)
        # Trainable raw features (the item graph is built once from the loaded values), projected whole.
        self.raw_features = self.trainable_feature_tables()
        self.projections = self.feature_projections(d)
        self._build_graphs(config, dataset, d)

    # ---- graphs: the frozen item graph, the full user-item graph, the principal graph -------------------
    def _build_graphs(self, config, dataset, d: int) -> None:
        mixing = self.modality_weights(config["mm_image_weight"])
        graphs = self.knn_item_graphs(config["knn_k"], weighted=False)
        parts = [mixing[m] * graphs[m] for m in self.modalities]
        self.register_graph("item_graph", sum(parts[1:], parts[0]))
        edge_users, edge_items = self.interaction_edges(dataset)
        self.register_buffer("edge_users", edge_users, persistent=False)
        self.register_buffer("edge_items", edge_items, persistent=False)
        self.register_graph("norm_adj", bipartite_adjacency(edge_users, edge_items, self.n_users, self.n_items))
        if self.mode == "global":
            # Â is [users + items]-square with d = embedding_size singular triplets kept, as the reference.
            self.register_graph("principal_adj", _principal_graph(
                user_item_block(self.norm_adj, self.n_users, self.n_items), rank=d))

    def local_graph(self) -> torch.Tensor:
        """This epoch's local principal graph: ``edge_keep_rate`` of the user-item edges drawn without
        replacement ∝ 1/sqrt(d_u d_i), re-normalised (the reference's ``pre_epoch_processing``)."""
        keep = degree_sensitive_keep(self.edge_users, self.edge_items, self.n_users, self.n_items,
                                     1.0 - self.edge_keep_rate)
        return bipartite_adjacency(self.edge_users[keep], self.edge_items[keep], self.n_users, self.n_items)

    # ---- forward --------------------------------------------------------------------------------
    def forward(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(users, items) final representations: over the principal graph while training, else the full one."""
        if not self.training:
            graph = "norm_adj"
        elif self.mode == "global":
            graph = "principal_adj"
        else:
            self.draw_epoch_graph("local_adj", self.local_graph)
            graph = "local_adj"
        items = torch.cat([F.normalize(self.projections[m](self.raw_features[m].weight), dim=1)
                           for m in self.modalities], dim=1)
        h = items
        for _ in range(self.n_mm_layers):
            h = self.propagate("item_graph", h)
        users = torch.cat([self.user_embeddings[m].weight for m in self.modalities], dim=1)
        out = self.mean_propagation(graph, torch.cat([users, items]), self.n_ui_layers)
        return out[: self.n_users], out[self.n_users:] + h

    def calculate_loss(self, interaction) -> torch.Tensor:
        user_vectors, item_vectors = self.forward()
        u = user_vectors[interaction[self.USER_ID]]
        pos, neg = item_vectors[interaction[self.ITEM_ID]], item_vectors[interaction[self.NEG_ITEM_ID]]
        loss = bpr_loss((u * pos).sum(dim=1), (u * neg).sum(dim=1))
        if self.reg_weight:
            # Two independent dropout views of the same rows, users' masks drawn before the positives'.
            views = [F.dropout(x, self.dropout, self.training) for x in (u, u, pos, pos)]
            contrast = (info_nce(views[0], views[1], self.temperature)
                        + info_nce(views[2], views[3], self.temperature)) / 2
            loss = loss + self.reg_weight * contrast
        return loss


# belongs in recbole_mm/model/graphs.py (moved after the benchmark runs)
def _principal_graph(block: torch.Tensor, rank: int, share: float = PRINCIPAL_SHARE,
                     threshold: float = PRINCIPAL_THRESHOLD, chunk_rows: int = 2048) -> torch.Tensor:
    """PGL's global principal graph of the normalised bipartite graph Â = [[0, R̃], [R̃ᵀ, 0]] (``block`` = R̃,
    sparse ``[n_users, n_items]``): Σ_{i<t} s_i s_{d-t+i} u_i v_iᵀ over Â's ``d = rank`` leading singular
    triplets (t = ⌊share·d⌋), entries below ``threshold`` in magnitude dropped; sparse,
    ``[n_users + n_items]``-square.

    Â's singular triplets come in pairs from R̃ = P Σ Qᵀ: σ_j with (u, v) = ([p_j; 0], [0; q_j]) and with
    ([0; q_j], [p_j; 0]), so s = (σ_1, σ_1, σ_2, σ_2, ...) and the sum has only a user→item block P W₀ Qᵀ and
    an item→user block Q W₁ Pᵀ. Computed from R̃'s ⌈d/2⌉ leading triplets (ARPACK, fixed start vector:
    deterministic), the dense blocks a chunk of rows at a time (never the dense [n, n] matrix).
    """
    n_users, n_items = block.shape
    block = block.coalesce()
    rows, cols = block.indices().cpu().numpy()
    matrix = sp.csr_matrix((block.values().cpu().double().numpy(), (rows, cols)), shape=(n_users, n_items))
    pairs = (rank + 1) // 2
    if pairs < min(matrix.shape) - 1:
        p, sigma, qt = svds(matrix, k=pairs, v0=np.ones(min(matrix.shape)), solver="arpack")
    else:  # ARPACK needs k < min(shape) - 1: tiny graphs go dense
        p, sigma, qt = np.linalg.svd(matrix.toarray(), full_matrices=False)
    order = np.argsort(-sigma, kind="stable")[:pairs]
    p, sigma, q = p[:, order], sigma[order], qt[order].T
    s = np.repeat(sigma, 2)[:rank]  # Â's leading singular values; triplet i is pair i // 2, member i % 2
    top = int(share * rank)
    weights = s[:top] * s[len(s) - top:]
    member = np.arange(top) % 2
    pair = np.arange(top) // 2
    parts = []
    # member 0 puts σ_j's weight on the user→item block, member 1 on the item→user block.
    for side, (left, right, offset_rows, offset_cols) in enumerate(((p, q, 0, n_users), (q, p, n_users, 0))):
        chosen = member == side
        if not chosen.any():
            continue
        a = left[:, pair[chosen]] * weights[chosen]
        b = right[:, pair[chosen]]
        for start in range(0, len(a), chunk_rows):
            dense = a[start:start + chunk_rows] @ b.T
            r, c = np.nonzero(np.abs(dense) >= threshold)
            parts.append((r + start + offset_rows, c + offset_cols, dense[r, c]))
    n = n_users + n_items
    if not parts:
        return torch.sparse_coo_tensor(torch.zeros(2, 0, dtype=torch.long), torch.zeros(0), (n, n)).coalesce()
    r, c, v = (np.concatenate(x) for x in zip(*parts))
    indices = torch.from_numpy(np.stack([r, c]).astype(np.int64))
    graph = torch.sparse_coo_tensor(indices, torch.from_numpy(v).float(), (n, n), check_invariants=False)
    return graph.coalesce().to(block.device)

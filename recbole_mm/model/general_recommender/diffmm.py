"""DiffMM — Jiang et al., "DiffMM: Multi-Modal Diffusion Model for Recommendation", ACM MM 2024 (arXiv 2406.11781;
the authors' code: github HKUDS/DiffMM). Specification: docs/diffmm.md.

Modality-aware graph diffusion: per modality m a Gaussian diffusion over each user's interaction row (its denoiser
f_m, recbole_mm/model/diffusion.py) is trained with the SNR-weighted reconstruction loss plus the modality-aware
signal injection term ‖x̂_0 F_m − x_0 E_I‖² (F_m the projected features, E_I the item IDs, both fixed for the
step); the denoised rows' top ``rebuild_k`` items give a user-item graph G_m (self-loops, D^-1/2 · D^-1/2,
edge dropout). Recommendation (A the training graph with self-loops, normalised the same way):
  X_m = A[E_U; n(F_m)] + A[(A[E_U; n(F_m)])_U; E_I] + λ_adj G_m[E_U; E_I],  X = Σ_m softmax(w)_m X_m,
  H = Σ_{l=0..L} A^l X + λ n(X)  (n: row L2 normalisation), score = h_u · h_i.
Loss: Σ BPR / batch size + reg (‖E_U‖² + ‖E_I‖²) + cl_weight · Σ InfoNCE over all users (items), between the modality
views V_m = Σ_l A^l G_m[E_U; n(F_m)] (pairs of modalities, or each against H). Any number of modalities ≥ 1.

Training schedule: the reference runs, each epoch, a diffusion pass over all users (the denoisers' own Adam), then
rebuilds the G_m, then the BPR batches. Here the first ``calculate_loss`` of each training epoch runs the diffusion
pass and the rebuild (the denoisers keep their own Adam), so RecBole's trainer drives everything; the G_m are kept
for the epoch's batches and for evaluation.
"""

from __future__ import annotations

from logging import getLogger

import torch
import torch.nn.functional as F
from recbole.utils import InputType
from torch import nn

from recbole_mm.config_check import Bool, Choice, ConfigError, Float, Int, ListOf
from recbole_mm.model.abstract_recommender import MultiModalRecommender
from recbole_mm.model.diffusion import Denoiser, GaussianDiffusion
from recbole_mm.model.graphs import bipartite_adjacency, drop_edges
from recbole_mm.model.losses import candidate_nce


class DiffMM(MultiModalRecommender):
    input_type = InputType.PAIRWISE
    config_schema = {
        "n_layers": Int(min=0), "reg_weight": Float(min=0), "cl_weight": Float(min=0),
        "cl_temp": Float(min=0, min_open=True), "cl_pairs": Choice("modalities", "main"),
        "feature_projection": Choice("leaky_relu", "linear"),
        "ris_lambda": Float(), "ris_adj_lambda": Float(), "keep_rate": Float(min=0, max=1, min_open=True),
        "denoiser_dims": ListOf(Int(min=1)), "time_embedding_size": Int(min=1), "denoiser_norm": Bool(),
        "denoiser_dropout": Float(min=0, max=1, max_open=True), "diffusion_steps": Int(min=1),
        "noise_scale": Float(min=0, min_open=True), "noise_min": Float(min=0), "noise_max": Float(min=0),
        "sampling_steps": Int(min=0), "sampling_noise": Bool(), "rebuild_k": Int(min=1),
        "msi_weight": Float(min=0), "diffusion_batch_size": Int(min=1),
    }

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        d = config["embedding_size"]
        self.n_layers = config["n_layers"]  # layers of the final propagation (their sum, not mean)
        self.reg_weight = config["reg_weight"]
        self.cl_weight, self.cl_temp, self.cl_pairs = config["cl_weight"], config["cl_temp"], config["cl_pairs"]
        self.ris_lambda, self.ris_adj_lambda = config["ris_lambda"], config["ris_adj_lambda"]
        self.keep_rate = config["keep_rate"]
        self.sampling_steps, self.sampling_noise = config["sampling_steps"], config["sampling_noise"]
        self.rebuild_k = config["rebuild_k"]
        self.msi_weight = config["msi_weight"]
        self.diffusion_batch_size = config["diffusion_batch_size"]
        self.denoiser_learning_rate = config["learning_rate"]  # the reference's one lr for both optimizers
        if config["sampling_steps"] > config["diffusion_steps"]:
            raise ConfigError(f"sampling_steps ({config['sampling_steps']}) must not exceed diffusion_steps "
                              f"({config['diffusion_steps']}); lower sampling_steps (0: start from the rows)")
        if self.cl_pairs == "modalities" and len(self.modalities) == 1:
            getLogger().warning("DiffMM with one modality and cl_pairs: modalities has no pair to contrast: "
                                "no contrastive term (cl_pairs: main contrasts the modality with the output)")

        # Parameters in the reference's order of random draws: ID embeddings (xavier), the feature transforms
        # (trans 0: xavier matrices under LeakyReLU; trans 1: nn.Linear), then one denoiser per modality.
        self.user_embedding, self.item_embedding = self.id_embeddings(d)
        if config["feature_projection"] == "linear":
            self.projections = self.feature_projections(d)
        else:
            self.projections = nn.ParameterDict({
                m: nn.Parameter(nn.init.xavier_uniform_(torch.empty(self.item_features(m).shape[1], d)))
                for m in self.modalities})
        self.modal_weight = nn.Parameter(torch.full((len(self.modalities),), 1.0 / len(self.modalities)))
        self.diffusion = GaussianDiffusion(config["noise_scale"], config["noise_min"], config["noise_max"],
                                           config["diffusion_steps"])
        real_items = self.n_items - 1  # the denoisers see the real items' columns only (no padding column)
        self.denoisers = nn.ModuleDict({
            m: Denoiser(real_items, list(config["denoiser_dims"]), config["time_embedding_size"],
                        normalize=config["denoiser_norm"], dropout=config["denoiser_dropout"])
            for m in self.modalities})
        self._denoiser_optimizer = None  # created at the first diffusion pass, on the model's device
        self.last_diffusion_losses: dict[str, float] = {}

        users, items = self.interaction_edges(dataset)
        self.register_graph("norm_adj", bipartite_adjacency(users, items, self.n_users, self.n_items,
                                                            self_loops=True, normalization="sym"))
        real = items > 0
        self.register_graph("interactions", torch.sparse_coo_tensor(
            torch.stack([users[real], items[real] - 1]), torch.ones(int(real.sum())), (self.n_users, real_items),
            check_invariants=False))

    # ---- modality features ------------------------------------------------------------------------
    def modality_features(self, m: str) -> torch.Tensor:
        """F_m, ``[n_items, d]``: the reference's ``trans`` 1 (a linear layer) or 0 (LeakyReLU(f W), slope 0.2)."""
        if isinstance(self.projections[m], nn.Linear):
            return self.projections[m](self.item_features(m))
        return F.leaky_relu(self.item_features(m) @ self.projections[m], 0.2)

    # ---- the diffusion phase ----------------------------------------------------------------------
    def interaction_rows(self, users: torch.Tensor) -> torch.Tensor:
        """Dense training rows x_0 of ``users`` over the real items, ``[len(users), n_items - 1]``."""
        return torch.index_select(self.interactions, 0, users).to_dense()

    def diffusion_losses(self, x0: torch.Tensor, item_ids: torch.Tensor, features: dict[str, torch.Tensor]
                         ) -> dict[str, torch.Tensor]:
        """Per modality: mean SNR-weighted reconstruction loss + msi_weight · mean_u ‖x̂_0 F_m − x_0 E_I‖²/d, with
        ``item_ids`` (E_I) and ``features`` (F_m) over the real items, fixed (detached) for the step."""
        target = x0 @ item_ids
        losses = {}
        for m in self.modalities:
            weighted, predicted = self.diffusion.training_loss(self.denoisers[m], x0)
            msi = (predicted @ features[m] - target).pow(2).mean(dim=1)
            losses[m] = weighted.mean() + self.msi_weight * msi.mean()
        return losses

    def train_denoisers(self) -> None:
        """One pass over all real users in shuffled batches: each batch one Adam step of every denoiser on the
        sum of the modalities' diffusion losses (the reference's per-modality optimizers, equivalent)."""
        if self._denoiser_optimizer is None:
            self._denoiser_optimizer = torch.optim.Adam(self.denoisers.parameters(), lr=self.denoiser_learning_rate)
        with torch.no_grad():
            item_ids = self.item_embedding.weight[1:].detach()
            features = {m: self.modality_features(m)[1:].detach() for m in self.modalities}
        users = torch.randperm(self.n_users - 1, device=self.device) + 1
        totals = {m: 0.0 for m in self.modalities}
        batches = users.split(self.diffusion_batch_size)
        for batch in batches:
            losses = self.diffusion_losses(self.interaction_rows(batch), item_ids, features)
            self._denoiser_optimizer.zero_grad(set_to_none=True)
            sum(losses.values()).backward()
            self._denoiser_optimizer.step()
            for m, loss in losses.items():
                totals[m] += loss.item()
        # No gradient left on the denoisers: RecBole's optimizer (which holds every parameter) skips them.
        self._denoiser_optimizer.zero_grad(set_to_none=True)
        self.last_diffusion_losses = {m: total / len(batches) for m, total in totals.items()}
        getLogger().info("DiffMM diffusion pass, mean loss per modality: " + ", ".join(f"{m} {v:.6f}"
                                                                  for m, v in self.last_diffusion_losses.items()))

    @torch.no_grad()
    def rebuild_graphs(self) -> None:
        """G_m for every modality: each real user linked to the ``rebuild_k`` items of its denoised row (the
        reverse process from its training row), self-loops, D^-1/2 · D^-1/2, then edge dropout (keep_rate)."""
        users = torch.arange(1, self.n_users, device=self.device)
        picks = {m: [] for m in self.modalities}
        for batch in users.split(self.diffusion_batch_size):
            x0 = self.interaction_rows(batch)
            for m in self.modalities:
                denoised = self.diffusion.p_sample(self.denoisers[m], x0, self.sampling_steps, self.sampling_noise)
                picks[m].append(torch.topk(denoised, self.rebuild_k, dim=1).indices + 1)
        graph_users = users.repeat_interleave(self.rebuild_k)
        for m in self.modalities:
            graph = bipartite_adjacency(graph_users, torch.cat(picks[m]).reshape(-1), self.n_users, self.n_items,
                                        self_loops=True, normalization="sym")
            self.keep_epoch_graph(f"diffusion_graph_{m}", drop_edges(graph, self.keep_rate))

    def _diffusion_graphs_ready(self) -> bool:
        return all(f"diffusion_graph_{m}" in self._buffers for m in self.modalities)

    # ---- recommendation --------------------------------------------------------------------------
    def layer_sum(self, x: torch.Tensor) -> torch.Tensor:
        """Σ_{l=0..L} A^l x over the training graph (the reference sums its layers, no mean)."""
        total = x
        for _ in range(self.n_layers):
            x = self.propagate("norm_adj", x)
            total = total + x
        return total

    def forward(self) -> tuple[torch.Tensor, torch.Tensor]:
        if not self._diffusion_graphs_ready():  # e.g. evaluating a loaded checkpoint: from its denoisers
            self.rebuild_graphs()
        users, items = self.user_embedding.weight, self.item_embedding.weight
        ids = torch.cat([users, items])
        weights = torch.softmax(self.modal_weight, dim=0)
        mixed = 0
        for k, m in enumerate(self.modalities):
            x = self.propagate("norm_adj", torch.cat([users, F.normalize(self.modality_features(m))]))
            x = x + self.propagate("norm_adj", torch.cat([x[: self.n_users], items]))
            x = x + self.ris_adj_lambda * self.propagate(f"diffusion_graph_{m}", ids)
            mixed = mixed + weights[k] * x
        out = self.layer_sum(mixed) + self.ris_lambda * F.normalize(mixed)
        return out[: self.n_users], out[self.n_users:]

    def modality_views(self) -> list[torch.Tensor]:
        """V_m = Σ_l A^l G_m [E_U; n(F_m)] per modality, the views of the contrastive term."""
        users = self.user_embedding.weight
        return [self.layer_sum(self.propagate(f"diffusion_graph_{m}",
                                              torch.cat([users, F.normalize(self.modality_features(m))])))
                for m in self.modalities]

    def contrast(self, a: torch.Tensor, b: torch.Tensor, users: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        """InfoNCE of the batch's users (positive items) between views a and b, against all real users (items)."""
        n = self.n_users
        return (candidate_nce(a[users], b[users], b[1:n], self.cl_temp) / len(users)
                + candidate_nce(a[n + pos], b[n + pos], b[n + 1:], self.cl_temp) / len(pos))

    def calculate_loss(self, interaction) -> torch.Tensor:
        if self.training and not all(self.epoch_graph_ready(f"diffusion_graph_{m}") for m in self.modalities):
            self.train_denoisers()
            self.rebuild_graphs()
        users, pos, neg = interaction[self.USER_ID], interaction[self.ITEM_ID], interaction[self.NEG_ITEM_ID]
        u_all, i_all = self.forward()
        u = u_all[users]
        scores = (u * (i_all[pos] - i_all[neg])).sum(dim=1)
        # Σ over the batch ÷ the configured batch size, and L2 of the whole ID tables (real rows), as the reference
        loss = -F.logsigmoid(scores).sum() / self.batch_size
        loss = loss + self.reg_weight * (self.user_embedding.weight[1:].pow(2).sum()
                                         + self.item_embedding.weight[1:].pow(2).sum())
        views = self.modality_views()
        if self.cl_pairs == "main":
            main = torch.cat([u_all, i_all])
            pairs = [(main, v) for v in views]
        else:
            pairs = [(views[a], views[b]) for a in range(len(views)) for b in range(a + 1, len(views))]
        for a, b in pairs:
            loss = loss + self.cl_weight * self.contrast(a, b, users, pos)
        return loss

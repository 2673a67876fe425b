"""Gaussian diffusion over user-item interaction rows (DiffRec-style, as DiffMM uses it): a noise schedule, the
forward (noising) process, the reweighted reconstruction loss, the deterministic reverse process, and the MLP
denoiser with a sinusoidal time embedding. Pure torch, nothing here knows RecBole; tests/test_diffusion.py.

A user's row x_0 ∈ {0, 1}^{n_items} is noised as x_t = √ᾱ_t x_0 + √(1 − ᾱ_t) ε; the denoiser f(x_t, t) predicts
x_0 directly (not ε); the reverse step is the posterior mean μ_t = c1_t f(x_t, t) + c2_t x_t.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn


def noise_schedule(noise_scale: float, noise_min: float, noise_max: float, steps: int) -> torch.Tensor:
    """The betas (float64, length ``steps``) of DiffRec's linear-variance schedule: the cumulative variance
    1 − ᾱ_t grows linearly from ``noise_scale·noise_min`` to ``noise_scale·noise_max``, β_t = 1 − ᾱ_t/ᾱ_{t−1}
    (capped at 0.999), and β_0 is then fixed to 1e-4 (the reference's ``beta_fixed``, on by default)."""
    if noise_scale <= 0 or steps < 1:
        raise ValueError(f"noise_scale must be > 0 and steps >= 1, got {noise_scale} and {steps}")
    variance = np.linspace(noise_scale * noise_min, noise_scale * noise_max, steps, dtype=np.float64)
    alpha_bar = 1.0 - variance
    betas = [1.0 - alpha_bar[0]] + [min(1.0 - alpha_bar[i] / alpha_bar[i - 1], 0.999) for i in range(1, steps)]
    betas = torch.tensor(betas, dtype=torch.float64)
    betas[0] = 1e-4
    return betas


def timestep_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal embedding ``[cos(t·ω_k), sin(t·ω_k)]`` with ω_k = 10000^(−k/(dim//2)), k < dim//2
    (zero-padded to ``dim`` when odd): ``[len(t), dim]`` float32."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    angles = t[:, None].float() * freqs[None]
    emb = torch.cat([torch.cos(angles), torch.sin(angles)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb


class Denoiser(nn.Module):
    """f(x_t, t): [dropout(x_t) (optionally L2-normalised), W_e·emb(t)] through tanh layers of widths ``dims``
    and back out to the row width; the last layer is linear. Weights ~ N(0, 2/(fan_in + fan_out)), biases
    ~ N(0, 0.001²) (the reference's init; its layers are created first: time layer, input, output layers)."""

    def __init__(self, width: int, dims: list[int], time_dim: int, normalize: bool = False, dropout: float = 0.5):
        super().__init__()
        self.time_dim = time_dim
        self.normalize = normalize
        self.time_layer = nn.Linear(time_dim, time_dim)
        widths_in = [width + time_dim, *dims]
        widths_out = [*dims[::-1], width]
        self.in_layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(widths_in[:-1], widths_in[1:]))
        self.out_layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(widths_out[:-1], widths_out[1:]))
        self.dropout = nn.Dropout(dropout)
        for layer in [*self.in_layers, *self.out_layers, self.time_layer]:
            out_features, in_features = layer.weight.shape
            layer.weight.data.normal_(0.0, math.sqrt(2.0 / (in_features + out_features)))
            layer.bias.data.normal_(0.0, 0.001)

    def forward(self, x: torch.Tensor, t: torch.Tensor, dropout: bool = True) -> torch.Tensor:
        emb = self.time_layer(timestep_embedding(t, self.time_dim))
        if self.normalize:
            x = nn.functional.normalize(x)
        if dropout:  # only while training the denoiser: the reverse process always runs without it
            x = self.dropout(x)
        h = torch.cat([x, emb], dim=-1)
        for layer in self.in_layers:
            h = torch.tanh(layer(h))
        for i, layer in enumerate(self.out_layers):
            h = layer(h)
            if i < len(self.out_layers) - 1:
                h = torch.tanh(h)
        return h


class GaussianDiffusion(nn.Module):
    """The schedule's constants as (non-persistent, float64) buffers, and the three processes on them."""

    def __init__(self, noise_scale: float, noise_min: float, noise_max: float, steps: int):
        super().__init__()
        self.steps = steps
        betas = noise_schedule(noise_scale, noise_min, noise_max, steps)
        alphas = 1.0 - betas
        bar = torch.cumprod(alphas, dim=0)
        bar_prev = torch.cat([torch.ones(1, dtype=torch.float64), bar[:-1]])
        variance = betas * (1.0 - bar_prev) / (1.0 - bar)
        constants = {
            "alphas_cumprod": bar,
            "sqrt_alphas_cumprod": bar.sqrt(),
            "sqrt_one_minus_alphas_cumprod": (1.0 - bar).sqrt(),
            # log variance with step 0's (zero) variance replaced by step 1's, as DiffRec clips it
            "posterior_log_variance": torch.log(torch.cat([variance[1:2], variance[1:]])),
            "posterior_mean_coef1": betas * bar_prev.sqrt() / (1.0 - bar),
            "posterior_mean_coef2": (1.0 - bar_prev) * alphas.sqrt() / (1.0 - bar),
        }
        for name, value in constants.items():
            self.register_buffer(name, value, persistent=False)

    @staticmethod
    def _at(constant: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Per-row constant[t] as a float32 column, to broadcast over a row's entries."""
        return constant[t].float()[:, None]

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        """x_t = √ᾱ_t x_0 + √(1 − ᾱ_t) ε."""
        if noise is None:
            noise = torch.randn_like(x0)
        return self._at(self.sqrt_alphas_cumprod, t) * x0 + self._at(self.sqrt_one_minus_alphas_cumprod, t) * noise

    def snr_weight(self, t: torch.Tensor) -> torch.Tensor:
        """SNR(t − 1) − SNR(t) with SNR = ᾱ/(1 − ᾱ), and 1 at t = 0 (DiffRec's reweighting): float32."""
        snr = self.alphas_cumprod / (1.0 - self.alphas_cumprod)
        return torch.where(t == 0, torch.ones_like(snr[t]), snr[t - 1] - snr[t]).float()

    def training_loss(self, denoiser: nn.Module, x0: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(per-row SNR-weighted mean squared error of the denoiser's x̂_0, x̂_0) for uniformly drawn steps.
        Random draws in the reference's order: the steps, the noise, then the denoiser's dropout."""
        t = torch.randint(0, self.steps, (len(x0),), device=x0.device)
        noise = torch.randn_like(x0)
        predicted = denoiser(self.q_sample(x0, t, noise), t)
        mse = (x0 - predicted).pow(2).mean(dim=1)
        return self.snr_weight(t) * mse, predicted

    @torch.no_grad()
    def p_sample(self, denoiser: nn.Module, x0: torch.Tensor, start_steps: int = 0,
                 sampling_noise: bool = False) -> torch.Tensor:
        """The reverse process from x_0 itself (``start_steps`` 0) or from x_0 noised to step ``start_steps − 1``,
        through every step down to 0: x_{t−1} = c1_t f(x_t, t) + c2_t x_t (+ σ_t ε for t > 0 with
        ``sampling_noise``), the denoiser without dropout."""
        x = x0 if start_steps == 0 else self.q_sample(x0, torch.full((len(x0),), start_steps - 1, device=x0.device))
        for step in range(self.steps - 1, -1, -1):
            t = torch.full((len(x),), step, dtype=torch.long, device=x.device)
            mean = self._at(self.posterior_mean_coef1, t) * denoiser(x, t, False) + self._at(self.posterior_mean_coef2,
                                                                                              t) * x
            if sampling_noise and step > 0:
                mean = mean + torch.exp(0.5 * self._at(self.posterior_log_variance, t)) * torch.randn_like(x)
            x = mean
        return x

"""The Gaussian diffusion over interaction rows (recbole_mm/model/diffusion.py) against hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from recbole_mm.model.diffusion import Denoiser, GaussianDiffusion, noise_schedule, timestep_embedding


def test_noise_schedule_by_hand():
    betas = noise_schedule(0.1, 0.0001, 0.02, 3)
    # cumulative variance 1 - ᾱ: 1e-5, 1.005e-3, 2e-3 (linear); β_t = 1 - ᾱ_t/ᾱ_{t-1}; β_0 fixed to 1e-4
    bar = [1 - 1e-5, 1 - 1.005e-3, 1 - 2e-3]
    expected = [1e-4, 1 - bar[1] / bar[0], 1 - bar[2] / bar[1]]
    assert betas.dtype == torch.float64
    assert betas.tolist() == pytest.approx(expected, rel=1e-12)
    with pytest.raises(ValueError):
        noise_schedule(0.0, 0.0001, 0.02, 3)


def test_beta_is_capped():
    betas = noise_schedule(1.0, 0.0, 0.9999, 2)
    assert betas[1].item() == pytest.approx(0.999)


@pytest.mark.parametrize("dim", [4, 5])
def test_timestep_embedding_by_hand(dim):
    t = torch.tensor([0, 3])
    emb = timestep_embedding(t, dim)
    half = dim // 2
    freqs = [10000 ** (-k / half) for k in range(half)]
    row = [math.cos(3 * f) for f in freqs] + [math.sin(3 * f) for f in freqs] + [0.0] * (dim % 2)
    assert emb.shape == (2, dim)
    assert emb[1].tolist() == pytest.approx(row, abs=1e-6)
    assert emb[0].tolist() == pytest.approx([1.0] * half + [0.0] * (dim - half))


def diffusion():
    return GaussianDiffusion(0.1, 0.0001, 0.02, 4)


def test_q_sample_and_snr_weight_by_hand():
    d = diffusion()
    bar = torch.cumprod(1 - noise_schedule(0.1, 0.0001, 0.02, 4), 0)
    x0, noise, t = torch.tensor([[1.0, 0.0], [0.0, 1.0]]), torch.tensor([[0.3, -0.2], [0.5, 0.1]]), torch.tensor([0, 3])
    expected = torch.stack([bar[s].sqrt() * x0[i] + (1 - bar[s]).sqrt() * noise[i] for i, s in enumerate(t)]).float()
    assert torch.allclose(d.q_sample(x0, t, noise), expected, atol=1e-7)
    snr = bar / (1 - bar)
    weights = d.snr_weight(torch.tensor([0, 1, 3]))
    assert weights.tolist() == pytest.approx([1.0, (snr[0] - snr[1]).item(), (snr[2] - snr[3]).item()], rel=1e-6)


def test_training_loss_replays_by_hand():
    d = diffusion()
    x0 = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]])

    def denoiser(x, t):  # a stand-in that draws nothing: x̂_0 = 0.5 x_t
        return 0.5 * x

    torch.manual_seed(3)
    weighted, predicted = d.training_loss(denoiser, x0)
    torch.manual_seed(3)
    t = torch.randint(0, 4, (2,))
    noise = torch.randn_like(x0)
    x_t = d.q_sample(x0, t, noise)
    assert torch.allclose(predicted, 0.5 * x_t)
    assert torch.allclose(weighted, d.snr_weight(t) * (x0 - 0.5 * x_t).pow(2).mean(dim=1))


def test_p_sample_by_hand():
    d = diffusion()
    betas = noise_schedule(0.1, 0.0001, 0.02, 4)
    alphas = 1 - betas
    bar = torch.cumprod(alphas, 0)
    prev = torch.cat([torch.ones(1, dtype=torch.float64), bar[:-1]])
    c1, c2 = betas * prev.sqrt() / (1 - bar), (1 - prev) * alphas.sqrt() / (1 - bar)
    x0 = torch.tensor([[1.0, 0.0, 2.0]])
    seen = []

    def denoiser(x, t, dropout):
        seen.append((int(t[0]), dropout))
        return x + 1.0

    out = d.p_sample(denoiser, x0)
    x = x0.double()
    for s in (3, 2, 1, 0):
        x = c1[s] * (x + 1.0) + c2[s] * x
    assert seen == [(3, False), (2, False), (1, False), (0, False)]
    assert torch.allclose(out, x.float(), atol=1e-6)


def test_denoiser_shapes_init_and_dropout():
    torch.manual_seed(0)
    net = Denoiser(width=30, dims=[20], time_dim=5, dropout=0.5)
    assert [layer.weight.shape for layer in net.in_layers] == [(20, 35)]
    assert [layer.weight.shape for layer in net.out_layers] == [(30, 20)]
    # weights N(0, 2/(fan_in + fan_out)), biases N(0, 0.001²)
    assert net.in_layers[0].weight.std().item() == pytest.approx(math.sqrt(2 / 55), rel=0.15)
    assert net.in_layers[0].bias.abs().max().item() < 0.01
    x, t = torch.rand(4, 30), torch.tensor([0, 1, 2, 3])
    net.train()
    assert torch.equal(net(x, t, dropout=False), net(x, t, dropout=False))
    assert not torch.equal(net(x, t, dropout=True), net(x, t, dropout=False))
    # by hand, without dropout: tanh(W_in [x, W_e emb(t) + b_e] + b_in), then the linear output layer
    emb = net.time_layer(timestep_embedding(t, 5))
    h = torch.tanh(net.in_layers[0](torch.cat([x, emb], dim=1)))
    assert torch.allclose(net(x, t, dropout=False), net.out_layers[0](h), atol=1e-6)


def test_denoiser_gradients_reach_every_parameter():
    net = Denoiser(width=6, dims=[4, 3], time_dim=2)
    out = net(torch.rand(2, 6), torch.tensor([1, 2]))
    out.pow(2).sum().backward()
    for name, parameter in net.named_parameters():
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name


def test_schedule_matches_numpy_float64_cumprod():
    d = GaussianDiffusion(0.1, 0.0001, 0.02, 5)
    betas = noise_schedule(0.1, 0.0001, 0.02, 5).numpy()
    assert np.allclose(d.alphas_cumprod.numpy(), np.cumprod(1 - betas), rtol=0, atol=1e-15)

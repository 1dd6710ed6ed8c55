"""Generator and discriminator: an MLP for vectors, a DCGAN-style conv net for images.

The discriminator returns one logit per example. Spectral norm is our own parametrization
whose power iteration runs once per optimizer step (`refresh_spectral_norm`), not on every
forward as `torch.nn.utils.parametrizations.spectral_norm` does: with gradient accumulation
the number of forwards per step depends on the micro-batch count, and per-forward power
iterations would make `accumulation.steps: 4` differ from `accumulation.steps: 1`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize

from trainer.spec import Model


class SpectralNorm(nn.Module):
    """Parametrization `weight / sigma_max(weight)`; sigma from stored singular vectors."""

    def __init__(self, weight: torch.Tensor, warmup: int = 15):
        super().__init__()
        matrix = weight.detach().flatten(1)
        self.register_buffer("u", F.normalize(torch.randn(matrix.shape[0]).to(matrix), dim=0))
        self.register_buffer("v", F.normalize(torch.randn(matrix.shape[1]).to(matrix), dim=0))
        self.refresh(weight, iterations=warmup)

    @torch.no_grad()
    def refresh(self, weight: torch.Tensor, iterations: int = 1) -> None:
        matrix = weight.detach().flatten(1).to(self.u.dtype)
        for _ in range(iterations):
            self.v.copy_(F.normalize(matrix.t() @ self.u, dim=0, eps=1e-12))
            self.u.copy_(F.normalize(matrix @ self.v, dim=0, eps=1e-12))

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        matrix = weight.flatten(1)
        sigma = torch.dot(self.u.to(matrix.dtype), matrix @ self.v.to(matrix.dtype))
        return weight / sigma


def spectral(layer: nn.Module) -> nn.Module:
    parametrize.register_parametrization(layer, "weight", SpectralNorm(layer.weight))
    return layer


def refresh_spectral_norm(module: nn.Module) -> None:
    """One power iteration for every spectrally normalized weight in `module`."""
    for layer in module.modules():
        if parametrize.is_parametrized(layer, "weight"):
            weight_params = layer.parametrizations["weight"]
            for p in weight_params:
                if isinstance(p, SpectralNorm):
                    p.refresh(weight_params.original)


def has_spectral_norm(module: nn.Module) -> bool:
    return any(isinstance(m, SpectralNorm) for m in module.modules())


def _d_linear(n_in: int, n_out: int, norm: str) -> nn.Module:
    layer = nn.Linear(n_in, n_out)
    return spectral(layer) if norm == "spectral" else layer


def _d_norm_1d(norm: str, width: int) -> list[nn.Module]:
    if norm == "layer":
        return [nn.LayerNorm(width)]
    if norm == "batch":
        return [nn.BatchNorm1d(width)]
    return []


class MLPGenerator(nn.Module):
    def __init__(self, cfg: Model, shape: tuple[int, ...], tanh: bool):
        super().__init__()
        self.shape = shape
        layers: list[nn.Module] = []
        n_in = cfg.latent_dim
        for _ in range(cfg.depth):
            layers.append(nn.Linear(n_in, cfg.width))
            if cfg.g_norm == "batch":
                layers.append(nn.BatchNorm1d(cfg.width))
            layers.append(nn.ReLU())
            n_in = cfg.width
        layers.append(nn.Linear(n_in, math.prod(shape)))
        if tanh:
            layers.append(nn.Tanh())
        self.layers = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.layers(z).view(-1, *self.shape)


class MLPDiscriminator(nn.Module):
    def __init__(self, cfg: Model, shape: tuple[int, ...]):
        super().__init__()
        layers: list[nn.Module] = []
        n_in = math.prod(shape)
        for _ in range(cfg.depth):
            layers.append(_d_linear(n_in, cfg.width, cfg.d_norm))
            layers.extend(_d_norm_1d(cfg.d_norm, cfg.width))
            layers.append(nn.LeakyReLU(0.2))
            n_in = cfg.width
        layers.append(_d_linear(n_in, 1, cfg.d_norm))
        self.layers = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x.flatten(1)).squeeze(1)


def _levels(size: int) -> int:
    # Number of stride-2 stages between 4x4 and size x size.
    return int(math.log2(size // 4))


class ConvGenerator(nn.Module):
    """DCGAN-style: z -> (width, 4, 4) -> transposed convs doubling to (C, size, size)."""

    def __init__(self, cfg: Model, shape: tuple[int, ...]):
        super().__init__()
        channels, size, _ = shape
        batch_norm = cfg.g_norm == "batch"
        self.width = cfg.width
        self.project = nn.Linear(cfg.latent_dim, cfg.width * 16)  # z -> (width, 4, 4)
        blocks: list[nn.Module] = [nn.BatchNorm2d(cfg.width)] if batch_norm else []
        blocks.append(nn.ReLU())
        ch = cfg.width
        for _ in range(_levels(size)):
            out = max(ch // 2, 16)
            blocks.append(nn.ConvTranspose2d(ch, out, 4, 2, 1))  # (ch, s, s) -> (out, 2s, 2s)
            if batch_norm:
                blocks.append(nn.BatchNorm2d(out))
            blocks.append(nn.ReLU())
            ch = out
        blocks += [nn.Conv2d(ch, channels, 3, 1, 1), nn.Tanh()]  # (ch, size, size) -> (C, ...)
        self.blocks = nn.Sequential(*blocks)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.blocks(self.project(z).view(-1, self.width, 4, 4))


class ConvDiscriminator(nn.Module):
    """DCGAN-style: (C, size, size) -> strided convs halving to (width, 4, 4) -> logit."""

    def __init__(self, cfg: Model, shape: tuple[int, ...]):
        super().__init__()
        channels, size, _ = shape
        levels = _levels(size)
        ch = max(cfg.width // 2**levels, 16)

        def conv(c_in: int, c_out: int, k: int, s: int, p: int) -> nn.Module:
            layer = nn.Conv2d(c_in, c_out, k, s, p)
            return spectral(layer) if cfg.d_norm == "spectral" else layer

        blocks: list[nn.Module] = [conv(channels, ch, 3, 1, 1), nn.LeakyReLU(0.2)]  # same size
        for _ in range(levels):
            out = ch * 2
            blocks.append(conv(ch, out, 4, 2, 1))  # (ch, s, s) -> (out, s/2, s/2)
            if cfg.d_norm == "layer":
                blocks.append(nn.GroupNorm(1, out))
            elif cfg.d_norm == "batch":
                blocks.append(nn.BatchNorm2d(out))
            blocks.append(nn.LeakyReLU(0.2))
            ch = out
        self.blocks = nn.Sequential(*blocks)  # -> (ch, 4, 4)
        self.head = _d_linear(ch * 16, 1, cfg.d_norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(x).flatten(1)).squeeze(1)


def build_models(cfg: Model, shape: tuple[int, ...], *, seed: int) -> tuple[nn.Module, nn.Module]:
    """(generator, discriminator) for examples of `shape`, initialised from `seed` alone.

    Image data gets a tanh output (images live in [-1, 1]); vectors are unbounded.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if cfg.kind == "conv":
            return ConvGenerator(cfg, shape), ConvDiscriminator(cfg, shape)
        return MLPGenerator(cfg, shape, tanh=len(shape) == 3), MLPDiscriminator(cfg, shape)

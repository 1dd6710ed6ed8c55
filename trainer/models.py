"""Generator and discriminator: an MLP for vectors, a DCGAN-style conv net for images, and
(in `trainer.resnet`) SNGAN/BigGAN-style residual networks for images of 16 to 128 px.

The discriminator returns one logit per example. Spectral norm is the project's exact,
once-per-optimizer-step parametrization (`trainer.spectral`, re-exported here).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from trainer.resnet import ResNetDiscriminator, ResNetGenerator
from trainer.spec import Model
from trainer.spectral import SpectralNorm, has_spectral_norm, refresh_spectral_norm, spectral

__all__ = [
    "SpectralNorm",
    "build_models",
    "eval_mode",
    "has_spectral_norm",
    "refresh_spectral_norm",
    "spectral",
]


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


@contextmanager
def eval_mode(*modules: nn.Module) -> Iterator[None]:
    """The modules in eval mode inside the block, each back in the mode it had after it."""
    was = [m.training for m in modules]
    for m in modules:
        m.eval()
    try:
        yield
    finally:
        for m, training in zip(modules, was, strict=True):
            m.train(training)


def build_models(cfg: Model, shape: tuple[int, ...], *, seed: int) -> tuple[nn.Module, nn.Module]:
    """(generator, discriminator) for examples of `shape`, initialised from `seed` alone.

    Image data gets a tanh output (images live in [-1, 1]); vectors are unbounded.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if cfg.kind == "conv":
            return ConvGenerator(cfg, shape), ConvDiscriminator(cfg, shape)
        if cfg.kind == "resnet":
            return ResNetGenerator(cfg, shape), ResNetDiscriminator(cfg, shape)
        return MLPGenerator(cfg, shape, tanh=len(shape) == 3), MLPDiscriminator(cfg, shape)

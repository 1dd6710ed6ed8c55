"""SNGAN/BigGAN-style residual networks for square images of 16, 32, 64 or 128 px.

Unconditional, after Miyato et al. 2018 (SNGAN) and Brock et al. 2019 (BigGAN):

- generator: z -> linear -> (w, 4, 4) -> upsampling residual blocks, each doubling the side,
  to (c, size, size) -> [batch norm] -> ReLU -> 3x3 conv to the image channels -> tanh;
- discriminator: (C, size, size) -> downsampling residual blocks, each halving the side, to
  4x4 -> one residual block at 4x4 -> ReLU -> sum over the pixels -> linear -> one logit.

Widths. `model.channels` (c) is the width at full resolution and it doubles each time the
side halves, capped at 8c: a block that works at side r (the generator's block producing
side r, the discriminator's block taking side r) has c * min(8, size / r) channels. With
c = 64 at 64 px the generator's 4x4 input is 512 wide and its blocks 512, 256, 128, 64; the
discriminator's are 64, 128, 256, 512 and 512 at 4x4. BigGAN has the same shape with wider
low-resolution layers (up to 16c); 8c keeps CPU runs practical.

The discriminator has no batch statistics unless `model.d_norm: batch` asks for them, so
gradient accumulation stays an exact reformulation; `d_norm: spectral` (the resnet default)
normalizes every conv and linear with the project's exact spectral norm. The generator gets
batch norm only with `model.g_norm: batch` (BigGAN's choice), which makes micro-batches see
their own statistics and breaks accumulation parity. Weights are initialised as in SNGAN:
Xavier-uniform with gain sqrt(2) in the residual branches and 1 elsewhere, zero biases.
"""

from __future__ import annotations

import math
from itertools import pairwise

import torch
import torch.nn.functional as F
from torch import nn

from trainer.spec import Model
from trainer.spectral import spectral

SIZES = (16, 32, 64, 128)
MAX_MULTIPLIER = 8


def widths(channels: int, size: int) -> list[int]:
    """Block widths from side `size` down to side 4: c * min(8, size / r) for r = size..4."""
    if size not in SIZES:
        raise ValueError(f"resnet takes square images of {SIZES} px, got {size}")
    sides = [size >> i for i in range(int(math.log2(size // 4)) + 1)]
    return [channels * min(MAX_MULTIPLIER, size // side) for side in sides]


def widest_activation(cfg: Model, shape: tuple[int, ...]) -> int:
    """Elements of the generator's largest per-sample activation: a block's upsampled input
    or its output, max(c_in, c_out) x side**2 at the side it produces."""
    _, size, _ = shape
    ch = widths(cfg.channels, size)  # ch[i] at side size / 2**i
    blocks = (max(ch[i], ch[i + 1]) * (size >> i) ** 2 for i in range(len(ch) - 1))
    return max(cfg.latent_dim, ch[-1] * 16, *blocks)


def _init(layer: nn.Conv2d | nn.Linear, gain: float) -> nn.Conv2d | nn.Linear:
    nn.init.xavier_uniform_(layer.weight, gain=gain)
    assert layer.bias is not None
    nn.init.zeros_(layer.bias)
    return layer


def _conv(c_in: int, c_out: int, kernel: int, *, gain: float, norm: str = "none") -> nn.Module:
    """A same-size conv, initialised, spectrally normalized when `norm` is spectral."""
    layer = _init(nn.Conv2d(c_in, c_out, kernel, 1, kernel // 2), gain)
    return spectral(layer) if norm == "spectral" else layer


def _feature_norm(norm: str, width: int) -> nn.Module:
    # layer: GroupNorm of one group normalizes each example over all its features.
    if norm == "batch":
        return nn.BatchNorm2d(width)
    if norm == "layer":
        return nn.GroupNorm(1, width)
    return nn.Identity()


def _up(x: torch.Tensor) -> torch.Tensor:
    return F.interpolate(x, scale_factor=2.0, mode="nearest")


class GeneratorBlock(nn.Module):
    """(c_in, s, s) -> (c_out, 2s, 2s): [BN] ReLU up conv3 [BN] ReLU conv3, plus a shortcut."""

    def __init__(self, c_in: int, c_out: int, *, batch_norm: bool):
        super().__init__()
        norm = "batch" if batch_norm else "none"
        self.norm1 = _feature_norm(norm, c_in)
        self.conv1 = _conv(c_in, c_out, 3, gain=math.sqrt(2))
        self.norm2 = _feature_norm(norm, c_out)
        self.conv2 = _conv(c_out, c_out, 3, gain=math.sqrt(2))
        # A 1x1 conv commutes with nearest upsampling, so it runs at the small side.
        self.shortcut = _conv(c_in, c_out, 1, gain=1.0) if c_in != c_out else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(_up(F.relu(self.norm1(x))))
        h = self.conv2(F.relu(self.norm2(h)))
        return h + _up(self.shortcut(x))


class DiscriminatorBlock(nn.Module):
    """(c_in, s, s) -> (c_out, s/2, s/2) (or s when not downsampling): ReLU conv3 ReLU conv3
    avgpool, plus a shortcut. The first block takes the image itself: no ReLU before its
    first conv (it would zero the negative pixels) and its shortcut pools before the 1x1
    conv (SNGAN's "optimized" block)."""

    def __init__(self, c_in: int, c_out: int, *, norm: str, downsample: bool, first: bool):
        super().__init__()
        self.first, self.downsample = first, downsample
        self.conv1 = _conv(c_in, c_out, 3, gain=math.sqrt(2), norm=norm)
        self.norm1 = _feature_norm(norm, c_out)
        self.conv2 = _conv(c_out, c_out, 3, gain=math.sqrt(2), norm=norm)
        self.norm2 = _feature_norm(norm, c_out)
        learnable = c_in != c_out or downsample
        self.shortcut = _conv(c_in, c_out, 1, gain=1.0, norm=norm) if learnable else nn.Identity()

    def _pool(self, x: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(x, 2) if self.downsample else x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x if self.first else F.relu(x)
        h = self.norm1(self.conv1(h))
        h = self._pool(self.norm2(self.conv2(F.relu(h))))
        if self.first:
            return h + self.shortcut(self._pool(x))
        return h + self._pool(self.shortcut(x))


class ResNetGenerator(nn.Module):
    """z (N, latent_dim) -> images (N, C, size, size) in [-1, 1]."""

    def __init__(self, cfg: Model, shape: tuple[int, ...]):
        super().__init__()
        channels, size, _ = shape
        batch_norm = cfg.g_norm == "batch"
        ch = widths(cfg.channels, size)[::-1]  # side 4 first: ch[0] at 4x4, ch[-1] at size
        self.width = ch[0]
        self.project = _init(nn.Linear(cfg.latent_dim, ch[0] * 16), 1.0)  # z -> (ch[0], 4, 4)
        self.blocks = nn.Sequential(
            *(GeneratorBlock(a, b, batch_norm=batch_norm) for a, b in pairwise(ch))
        )  # (ch[0], 4, 4) -> (ch[-1], size, size)
        self.out = nn.Sequential(
            _feature_norm("batch" if batch_norm else "none", ch[-1]),
            nn.ReLU(),
            _conv(ch[-1], channels, 3, gain=1.0),  # -> (C, size, size)
            nn.Tanh(),
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.out(self.blocks(self.project(z).view(-1, self.width, 4, 4)))


class ResNetDiscriminator(nn.Module):
    """images (N, C, size, size) -> logits (N,)."""

    def __init__(self, cfg: Model, shape: tuple[int, ...]):
        super().__init__()
        channels, size, _ = shape
        ch = widths(cfg.channels, size)  # ch[i] for the block taking side size / 2**i
        blocks = [DiscriminatorBlock(channels, ch[0], norm=cfg.d_norm, downsample=True, first=True)]
        blocks += [
            DiscriminatorBlock(a, b, norm=cfg.d_norm, downsample=True, first=False)
            for a, b in pairwise(ch[:-1])
        ]  # -> (ch[-2], 4, 4)
        blocks.append(
            DiscriminatorBlock(ch[-2], ch[-1], norm=cfg.d_norm, downsample=False, first=False)
        )
        self.blocks = nn.Sequential(*blocks)  # -> (ch[-1], 4, 4)
        head = _init(nn.Linear(ch[-1], 1), 1.0)
        self.head = spectral(head) if cfg.d_norm == "spectral" else head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = F.relu(self.blocks(x)).sum(dim=(2, 3))  # global sum pooling -> (N, ch[-1])
        return self.head(features).squeeze(1)

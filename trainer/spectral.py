"""The project's exact spectral norm (Miyato et al. 2018), shared by every discriminator.

A parametrization whose power iteration runs once per optimizer step
(`refresh_spectral_norm`), not on every forward as
`torch.nn.utils.parametrizations.spectral_norm` does: with gradient accumulation the number
of forwards per step depends on the micro-batch count, and per-forward power iterations
would make `accumulation.steps: 4` differ from `accumulation.steps: 1`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize


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
    """`layer` with its weight spectrally normalized (in place); returns the layer."""
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

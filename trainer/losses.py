"""Adversarial losses on discriminator logits, and the gradient penalties.

Each loss is a mean over the (micro-)batch, so the mean of k micro-batch losses equals the
loss of the whole batch: that is what makes accumulation with `normalize: loss` exact.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from trainer.spec import Loss


def d_loss(kind: str, real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """The discriminator's loss: real should score high, fake low."""
    if kind == "bce":
        return F.softplus(-real_logits).mean() + F.softplus(fake_logits).mean()
    if kind == "hinge":
        return F.relu(1.0 - real_logits).mean() + F.relu(1.0 + fake_logits).mean()
    return fake_logits.mean() - real_logits.mean()  # wasserstein


def g_loss(kind: str, fake_logits: torch.Tensor) -> torch.Tensor:
    """The generator's loss; `bce` is the non-saturating form -log D(G(z))."""
    if kind == "bce":
        return F.softplus(-fake_logits).mean()
    return -fake_logits.mean()  # hinge and wasserstein


def _input_grad(
    discriminator: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor
) -> torch.Tensor:
    x = x.detach().requires_grad_(True)
    (grad,) = torch.autograd.grad(discriminator(x).sum(), x, create_graph=True)
    return grad.flatten(1)


def penalty(
    cfg: Loss,
    discriminator: nn.Module,
    *,
    real: torch.Tensor,
    fake: torch.Tensor,
    mix: torch.Tensor | None,
) -> torch.Tensor | None:
    """The weighted gradient penalty of one micro-batch, or None.

    wgan_gp: (||grad_x D(x_hat)|| - 1)^2 at x_hat = mix*real + (1-mix)*fake (Gulrajani 2017).
    r1: ||grad_x D(x_real)||^2 / 2 (Mescheder 2018). `mix` (one number per example, in
    [0, 1)) is drawn with the batch so accumulation sees the same draws as one big batch.
    """
    if cfg.penalty == "none" or cfg.weight == 0:
        return None
    if cfg.penalty == "wgan_gp":
        assert mix is not None, "wgan_gp needs the mixing weights drawn with the batch"
        shape = (-1,) + (1,) * (real.dim() - 1)
        x_hat = mix.view(shape) * real + (1 - mix.view(shape)) * fake.detach()
        grad = _input_grad(discriminator, x_hat)
        return cfg.weight * ((grad.norm(dim=1) - 1) ** 2).mean()
    grad = _input_grad(discriminator, real)
    return cfg.weight * 0.5 * grad.pow(2).sum(dim=1).mean()

"""The optimizers a spec names, and their learning rate over the run (`optim.*.decay`)."""

from __future__ import annotations

import math

import torch
from torch import nn

from trainer.spec import Optimizer


def build_optimizer(cfg: Optimizer, params: list[nn.Parameter]) -> torch.optim.Optimizer:
    if cfg.name == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)
    if cfg.name == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)
    if cfg.name == "sgd":
        return torch.optim.SGD(
            params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay
        )
    return torch.optim.RMSprop(
        params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay
    )


def decayed_lr(cfg: Optimizer, step: int, steps: int) -> float:
    """The learning rate of generator step `step` (1-based) of `steps` under `cfg.decay`."""
    done = (step - 1) / steps  # 0 on the first step, just under 1 on the last
    if cfg.decay == "linear":
        return cfg.lr * (1.0 - done)
    if cfg.decay == "cosine":
        return cfg.lr * 0.5 * (1.0 + math.cos(math.pi * done))
    return cfg.lr


def set_decayed_lr(opt: torch.optim.Optimizer, cfg: Optimizer, step: int, steps: int) -> None:
    """Give `opt` the learning rate of step `step`. Without decay the rate is not touched:
    whatever the optimizer holds (the spec's, or a loaded checkpoint's) stays."""
    if cfg.decay == "none":
        return
    for group in opt.param_groups:
        group["lr"] = decayed_lr(cfg, step, steps)

"""Small specs and runs for tests: tiny networks so hundreds of steps take seconds."""

from __future__ import annotations

from typing import Any

import torch

from trainer.sinks import Sinks, memory_sinks
from trainer.spec import TrainSpec
from trainer.training import Trainer

TINY: dict[str, Any] = {
    "steps": 20,
    "ema": 0.0,
    "batch_size": 32,
    "model": {"latent_dim": 8, "width": 32, "depth": 2},
    "optim": {"g": {"lr": 1e-3}, "d": {"lr": 1e-3}},
    "every": {"metrics": 1, "samples": 0, "checkpoint": 0, "eval": 0},
}


def merge(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def tiny_spec(**overrides: Any) -> TrainSpec:
    return TrainSpec.model_validate(merge(TINY, overrides))


def run(spec: TrainSpec) -> tuple[Trainer, Sinks]:
    trainer = Trainer(spec, evaluate=False)
    sinks = memory_sinks()
    trainer.run(sinks)
    return trainer, sinks


def parameters(trainer: Trainer) -> dict[str, torch.Tensor]:
    named = {f"g.{k}": v for k, v in trainer.generator.state_dict().items()}
    named.update({f"d.{k}": v for k, v in trainer.discriminator.state_dict().items()})
    return {k: v.detach().clone() for k, v in named.items()}


def max_relative_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    worst = 0.0
    for key in a:
        x, y = a[key].double(), b[key].double()
        scale = torch.linalg.vector_norm(x).item() or 1.0
        worst = max(worst, torch.linalg.vector_norm(x - y).item() / scale)
    return worst

"""What one cycle of the step engine draws (its effective batch) and what one step reports."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from trainer.augment import AugmentParams
from trainer.ddp import average_


@dataclass
class CycleBatch:
    """One cycle's effective batch, split into micro-batches along dim 0: the noise, the real
    examples, the penalty's mixing weights and the augmentation parameters of the real and
    of the generated images (trainer.augment), each one row per example."""

    noise: torch.Tensor
    real: torch.Tensor | None = None
    mix: torch.Tensor | None = None
    augment_real: AugmentParams | None = None
    augment_fake: AugmentParams | None = None

    def split(self, k: int) -> Iterator[CycleBatch]:
        fields = (self.noise, self.real, self.mix, self.augment_real, self.augment_fake)
        parts = [_chunks(value, k) for value in fields]
        for noise, real, mix, augment_real, augment_fake in zip(*parts, strict=True):
            yield CycleBatch(noise, real, mix, augment_real, augment_fake)


def _chunks(value: torch.Tensor | AugmentParams | None, k: int) -> Sequence[Any]:
    return [None] * k if value is None else value.chunk(k)


@dataclass
class StepStats:
    """What one step measured; tensors stay on the device until the loop asks for numbers."""

    values: dict[str, torch.Tensor | float] = field(default_factory=dict)
    leak: dict[str, float] = field(default_factory=lambda: {"d": 0.0, "g": 0.0})

    def numbers(self) -> dict[str, float]:
        out = {k: float(v) for k, v in self.values.items()}
        out["audit/leak_d"] = self.leak["d"]
        out["audit/leak_g"] = self.leak["g"]
        return out

    def average_over_ranks(self) -> None:
        """The step's losses and logits averaged over the ranks (one all-reduce): every rank
        then reports the whole effective batch, as one rank would."""
        names = [n for n, v in self.values.items() if isinstance(v, torch.Tensor)]
        if not names:
            return
        stacked = torch.stack([torch.as_tensor(self.values[n]).double() for n in names])
        average_([stacked])
        for name, value in zip(names, stacked, strict=True):
            self.values[name] = value

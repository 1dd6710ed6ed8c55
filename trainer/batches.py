"""What one cycle of the step engine draws (its effective batch) and what one step reports."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import torch

from trainer.ddp import average_


@dataclass
class CycleBatch:
    """One cycle's effective batch, split into micro-batches along dim 0."""

    noise: torch.Tensor
    real: torch.Tensor | None = None
    mix: torch.Tensor | None = None

    def split(self, k: int) -> Iterator[CycleBatch]:
        parts = [
            t.chunk(k) if t is not None else [None] * k for t in (self.noise, self.real, self.mix)
        ]
        for noise, real, mix in zip(*parts, strict=True):
            yield CycleBatch(noise, real, mix)


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

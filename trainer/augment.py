"""DiffAugment (Zhao et al. 2020, "Differentiable Augmentation for Data-Efficient GAN
Training"): color, translation and cutout, differentiable in the images, applied to every
image the discriminator sees, real or generated (DESIGN.md s. 8).

The transforms are those of the paper's code (`DiffAugment_pytorch.py`): color adds a
brightness offset in [-0.5, 0.5), scales saturation by [0, 2) and contrast by [0.5, 1.5);
translation shifts by up to 1/8 of the side with zero padding; cutout zeroes a square of half
the side. Each transform of the policy applies to an example with probability `p`.

Unlike the paper's code, the transforms draw nothing themselves: `DiffAugment.draw` draws
one effective batch's parameters from the engine's generator and `AugmentParams.chunk`
splits them along the batch like the data, so k micro-batches (on any number of ranks) see
the same augmented images as one whole batch, and accumulation stays exact. A transform that
does not apply to an example gets identity parameters there (offset 0, factor 1, shift 0, no
hole), which leave the example's values exactly as they were.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from trainer.data import DataError
from trainer.spec import Augment

TRANSLATION_RATIO = 0.125  # the largest shift, as a fraction of the side
CUTOUT_RATIO = 0.5  # the side of the zeroed square, as a fraction of the image's side


@dataclass(frozen=True)
class AugmentParams:
    """One batch's draws: every tensor has one row per example, so it splits like the data.

    brightness (n,): offset; saturation, contrast (n,): factor - 1; shift (n, 2): rows and
    columns moved; hole (n, 2): the cutout square's centre; cut (n,): whether cutout applies.
    Only the policy's transforms have entries."""

    values: dict[str, torch.Tensor]

    def chunk(self, k: int) -> list[AugmentParams]:
        """The k micro-batches' parameters, cut as `torch.Tensor.chunk` cuts the data."""
        pieces = {name: value.chunk(k) for name, value in self.values.items()}
        count = len(next(iter(pieces.values()))) if pieces else k
        return [AugmentParams({n: p[i] for n, p in pieces.items()}) for i in range(count)]

    def to(self, device: torch.device) -> AugmentParams:
        return AugmentParams({n: v.to(device) for n, v in self.values.items()})


class DiffAugment:
    """The policy's transforms for images of `shape` (C, H, W), applied in the policy's order."""

    def __init__(self, policy: Sequence[str], p: float, shape: tuple[int, ...]):
        unknown = [name for name in policy if name not in _TRANSFORMS]
        if unknown:
            raise ValueError(f"augment.policy: unknown transform {unknown[0]!r}")
        if len(shape) != 3:
            raise DataError(
                f"augment.policy: augments images (C, H, W), the data has shape {tuple(shape)}"
            )
        self.policy = tuple(policy)
        self.p = p
        self.channels, self.height, self.width = shape

    def draw(
        self, n: int, rng: torch.Generator, *, dtype: torch.dtype = torch.float32
    ) -> AugmentParams:
        """Parameters for n examples, drawn from `rng` (on the CPU) in the policy's order."""
        values: dict[str, torch.Tensor] = {}
        for name in self.policy:
            values.update(_DRAWS[name](self, n, rng, dtype))
        return AugmentParams(values)

    def __call__(self, x: torch.Tensor, params: AugmentParams) -> torch.Tensor:
        """x (n, C, H, W) augmented with `params` (drawn for n examples); same shape."""
        for name in self.policy:
            x = _TRANSFORMS[name](x, params.values)
        return x


def augment_for(cfg: Augment, shape: tuple[int, ...]) -> DiffAugment | None:
    """The spec's augmentation for data of `shape`, or None when the policy is empty (off).
    DataError when the data are not images."""
    return DiffAugment(cfg.policy, cfg.p, shape) if cfg.policy else None


def augmented(
    augment: DiffAugment | None, x: torch.Tensor, params: AugmentParams | None
) -> torch.Tensor:
    """What the discriminator sees of x: x itself when augmentation is off."""
    if augment is None or params is None:
        return x
    return augment(x, params)


# ---- draws -------------------------------------------------------------------------------


def _applies(aug: DiffAugment, n: int, rng: torch.Generator, dtype: torch.dtype) -> torch.Tensor:
    """Whether each of n examples gets the transform: probability p, drawn per example."""
    return torch.rand(n, generator=rng, dtype=dtype) < aug.p


def _draw_color(
    aug: DiffAugment, n: int, rng: torch.Generator, dtype: torch.dtype
) -> dict[str, torch.Tensor]:
    on = _applies(aug, n, rng, dtype)
    u = torch.rand(n, 3, generator=rng, dtype=dtype)
    zero = torch.zeros((), dtype=dtype)
    return {
        "brightness": torch.where(on, u[:, 0] - 0.5, zero),  # offset in [-0.5, 0.5)
        "saturation": torch.where(on, 2 * u[:, 1] - 1, zero),  # factor 2u in [0, 2), minus 1
        "contrast": torch.where(on, u[:, 2] - 0.5, zero),  # factor u + 0.5 in [0.5, 1.5), - 1
    }


def _draw_translation(
    aug: DiffAugment, n: int, rng: torch.Generator, dtype: torch.dtype
) -> dict[str, torch.Tensor]:
    on = _applies(aug, n, rng, dtype)
    sides = (aug.height, aug.width)
    shifts = []
    for side in sides:
        most = int(side * TRANSLATION_RATIO + 0.5)
        shifts.append(torch.randint(-most, most + 1, (n,), generator=rng))
    return {"shift": torch.stack(shifts, dim=1) * on.unsqueeze(1)}


def _draw_cutout(
    aug: DiffAugment, n: int, rng: torch.Generator, dtype: torch.dtype
) -> dict[str, torch.Tensor]:
    on = _applies(aug, n, rng, dtype)
    centres = []
    for side in (aug.height, aug.width):
        size = int(side * CUTOUT_RATIO + 0.5)
        # The paper's range: an even-sized hole may reach one past the last pixel.
        centres.append(torch.randint(0, side + (1 - size % 2), (n,), generator=rng))
    return {"hole": torch.stack(centres, dim=1), "cut": on}


# ---- transforms --------------------------------------------------------------------------


def _per_example(value: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return value.to(like).view(-1, 1, 1, 1)


def _color(x: torch.Tensor, v: dict[str, torch.Tensor]) -> torch.Tensor:
    # x + (x - mean) * (factor - 1) is the paper's (x - mean) * factor + mean, written so
    # that factor 1 leaves x exactly as it is.
    x = x + _per_example(v["brightness"], x)
    x = x + (x - x.mean(dim=1, keepdim=True)) * _per_example(v["saturation"], x)
    return x + (x - x.mean(dim=(1, 2, 3), keepdim=True)) * _per_example(v["contrast"], x)


def _translation(x: torch.Tensor, v: dict[str, torch.Tensor]) -> torch.Tensor:
    """out[i, j] = x[i + shift_row, j + shift_col], zero where that falls outside."""
    n, c, h, w = x.shape
    shift = v["shift"]
    padded = F.pad(x, (1, 1, 1, 1))  # one ring of zeros; every outside index lands on it
    rows = (torch.arange(h, device=x.device) + shift[:, :1] + 1).clamp(0, h + 1)  # (n, h)
    cols = (torch.arange(w, device=x.device) + shift[:, 1:] + 1).clamp(0, w + 1)  # (n, w)
    index = (rows[:, :, None] * (w + 2) + cols[:, None, :]).reshape(n, 1, h * w)
    return padded.flatten(2).gather(2, index.expand(n, c, h * w)).view(n, c, h, w)


def _cutout(x: torch.Tensor, v: dict[str, torch.Tensor]) -> torch.Tensor:
    """Zeroes the square of half the side centred at `hole` (clipped to the image)."""
    _, _, h, w = x.shape
    hole = v["hole"]
    inside = []
    for axis, side in ((0, h), (1, w)):
        size = int(side * CUTOUT_RATIO + 0.5)
        start = hole[:, axis : axis + 1] - size // 2  # (n, 1)
        pos = torch.arange(side, device=x.device)
        inside.append((pos >= start) & (pos < start + size))  # (n, side)
    cut = inside[0][:, :, None] & inside[1][:, None, :] & v["cut"].view(-1, 1, 1)
    return x * (~cut).unsqueeze(1).to(x.dtype)


_Draw = Callable[[DiffAugment, int, torch.Generator, torch.dtype], dict[str, torch.Tensor]]
_Transform = Callable[[torch.Tensor, dict[str, torch.Tensor]], torch.Tensor]

_DRAWS: dict[str, _Draw] = {
    "color": _draw_color,
    "translation": _draw_translation,
    "cutout": _draw_cutout,
}
_TRANSFORMS: dict[str, _Transform] = {
    "color": _color,
    "translation": _translation,
    "cutout": _cutout,
}

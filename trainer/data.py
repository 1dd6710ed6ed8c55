"""Training data: Gaussian mixtures made by code, scikit-learn's digits, uploaded arrays.

Every dataset draws its real batch from a `torch.Generator` the trainer owns, so a run is
reproducible from its seed and its RNG state (saved in checkpoints).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from trainer.spec import Data, Model


class DataError(ValueError):
    """Data that cannot be used as asked; `str()` is one line naming the field."""


def ring_centres(modes: int, radius: float) -> torch.Tensor:
    """`modes` centres evenly spaced on a circle of `radius`, shape (modes, 2)."""
    angles = torch.arange(modes, dtype=torch.float64) * (2 * math.pi / modes)
    return torch.stack([radius * torch.cos(angles), radius * torch.sin(angles)], dim=1)


def grid_centres(size: int, spacing: float) -> torch.Tensor:
    """A size x size grid spaced `spacing` apart, centred on 0: 5, 2.0 gives {-4..4}^2."""
    axis = (torch.arange(size, dtype=torch.float64) - (size - 1) / 2) * spacing
    xs, ys = torch.meshgrid(axis, axis, indexing="ij")
    return torch.stack([xs.reshape(-1), ys.reshape(-1)], dim=1)


@dataclass
class Dataset:
    """Real data plus what the models and the evaluation need to know about it."""

    kind: str
    # Shape of one example: (2,) for mixtures, (C, H, W) for images, (D,) for vectors.
    shape: tuple[int, ...]
    # For mixtures the centres and std (sampled analytically); otherwise the examples.
    centres: torch.Tensor | None = None
    std: float = 0.0
    examples: torch.Tensor | None = None

    @property
    def is_image(self) -> bool:
        return len(self.shape) == 3

    def to(self, device: torch.device, dtype: torch.dtype) -> Dataset:
        def move(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t.to(device=device, dtype=dtype)

        return Dataset(self.kind, self.shape, move(self.centres), self.std, move(self.examples))

    def sample(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """n real examples; the random draws come from `generator` (on the CPU)."""
        if self.centres is not None:
            index = torch.randint(len(self.centres), (n,), generator=generator)
            noise = torch.randn(n, 2, generator=generator, dtype=torch.float64)
            centres = self.centres[index.to(self.centres.device)]
            return centres + (self.std * noise).to(centres)
        assert self.examples is not None
        index = torch.randint(len(self.examples), (n,), generator=generator)
        return self.examples[index.to(self.examples.device)]

    def reference(self, n: int, seed: int = 12345) -> torch.Tensor:
        """A fixed real sample for plots and evaluation, independent of the training RNG."""
        return self.sample(n, torch.Generator().manual_seed(seed))


def _digits() -> torch.Tensor:
    from sklearn.datasets import load_digits  # bundled with scikit-learn: no download

    images = load_digits().images.astype(np.float32)  # (1797, 8, 8), values 0..16
    return torch.from_numpy(images / 8.0 - 1.0).unsqueeze(1)  # (N, 1, 8, 8) in [-1, 1]


def load_array(path: str | Path) -> torch.Tensor:
    """An uploaded `.npy`/`.npz`: float or uint8, shape (N, D), (N, H, W) or (N, C, H, W).

    uint8 is scaled to [-1, 1]; floats are used as they are. (N, H, W) gains a channel axis.
    """
    path = Path(path)
    try:
        loaded = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise DataError(f"data.path: cannot read {path.name} as .npy/.npz: {exc}") from None
    if isinstance(loaded, np.lib.npyio.NpzFile):
        with loaded:
            if not loaded.files:
                raise DataError(f"data.path: {path.name} holds no arrays")
            array = loaded[loaded.files[0]]
    else:
        array = loaded
    if array.dtype == np.uint8:
        array = array.astype(np.float32) / 127.5 - 1.0
    elif np.issubdtype(array.dtype, np.floating):
        array = array.astype(np.float32)
    else:
        raise DataError(f"data.path: dtype {array.dtype} is not float or uint8")
    if array.ndim not in (2, 3, 4) or array.shape[0] < 1:
        raise DataError(f"data.path: shape {array.shape} is not (N, D), (N, H, W) or (N, C, H, W)")
    if not np.isfinite(array).all():
        raise DataError("data.path: the array holds NaN or infinite values")
    tensor = torch.from_numpy(np.ascontiguousarray(array))
    return tensor.unsqueeze(1) if tensor.ndim == 3 else tensor


def load_dataset(spec: Data, *, resolve_dataset: Callable[[str], Path] | None = None) -> Dataset:
    """Build the dataset a spec names. `resolve_dataset` maps a dataset_id to a file (service)."""
    if spec.kind == "ring":
        return Dataset("ring", (2,), ring_centres(spec.modes, spec.radius), spec.mixture_std)
    if spec.kind == "grid":
        return Dataset("grid", (2,), grid_centres(spec.size, spec.spacing), spec.mixture_std)
    if spec.kind == "digits":
        examples = _digits()
        return Dataset("digits", tuple(examples.shape[1:]), examples=examples)
    if spec.path is not None:
        path = Path(spec.path)
    else:
        assert spec.dataset_id is not None
        if resolve_dataset is None:
            raise DataError("data.dataset_id: uploaded datasets need the service; use data.path")
        path = resolve_dataset(spec.dataset_id)
    examples = load_array(path)
    return Dataset("array", tuple(examples.shape[1:]), examples=examples)


def check_model_fits(model: Model, dataset: Dataset) -> None:
    """Raise DataError when the model kind cannot take this data's shape."""
    if model.kind != "conv":
        return
    if not dataset.is_image:
        raise DataError(f"model.kind: conv needs image data, the data has shape {dataset.shape}")
    _, height, width = dataset.shape
    if height != width or height not in (8, 16, 32, 64):
        raise DataError(
            f"model.kind: conv takes square images of 8, 16, 32 or 64 px, got {height}x{width}"
        )

"""Training data: Gaussian mixtures made by code, scikit-learn's digits, uploaded arrays and
local folders or archives of images.

Every dataset draws its real batch from a `torch.Generator` the trainer owns, so a run is
reproducible from its seed and its RNG state (saved in checkpoints).

uint8 data (an uploaded image dataset, a folder of images) stays uint8: a `.npy` is opened
memory-mapped, so a dataset larger than memory trains, and only the rows a batch draws are
scaled to [-1, 1] (the same float32 values, bit for bit, as scaling the whole array first).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from trainer.images import ImageSourceError, read_images
from trainer.spec import Data, Model

log = logging.getLogger(__name__)

# Skipped image files named in the log line of a local image folder or archive.
SKIPPED_SHOWN = 5


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


def scale_uint8(array: np.ndarray) -> np.ndarray:
    """uint8 0..255 as float32 in [-1, 1]: the one formula every uint8 dataset goes through."""
    return array.astype(np.float32) / 127.5 - 1.0


@dataclass
class Dataset:
    """Real data plus what the models and the evaluation need to know about it."""

    kind: str
    # Shape of one example: (2,) for mixtures, (C, H, W) for images, (D,) for vectors.
    shape: tuple[int, ...]
    # For mixtures the centres and std (sampled analytically); otherwise the examples.
    centres: torch.Tensor | None = None
    std: float = 0.0
    # Float examples held as a tensor on the dataset's device ...
    examples: torch.Tensor | None = None
    # ... or uint8 examples (N, *shape) kept as they are stored (memory-mapped for a .npy),
    # on the CPU; the rows drawn are scaled and moved to `device` and `dtype`.
    stored: np.ndarray | None = None
    device: torch.device = torch.device("cpu")
    dtype: torch.dtype = torch.float32

    @property
    def is_image(self) -> bool:
        return len(self.shape) == 3

    @property
    def count(self) -> int:
        """How many examples there are (0 for mixtures, which are sampled analytically)."""
        if self.stored is not None:
            return len(self.stored)
        return 0 if self.examples is None else len(self.examples)

    def to(self, device: torch.device, dtype: torch.dtype) -> Dataset:
        def move(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t.to(device=device, dtype=dtype)

        return replace(
            self,
            centres=move(self.centres),
            examples=move(self.examples),
            device=device,
            dtype=dtype,
        )

    def sample(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """n real examples; the random draws come from `generator` (on the CPU)."""
        if self.centres is not None:
            index = torch.randint(len(self.centres), (n,), generator=generator)
            noise = torch.randn(n, 2, generator=generator, dtype=torch.float64)
            centres = self.centres[index.to(self.centres.device)]
            return centres + (self.std * noise).to(centres)
        index = torch.randint(self.count, (n,), generator=generator)
        return self.rows(index)

    def rows(self, index: torch.Tensor) -> torch.Tensor:
        """The examples at `index` (a CPU integer tensor) as the models see them: in
        [-1, 1] for uint8 data, on the dataset's device and in its dtype."""
        if self.stored is not None:
            picked = np.ascontiguousarray(self.stored[index.numpy()])
            return torch.from_numpy(scale_uint8(picked)).to(self.device, self.dtype)
        if self.examples is None:
            raise ValueError(f"{self.kind}: a mixture has no stored examples")
        return self.examples[index.to(self.examples.device)]

    def reference(self, n: int, seed: int = 12345) -> torch.Tensor:
        """A fixed real sample for plots and evaluation, independent of the training RNG."""
        return self.sample(n, torch.Generator().manual_seed(seed))


def _digits() -> torch.Tensor:
    from sklearn.datasets import load_digits  # bundled with scikit-learn: no download

    images = load_digits().images.astype(np.float32)  # (1797, 8, 8), values 0..16
    return torch.from_numpy(images / 8.0 - 1.0).unsqueeze(1)  # (N, 1, 8, 8) in [-1, 1]


def map_array(path: str | Path) -> np.ndarray:
    """An uploaded `.npy`/`.npz` as stored, its dtype (uint8 or float) and shape ((N, D),
    (N, H, W) or (N, C, H, W); (N, H, W) is given a channel axis) checked, its values not.
    A `.npy` is memory-mapped, so nothing is read until used; a `.npz` cannot be and is
    read whole."""
    path = Path(path)
    try:
        loaded = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise DataError(f"data.path: cannot read {path.name} as .npy/.npz: {exc}") from None
    if isinstance(loaded, np.lib.npyio.NpzFile):
        with loaded:
            if not loaded.files:
                raise DataError(f"data.path: {path.name} holds no arrays")
            array = loaded[loaded.files[0]]
    else:
        array = loaded
    if array.dtype != np.uint8 and not np.issubdtype(array.dtype, np.floating):
        raise DataError(f"data.path: dtype {array.dtype} is not float or uint8")
    if array.ndim not in (2, 3, 4) or array.shape[0] < 1:
        raise DataError(f"data.path: shape {array.shape} is not (N, D), (N, H, W) or (N, C, H, W)")
    return array[:, None] if array.ndim == 3 else array


def open_array(path: str | Path) -> np.ndarray:
    """An uploaded array ready to train on: uint8 as stored (memory-mapped for a `.npy`; it
    needs no check), or float read whole as float32 and refused if any value is NaN or
    infinite (also one that float32 cannot hold)."""
    array = map_array(path)
    if array.dtype == np.uint8:
        return array
    with np.errstate(over="ignore"):  # a value past float32's range becomes inf: refused
        values = np.ascontiguousarray(array.astype(np.float32))
    if not np.isfinite(values).all():
        raise DataError("data.path: the array holds NaN or infinite values")
    return values


def load_array(path: str | Path) -> torch.Tensor:
    """An uploaded `.npy`/`.npz` read whole as a float32 tensor: float or uint8, shape (N, D),
    (N, H, W) or (N, C, H, W). uint8 is scaled to [-1, 1]; floats are used as they are.
    (N, H, W) gains a channel axis."""
    array = open_array(path)
    values = scale_uint8(array) if array.dtype == np.uint8 else array
    return torch.from_numpy(np.ascontiguousarray(values))


def array_dataset(path: str | Path) -> Dataset:
    """An uploaded array as a Dataset: uint8 stays as stored (memory-mapped for a .npy),
    floats are read into a float32 tensor."""
    array = open_array(path)
    if array.dtype == np.uint8:
        return Dataset("array", tuple(array.shape[1:]), stored=array)
    examples = torch.from_numpy(array)
    return Dataset("array", tuple(examples.shape[1:]), examples=examples)


def image_dataset(spec: Data) -> Dataset:
    """`data.kind: images`: a local folder or .zip/.tar/.tar.gz of images, read with
    trainer.images; the files that are not usable images are logged."""
    assert spec.path is not None and spec.resolution is not None  # the spec checks both
    source = Path(spec.path)
    try:
        found = read_images(source, spec.resolution, channels=spec.channels, crop=spec.crop)
    except ImageSourceError as exc:
        raise DataError(f"data.path: {source}: {exc}") from None
    except OSError as exc:
        raise DataError(f"data.path: cannot read {source}: {exc.strerror or exc}") from None
    if found.skipped:
        shown = "; ".join(f"{s.name}: {s.reason}" for s in found.skipped[:SKIPPED_SHOWN])
        more = len(found.skipped) - SKIPPED_SHOWN
        log.warning(
            "data.path: %s: skipped %d of %d files (%s%s)",
            source,
            len(found.skipped),
            found.count + len(found.skipped),
            shown,
            f"; {more} more" if more > 0 else "",
        )
    return Dataset("images", tuple(found.array.shape[1:]), stored=found.array)


def load_dataset(spec: Data, *, resolve_dataset: Callable[[str], Path] | None = None) -> Dataset:
    """Build the dataset a spec names. `resolve_dataset` maps a dataset_id to a file (service)."""
    if spec.kind == "ring":
        return Dataset("ring", (2,), ring_centres(spec.modes, spec.radius), spec.mixture_std)
    if spec.kind == "grid":
        return Dataset("grid", (2,), grid_centres(spec.size, spec.spacing), spec.mixture_std)
    if spec.kind == "digits":
        examples = _digits()
        return Dataset("digits", tuple(examples.shape[1:]), examples=examples)
    if spec.kind == "images":
        return image_dataset(spec)
    if spec.path is not None:
        path = Path(spec.path)
    else:
        assert spec.dataset_id is not None
        if resolve_dataset is None:
            raise DataError("data.dataset_id: uploaded datasets need the service; use data.path")
        path = resolve_dataset(spec.dataset_id)
    return array_dataset(path)


def check_model_fits(model: Model, dataset: Dataset) -> None:
    """Raise DataError when the model kind cannot take this data's shape."""
    if model.kind not in ("conv", "resnet"):
        return
    if not dataset.is_image:
        raise DataError(
            f"model.kind: {model.kind} needs image data, the data has shape {dataset.shape}"
        )
    channels, height, width = dataset.shape
    sizes = {"conv": (8, 16, 32, 64), "resnet": (16, 32, 64, 128)}[model.kind]
    if height != width or height not in sizes:
        listed = ", ".join(map(str, sizes[:-1])) + f" or {sizes[-1]}"
        raise DataError(
            f"model.kind: {model.kind} takes square images of {listed} px, got {height}x{width}"
        )
    if model.kind == "resnet" and channels not in (1, 3):
        raise DataError(f"model.kind: resnet takes images of 1 or 3 channels, got {channels}")

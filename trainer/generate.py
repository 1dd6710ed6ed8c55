"""Fresh samples from a checkpoint's generator (the EMA weights when the run kept them).

`LoadedGenerator` is one checkpoint's generator ready to sample, for `ganforge generate` and
the API's generate endpoint alike; `GeneratorCache` keeps the few most recently used ones
(the API serves repeated requests on one checkpoint without reading it again).
"""

from __future__ import annotations

import io
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from torch import nn

from trainer.checkpoint import Checkpoint, CheckpointError, atomic_write, read_checkpoint
from trainer.data import DataError, load_dataset
from trainer.errors import first_line
from trainer.guided import (
    FORWARDS_PER_SAMPLE,
    MAX_PROPOSALS,
    Networks,
    Sampler,
    SamplerError,
    SamplerReport,
    chunk_for,
    guided,
)
from trainer.models import build_models
from trainer.resnet import widest_activation
from trainer.spec import TrainSpec
from trainer.training import SCATTER_POINTS, generate_from

MAX_GENERATE = 1_000_000
# Bound on the largest tensor one generation makes (noise, a hidden layer, the output): n is
# capped per checkpoint so that n x (widest per-sample activation) x itemsize fits.
GENERATE_BUDGET_BYTES = 512 * 1024 * 1024


def load_networks(
    ckpt: Checkpoint,
) -> tuple[nn.Module, nn.Module | None, TrainSpec, tuple[int, ...]]:
    """The checkpoint's generator (EMA weights preferred) and the discriminator it was
    trained against (None when the checkpoint holds none), on the CPU in their training
    dtype, in eval mode with gradients off: they are sampled from, never trained here."""
    spec = TrainSpec.model_validate(ckpt.meta["spec"])
    shape = tuple(int(d) for d in ckpt.meta["data_shape"])
    generator, discriminator = build_models(spec.model, shape, seed=spec.seed)
    tensors = ckpt.tensors()  # decoded once for both networks
    prefix = "generator_ema." if "ema" in ckpt.meta else "generator."
    loaded = []
    for module, part in ((generator, prefix), (discriminator, "discriminator.")):
        state = {k[len(part) :]: v for k, v in tensors.items() if k.startswith(part)}
        if not state:
            loaded.append(None)
            continue
        module = module.to(next(iter(state.values())).dtype)
        module.load_state_dict(state)
        loaded.append(module.eval().requires_grad_(False))
    if loaded[0] is None:
        raise CheckpointError(f"checkpoint: holds no tensors under {prefix!r}")
    return loaded[0], loaded[1], spec, shape


@dataclass
class LoadedGenerator:
    """A checkpoint's generator in eval mode, and kept so: threads may share it."""

    generator: nn.Module
    spec: TrainSpec
    shape: tuple[int, ...]
    step: int
    # The discriminator it was trained against, for the guided samplers; None: not saved.
    discriminator: nn.Module | None = None
    # The real data drawn under 2-D scatter plots, loaded on first use.
    _real: np.ndarray | None = None
    _real_done: bool = False
    _real_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @classmethod
    def of(cls, ckpt: Checkpoint) -> LoadedGenerator:
        """Build it; a CheckpointError names why a checkpoint holds no usable generator."""
        try:
            generator, discriminator, spec, shape = load_networks(ckpt)
        except (KeyError, TypeError, ValueError, RuntimeError) as exc:
            # CheckpointError is a ValueError; RuntimeError: tensors that do not fit the model.
            raise CheckpointError(
                f"checkpoint: cannot build its generator: {first_line(exc)}"
            ) from None
        return cls(generator, spec, shape, ckpt.step, discriminator)

    @property
    def max_n(self) -> int:
        """The most samples one call may make, under GENERATE_BUDGET_BYTES."""
        model = self.spec.model
        per_sample = max(model.latent_dim, model.width, int(np.prod(self.shape)))
        if model.kind == "conv":  # (width, 4, 4) doubling in size, halving channels
            per_sample = max(per_sample, model.width * 4 * self.shape[-1])
        if model.kind == "resnet":  # c x size**2 and wider at full resolution
            per_sample = max(per_sample, widest_activation(model, self.shape))
        itemsize = 8 if self.spec.precision == "fp64" else 4
        return max(1, min(MAX_GENERATE, GENERATE_BUDGET_BYTES // (per_sample * itemsize)))

    def sample(
        self, n: int, *, seed: int = 0, sampler: Sampler | None = None
    ) -> tuple[np.ndarray, SamplerReport | None]:
        """(n, D) for vector data, (n, C, H, W) for images, as float32, and what a guided
        sampler did (None for plain). The API keeps n to `max_n`; the CLI may ask for more,
        at its own risk. Raises SamplerError when the sampler cannot run or help here."""
        if not 1 <= n <= MAX_GENERATE:
            raise ValueError(f"n: must be between 1 and {MAX_GENERATE}, got {n}")
        latent = self.spec.model.latent_dim
        if sampler is None or sampler.sampler == "plain":
            return generate_from(self.generator, n, seed=seed, latent=latent).float().numpy(), None
        if self.discriminator is None:
            raise SamplerError(
                f"sampler: {sampler.sampler} needs the discriminator, and this checkpoint "
                "holds none"
            )
        nets = Networks(
            self.generator,
            self.discriminator,
            latent,
            self.spec.loss.kind,
            chunk_for(self.max_n),
            max_forwards=min(MAX_PROPOSALS, FORWARDS_PER_SAMPLE * self.max_n),
        )
        fake, report = guided(nets, n, seed=seed, sampler=sampler)
        return fake.float().numpy(), report

    def array(self, n: int, *, seed: int = 0) -> np.ndarray:
        """Plain samples alone (`sample`'s array)."""
        return self.sample(n, seed=seed)[0]

    def png(
        self,
        n: int,
        *,
        seed: int = 0,
        sampler: Sampler | None = None,
        resolve_dataset: Callable[[str], Path] | None = None,
    ) -> tuple[bytes, SamplerReport | None]:
        """A grid (images) or a scatter over the real data (vectors) of n fresh samples,
        and the sampler's report. `resolve_dataset` finds an uploaded dataset's file."""
        from trainer.samples import render_png

        fake, report = self.sample(n, seed=seed, sampler=sampler)
        title = f"step {self.step}, seed {seed}"
        if report is not None:
            title += f", {report.sampler}"
        if fake.ndim == 4:
            return render_png(fake, title=title), report
        return render_png(fake, real=self.real_points(resolve_dataset), title=title), report

    def real_points(self, resolve_dataset: Callable[[str], Path] | None) -> np.ndarray | None:
        """The real data drawn under a scatter; None when it cannot be had (a dataset that
        was deleted, or an uploaded one with no way to find it)."""
        with self._real_lock:
            if not self._real_done:
                self._real = self._load_real(resolve_dataset)
                self._real_done = True
            return self._real

    def _load_real(self, resolve_dataset: Callable[[str], Path] | None) -> np.ndarray | None:
        data = self.spec.data
        if data.kind == "array" and data.path is None and resolve_dataset is None:
            return None
        try:
            dataset = load_dataset(data, resolve_dataset=resolve_dataset)
            return dataset.reference(SCATTER_POINTS).flatten(1).float().numpy()
        except (DataError, OSError, ValueError):
            return None  # the data is gone: plot the samples alone


class GeneratorCache:
    """The generators of the `size` most recently used checkpoints, keyed by (file, SHA-256).

    A checkpoint is verified against its SHA-256 when read; a cached entry is not read again
    while it stays cached. Safe to use from several threads."""

    def __init__(self, size: int = 4) -> None:
        self.size = size
        self._entries: OrderedDict[tuple[str, str], LoadedGenerator] = OrderedDict()
        self._lock = threading.Lock()

    def get(
        self, name: str | Path, sha256: str, load: Callable[[], Checkpoint] | None = None
    ) -> LoadedGenerator:
        """The generator of checkpoint `name` (a path, or the store's name for it), loaded
        by `load` (default: `read_checkpoint(name)`, checked against `sha256`) when it is
        not cached."""
        key = (str(name), sha256)
        with self._lock:
            if key in self._entries:
                self._entries.move_to_end(key)
                return self._entries[key]
        if load is None:
            checkpoint = read_checkpoint(name, expected_sha256=sha256)
        else:
            checkpoint = load()
        loaded = LoadedGenerator.of(checkpoint)
        with self._lock:
            self._entries[key] = loaded
            self._entries.move_to_end(key)
            while len(self._entries) > self.size:
                self._entries.popitem(last=False)
        return loaded


def generate_array(ckpt: Checkpoint, n: int, *, seed: int = 0) -> np.ndarray:
    """(n, D) for vector data, (n, C, H, W) for images, as float32."""
    return LoadedGenerator.of(ckpt).array(n, seed=seed)


def npy_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    return buf.getvalue()


def write_generated(
    ckpt: Checkpoint, out: Path, n: int, *, seed: int = 0, sampler: Sampler | None = None
) -> tuple[tuple[int, ...], SamplerReport | None]:
    """Write n samples to `out` (.png or .npy); returns the shape generated and what a
    guided sampler did."""
    if out.suffix not in (".npy", ".png"):
        raise ValueError(f"out: must end in .png or .npy, got {out.name!r}")
    loaded = LoadedGenerator.of(ckpt)
    if out.suffix == ".npy":
        array, report = loaded.sample(n, seed=seed, sampler=sampler)
        atomic_write(out, npy_bytes(array))
        return tuple(array.shape), report
    png, report = loaded.png(n, seed=seed, sampler=sampler)
    atomic_write(out, png)
    return (n, *loaded.shape), report

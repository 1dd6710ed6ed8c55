"""Fresh samples from a checkpoint's generator (the EMA weights when the run kept them)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from torch import nn

from trainer.checkpoint import Checkpoint, CheckpointError, atomic_write
from trainer.data import DataError, load_dataset
from trainer.models import build_models
from trainer.spec import TrainSpec
from trainer.training import SCATTER_POINTS, generate_from

MAX_GENERATE = 1_000_000


def load_generator(ckpt: Checkpoint) -> tuple[nn.Module, TrainSpec, tuple[int, ...]]:
    """The checkpoint's generator on the CPU, in its training dtype, EMA weights preferred."""
    spec = TrainSpec.model_validate(ckpt.meta["spec"])
    shape = tuple(int(d) for d in ckpt.meta["data_shape"])
    generator, _ = build_models(spec.model, shape, seed=spec.seed)
    prefix = "generator_ema." if "ema" in ckpt.meta else "generator."
    state = ckpt.tensors(prefix)
    if not state:
        raise CheckpointError(f"checkpoint: holds no tensors under {prefix!r}")
    dtype = next(iter(state.values())).dtype
    generator = generator.to(dtype)
    generator.load_state_dict(state)
    return generator, spec, shape


def generate_array(ckpt: Checkpoint, n: int, *, seed: int = 0) -> np.ndarray:
    """(n, D) for vector data, (n, C, H, W) for images, as float32."""
    if not 1 <= n <= MAX_GENERATE:
        raise ValueError(f"n: must be between 1 and {MAX_GENERATE}, got {n}")
    generator, spec, _ = load_generator(ckpt)
    fake = generate_from(generator, n, seed=seed, latent=spec.model.latent_dim)
    return fake.float().numpy()


def generate_png(ckpt: Checkpoint, n: int, *, seed: int = 0) -> bytes:
    """A grid (images) or a scatter over the real data (vectors) of n fresh samples."""
    from trainer.samples import render_png

    fake = generate_array(ckpt, n, seed=seed)
    if fake.ndim == 4:
        return render_png(fake, title=f"step {ckpt.step}, seed {seed}")
    spec = TrainSpec.model_validate(ckpt.meta["spec"])
    real = None
    try:
        if spec.data.kind != "array" or spec.data.path is not None:
            dataset = load_dataset(spec.data)
            real = dataset.reference(SCATTER_POINTS).flatten(1).float().numpy()
    except DataError:
        real = None  # the uploaded data is gone: plot the samples alone
    return render_png(fake, real=real, title=f"step {ckpt.step}, seed {seed}")


def npy_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    return buf.getvalue()


def write_generated(ckpt: Checkpoint, out: Path, n: int, *, seed: int = 0) -> tuple[int, ...]:
    """Write n samples to `out` (.png or .npy); returns the shape generated."""
    if out.suffix == ".npy":
        array = generate_array(ckpt, n, seed=seed)
        atomic_write(out, npy_bytes(array))
        return tuple(array.shape)
    if out.suffix == ".png":
        atomic_write(out, generate_png(ckpt, n, seed=seed))
        return (n,)
    raise ValueError(f"out: must end in .png or .npy, got {out.name!r}")

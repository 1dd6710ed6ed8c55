"""Time of one eval/fid + eval/kid evaluation: N generated images at R px against N real ones.

    .venv/bin/python bench/fid.py [--samples 1000] [--resolution 32] [--device cpu]

Weights: GANFORGE_INCEPTION_WEIGHTS when set, else a random stand-in of the same network
(the same compute: the numbers are meaningless, the time is not). The first evaluation also
extracts the real images' features (then cached); the second is what every later one costs.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.trainer.inception import write_stand_in_weights  # noqa: E402
from trainer import fid  # noqa: E402
from trainer.spec import TrainSpec  # noqa: E402
from trainer.training import Trainer  # noqa: E402


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--samples", type=int, default=1000)
    parser.add_argument("--resolution", type=int, default=32)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="bench-fid-"))
    os.environ["GANFORGE_CACHE_DIR"] = str(scratch / "cache")
    if not os.environ.get(fid.WEIGHTS_ENV):
        os.environ[fid.WEIGHTS_ENV] = str(write_stand_in_weights(scratch))
    side = args.resolution
    images = np.random.default_rng(0).integers(0, 256, (args.samples, 3, side, side), np.uint8)
    np.save(scratch / "real.npy", images)
    spec = TrainSpec.model_validate(
        {
            "steps": 1,
            "batch_size": 16,
            "data": {"kind": "array", "path": str(scratch / "real.npy")},
            "model": {"kind": "conv", "latent_dim": 64, "width": 64},
            "eval": {"samples": args.samples},
            "every": {"metrics": 1, "samples": 0, "checkpoint": 0, "eval": 1},
            "device": args.device,
        }
    )
    trainer = Trainer(spec, evaluate=False)
    evaluate = fid.image_evaluator(spec, trainer.dataset, seed=0)
    print(
        f"{args.samples} samples at {side} px on {args.device}, {torch.get_num_threads()} threads"
    )
    for label in ("first (real features too)", "later (real from cache)"):
        wall, cpu = time.perf_counter(), cpu_seconds()
        values = evaluate(trainer)
        wall, cpu = time.perf_counter() - wall, cpu_seconds() - cpu
        print(f"{label:>26}: {wall:7.1f} s wall, {cpu:7.1f} s CPU  {values}", flush=True)
    fake = fid.inception_features(
        fid.load_extractor(fid.find_weights(), trainer.device)[0],
        fid.generated_uint8(trainer, min(64, args.samples), seed=0),
    )
    real = np.repeat(fake, args.samples // len(fake) + 1, axis=0)[: args.samples]
    real = real + np.random.default_rng(1).normal(size=real.shape)
    for name, metric in (
        ("frechet_distance", fid.frechet_distance),
        ("kernel_inception_distance", fid.kernel_inception_distance),
    ):
        wall = time.perf_counter()
        metric(real, real[::-1] + 0.1)
        print(f"{name:>26}: {time.perf_counter() - wall:7.2f} s wall on {args.samples} x 2048")


if __name__ == "__main__":
    main()

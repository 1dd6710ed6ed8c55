"""GPU benchmark (not a test; for a machine with a CUDA device): the conv recipe on digits,
ganforge against a plain PyTorch loop on the same device, in one run, at fp32, bf16 and fp16.

    python bench/gpu.py [--device cuda] [--steps 300] [--rounds 3] [--batch 256]
                        [--write docs/benchmarks.md]

The plain loop is the canonical GAN step written by hand (d_first, D frozen during G's
backward, zero_grad before, bce loss, no penalty, no EMA) on the trainer's own networks,
sampler and optimizers, with `torch.autocast` for bf16/fp16 and one GradScaler per optimizer
for fp16, as the trainer does. ganforge runs the same recipe with the audit on and metrics
every 10 steps. Runs alternate within each round; each ratio is taken within a round, then
the median. On CPU (`--device cpu`) it runs too, which is how it is checked without a GPU.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.report import replace_section  # noqa: E402
from trainer.sinks import memory_sinks  # noqa: E402
from trainer.spec import TrainSpec  # noqa: E402
from trainer.training import Trainer  # noqa: E402

PRECISIONS = ("fp32", "bf16", "fp16")


def spec_for(device: str, precision: str, steps: int, batch: int) -> TrainSpec:
    return TrainSpec.model_validate(
        {
            "steps": steps,
            "batch_size": batch,
            "device": device,
            "precision": precision,
            "data": {"kind": "digits"},
            "model": {"kind": "conv", "width": 64},
            "loss": {"kind": "bce", "penalty": "none"},
            "optim": {"g": {"lr": 1e-3}, "d": {"lr": 1e-3}},
            "ema": 0.0,
            "every": {"metrics": 10, "samples": 0, "checkpoint": 0, "eval": 0},
        }
    )


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def trainer_rate(spec: TrainSpec) -> float:
    trainer = Trainer(spec, evaluate=False)
    for _ in range(3):  # warm-up outside the clock (kernels, allocator, cudnn autotune)
        trainer.engine.step()
    trainer.step = 3
    _sync(trainer.device)
    started = time.perf_counter()
    trainer.run(memory_sinks())
    _sync(trainer.device)
    return (spec.steps - 3) / (time.perf_counter() - started)


def plain_rate(spec: TrainSpec) -> float:
    trainer = Trainer(spec, evaluate=False)
    trainer.engine.audit.remove()  # the plain loop has no audit hooks
    g, d = trainer.generator, trainer.discriminator
    opt_g, opt_d, rng, data, device = (
        trainer.opt_g,
        trainer.opt_d,
        trainer.rng,
        trainer.dataset,
        trainer.device,
    )
    n, latent, dtype = spec.batch_size, spec.model.latent_dim, trainer.dtype
    d_params = list(d.parameters())
    half = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(spec.precision)
    scalers: dict[str, Any] = {"d": None, "g": None}
    if spec.precision == "fp16":
        scalers = {k: torch.amp.GradScaler(device.type) for k in scalers}

    def autocast() -> contextlib.AbstractContextManager[Any]:
        if half is None:
            return contextlib.nullcontext()
        return torch.autocast(device.type, dtype=half)

    def update(opt: torch.optim.Optimizer, loss: torch.Tensor, net: str) -> None:
        scaler = scalers[net]
        if scaler is None:
            loss.backward()
            opt.step()
        else:
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()

    def noise() -> torch.Tensor:
        return torch.randn(n, latent, generator=rng, dtype=dtype).to(device)

    def step() -> tuple[torch.Tensor, torch.Tensor]:
        opt_d.zero_grad(set_to_none=True)
        real = data.sample(n, rng)
        with torch.no_grad(), autocast():
            fake = g(noise())
        with autocast():
            loss_d = F.softplus(-d(real)).mean() + F.softplus(d(fake)).mean()
        update(opt_d, loss_d, "d")
        opt_g.zero_grad(set_to_none=True)
        for p in d_params:
            p.requires_grad_(False)
        with autocast():
            loss_g = F.softplus(-d(g(noise()))).mean()
        update(opt_g, loss_g, "g")
        for p in d_params:
            p.requires_grad_(True)
        return loss_d.detach(), loss_g.detach()

    for _ in range(3):
        step()
    _sync(device)
    started = time.perf_counter()
    for i in range(spec.steps - 3):
        loss_d, loss_g = step()
        if (i + 4) % 10 == 0:  # read the numbers a logger would, as often as the trainer
            float(loss_d), float(loss_g)
    _sync(device)
    return (spec.steps - 3) / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--precisions", default=",".join(PRECISIONS))
    parser.add_argument("--write", type=Path)
    args = parser.parse_args()
    if args.device.startswith("cuda"):
        if not torch.cuda.is_available():
            sys.exit("error: --device cuda, but torch sees no CUDA device (try --device cpu)")
        torch.backends.cudnn.benchmark = True
    precisions = [p for p in args.precisions.split(",") if p]
    rows = []
    for precision in precisions:
        spec = spec_for(args.device, precision, args.steps, args.batch)
        plain, ours = [], []
        for _ in range(args.rounds):
            plain.append(plain_rate(spec))
            ours.append(trainer_rate(spec))
        ratio = statistics.median(o / p for o, p in zip(ours, plain, strict=True))
        row = (precision, statistics.median(plain), statistics.median(ours), ratio)
        rows.append(row)
        print(f"{precision}: plain {row[1]:.1f} steps/s, ganforge {row[2]:.1f}, {ratio:.3f}x")
    name = torch.cuda.get_device_name() if args.device.startswith("cuda") else "CPU"
    table = "| precision | plain loop steps/s | ganforge steps/s | ganforge / plain |\n"
    table += "| --- | --- | --- | --- |\n"
    table += "".join(f"| {p} | {a:.1f} | {b:.1f} | {r:.3f}x |\n" for p, a, b, r in rows)
    body = (
        f"`python bench/gpu.py --device {args.device} --steps {args.steps} --rounds "
        f"{args.rounds} --batch {args.batch}` on {name}, torch {torch.__version__}: conv "
        f"networks (width 64) on digits, batch {args.batch}, bce, no penalty, no EMA; median "
        f"of {args.rounds} alternating rounds.\n\n{table}"
    )
    print(body)
    if args.write:
        replace_section(args.write, f"gpu-{args.device.split(':')[0]}", body)


if __name__ == "__main__":
    main()

"""Speed benchmark (not a test): the trainer against a plain PyTorch loop, in one run.

    python bench/speed.py [--steps 300] [--rounds 5] [--write docs/benchmarks.md]

The plain loop is the canonical GAN step written by hand (d_first, D frozen during G's
backward, zero_grad before) on the same networks, batch, data sampler and optimizers as the
trainer's default recipe with bce loss, no penalty and no EMA. The trainer runs with the
audit on and metrics every 10 steps, as `ganforge train` does. Runs alternate in rounds so
drift of the machine hits both alike; each ratio is taken within a round, then the median.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.report import replace_section  # noqa: E402
from trainer.sinks import memory_sinks  # noqa: E402
from trainer.spec import TrainSpec  # noqa: E402
from trainer.training import Trainer  # noqa: E402

BASE = {
    "loss": {"kind": "bce", "penalty": "none"},
    "model": {"d_norm": "none", "g_norm": "none"},
    "ema": 0.0,
    "every": {"metrics": 10, "samples": 0, "checkpoint": 0, "eval": 0},
}


def spec_for(steps: int, **schedule: object) -> TrainSpec:
    return TrainSpec.model_validate({**BASE, "steps": steps, "schedule": schedule})


def trainer_rate(spec: TrainSpec) -> float:
    trainer = Trainer(spec, evaluate=False)
    trainer.engine.step()  # warm-up outside the clock
    trainer.step = 1
    started = time.perf_counter()
    trainer.run(memory_sinks())
    return (spec.steps - 1) / (time.perf_counter() - started)


def plain_rate(spec: TrainSpec) -> float:
    """The hand-written loop on the trainer's own networks and sampler."""
    trainer = Trainer(spec, evaluate=False)
    trainer.engine.audit.remove()  # the plain loop has no audit hooks
    generator, discriminator = trainer.generator, trainer.discriminator
    opt_g, opt_d, rng, data = trainer.opt_g, trainer.opt_d, trainer.rng, trainer.dataset
    n, latent = spec.batch_size, spec.model.latent_dim
    d_params = list(discriminator.parameters())

    def step() -> tuple[torch.Tensor, torch.Tensor]:
        # (1) update D
        opt_d.zero_grad(set_to_none=True)
        real = data.sample(n, rng)
        with torch.no_grad():
            fake = generator(torch.randn(n, latent, generator=rng))
        loss_d = F.softplus(-discriminator(real)).mean() + F.softplus(discriminator(fake)).mean()
        loss_d.backward()
        opt_d.step()
        # (2) update G, D frozen
        opt_g.zero_grad(set_to_none=True)
        for p in d_params:
            p.requires_grad_(False)
        loss_g = F.softplus(-discriminator(generator(torch.randn(n, latent, generator=rng)))).mean()
        loss_g.backward()
        for p in d_params:
            p.requires_grad_(True)
        opt_g.step()
        return loss_d.detach(), loss_g.detach()

    step()
    started = time.perf_counter()
    for i in range(spec.steps - 1):
        loss_d, loss_g = step()
        if (i + 2) % 10 == 0:  # read the numbers a logger would, as often as the trainer
            float(loss_d), float(loss_g)
    return (spec.steps - 1) / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--write", type=Path)
    parser.add_argument("--section", default="speed", help="section of the --write file")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    canonical = {"order": "d_first", "isolation": "freeze", "zero_grad": "before"}
    cases = {
        "plain PyTorch loop": lambda: plain_rate(spec_for(args.steps, **canonical)),
        "ganforge d_first (audit on)": lambda: trainer_rate(spec_for(args.steps, **canonical)),
        "ganforge simultaneous (audit on)": lambda: trainer_rate(
            spec_for(args.steps, order="simultaneous", isolation="freeze")
        ),
    }
    rates: dict[str, list[float]] = {name: [] for name in cases}
    for round_ in range(args.rounds):
        for name, case in cases.items():
            rates[name].append(case())
        print(
            f"round {round_ + 1}: " + ", ".join(f"{k} {v[-1]:.1f}" for k, v in rates.items()),
            flush=True,
        )
    median = {name: statistics.median(v) for name, v in rates.items()}

    def paired(name: str, base: str) -> float:
        # The ratio within each round (same machine state), then the median over rounds.
        return statistics.median(a / b for a, b in zip(rates[name], rates[base], strict=True))

    lines = [
        "| loop | steps/s (median) | vs plain loop | vs ganforge d_first |",
        "| --- | --- | --- | --- |",
    ]
    for name, rate in median.items():
        lines.append(
            f"| {name} | {rate:.1f} | {paired(name, 'plain PyTorch loop'):.3f}x "
            f"| {paired(name, 'ganforge d_first (audit on)'):.3f}x |"
        )
    table = "\n".join(lines)
    print(table)
    if args.write:
        spec = spec_for(args.steps, **canonical)
        body = (
            f"Command: `python bench/speed.py --steps {args.steps} --rounds {args.rounds} "
            f"--threads {args.threads}`\n\nMLP {spec.model.depth}x{spec.model.width}, latent "
            f"{spec.model.latent_dim}, batch {spec.batch_size}, ring data, fp32, CPU, "
            f"{args.threads} thread(s); median of {args.rounds} alternating rounds of "
            f"{args.steps} steps; ratios are taken within each round, then the median.\n\n"
            f"{table}\n"
        )
        replace_section(args.write, args.section, body)


if __name__ == "__main__":
    main()

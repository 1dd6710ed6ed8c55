"""DDP benchmark (not a test): gradient all-reduces per optimizer step and step time, with
DDP's no_sync over the first k-1 micro-batches (what ganforge does) and without it (every
micro-batch's backward all-reduced), at k = 1, 4, 16 micro-batches per rank, 2 ranks, gloo.

    python bench/ddp.py [--steps 200] [--rounds 3] [--write docs/benchmarks.md]

All-reduces are counted by the DDP communication hook on rank 0 (trainer.distributed.
AllReduceCounter): the per-network count over the run, divided by the network's optimizer
steps. Step time is rank 0's wall time of `Trainer.run` divided by the steps (the ranks'
start-up excluded), the median of the rounds. The default recipe's networks (4x128 MLPs),
batch 512, d_first, fp32, no penalty, metrics every 50 steps, one torch thread per rank.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.report import replace_section  # noqa: E402
from trainer.distributed import ranks  # noqa: E402
from trainer.sinks import memory_sinks  # noqa: E402
from trainer.spec import TrainSpec  # noqa: E402
from trainer.training import Trainer  # noqa: E402

WORLD = 2
BATCH = 512


def spec_for(k: int, steps: int) -> TrainSpec:
    return TrainSpec.model_validate(
        {
            "steps": steps,
            "batch_size": BATCH,
            "device": "cpu",
            "ema": 0.0,
            "loss": {"kind": "bce", "penalty": "none"},
            "accumulation": {"steps": k},
            "distributed": {"world_size": WORLD},
            "every": {"metrics": 50, "samples": 0, "checkpoint": 0, "eval": 0},
        }
    )


def measure(k: int, steps: int, sync_once: bool) -> tuple[float, float, float]:
    """(all-reduces per D step, per G step, seconds per step) of one run."""
    spec = spec_for(k, steps)
    with ranks(spec, threads=1, sync_once=sync_once) as rank:
        trainer = Trainer(spec, rank=rank, evaluate=False, sync_once=sync_once)
        started = time.perf_counter()
        trainer.run(memory_sinks())
        elapsed = time.perf_counter() - started
        calls = {n: c.calls for n, c in trainer.all_reduces.items()}
    d_steps = steps * spec.schedule.d_steps
    return calls["d"] / d_steps, calls["g"] / steps, elapsed / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--write", type=Path, default=None)
    args = parser.parse_args()

    rows = []
    for k in (1, 4, 16):
        results: dict[bool, list[tuple[float, float, float]]] = {True: [], False: []}
        for _ in range(args.rounds):
            for sync_once in (True, False):
                results[sync_once].append(measure(k, args.steps, sync_once))
        line = [f"{k}"]
        for sync_once in (True, False):
            runs = results[sync_once]
            per_d, per_g = runs[0][0], runs[0][1]
            ms = statistics.median(r[2] for r in runs) * 1000
            line += [f"{per_d:g}", f"{per_g:g}", f"{ms:.2f}"]
        with_, without = (statistics.median(r[2] for r in results[s]) for s in (True, False))
        line.append(f"{without / with_:.2f}x")
        rows.append(line)
        print(" | ".join(line), flush=True)

    header = (
        "| k per rank | no_sync: all-reduces per D step | per G step | ms per step "
        "| without no_sync: per D step | per G step | ms per step | step time without / with |\n"
        "| --- | --- | --- | --- | --- | --- | --- | --- |\n"
    )
    table = header + "".join("| " + " | ".join(r) + " |\n" for r in rows)
    body = (
        f"`python bench/ddp.py --steps {args.steps} --rounds {args.rounds}`: {WORLD} ranks "
        f"(gloo, one CPU thread each), batch {BATCH} split into {WORLD} x k micro-batches, "
        "the default recipe's networks, fp32; all-reduces counted by the DDP communication "
        "hook, step time the median of the rounds.\n\n" + table
    )
    print(body)
    if args.write:
        replace_section(args.write, "ddp", body)


if __name__ == "__main__":
    main()

"""Digits quality benchmark: the service's digits preset over several seeds (not a test).

    python bench/digits.py                               # the preset as the service runs it
    python bench/digits.py --seeds 0 --set '{"steps": 500, "ema": 0.999}'   # try a variant
    python bench/digits.py --write docs/benchmarks.md

Each run is `app.presets`' digits spec (deep-merged with `--set`, then the seed) trained by
the same `trainer.training.Trainer` a worker uses, on one torch thread, one run at a time.
Prints `eval/classifier_score` and `eval/fcd` at every evaluation and the run's CPU time
(the process's, which one thread keeps equal to its share of a core); `--write` replaces
this benchmark's section of the given markdown file.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.report import replace_section  # noqa: E402

# Issue 11 item 6: every seed at least this classifier score and at most this FCD, in at most
# this many CPU minutes a run (real digits: 9.6 and 0).
GOAL_SCORE, GOAL_FCD, GOAL_MINUTES = 9.0, 1.0, 10.0


def merged(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merged(out[key], value)
        else:
            out[key] = value
    return out


def preset_spec() -> dict[str, Any]:
    from app.presets import presets

    return next(p.spec for p in presets() if p.id == "digits")


def one_run(seed: int, overrides: dict[str, Any], threads: int) -> dict[str, Any]:
    import torch

    from trainer.evaluation import DigitsEvaluator
    from trainer.sinks import memory_sinks
    from trainer.spec import TrainSpec
    from trainer.training import Trainer

    torch.set_num_threads(threads)
    DigitsEvaluator.load()  # the classifier is trained once per machine and cached: not timed
    spec = TrainSpec.model_validate({**merged(preset_spec(), overrides), "seed": seed})
    sinks = memory_sinks()
    cpu, wall = time.process_time(), time.perf_counter()
    Trainer(spec).run(sinks)
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    history = [
        (step, v["eval/classifier_score"], v["eval/fcd"])
        for step, v in sinks.metrics.rows
        if "eval/fcd" in v
    ]
    _, score, fcd = history[-1]
    return {
        "seed": seed,
        "score": score,
        "fcd": fcd,
        "cpu_min": cpu / 60,
        "wall_min": wall / 60,
        "steps": spec.steps,
        "history": history,
    }


def met(r: dict[str, Any]) -> bool:
    return r["score"] >= GOAL_SCORE and r["fcd"] <= GOAL_FCD and r["cpu_min"] <= GOAL_MINUTES


def table(results: list[dict[str, Any]]) -> str:
    lines = [
        "| seed | classifier score | FCD | CPU minutes | goal met |",
        "| --- | --- | --- | --- | --- |",
    ]
    for r in results:
        lines.append(
            f"| {r['seed']} | {r['score']:.2f} | {r['fcd']:.2f} | {r['cpu_min']:.1f} | "
            f"{'yes' if met(r) else 'no'} |"
        )
    lines.append(
        f"| mean | {statistics.mean(r['score'] for r in results):.2f} | "
        f"{statistics.mean(r['fcd'] for r in results):.2f} | "
        f"{statistics.mean(r['cpu_min'] for r in results):.1f} | "
        f"{sum(met(r) for r in results)}/{len(results)} seeds |"
    )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--set", default="{}", help="JSON overrides of the preset's spec")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per run")
    parser.add_argument("--write", type=Path, help="markdown file to update")
    args = parser.parse_args()
    overrides = json.loads(args.set)
    results = []
    for seed in args.seeds:  # one at a time: the CPU minutes are of a run alone
        r = one_run(seed, overrides, args.threads)
        results.append(r)
        trail = " ".join(f"{s}:{c:.2f}/{f:.2f}" for s, c, f in r["history"])
        print(
            f"seed {r['seed']}: score {r['score']:.3f} fcd {r['fcd']:.3f} "
            f"cpu {r['cpu_min']:.2f} min wall {r['wall_min']:.2f} min  [{trail}]",
            flush=True,
        )
    body = table(results)
    print(body)
    if args.write:
        command = " ".join(["python bench/digits.py", *sys.argv[1:]])
        command = command.replace(f"--write {args.write}", "").strip()
        replace_section(args.write, "digits", f"Command: `{command}`\n\n{body}\n")


if __name__ == "__main__":
    main()

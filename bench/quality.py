"""Quality benchmark: the default recipe on ring and grid over several seeds (not a test).

    python bench/quality.py                       # default recipe, ring and grid, seeds 0-4
    python bench/quality.py --data ring --seeds 0 --set '{"ema": 0.999}'   # try a variant
    python bench/quality.py --write docs/benchmarks.md

Prints modes covered, high-quality fraction (PacGAN definitions, 2,500 samples) and wall
time per run; `--write` replaces this benchmark's section of the given markdown file.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.report import replace_section  # noqa: E402

GOALS = {"ring": (8, 0.98), "grid": (25, 0.97)}


def one_run(data: str, seed: int, overrides: dict, threads: int) -> dict:
    import torch

    from trainer.sinks import memory_sinks
    from trainer.spec import TrainSpec
    from trainer.training import Trainer

    torch.set_num_threads(threads)
    raw = {**overrides, "seed": seed, "data": {**overrides.get("data", {}), "kind": data}}
    raw.setdefault("every", {"metrics": 100, "samples": 0, "checkpoint": 0, "eval": 500})
    spec = TrainSpec.model_validate(raw)
    sinks = memory_sinks()
    started = time.perf_counter()
    Trainer(spec).run(sinks)
    wall = time.perf_counter() - started
    history = [(s, v["eval/modes"], v["eval/hq"]) for s, v in sinks.metrics.rows if "eval/hq" in v]
    _, modes, hq = history[-1]
    leaks = {n: [v[f"audit/leak_{n}"] for _, v in sinks.metrics.rows] for n in ("d", "g")}
    return {
        "data": data,
        "seed": seed,
        "modes": modes,
        "hq": hq,
        "wall_s": wall,
        "history": history,
        "steps": spec.steps,
        "leak_d": statistics.mean(leaks["d"]),
        "leak_g": statistics.mean(leaks["g"]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", nargs="+", default=["ring", "grid"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    parser.add_argument("--set", default="{}", help="JSON overrides of the default spec")
    parser.add_argument("--jobs", type=int, default=1, help="runs in parallel (1 thread each)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per run")
    parser.add_argument("--write", type=Path, help="markdown file to update")
    args = parser.parse_args()
    overrides = json.loads(args.set)
    threads = args.threads
    runs = [(d, s) for d in args.data for s in args.seeds]
    with ProcessPoolExecutor(args.jobs) as pool:
        futures = [pool.submit(one_run, d, s, overrides, threads) for d, s in runs]
        results = []
        for future in futures:
            r = future.result()
            results.append(r)
            trail = " ".join(f"{s}:{m:.0f}/{h:.3f}" for s, m, h in r["history"])
            print(
                f"{r['data']:5} seed {r['seed']}: modes {r['modes']:.0f} hq {r['hq']:.4f} "
                f"wall {r['wall_s']:.1f}s  [{trail}]",
                flush=True,
            )
    lines = [
        "| data | seed | modes | high quality | wall time (s) | goal met |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for r in results:
        goal_modes, goal_hq = GOALS[r["data"]]
        met = r["modes"] >= goal_modes and r["hq"] >= goal_hq
        lines.append(
            f"| {r['data']} | {r['seed']} | {r['modes']:.0f}/{goal_modes} | "
            f"{100 * r['hq']:.1f} % | {r['wall_s']:.0f} | {'yes' if met else 'no'} |"
        )
    for data in args.data:
        rs = [r for r in results if r["data"] == data]
        lines.append(
            f"| {data} | mean | {statistics.mean(r['modes'] for r in rs):.1f} | "
            f"{100 * statistics.mean(r['hq'] for r in rs):.1f} % | "
            f"{statistics.mean(r['wall_s'] for r in rs):.0f} | "
            f"{sum(r['modes'] >= GOALS[data][0] and r['hq'] >= GOALS[data][1] for r in rs)}"
            f"/{len(rs)} seeds |"
        )
    table = "\n".join(lines)
    print(table)
    if args.write:
        command = (
            "python bench/quality.py "
            + " ".join(sys.argv[1:]).replace(f"--write {args.write}", "").strip()
        )
        replace_section(args.write, "quality", f"Command: `{command.strip()}`\n\n{table}\n")


if __name__ == "__main__":
    main()

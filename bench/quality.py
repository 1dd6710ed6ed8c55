"""Quality benchmark: the default recipe on ring and grid over several seeds (not a test).

    python bench/quality.py                       # default recipe, ring and grid, seeds 0-4
    python bench/quality.py --data ring --seeds 0 --set '{"ema": 0.999}'   # try a variant
    python bench/quality.py --write docs/benchmarks.md

Prints modes covered, high-quality fraction (PacGAN definitions, 2,500 samples) and wall
time per run, for plain samples and for the guided samplers (trainer.guided: drs and refine
with their default options, at the last evaluation), and each sampler's cost per 2,500
samples (median of 3, one thread); `--write` replaces this benchmark's sections ("quality":
plain; "guided": every sampler) of the given markdown file.
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
    trainer = Trainer(spec)
    trainer.run(sinks)
    wall = time.perf_counter() - started
    history = [(s, v["eval/modes"], v["eval/hq"]) for s, v in sinks.metrics.rows if "eval/hq" in v]
    _, modes, hq = history[-1]
    last = [v for _, v in sinks.metrics.rows if "eval/hq" in v][-1]
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
        "guided": {k: v for k, v in last.items() if k.endswith(("_drs", "_refine", "acceptance"))},
        "cost_s": sampler_costs(trainer),
    }


def sampler_costs(trainer) -> dict[str, float]:  # noqa: ANN001 - a trainer.training.Trainer
    """Seconds to draw 2,500 samples with each sampler (median of 3), on this thread."""
    from trainer.evaluation import EVAL_SAMPLES
    from trainer.guided import SAMPLERS, Sampler, guided
    from trainer.quality import trainer_networks

    nets = trainer_networks(trainer)
    costs = {}
    for name in SAMPLERS:
        times = []
        for seed in range(3):
            started = time.perf_counter()
            if name == "plain":
                trainer.generate(EVAL_SAMPLES, seed)
            else:
                guided(nets, EVAL_SAMPLES, seed=seed, sampler=Sampler(sampler=name))
            times.append(time.perf_counter() - started)
        costs[name] = statistics.median(times)
    return costs


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
    guided_table = guided_lines(results, args.data)
    print(guided_table)
    if args.write:
        command = (
            "python bench/quality.py "
            + " ".join(sys.argv[1:]).replace(f"--write {args.write}", "").strip()
        )
        replace_section(args.write, "quality", f"Command: `{command.strip()}`\n\n{table}\n")
        replace_section(args.write, "guided", f"Command: `{command.strip()}`\n\n{guided_table}\n")


def _cell(r: dict, suffix: str) -> str:
    values = r["guided"] if suffix else {"eval/modes": r["modes"], "eval/hq": r["hq"]}
    if f"eval/hq{suffix}" not in values:
        return "cannot run"
    goal_modes, goal_hq = GOALS[r["data"]]
    modes, hq = values[f"eval/modes{suffix}"], values[f"eval/hq{suffix}"]
    met = " (goal)" if modes >= goal_modes and hq >= goal_hq else ""
    return f"{modes:.0f}/{goal_modes}, {100 * hq:.1f} %{met}"


def guided_lines(results: list[dict], datasets: list[str]) -> str:
    """Each sampler's modes and high quality per seed, seeds meeting the goal, and cost."""
    lines = [
        "| data | seed | plain | drs | drs acceptance | refine |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for r in results:
        acceptance = r["guided"].get("eval/drs_acceptance")
        lines.append(
            f"| {r['data']} | {r['seed']} | {_cell(r, '')} | {_cell(r, '_drs')} | "
            f"{'' if acceptance is None else f'{100 * acceptance:.1f} %'} | "
            f"{_cell(r, '_refine')} |"
        )
    for data in datasets:
        rs = [r for r in results if r["data"] == data]
        cells = []
        for suffix in ("", "_drs", "_refine"):
            hits = sum(_cell(r, suffix).endswith("(goal)") for r in rs)
            hqs = [r["hq"] if not suffix else r["guided"].get(f"eval/hq{suffix}") for r in rs]
            hqs = [h for h in hqs if h is not None]
            mean = f"{100 * statistics.mean(hqs):.1f} %" if hqs else "-"
            cells.append(f"mean {mean}, goal on {hits}/{len(rs)} seeds")
        lines.append(f"| {data} | all | {cells[0]} | {cells[1]} | | {cells[2]} |")
    for data in datasets:
        rs = [r for r in results if r["data"] == data]
        cost = {
            name: statistics.median(r["cost_s"][name] for r in rs)
            for name in ("plain", "drs", "refine")
        }
        lines.append(
            f"| {data} | s per 2,500 samples (median) | {cost['plain']:.3f} | "
            f"{cost['drs']:.3f} | | {cost['refine']:.3f} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()

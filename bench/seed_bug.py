"""The seed essay's broken order beside its fixed twin on the ring (not a test).

    python bench/seed_bug.py [--seeds 0 1 2 3 4] [--jobs 2] [--write docs/benchmarks.md]

broken: g_first, isolation none, zero_grad after -- G's backward leaves gradient in D's
`.grad` that D's next step consumes, and D's backward leaves gradient in G's.
fixed:  the same order and zero placement with D frozen during G's backward.
Both use the default recipe otherwise. Reports modes, high-quality fraction and the audit.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.quality import one_run  # noqa: E402
from bench.report import replace_section  # noqa: E402

VARIANTS = {
    "broken (g_first, none, after)": {
        "order": "g_first",
        "isolation": "none",
        "zero_grad": "after",
    },
    "fixed (g_first, freeze, after)": {
        "order": "g_first",
        "isolation": "freeze",
        "zero_grad": "after",
    },
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--write", type=Path)
    args = parser.parse_args()
    jobs = [(name, seed) for name in VARIANTS for seed in args.seeds]
    with ProcessPoolExecutor(args.jobs) as pool:
        futures = {
            job: pool.submit(one_run, "ring", job[1], {"schedule": VARIANTS[job[0]]}, 1)
            for job in jobs
        }
        results = {job: f.result() for job, f in futures.items()}
    lines = [
        "| variant | seed | modes | high quality | mean audit/leak_d | mean audit/leak_g |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for (name, seed), r in results.items():
        lines.append(
            f"| {name} | {seed} | {r['modes']:.0f}/8 | {100 * r['hq']:.1f} % | "
            f"{r['leak_d']:.3g} | {r['leak_g']:.3g} |"
        )
    for name in VARIANTS:
        rs = [r for (n, _), r in results.items() if n == name]
        lines.append(
            f"| {name} | mean | {statistics.mean(r['modes'] for r in rs):.1f}/8 | "
            f"{100 * statistics.mean(r['hq'] for r in rs):.1f} % | "
            f"{statistics.mean(r['leak_d'] for r in rs):.3g} | "
            f"{statistics.mean(r['leak_g'] for r in rs):.3g} |"
        )
    table = "\n".join(lines)
    print(table)
    if args.write:
        seeds = " ".join(map(str, args.seeds))
        replace_section(
            args.write,
            "seed-bug",
            f"Command: `python bench/seed_bug.py --seeds {seeds}`\n\n{table}\n",
        )


if __name__ == "__main__":
    main()

"""The README's figures, made by the project's own code (not a test).

    python docs/make_figures.py                  # both figures into docs/img/
    python docs/make_figures.py --only seed      # docs/img/seed-broken-vs-fixed.png
    python docs/make_figures.py --only job-page  # docs/img/job-page.png

seed:     trains examples/seed-broken.yaml and examples/seed-fixed.yaml (the default recipe,
          g_first, zero_grad after; isolation none against freeze) with the training core,
          shortened to --steps, one process each, and plots the audit, the losses, the
          evaluation and the final samples with matplotlib.
job-page: starts the real service (`ganforge up`, SQLite + embedded broker in a temporary
          directory), submits the default recipe shortened to --job-steps, waits for it to
          succeed and screenshots /jobs/<id> in headless Chromium (Playwright), 1366 px
          wide, from the top to the end of the sample gallery.

PNGs are quantized with Pillow to stay small.
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

IMG = ROOT / "docs" / "img"
VARIANTS = {"broken": "examples/seed-broken.yaml", "fixed": "examples/seed-fixed.yaml"}
COLOURS = {"broken": "#d1495b", "fixed": "#2456c7"}
CHROMIUM = os.environ.get("GANFORGE_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]


# ---- the seed's broken order beside its fixed twin ---------------------------------------


def train_variant(path: str, steps: int, seed: int, threads: int) -> dict[str, Any]:
    """One run of an example spec with memory sinks: metric rows and 2,500 final samples."""
    import torch
    import yaml

    from trainer.sinks import memory_sinks
    from trainer.spec import TrainSpec
    from trainer.training import Trainer

    torch.set_num_threads(threads)
    raw = yaml.safe_load((ROOT / path).read_text()) or {}
    raw.update(
        steps=steps,
        seed=seed,
        every={"metrics": 10, "samples": 0, "checkpoint": 0, "eval": max(steps // 20, 1)},
    )
    spec = TrainSpec.model_validate(raw)
    sinks = memory_sinks()
    started = time.perf_counter()
    trainer = Trainer(spec)
    trainer.run(sinks)
    fake = trainer.generate(2500, seed=1).float().cpu().numpy()
    real = trainer.dataset.reference(2500).float().cpu().numpy()
    return {
        "spec": spec,
        "rows": sinks.metrics.rows,
        "warnings": sinks.warnings.messages,
        "fake": fake,
        "real": real,
        "wall_s": time.perf_counter() - started,
    }


def series(rows: list[tuple[int, dict[str, float]]], name: str) -> tuple[list[int], list[float]]:
    points = [(step, values[name]) for step, values in rows if name in values]
    return [s for s, _ in points], [v for _, v in points]


def seed_figure(steps: int, seed: int, jobs: int, out: Path) -> None:
    threads = max(1, (os.cpu_count() or 1) // jobs)
    with ProcessPoolExecutor(jobs) as pool:
        futures = {
            name: pool.submit(train_variant, path, steps, seed, threads)
            for name, path in VARIANTS.items()
        }
        runs = {name: f.result() for name, f in futures.items()}
    for name, run in runs.items():
        last = {k: v for _, row in run["rows"] if "eval/modes" in row for k, v in row.items()}
        print(
            f"{name}: {run['wall_s']:.0f} s, modes {last.get('eval/modes')}, "
            f"hq {last.get('eval/hq', 0):.3f}, warnings {len(run['warnings'])}"
        )
    plot_seed(runs, steps, seed, out)


def plot_seed(runs: dict[str, dict[str, Any]], steps: int, seed: int, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FixedLocator, FuncFormatter

    fig, axes = plt.subplots(2, 3, figsize=(13, 7.4), layout="constrained")
    label = {
        name: f"{name} ({run['spec'].schedule.isolation}, zero_grad after)"
        for name, run in runs.items()
    }
    for ax, metric, title in (
        (axes[0, 0], "audit/leak_d", "audit/leak_d: foreign / own gradient of D"),
        (axes[0, 1], "audit/leak_g", "audit/leak_g: foreign / own gradient of G"),
    ):
        for name, run in runs.items():
            steps_, values = series(run["rows"], metric)
            mean = sum(values) / len(values)
            ax.plot(
                steps_,
                values,
                color=COLOURS[name],
                lw=1.5 if name == "fixed" else 1,
                zorder=3 if name == "fixed" else 2,
                label=f"{label[name]}: mean {mean:.3g}, max {max(values):.3g}",
            )
        top = max(max(series(run["rows"], metric)[1]) for run in runs.values())
        if top > 3:
            # Linear up to 1, logarithmic above: the spikes fit and 0 stays at 0.
            ax.set_yscale("symlog", linthresh=1, linscale=2)
            ax.yaxis.set_major_locator(FixedLocator([0, 0.5, 1, 10, 100, 1000]))
            ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
            ax.set_ylim(-0.05, top * 12)
        else:
            ax.set_ylim(-0.05, max(top, 1) * 1.6)
        ax.set(title=title, xlabel="generator step", ylabel="leak (ratio of norms)")
        ax.legend(loc="upper right", fontsize=8)

    ax = axes[0, 2]
    for name, run in runs.items():
        ax.plot(*series(run["rows"], "eval/modes"), "o-", color=COLOURS[name], label=label[name])
    ax.set(title="eval/modes: ring modes covered", xlabel="generator step", ylabel="modes (of 8)")
    ax.set_ylim(-0.3, 8.5)
    ax.legend(loc="center right", fontsize=8)

    ax = axes[1, 0]
    for name, run in runs.items():
        for metric, style in (("loss/d", "-"), ("loss/g", ":")):
            ax.plot(
                *series(run["rows"], metric),
                style,
                color=COLOURS[name],
                lw=1,
                label=f"{name}: {metric}",
            )
    ax.set(title="losses", xlabel="generator step", ylabel="loss")
    ax.legend(fontsize=8, ncols=2)

    final_hq = {
        name: [v for _, row in run["rows"] if "eval/hq" in row for v in [row["eval/hq"]]][-1]
        for name, run in runs.items()
    }
    final_modes = {
        name: [row["eval/modes"] for _, row in run["rows"] if "eval/modes" in row][-1]
        for name, run in runs.items()
    }
    for ax, name in zip(axes[1, 1:], runs, strict=True):
        run = runs[name]
        ax.scatter(*run["real"][:, :2].T, s=2, color="#aaaaaa", label="real")
        ax.scatter(*run["fake"][:, :2].T, s=2, color=COLOURS[name], alpha=0.5, label="generated")
        ax.set(
            title=f"{name}: 2,500 samples at step {steps}\n"
            f"{final_modes[name]:.0f}/8 modes, {100 * final_hq[name]:.0f} % high quality",
            xlabel="x",
            ylabel="y",
            aspect="equal",
        )
        ax.set_xlim(-1.5, 1.5)
        ax.set_ylim(-1.5, 1.5)
        centre, spread = run["fake"][:, :2].mean(0), run["fake"][:, :2].std(0).max()
        if spread < 0.05:  # the collapsed generator: one dot
            ax.annotate(
                "all 2,500 generated\nsamples are here",
                xy=tuple(centre),
                xytext=(centre[0] + 0.3, centre[1] - 0.6),
                fontsize=9,
                arrowprops={"arrowstyle": "->", "color": COLOURS[name]},
            )
        ax.legend(loc="upper right", fontsize=8, markerscale=4, framealpha=0.9)
    fig.suptitle(
        f"The seed essay's order (g_first, zero_grad after) on the 8-Gaussian ring, "
        f"{steps} steps, seed {seed}: isolation none (broken) against freeze (fixed)",
        fontsize=11,
    )
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    save_small_png(buffer.getvalue(), out)


# ---- the job page of a real job ----------------------------------------------------------


def job_page_screenshot(steps: int, out: Path, full_page: bool) -> None:
    import httpx2
    from playwright.sync_api import sync_playwright

    from tests.service.conftest import running_service

    with tempfile.TemporaryDirectory(prefix="ganforge-figures-") as tmp:
        with running_service(Path(tmp)) as service:
            spec = {"name": f"ring default recipe, {steps} steps", "steps": steps}
            with httpx2.Client(base_url=service.url, timeout=30) as client:
                answer = client.post("/api/jobs", json={"spec": spec, "tags": ["readme"]})
                answer.raise_for_status()
                job_id = answer.json()["id"]
            job = service.wait_for(job_id, ("succeeded", "failed", "cancelled"), timeout=900)
            if job["status"] != "succeeded":
                raise SystemExit(f"the job ended {job['status']}: {job.get('error')}")
            print(f"job {job_id} succeeded; screenshot of /jobs/{job_id}")
            with sync_playwright() as playwright:
                browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
                page = browser.new_page(viewport={"width": 1366, "height": 900})
                page.goto(f"{service.url}/jobs/{job_id}")
                page.wait_for_function(
                    "() => document.querySelectorAll('#charts .uplot').length > 0"
                    " && document.getElementById('sample-img')?.complete"
                    " && document.getElementById('sample-img')?.naturalWidth > 0",
                    timeout=30_000,
                )
                page.wait_for_load_state("networkidle")
                page.wait_for_timeout(500)
                if full_page:
                    png = page.screenshot(full_page=True)
                else:
                    # The header, the charts and the sample gallery (below the first screen).
                    bottom = page.evaluate(
                        "() => document.getElementById('gallery').getBoundingClientRect().bottom"
                        " + window.scrollY"
                    )
                    height = min(int(bottom) + 16, 1400)
                    clip = {"x": 0, "y": 0, "width": 1366, "height": height}
                    png = page.screenshot(full_page=True, clip=clip)
                browser.close()
    save_small_png(png, out)


# ---- output ------------------------------------------------------------------------------


def save_small_png(png: bytes, out: Path) -> None:
    """Quantize to a 256-colour palette (the figures are flat colours) and optimize."""
    from PIL import Image

    image = Image.open(io.BytesIO(png)).convert("RGB")
    small = image.quantize(colors=256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
    out.parent.mkdir(parents=True, exist_ok=True)
    small.save(out, optimize=True)
    shown = out.resolve().relative_to(ROOT) if out.resolve().is_relative_to(ROOT) else out
    print(f"wrote {shown} ({out.stat().st_size / 1024:.0f} KB, {image.width}x{image.height})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=["seed", "job-page"], help="make one figure")
    parser.add_argument("--steps", type=int, default=2000, help="seed runs: generator steps")
    parser.add_argument("--seed", type=int, default=0, help="seed runs: spec seed")
    parser.add_argument("--jobs", type=int, default=2, help="seed runs in parallel")
    parser.add_argument("--job-steps", type=int, default=1500, help="the service job's steps")
    parser.add_argument(
        "--full-page", action="store_true", help="the whole job page (default: to the samples)"
    )
    parser.add_argument("--out", type=Path, default=IMG, help="folder for the PNGs")
    args = parser.parse_args()
    if args.only in (None, "seed"):
        seed_figure(args.steps, args.seed, args.jobs, args.out / "seed-broken-vs-fixed.png")
    if args.only in (None, "job-page"):
        job_page_screenshot(args.job_steps, args.out / "job-page.png", args.full_page)


if __name__ == "__main__":
    main()

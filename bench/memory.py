"""Memory benchmark (not a test): what gradient accumulation saves, per optimizer step.

    python bench/memory.py [--device cpu|cuda] [--models resnet,conv] [--ks 1,2,4,8,16]
                           [--channels C] [--width W] [--threads 1] [--warmup 1]
                           [--measured 1] [--timed 3] [--write docs/benchmarks.md]

`resnet` at 64 px and `conv` at 32 px on random 3-channel uint8 images (a temporary `.npy`,
`data: {kind: array, path}`), effective batch 128 split into k micro-batches, the spec's
default recipe otherwise (d_first, D frozen for G's backward, bce with R1, Adam for both),
fp32, no EMA. Each (model, k) runs in a fresh process: one warm-up step (so that gradients
and Adam's state exist, as in every later step), `--measured` steps whose memory is taken,
then `--timed` steps timed outside any profiler (the median is reported).

What is counted. Parameters (and buffers), gradients and optimizer state are the sizes of
those tensors, exactly. Everything else a step allocates is measured:

- CPU: the whole child process runs under `torch.profiler` with `profile_memory=True` from
  before the networks are built, so every tensor PyTorch's CPU allocator hands out and
  frees is an event; their running sum is the bytes of live tensors at each moment. The
  step's transient memory is its largest running sum minus the sum when the step began
  (which holds the parameters, both networks' gradients of the last step and Adam's state).
- CUDA: `torch.cuda.memory_allocated()` when the step begins and
  `torch.cuda.max_memory_allocated()` over each cycle (peak statistics reset per cycle).

Activations = that transient peak minus the part of the cycle's effective batch the
measurement sees (the batch is drawn whole and split, so it does not shrink with k; it is
its own row). On CPU the real images are numpy memory (uint8 rows scaled by numpy, and
`.to(cpu, float32)` keeps them), which PyTorch's allocator never sees, so only the noise is
taken off there; on CUDA the real images are device tensors and are taken off too. Each
cycle is marked (`record_function` on CPU, its own peak statistics on CUDA), so the table
says which cycle held the peak: D's (real and fake forwards, R1's double backward) or G's.
Peak live tensors = parameters + buffers + gradients + optimizer state + the effective
batch + activations: what a device would have to hold.

Memory outside PyTorch's allocator (numpy, oneDNN's own buffers, Python objects) is not in
the tensor figures. Each process's peak RSS is printed beside them, as a rough cross-check
only: it adds the libraries (about 400 MiB), memory glibc keeps after a free, numpy's
buffers and the profiler's own event records (more events at larger k).

Step times are the median of the timed steps, as process CPU time (what other load on a
shared machine moves least) and wall time. On CPU each process uses `--threads` intra-op
threads, 1 by default: on a machine shared with other work, two threads' OpenMP barriers
turned a 0.3 s conv step into 15 s.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.report import replace_section  # noqa: E402
from trainer.spec import TrainSpec  # noqa: E402
from trainer.training import Trainer  # noqa: E402

BATCH = 128
KS = (1, 2, 4, 8, 16)
SIZES = {"resnet": 64, "conv": 32}
IMAGES = 512  # rows of the random dataset (memory-mapped; only drawn rows are read)
GOAL_K, GOAL_RATIO = 8, 0.2
MIB = 2**20
CYCLES = ("_d_cycle", "_g_cycle", "_joint_cycle")


def spec_for(cfg: dict[str, Any]) -> TrainSpec:
    kind = cfg["model"]
    model = {"kind": kind, "channels": cfg["channels"]}
    if kind != "resnet":
        model = {"kind": kind, "width": cfg["width"]}
    return TrainSpec.model_validate(
        {
            "steps": 1000,
            "batch_size": BATCH,
            "accumulation": {"steps": cfg["k"]},
            "data": {"kind": "array", "path": cfg["data"]},
            "model": model,
            "ema": 0.0,
            "device": cfg["device"],
            "every": {"metrics": 1000, "samples": 0, "checkpoint": 0, "eval": 0},
        }
    )


def nbytes(tensors: Iterable[torch.Tensor | None]) -> int:
    return sum(t.numel() * t.element_size() for t in tensors if t is not None)


def static_sizes(trainer: Trainer) -> dict[str, int]:
    """Bytes of parameters, buffers, gradients and optimizer state, from the tensors."""
    nets = (trainer.generator, trainer.discriminator)
    params = [p for net in nets for p in net.parameters()]
    state = [
        v
        for opt in (trainer.opt_g, trainer.opt_d)
        for per_param in opt.state.values()
        for v in per_param.values()
        if isinstance(v, torch.Tensor)
    ]
    return {
        "params": nbytes(params),
        "buffers": nbytes(b for net in nets for b in net.buffers()),
        "grads": nbytes(p.grad for p in params),
        "opt_state": nbytes(state),
    }


def batch_sizes(spec: TrainSpec, shape: tuple[int, ...], *, real_counted: bool) -> dict[str, int]:
    """Bytes of each cycle's effective batch (fp32), and the part the measurement sees."""
    noise = BATCH * spec.model.latent_dim * 4
    real = BATCH * int(np.prod(shape)) * 4
    return {
        "d_cycle": noise + real,
        "g_cycle": noise,
        "d_cycle_counted": noise + (real if real_counted else 0),
        "g_cycle_counted": noise,
        "joint_cycle": noise + real,
        "joint_cycle_counted": noise + (real if real_counted else 0),
    }


def mark_cycles(
    engine: Any, wrap: Callable[[str, Callable[..., None]], Callable[..., None]]
) -> None:
    """Wrap the engine's cycle methods on this instance only (the product code is untouched)."""
    for name in CYCLES:
        setattr(engine, name, wrap(name.strip("_"), getattr(engine, name)))


# ---- CPU: live tensor bytes from the profiler's memory events ------------------------------


def _cpu_windows(prof: Any) -> tuple[np.ndarray, np.ndarray, list[tuple[str, int, int]]]:
    events = list(prof.profiler.kineto_results.events())
    mem = sorted(
        (e.start_ns(), e.nbytes())
        for e in events
        if e.name() == "[memory]" and e.device_type() == torch.autograd.DeviceType.CPU
    )
    times = np.array([t for t, _ in mem], dtype=np.int64)
    live = np.cumsum(np.array([b for _, b in mem], dtype=np.int64))
    marks = [
        (e.name().removeprefix("bench/"), e.start_ns(), e.end_ns())
        for e in events
        if e.name().startswith("bench/")
    ]
    return times, live, marks


def _live_before(times: np.ndarray, live: np.ndarray, t: int) -> int:
    i = int(np.searchsorted(times, t, side="left"))
    return int(live[i - 1]) if i > 0 else 0


def _peak_within(times: np.ndarray, live: np.ndarray, start: int, end: int) -> int:
    lo, hi = np.searchsorted(times, start, side="left"), np.searchsorted(times, end, "right")
    inside = live[lo:hi]
    return max(_live_before(times, live, start), int(inside.max()) if inside.size else 0)


def measure_cpu(cfg: dict[str, Any]) -> tuple[Trainer, dict[str, Any]]:
    from torch.profiler import ProfilerActivity, profile, record_function

    def wrap(name: str, cycle: Callable[..., None]) -> Callable[..., None]:
        def marked(*args: Any, **kwargs: Any) -> None:
            with record_function(f"bench/{name}"):
                cycle(*args, **kwargs)

        return marked

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        trainer = Trainer(spec_for(cfg), evaluate=False)
        for _ in range(cfg["warmup"]):
            trainer.engine.step()
        sizes = static_sizes(trainer)
        mark_cycles(trainer.engine, wrap)
        for _ in range(cfg["measured"]):
            with record_function("bench/step"):
                trainer.engine.step()
    times, live, marks = _cpu_windows(prof)
    steps = [(s, e) for name, s, e in marks if name == "step"]
    cycles = [(name, _peak_within(times, live, s, e), s) for name, s, e in marks if name != "step"]
    result = {"start": [], "cycles": []}
    for start, end in steps:
        result["start"].append(_live_before(times, live, start))
        inside = [(name, peak) for name, peak, s in cycles if start <= s <= end]
        result["cycles"].append(inside)
    return trainer, {**sizes, **result}


# ---- CUDA: the allocator's own statistics -------------------------------------------------


def measure_cuda(cfg: dict[str, Any]) -> tuple[Trainer, dict[str, Any]]:
    trainer = Trainer(spec_for(cfg), evaluate=False)
    device = trainer.device
    step_cycles: list[tuple[str, int]] = []

    def wrap(name: str, cycle: Callable[..., None]) -> Callable[..., None]:
        def measured(*args: Any, **kwargs: Any) -> None:
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
            cycle(*args, **kwargs)
            torch.cuda.synchronize(device)
            step_cycles.append((name, torch.cuda.max_memory_allocated(device)))

        return measured

    for _ in range(cfg["warmup"]):
        trainer.engine.step()
    sizes = static_sizes(trainer)
    mark_cycles(trainer.engine, wrap)
    result: dict[str, list[Any]] = {"start": [], "cycles": []}
    for _ in range(cfg["measured"]):
        torch.cuda.synchronize(device)
        result["start"].append(torch.cuda.memory_allocated(device))
        step_cycles.clear()
        trainer.engine.step()
        result["cycles"].append(list(step_cycles))
    return trainer, {**sizes, **result}


def step_times(trainer: Trainer, n: int) -> tuple[list[float], list[float]]:
    """Wall and process CPU seconds of `n` optimizer steps, each on its own (the device
    synced around it). CPU time is what other load on a shared machine moves least."""
    sync = torch.cuda.synchronize if trainer.device.type == "cuda" else lambda *_: None
    wall, cpu = [], []
    for _ in range(n):
        sync(trainer.device)
        started, started_cpu = time.perf_counter(), time.process_time()
        trainer.engine.step()
        sync(trainer.device)
        wall.append(time.perf_counter() - started)
        cpu.append(time.process_time() - started_cpu)
    return wall, cpu


def child(cfg: dict[str, Any]) -> dict[str, Any]:
    """One configuration, in this (fresh) process: memory, then step times."""
    cuda = cfg["device"].startswith("cuda")
    if cuda:
        torch.backends.cudnn.benchmark = True
    else:
        torch.set_num_threads(cfg["threads"])
    trainer, mem = (measure_cuda if cuda else measure_cpu)(cfg)
    batch = batch_sizes(trainer.spec, tuple(trainer.dataset.shape), real_counted=cuda)
    # The step whose peak cycle rose most above the step's start, and that cycle.
    best = max(
        (
            (start, name, peak)
            for start, cycles in zip(mem["start"], mem["cycles"], strict=True)
            for name, peak in cycles
        ),
        key=lambda row: row[2] - row[0],
    )
    start, cycle, peak = best
    transient = peak - start
    times, cpu_times = step_times(trainer, cfg["timed"])
    return {
        **{key: mem[key] for key in ("params", "buffers", "grads", "opt_state")},
        "start": start,
        "other": start - mem["params"] - mem["buffers"] - mem["grads"] - mem["opt_state"],
        "peak_cycle": cycle,
        "batch": batch[cycle],
        "activations": transient - batch[f"{cycle}_counted"],
        "total": peak + batch[cycle] - batch[f"{cycle}_counted"],
        "step_s": statistics.median(times),
        "step_times": times,
        "cpu_s": statistics.median(cpu_times),
        "cpu_times": cpu_times,
        "rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def run_config(cfg: dict[str, Any]) -> dict[str, Any]:
    """`child(cfg)` in a fresh Python process; its one JSON line back."""
    done = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "--child", json.dumps(cfg)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        sys.exit(f"error: {cfg['model']} k={cfg['k']} failed:\n{done.stderr[-4000:]}")
    line = next(x for x in reversed(done.stdout.splitlines()) if x.startswith("{"))
    return {**cfg, **json.loads(line)}


# ---- the report ---------------------------------------------------------------------------


def mib(n: float) -> str:
    return f"{n / MIB:,.1f}"


def describe(row: dict[str, Any]) -> str:
    if row["model"] == "resnet":
        return f"resnet {SIZES['resnet']} px, channels {row['channels']}"
    return f"conv {SIZES['conv']} px, width {row['width']}"


def static_table(rows: list[dict[str, Any]]) -> str:
    out = "| model | parameters + buffers (MiB) | gradients | Adam state | other live tensors |\n"
    out += "| --- | --- | --- | --- | --- |\n"
    firsts: dict[str, dict[str, Any]] = {}
    for row in rows:
        firsts.setdefault(row["model"], row)
    for row in firsts.values():
        out += (
            f"| {describe(row)} | {mib(row['params'] + row['buffers'])} | {mib(row['grads'])} "
            f"| {mib(row['opt_state'])} | {mib(row['other'])} |\n"
        )
    return out


def step_table(rows: list[dict[str, Any]]) -> str:
    out = (
        "| model | k | micro-batch | activations (MiB) | / k=1 | peak in | effective batch "
        "(MiB) | peak live tensors (MiB) | step CPU s | step time / k=1 | step wall s "
        "| process peak RSS (MiB) |\n"
    )
    out += "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |\n"
    for row in rows:
        base = next(r for r in rows if r["model"] == row["model"] and r["k"] == 1)
        # On a GPU the host's CPU time is launch overhead: the ratio is of wall time there.
        timing = "step_s" if row["device"].startswith("cuda") else "cpu_s"
        out += (
            f"| {row['model']} | {row['k']} | {BATCH // row['k']} | {mib(row['activations'])} "
            f"| {row['activations'] / base['activations']:.3f} | {row['peak_cycle']} "
            f"| {mib(row['batch'])} | {mib(row['total'])} | {row['cpu_s']:.2f} "
            f"| {row[timing] / base[timing]:.2f}x | {row['step_s']:.2f} "
            f"| {row['rss_mib']:,.0f} |\n"
        )
    return out


def verdicts(rows: list[dict[str, Any]]) -> Iterator[str]:
    for model in dict.fromkeys(r["model"] for r in rows):
        by_k = {r["k"]: r for r in rows if r["model"] == model}
        if 1 not in by_k or GOAL_K not in by_k:
            continue
        ratio = by_k[GOAL_K]["activations"] / by_k[1]["activations"]
        met = "met" if ratio <= GOAL_RATIO else "not met"
        yield (
            f"- {describe(by_k[1])}: activations at k={GOAL_K} are {ratio:.3f}x those at k=1 "
            f"(goal <= {GOAL_RATIO}x: {met}); batch {BATCH} needs "
            f"{mib(by_k[1]['total'])} MiB of live tensors at k=1, "
            f"{mib(by_k[GOAL_K]['total'])} MiB at k={GOAL_K}."
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--models", default="resnet,conv")
    parser.add_argument("--ks", default=",".join(map(str, KS)))
    parser.add_argument("--channels", type=int, help="resnet base width (cpu 32, cuda 64)")
    parser.add_argument("--width", type=int, default=128, help="conv width")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads per process")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--measured", type=int, default=1)
    parser.add_argument("--timed", type=int, default=3)
    parser.add_argument("--write", type=Path)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return
    cuda = args.device.startswith("cuda")
    if cuda and not torch.cuda.is_available():
        sys.exit("error: --device cuda, but torch sees no CUDA device (try --device cpu)")
    channels = args.channels or (64 if cuda else 32)
    load = os.getloadavg()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for model in args.models.split(","):
            size = SIZES[model]
            data = Path(tmp) / f"images{size}.npy"
            rng = np.random.default_rng(0)
            np.save(data, rng.integers(0, 256, (IMAGES, 3, size, size), dtype=np.uint8))
            for k in (int(k) for k in args.ks.split(",")):
                cfg = {
                    "model": model,
                    "k": k,
                    "channels": channels,
                    "width": args.width,
                    "device": args.device,
                    "data": str(data),
                    "warmup": args.warmup,
                    "measured": args.measured,
                    "timed": args.timed,
                    "threads": args.threads,
                }
                row = run_config(cfg)
                rows.append(row)
                print(
                    f"{model} k={k}: activations {mib(row['activations'])} MiB "
                    f"(peak in {row['peak_cycle']}), peak live tensors {mib(row['total'])} MiB, "
                    f"peak RSS {row['rss_mib']:,.0f} MiB, step CPU s "
                    f"{[round(t, 2) for t in row['cpu_times']]}, wall s "
                    f"{[round(t, 2) for t in row['step_times']]}",
                    flush=True,
                )
    command = " ".join(["python bench/memory.py", *sys.argv[1:]])
    body = (
        f"Command: `{command}` on {'CUDA: ' + torch.cuda.get_device_name() if cuda else 'CPU'}, "
        f"torch {torch.__version__}"
        f"{'' if cuda else f', {args.threads} CPU thread(s) per process'}; 1-minute load "
        f"average {load[0]:.1f} at the start, {os.getloadavg()[0]:.1f} at the end.\n\n"
        f"{static_table(rows)}\n{step_table(rows)}\n" + "\n".join(verdicts(rows)) + "\n"
    )
    print(body)
    if args.write:
        replace_section(args.write, f"memory-{args.device.split(':')[0]}", body)


if __name__ == "__main__":
    main()

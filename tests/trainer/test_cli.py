"""`ganforge train` and `ganforge generate` as a user runs them."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

GANFORGE = [sys.executable, "-m", "trainer.cli"]


def ganforge(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env_threads = {"OMP_NUM_THREADS": "1"}
    import os

    return subprocess.run(
        [*GANFORGE, *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, **env_threads},
    )


def test_train_then_generate_the_default_spec(tmp_path):
    (tmp_path / "spec.yaml").write_text("steps: 50\n")
    done = ganforge("train", "spec.yaml", "--out", "run", "--no-progress", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    run = tmp_path / "run"
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [10, 20, 30, 40, 50]
    for name in (
        "loss/d",
        "loss/g",
        "d/real",
        "d/fake",
        "grad_norm/d",
        "grad_norm/g",
        "audit/leak_d",
        "audit/leak_g",
        "perf/steps_per_s",
        "perf/samples_per_s",
    ):
        assert name in rows[-1]
    assert {"eval/modes", "eval/hq"} <= rows[-1].keys()  # the final step is evaluated
    png = run / "samples" / "step_000050.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    ckpt = run / "checkpoints" / "step_000050.safetensors"
    assert ckpt.exists() and (run / "checkpoints" / "step_000050.json").exists()
    assert json.loads((run / "spec.json").read_text())["steps"] == 50

    made = ganforge("generate", str(ckpt), "--n", "300", "--out", "fresh.npy", cwd=tmp_path)
    assert made.returncode == 0, made.stderr
    assert np.load(tmp_path / "fresh.npy").shape == (300, 2)
    made = ganforge("generate", str(ckpt), "--n", "300", "--out", "fresh.png", cwd=tmp_path)
    assert made.returncode == 0 and (tmp_path / "fresh.png").read_bytes()[:4] == b"\x89PNG"

    # Guided by the checkpoint's discriminator: the same seed gives the same file, and the
    # command says what the sampler did.
    for name in ("drs", "refine"):
        outs = []
        for out in (f"{name}-a.npy", f"{name}-b.npy"):
            made = ganforge(
                "generate", str(ckpt), "--n", "300", "--sampler", name, "--out", out, cwd=tmp_path
            )
            assert made.returncode == 0, made.stderr
            assert made.stdout.startswith(f"{name}: ")
            assert ("proposals" in made.stdout) == (name == "drs")
            outs.append(np.load(tmp_path / out))
        assert outs[0].shape == (300, 2) and np.array_equal(outs[0], outs[1])
        assert not np.array_equal(outs[0], np.load(tmp_path / "fresh.npy"))
    refused = {
        "--sampler plain --drs-percentile 90": "--drs-* options: only used with sampler drs, "
        "not plain",
        "--sampler drs --drs-percentile 120": "--drs-percentile: ",
        "--sampler drs --drs-gamma 50 --drs-min-acceptance 0.5": "proposals this request allows",
    }
    for options, reason in refused.items():
        bad = ganforge("generate", str(ckpt), *options.split(), "--out", "x.npy", cwd=tmp_path)
        assert bad.returncode == 2 and reason in bad.stderr, (options, bad.stderr)
    assert not (tmp_path / "x.npy").exists()

    again = ganforge("train", "spec.yaml", "--out", "run", cwd=tmp_path)
    assert again.returncode == 2 and "--overwrite" in again.stderr


def test_resume_from_the_cli_continues_the_run(tmp_path):
    (tmp_path / "spec.yaml").write_text("steps: 20\nevery: {checkpoint: 10, samples: 0}\n")
    assert (
        ganforge("train", "spec.yaml", "--out", "a", "--no-progress", cwd=tmp_path).returncode == 0
    )
    ckpt = tmp_path / "a" / "checkpoints" / "step_000010.safetensors"
    done = ganforge(
        "train", "spec.yaml", "--out", "a", "--resume", str(ckpt), "--no-progress", cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr
    steps = [
        json.loads(x)["step"] for x in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()
    ]
    assert steps == [10, 20]


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        ("accumulation: {steps: 3}\n", "accumulation.steps"),
        ("schedule: {order: sideways}\n", "schedule.order"),
        ("stepz: 10\n", "stepz"),
    ],
)
def test_bad_spec_exits_2_with_one_line_naming_the_field(tmp_path, spec, field):
    (tmp_path / "bad.yaml").write_text(spec)
    done = ganforge("train", "bad.yaml", "--out", "run", cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr.startswith(f"error: {field}: ")
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr


def test_divergence_exits_1_naming_step_and_metric(tmp_path):
    # Finite but enormous data overflows the discriminator's logits to inf.
    np.save(tmp_path / "huge.npy", np.full((64, 2), 3e38, dtype=np.float32))
    (tmp_path / "spec.yaml").write_text(
        "steps: 30\ndata: {kind: array, path: huge.npy}\nevery: {metrics: 10}\n"
    )
    done = ganforge("train", "spec.yaml", "--out", "run", "--no-progress", cwd=tmp_path)
    assert done.returncode == 1, done.stderr
    assert "error: training diverged at step 10: loss/d" in done.stderr
    assert "Traceback" not in done.stderr


def test_leaky_spec_prints_its_warning(tmp_path):
    (tmp_path / "s.yaml").write_text(
        "steps: 10\nschedule: {order: g_first, isolation: none, zero_grad: after}\n"
    )
    done = ganforge("train", "s.yaml", "--out", "run", "--no-progress", cwd=tmp_path)
    assert done.returncode == 0
    assert "warning: schedule: order=g_first, isolation=none, zero_grad=after leaks" in done.stderr
    warnings = (tmp_path / "run" / "warnings.jsonl").read_text()
    assert "audit: at step 1" in warnings or "audit: at step 2" in warnings


def test_generate_images_from_a_digits_checkpoint(tmp_path):
    (tmp_path / "digits.yaml").write_text(
        "steps: 3\nbatch_size: 16\ndata: {kind: digits}\nema: 0.5\n"
        "model: {kind: conv, width: 32, latent_dim: 16}\nevery: {eval: 0}\n"
    )
    done = ganforge("train", "digits.yaml", "--out", "d", "--no-progress", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    ckpt = tmp_path / "d" / "checkpoints" / "step_000003.safetensors"
    made = ganforge("generate", str(ckpt), "--n", "10", "--out", "x.npy", cwd=tmp_path)
    assert made.returncode == 0, made.stderr
    images = np.load(tmp_path / "x.npy")
    assert images.shape == (10, 1, 8, 8) and np.abs(images).max() <= 1.0
    bad = ganforge("generate", str(ckpt), "--out", "x.gif", cwd=tmp_path)
    assert bad.returncode == 2 and "out: must end in .png or .npy" in bad.stderr
    missing = ganforge("generate", "nope.safetensors", "--out", "x.npy", cwd=tmp_path)
    assert missing.returncode == 2 and "does not exist" in missing.stderr


def test_ctrl_c_checkpoints_and_exits_130(tmp_path):
    import os
    import signal
    import time

    (tmp_path / "long.yaml").write_text("steps: 100000\nevery: {metrics: 10, samples: 0}\n")
    proc = subprocess.Popen(
        [*GANFORGE, "train", "long.yaml", "--out", "run", "--no-progress"],
        cwd=tmp_path,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    metrics = tmp_path / "run" / "metrics.jsonl"
    deadline = time.monotonic() + 120
    while not (metrics.exists() and metrics.read_text().strip()) and time.monotonic() < deadline:
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    saved = sorted((tmp_path / "run" / "checkpoints").glob("step_*.safetensors"))
    assert len(saved) == 1 and f"--resume {saved[0].relative_to(tmp_path)}" in stderr

"""Checkpoints: safetensors + sidecar, SHA-256 checked, resume reproduces the straight run."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from tests.trainer.factories import tiny_spec
from trainer.checkpoint import CheckpointError, read_checkpoint
from trainer.sinks import directory_sinks, memory_sinks
from trainer.training import Trainer

RESUME_SPEC = {
    "steps": 40,
    "ema": 0.9,
    "model": {"d_norm": "spectral"},
    "accumulation": {"steps": 2},
    "loss": {"penalty": "r1", "penalty_weight": 1.0},
    "every": {"metrics": 5, "checkpoint": 20},
}


def _state(trainer: Trainer) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in trainer.checkpoint().tensors().items()}


def test_resume_is_bit_for_bit_the_uninterrupted_run():
    spec = tiny_spec(**RESUME_SPEC)
    straight = Trainer(spec, evaluate=False)
    straight_sinks = memory_sinks()
    straight.run(straight_sinks)

    first = Trainer(spec, evaluate=False)
    first_sinks = memory_sinks()
    first.run(first_sinks, should_stop=lambda: first.step >= 20)
    saved = first_sinks.checkpoints.saved[20]

    resumed = Trainer(spec, evaluate=False)
    resumed.load(saved)
    resumed_sinks = memory_sinks()
    resumed.run(resumed_sinks)

    a, b = _state(straight), _state(resumed)
    assert a.keys() == b.keys()
    assert any(k.startswith("generator_ema.") for k in a)
    for key in a:
        assert torch.equal(a[key], b[key]), key
    tail = [row for row in straight_sinks.metrics.rows if row[0] > 20]
    # perf/* are wall-clock rates; everything else must match exactly.
    strip = [(s, {k: v for k, v in r.items() if not k.startswith("perf/")}) for s, r in tail]
    again = [
        (s, {k: v for k, v in r.items() if not k.startswith("perf/")})
        for s, r in resumed_sinks.metrics.rows
    ]
    assert strip == again


def test_checkpoint_files_use_the_documented_keys_and_sidecar(tmp_path):
    spec = tiny_spec(steps=4, ema=0.5, every={"checkpoint": 2})
    Trainer(spec, evaluate=False).run(directory_sinks(tmp_path))
    tensors = load_file(tmp_path / "checkpoints" / "step_000004.safetensors")
    prefixes = {key.split(".")[0] for key in tensors}
    assert prefixes == {"generator", "discriminator", "generator_ema", "opt_g", "opt_d"}
    assert "opt_d.state.0.exp_avg" in tensors
    sidecar = json.loads((tmp_path / "checkpoints" / "step_000004.json").read_text())
    assert sidecar["step"] == 4 and sidecar["spec"]["steps"] == 4
    assert len(sidecar["sha256"]) == 64 and "data" in sidecar["rng"]
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == [
        "step_000002.json",
        "step_000002.safetensors",
        "step_000004.json",
        "step_000004.safetensors",
    ]  # no temporary files left behind


def test_a_tampered_checkpoint_is_refused(tmp_path):
    spec = tiny_spec(steps=2, every={"checkpoint": 2})
    Trainer(spec, evaluate=False).run(directory_sinks(tmp_path))
    path = tmp_path / "checkpoints" / "step_000002.safetensors"
    read_checkpoint(path)  # intact: loads
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="SHA-256"):
        read_checkpoint(path)
    with pytest.raises(CheckpointError, match="does not exist"):
        read_checkpoint(tmp_path / "checkpoints" / "step_000009.safetensors")
    # The tensors alone (as downloaded without ?part=sidecar): the message says what is missing.
    (tmp_path / "checkpoints" / "step_000002.json").unlink()
    with pytest.raises(CheckpointError, match=r"step_000002.json does not exist: .*part=sidecar"):
        read_checkpoint(path)


def test_a_checkpoint_of_another_spec_is_refused():
    sinks = memory_sinks()
    Trainer(tiny_spec(steps=2, every={"checkpoint": 2}), evaluate=False).run(sinks)
    other = Trainer(tiny_spec(steps=2, seed=1), evaluate=False)
    with pytest.raises(CheckpointError, match="different spec"):
        other.load(sinks.checkpoints.saved[2])


def test_stop_callback_stops_and_checkpoints():
    spec = tiny_spec(steps=50, every={"checkpoint": 100})
    trainer = Trainer(spec, evaluate=False)
    sinks = memory_sinks()
    result = trainer.run(sinks, should_stop=lambda: trainer.step >= 7)
    assert result.status == "stopped" and result.step == 7
    assert list(sinks.checkpoints.saved) == [7]


def test_resume_is_exact_with_learning_rate_decay():
    spec = tiny_spec(
        steps=30,
        optim={"g": {"decay": "cosine"}, "d": {"decay": "linear"}},
        every={"checkpoint": 10},
    )
    straight = Trainer(spec, evaluate=False)
    straight.run(memory_sinks())
    first = Trainer(spec, evaluate=False)
    sinks = memory_sinks()
    first.run(sinks, should_stop=lambda: first.step >= 10)
    resumed = Trainer(spec, evaluate=False)
    resumed.load(sinks.checkpoints.saved[10])
    resumed.run(memory_sinks())
    a, b = _state(straight), _state(resumed)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert straight.opt_g.param_groups[0]["lr"] < 1e-5  # cosine is near 0 at the end


def test_a_pickle_in_place_of_the_tensors_is_refused_before_loading(tmp_path):
    import hashlib
    import json
    import pickle

    from trainer.checkpoint import FORMAT, CheckpointError, read_checkpoint

    data = pickle.dumps({"generator.weight": [1.0, 2.0]})
    (tmp_path / "step_000001.safetensors").write_bytes(data)
    sidecar = {"format": FORMAT, "step": 1, "sha256": hashlib.sha256(data).hexdigest()}
    (tmp_path / "step_000001.json").write_text(json.dumps(sidecar))
    with pytest.raises(CheckpointError, match="not a safetensors file"):
        read_checkpoint(tmp_path / "step_000001.safetensors")

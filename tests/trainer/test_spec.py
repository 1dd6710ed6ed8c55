"""The spec: `{}` is valid, bad input is rejected with one line naming the field."""

from __future__ import annotations

import pytest

from trainer.spec import SpecError, TrainSpec, load_spec, parse_spec

INVALID = [
    # (spec, the field path the message must name, a word of the reason)
    ({"accumulation": {"steps": 3}}, "accumulation.steps", "must divide batch_size=256"),
    ({"accumulation": {"steps": 0}}, "accumulation.steps", "greater than or equal to 1"),
    ({"accumulation": {"normalize": "mean"}}, "accumulation.normalize", "'loss'"),
    ({"schedule": {"order": "sideways"}}, "schedule.order", "'d_first'"),
    ({"schedule": {"d_steps": 0}}, "schedule.d_steps", "greater than or equal to 1"),
    ({"schedule": {"zero_grad": "never"}}, "schedule.zero_grad", "'before'"),
    ({"schedule": {"isolation": "hope"}}, "schedule.isolation", "'freeze'"),
    ({"steps": 0}, "steps", "greater than or equal to 1"),
    ({"batch_size": "lots"}, "batch_size", "integer"),
    ({"optim": {"g": {"lr": 0}}}, "optim.g.lr", "greater than 0"),
    ({"optim": {"d": {"lr": -1e-4}}}, "optim.d.lr", "greater than 0"),
    ({"optim": {"d": {"betas": [0.5, 1.5]}}}, "optim.d.betas", "[0, 1)"),
    ({"optim": {"g": {"name": "lion"}}}, "optim.g.name", "'adam'"),
    ({"data": {"kind": "moons"}}, "data.kind", "'ring'"),
    ({"data": {"kind": "array"}}, "data.dataset_id", "exactly one"),
    ({"data": {"kind": "ring", "path": "x.npy"}}, "data.path", "only used with kind=array"),
    ({"data": {"std": 0}}, "data.std", "greater than 0"),
    ({"model": {"kind": "conv"}}, "model.kind", "needs image data"),
    ({"model": {"width": 0}}, "model.width", "greater than or equal to 1"),
    ({"model": {"d_norm": "group"}}, "model.d_norm", "'spectral'"),
    ({"loss": {"kind": "lsgan"}}, "loss.kind", "'hinge'"),
    ({"loss": {"penalty_weight": -1}}, "loss.penalty_weight", "greater than or equal to 0"),
    ({"precision": "fp8"}, "precision", "'bf16'"),
    ({"ema": 1.0}, "ema", "less than 1"),
    ({"every": {"metrics": 0}}, "every.metrics", "greater than or equal to 1"),
    ({"device": "tpu"}, "device", "auto, cpu, cuda or cuda:N"),
    ({"learning_rate": 0.1}, "learning_rate", "unknown field"),
    ({"schedule": {"order": "d_first", "n_critic": 5}}, "schedule.n_critic", "unknown field"),
    (
        {"batch_size": 4, "accumulation": {"steps": 4}, "model": {"d_norm": "batch"}},
        "model.d_norm",
        "at least 2",
    ),
]


def test_empty_spec_is_the_default_ring_job():
    spec = parse_spec({})
    assert spec == TrainSpec()
    assert spec.data.kind == "ring" and spec.warnings() == []


@pytest.mark.parametrize(("raw", "field", "reason"), INVALID, ids=[i[1] for i in INVALID])
def test_invalid_spec_names_the_field_in_one_line(raw, field, reason):
    with pytest.raises(SpecError) as caught:
        parse_spec(raw)
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(f"{field}: "), message
    assert reason in message


def test_at_least_fifteen_invalid_specs_are_covered():
    assert len({field for _, field, _ in INVALID}) >= 15


def test_spec_is_frozen():
    spec = TrainSpec()
    with pytest.raises(Exception, match="frozen"):
        spec.steps = 5  # type: ignore[misc]


def test_harmful_settings_warn():
    broken = parse_spec(
        {"schedule": {"order": "g_first", "isolation": "none", "zero_grad": "after"}}
    )
    assert any("leaks gradient" in w for w in broken.warnings())
    fixed = parse_spec(
        {"schedule": {"order": "g_first", "isolation": "freeze", "zero_grad": "after"}}
    )
    assert fixed.warnings() == []
    batch_norm = parse_spec({"accumulation": {"steps": 4}, "model": {"g_norm": "batch"}})
    assert any("batch norm" in w for w in batch_norm.warnings())
    critic = parse_spec({"loss": {"kind": "wasserstein"}})
    assert any("unbounded" in w for w in critic.warnings())


def test_load_spec_reads_yaml_and_json_and_reports_bad_files(tmp_path):
    (tmp_path / "a.yaml").write_text("steps: 5\naccumulation: {steps: 4}\n")
    assert load_spec(tmp_path / "a.yaml").accumulation.steps == 4
    (tmp_path / "b.json").write_text('{"steps": 7}')
    assert load_spec(tmp_path / "b.json").steps == 7
    (tmp_path / "c.yaml").write_text("steps: [unclosed\n")
    with pytest.raises(SpecError, match="not valid YAML"):
        load_spec(tmp_path / "c.yaml")
    (tmp_path / "d.yaml").write_text("- a list\n")
    with pytest.raises(SpecError, match="must be a mapping"):
        load_spec(tmp_path / "d.yaml")
    with pytest.raises(SpecError, match="cannot read"):
        load_spec(tmp_path / "missing.yaml")


def test_learning_rate_decay_schedules():
    from trainer.optim import decayed_lr
    from trainer.spec import Optimizer

    linear = Optimizer(lr=1.0, decay="linear")
    assert decayed_lr(linear, 1, 100) == 1.0
    assert decayed_lr(linear, 51, 100) == pytest.approx(0.5)
    cosine = Optimizer(lr=1.0, decay="cosine")
    assert decayed_lr(cosine, 51, 100) == pytest.approx(0.5)
    assert 0 < decayed_lr(cosine, 100, 100) < 1e-3
    assert decayed_lr(Optimizer(lr=0.3, decay="none"), 77, 100) == 0.3


def test_example_specs_are_valid():
    from pathlib import Path

    examples = sorted((Path(__file__).parents[2] / "examples").glob("*.yaml"))
    assert len(examples) >= 4
    broken = load_spec(Path(__file__).parents[2] / "examples" / "seed-broken.yaml")
    assert any("leaks gradient" in w for w in broken.warnings())
    for path in examples:
        load_spec(path)


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        ({"data": {"kind": "images", "path": "faces"}}, "data.resolution"),
        ({"data": {"kind": "images", "resolution": 32}}, "data.path"),
        ({"data": {"kind": "digits", "resolution": 32}}, "data.resolution"),
        ({"augment": {"policy": ["color"]}}, "augment.policy"),
        ({"augment": {"policy": ["color", "color"]}, "data": {"kind": "digits"}}, "augment.policy"),
        ({"model": {"kind": "resnet"}, "data": {"kind": "digits"}}, "model.kind"),
        (
            {
                "model": {"kind": "resnet"},
                "data": {"kind": "images", "path": "x", "resolution": 48},
            },
            "data.resolution",
        ),
    ],
)
def test_image_fields_are_checked_and_named(spec, field):
    with pytest.raises(SpecError) as caught:
        parse_spec(spec)
    assert any(line.startswith(field + ":") for line in caught.value.problems), (
        caught.value.problems
    )


def test_resnet_defaults_to_spectral_norm_unless_told():
    images = {"kind": "images", "path": "x", "resolution": 32}
    assert TrainSpec.model_validate({"model": {"kind": "resnet"}, "data": images}).model.d_norm == (
        "spectral"
    )
    told = {"model": {"kind": "resnet", "d_norm": "none"}, "data": images}
    assert TrainSpec.model_validate(told).model.d_norm == "none"
    assert TrainSpec().model.d_norm == "none"

"""/api/specs/validate, /api/specs/defaults and /api/presets on a real database (SQLite and
PostgreSQL); the presets against examples/*.yaml; the New-job page's choices against the spec."""

from __future__ import annotations

import io
import typing
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from app.presets import EXAMPLE_FILES, PRESETS
from trainer.leaks import leaking_networks
from trainer.spec import TrainSpec

ROOT = Path(__file__).resolve().parents[2]


def validate(client: Any, **body: Any) -> Any:
    return client.post("/api/specs/validate", json=body)


def assert_422(answer: Any, field: str, *words: str) -> dict[str, Any]:
    assert answer.status_code == 422, answer.text
    detail = answer.json()["detail"]
    fields = [d["field"] for d in detail]
    assert field in fields, detail
    error: dict[str, Any] = detail[fields.index(field)]
    assert error["message"].startswith(f"{field}: "), error
    for word in words:
        assert word in error["message"], error
    return error


def test_a_valid_spec_comes_back_with_defaults_warnings_and_leaks(client):
    answer = validate(client, spec={"steps": 50, "accumulation": {"steps": 4}})
    assert answer.status_code == 200, answer.text
    report = answer.json()
    assert report["spec"] == TrainSpec(steps=50, accumulation={"steps": 4}).model_dump(mode="json")
    assert report["warnings"] == []
    assert report["leaks"] == {"d": False, "g": False}
    assert report["micro_batch_size"] == 64
    assert client.get("/api/jobs").json()["items"] == []  # nothing stored


def test_the_seed_schedule_reports_its_leak_and_warning(client):
    seed = {"schedule": {"order": "g_first", "isolation": "none", "zero_grad": "after"}}
    report = validate(client, spec=seed).json()
    assert report["leaks"] == {"d": True, "g": True}
    assert any("leaks gradient" in w and "D and G" in w for w in report["warnings"])
    fixed = {"schedule": {"order": "g_first", "isolation": "freeze", "zero_grad": "after"}}
    assert validate(client, spec=fixed).json()["leaks"] == {"d": False, "g": False}


@pytest.mark.parametrize("order", ["d_first", "g_first", "simultaneous"])
@pytest.mark.parametrize("isolation", ["freeze", "autograd", "none"])
@pytest.mark.parametrize("zero_grad", ["before", "after"])
def test_leaks_follow_the_leak_table(client, order, isolation, zero_grad):
    schedule = {"order": order, "isolation": isolation, "zero_grad": zero_grad}
    leaks = validate(client, spec={"schedule": schedule}).json()["leaks"]
    expected = leaking_networks(order=order, isolation=isolation, zero_grad=zero_grad)
    assert leaks == {"d": "d" in expected, "g": "g" in expected}


def test_yaml_text_is_read_as_the_cli_reads_a_file(client):
    text = "# a comment\nname: y\nschedule: {order: g_first}\noptim:\n  g: {lr: 1.0e-3}\n"
    report = validate(client, yaml=text).json()
    assert report["spec"]["name"] == "y" and report["spec"]["schedule"]["order"] == "g_first"
    assert report["spec"]["optim"]["g"]["lr"] == 1e-3
    assert validate(client, yaml='{"steps": 7}').json()["spec"]["steps"] == 7  # JSON is YAML
    assert validate(client, yaml="").json()["spec"] == TrainSpec().model_dump(mode="json")


def test_invalid_specs_are_422s_shaped_like_post_jobs(client):
    cases = [
        ({"accumulation": {"steps": 3}}, "spec.accumulation.steps", "must divide"),
        ({"schedule": {"order": "x"}}, "spec.schedule.order", "d_first"),
        ({"data": {"kind": "array"}}, "spec.data.dataset_id", "exactly one"),
        ({"lr": 1}, "spec.lr", "unknown field"),
        ({"model": {"kind": "conv"}}, "spec.model.kind", "image data"),
        ({"steps": "many"}, "spec.steps", "integer"),
        ({"device": "tpu"}, "spec.device", "cuda:N"),
    ]
    for spec, field, words in cases:
        mine = validate(client, spec=spec)
        error = assert_422(mine, field, words)
        assert error["type"] and error["loc"][:2] == ["body", "spec"]
        # The same field and message as POST /api/jobs gives for the same spec.
        theirs = client.post("/api/jobs", json={"spec": spec}).json()["detail"]
        assert [(d["field"], d["message"]) for d in mine.json()["detail"]] == [
            (d["field"], d["message"]) for d in theirs
        ]


def test_every_problem_is_listed(client):
    answer = validate(client, spec={"steps": 0, "schedule": {"d_steps": 0}, "ema": 2})
    fields = {d["field"] for d in answer.json()["detail"]}
    assert fields == {"spec.steps", "spec.schedule.d_steps", "spec.ema"}


def test_yaml_syntax_errors_name_the_spec_with_the_line(client):
    error = assert_422(validate(client, yaml="steps: 5\nschedule: {order: [g_first\n"), "spec")
    assert "YAML" in error["message"] and "line 3" in error["message"], error
    error = assert_422(validate(client, yaml="a: b: c\n"), "spec", "YAML", "line 1")
    assert_422(validate(client, yaml="- 1\n- 2\n"), "spec", "mapping", "list")
    assert_422(validate(client, yaml="just text"), "spec", "mapping", "str")
    assert_422(validate(client, yaml="steps: 3\nsteps: 4\n" + "x" * 200_000), "spec", "limit")
    # Errors after the YAML is read are the spec's own.
    assert_422(validate(client, yaml="accumulation: {steps: 3}"), "spec.accumulation.steps")


def test_the_other_checks_of_post_jobs_apply(client):
    assert_422(
        validate(client, spec={"data": {"kind": "array", "path": "x.npy"}}), "spec.data.path"
    )
    missing = {"data": {"kind": "array", "dataset_id": "nope"}}
    assert_422(validate(client, spec=missing), "spec.data.dataset_id", "no dataset nope")
    buffer = io.BytesIO()
    np.save(buffer, np.random.default_rng(0).normal(size=(64, 2)).astype(np.float32))
    files = {"file": ("points.npy", buffer.getvalue(), "application/octet-stream")}
    dataset = client.post("/api/datasets", files=files).json()
    found = {"data": {"kind": "array", "dataset_id": dataset["id"]}}
    assert validate(client, spec=found).json()["spec"]["data"]["dataset_id"] == dataset["id"]


def test_the_body_must_hold_exactly_one_of_spec_and_yaml(client):
    assert_422(validate(client), "spec", "Field required")
    assert_422(validate(client, spec={}, yaml=""), "yaml", "not both")
    assert_422(validate(client, spec=None), "spec", "mapping", "null")
    assert_422(validate(client, spec=[1, 2]), "spec", "mapping", "list")
    assert_422(validate(client, spec={}, other=1), "other", "unknown field")
    assert_422(validate(client, yaml=5), "yaml")


ODD_BODIES: list[tuple[str, str]] = [
    ("application/json", "not json"),
    ("application/json", "[1, 2]"),
    ("application/json", '{"spec": {"data": {"radius": Infinity}}}'),
    ("application/json", '{"spec": {"optim": {"g": {"weight_decay": 1e999}}}}'),
    ("application/json", '{"spec": {"ema": NaN}}'),
    ("application/json", '{"spec": {"steps": 1e400}}'),
    ("application/json", '{"spec": {"optim": {"g": {"betas": [0.5]}}}}'),
    ("application/json", '{"spec": {"steps": 123456789012345678901234567890}}'),
    ("application/json", '{"spec": {"name": "\\u0000\\ud800"}}'),
    ("application/json", '{"spec": ' + "[" * 5000 + "]" * 5000 + "}"),
    ("application/json", '{"yaml": "' + "[" * 5000 + '"}'),
    ("application/json", '{"yaml": "' + "a:\\n " * 3000 + '"}'),
    ("application/json", '{"yaml": "x: !!python/object:os.system {}"}'),
    ("application/json", '{"yaml": "seed: 2020-13-45"}'),
    ("application/json", '{"yaml": "name: 2020-01-01"}'),
    ("application/json", '{"yaml": "{1: 2, [3]: 4}"}'),
    ("application/json", '{"yaml": "a: &a [*a]"}'),
    ("application/json", '{"yaml": "steps: .nan\\ndata: {radius: .inf}"}'),
    ("application/json", '{"yaml": "\\t- bad indent"}'),
    ("text/plain", "spec: {}"),
    ("application/x-www-form-urlencoded", "spec=1"),
]


@pytest.mark.parametrize(("content_type", "body"), ODD_BODIES)
def test_no_input_is_a_500(client, content_type, body):
    answer = client.post(
        "/api/specs/validate", content=body.encode(), headers={"content-type": content_type}
    )
    assert answer.status_code in (200, 400, 422), answer.text
    if answer.status_code == 422:
        detail = answer.json()["detail"]
        assert detail and all(
            d["message"].startswith(f"{d['field']}: ") or not d["field"] for d in detail
        ), detail


def test_non_finite_numbers_are_refused_by_field(client):
    answer = client.post(
        "/api/specs/validate",
        content=b'{"spec": {"data": {"radius": Infinity, "spacing": 1e999}}}',
        headers={"content-type": "application/json"},
    )
    assert_422(answer, "spec.data.radius", "finite")
    assert_422(answer, "spec.data.spacing", "finite")
    assert_422(validate(client, yaml="data: {std: .inf}"), "spec.data.std", "finite")


def test_defaults_are_the_empty_spec(client):
    assert client.get("/api/specs/defaults").json() == TrainSpec().model_dump(mode="json")


def test_presets_are_valid_and_in_order(client):
    items = client.get("/api/presets").json()["items"]
    assert [p["id"] for p in items] == [
        "ring",
        "grid",
        "digits",
        "seed-broken",
        "seed-fixed",
        "seed-study",
    ]
    for preset in items:
        assert preset["title"] and preset["description"]
        assert validate(client, spec=preset["spec"]).status_code == 200, preset["id"]
        assert (preset["sweep"] is None) == (preset["id"] != "seed-study"), preset["id"]
    by_id = {p["id"]: p for p in items}
    assert by_id["seed-broken"]["twin"] == "seed-fixed"
    assert by_id["seed-fixed"]["twin"] == "seed-broken"
    assert "isolation" in by_id["seed-broken"]["difference"]
    assert validate(client, spec=by_id["seed-broken"]["spec"]).json()["leaks"]["d"] is True
    assert validate(client, spec=by_id["seed-fixed"]["spec"]).json()["leaks"]["d"] is False
    assert by_id["grid"]["spec"]["data"]["kind"] == "grid"
    assert TrainSpec.model_validate(by_id["ring"]["spec"]).data.kind == "ring"


def test_the_seed_study_is_a_grid_over_every_schedule_with_accumulation_1_and_4(client):
    study = next(p for p in client.get("/api/presets").json()["items"] if p["id"] == "seed-study")
    sweep = study["sweep"]
    assert sweep["method"] == "grid"
    assert sweep["objective"] == {"metric": "eval/modes", "mode": "max"}
    assert "base" not in sweep  # the preset's spec is the base
    space = {path: dim["values"] for path, dim in sweep["space"].items()}
    schedule = TrainSpec.model_fields["schedule"].annotation.model_fields
    assert space == {
        "schedule.order": list(typing.get_args(schedule["order"].annotation)),
        "schedule.isolation": list(typing.get_args(schedule["isolation"].annotation)),
        "schedule.zero_grad": list(typing.get_args(schedule["zero_grad"].annotation)),
        "accumulation.steps": [1, 4],
    }
    assert sweep["budget"] == {"trials": 36, "concurrent": 2}
    base = TrainSpec.model_validate(study["spec"])
    assert base.data.kind == "ring" and base.steps == 2000
    # Every combination is a valid spec, and the grid holds leaking and clean schedules.
    leaks = set()
    for order in space["schedule.order"]:
        for isolation in space["schedule.isolation"]:
            for zero_grad in space["schedule.zero_grad"]:
                for k in space["accumulation.steps"]:
                    schedule_ = {"order": order, "isolation": isolation, "zero_grad": zero_grad}
                    spec = {**study["spec"], "schedule": schedule_, "accumulation": {"steps": k}}
                    assert validate(client, spec=spec).status_code == 200, spec
                    leaks.add(bool(leaking_networks(**schedule_)))
    assert leaks == {True, False}


def test_presets_equal_the_example_files():
    by_id = {p.id: p for p in PRESETS}
    for preset_id, filename in EXAMPLE_FILES.items():
        example = yaml.safe_load((ROOT / "examples" / filename).read_text())
        assert by_id[preset_id].spec == example, filename
    # Every example file is a preset.
    assert set(EXAMPLE_FILES.values()) == {p.name for p in (ROOT / "examples").glob("*.yaml")}


class _Selects(HTMLParser):
    """The options of each <select name=...> of a page."""

    def __init__(self) -> None:
        super().__init__()
        self.options: dict[str, list[str]] = {}
        self._current: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        if tag == "select":
            self._current = values.get("name")
            if self._current:
                self.options[self._current] = []
        elif tag == "option" and self._current:
            self.options[self._current].append(values.get("value") or "")

    def handle_endtag(self, tag: str) -> None:
        if tag == "select":
            self._current = None


def _choices(model: type[Any], field: str) -> list[str]:
    annotation = typing.get_type_hints(model)[field]
    return list(typing.get_args(annotation))


def test_the_new_job_page_offers_every_choice_the_spec_has(client):
    from trainer import spec as s

    page = client.get("/jobs/new")
    assert page.status_code == 200
    parser = _Selects()
    parser.feed(page.text)
    expected = {
        "accumulation.normalize": _choices(s.Accumulation, "normalize"),
        "schedule.order": _choices(s.Schedule, "order"),
        "schedule.zero_grad": _choices(s.Schedule, "zero_grad"),
        "schedule.isolation": _choices(s.Schedule, "isolation"),
        # images reads a local folder: `ganforge train` only (the service takes uploads)
        "data.kind": [k for k in _choices(s.Data, "kind") if k != "images"],
        "model.kind": _choices(s.Model, "kind"),
        "precision": _choices(s.TrainSpec, "precision"),
    }
    for name, values in expected.items():
        assert parser.options.get(name) == values, name

"""The retention policy itself (app/retention.py `policy_of` and `decide`), without a
database: which checkpoints are kept and why, and the spec field's validation."""

from __future__ import annotations

import math

import pytest

from app.retention import Policy, Stored, decide, policy_of
from app.settings import Settings
from trainer.spec import SpecError, TrainSpec, parse_spec

DEFAULTS = Settings()


def policy(**retention: object) -> Policy:
    return policy_of({"retention": retention}, DEFAULTS)


def rows(values: dict[int, float | None], pinned: tuple[int, ...] = ()) -> list[Stored]:
    return [
        Stored(step, f"jobs/j/checkpoints/step_{step:06d}.safetensors", 100, 10, step in pinned, v)
        for step, v in values.items()
    ]


def kept(plan: tuple) -> list[int]:
    return [e.step for e in plan if e.keep]


def reasons(plan: tuple) -> dict[int, str]:
    return {e.step: e.reason for e in plan}


def test_by_default_every_checkpoint_is_kept():
    assert policy_of({}, DEFAULTS).keeps_everything  # a spec without `retention`
    plan = decide(policy(), rows({100: 3.0, 200: 2.0, 300: 1.0}))
    assert kept(plan) == [100, 200, 300]
    assert all("keeps every checkpoint" in e.reason for e in plan)


def test_keep_last_keeps_the_newest_n():
    plan = decide(policy(keep_last=2), rows(dict.fromkeys((100, 200, 300, 400, 500))))
    assert kept(plan) == [400, 500]
    why = reasons(plan)
    assert why[100] == why[300] == "outside the policy"
    assert why[400] == "one of the last 2"
    assert why[500] == "latest: the job resumes from it; one of the last 2"


def test_keep_best_by_a_metric_to_minimize():
    values = {100: 5.0, 200: 1.5, 300: 4.0, 400: 2.5, 500: 9.0}
    plan = decide(policy(keep_last=0, keep_best=2, best_metric="eval/fid"), rows(values))
    assert kept(plan) == [200, 400, 500]  # the best two, and the newest
    why = reasons(plan)
    assert why[200] == "one of the best 2 by eval/fid (min): 1.5"
    assert why[400] == "one of the best 2 by eval/fid (min): 2.5"
    assert why[500] == "latest: the job resumes from it"
    assert [e.step for e in plan if e.best] == [200]
    assert {e.step: e.value for e in plan} == values


def test_keep_best_by_a_metric_to_maximize():
    values = {100: 0.2, 200: 0.9, 300: 0.7, 400: 0.1}
    plan = decide(policy(keep_best=1, best_metric="eval/hq", mode="max"), rows(values))
    assert kept(plan) == [200, 400]
    assert [e.step for e in plan if e.best] == [200]


def test_the_newest_is_always_kept():
    plan = decide(policy(keep_best=1), rows({100: 1.0, 200: 2.0, 300: 3.0}))
    assert kept(plan) == [100, 300]  # 300 is the worst, and the newest
    assert reasons(plan)[300] == "latest: the job resumes from it"
    lone = decide(policy(keep_best=3), rows({700: None}))
    assert kept(lone) == [700]


def test_pinned_checkpoints_are_kept_whatever_the_policy_says():
    plan = decide(policy(keep_last=1), rows(dict.fromkeys((100, 200, 300)), pinned=(100,)))
    assert kept(plan) == [100, 300]
    assert reasons(plan)[100] == "pinned"
    assert [e.pinned for e in plan] == [True, False, False]


def test_nan_and_missing_values_never_count_as_best():
    values = {100: math.nan, 200: None, 300: 7.0, 400: math.inf, 500: None}
    plan = decide(policy(keep_best=2), rows(values))
    assert kept(plan) == [300, 500]  # the only value; the newest
    assert [e.step for e in plan if e.best] == [300]
    assert {e.step: e.value for e in plan}[100] is None  # NaN is no value
    none = decide(policy(keep_best=1), rows({100: None, 200: math.nan}))
    assert kept(none) == [200] and not any(e.best for e in none)


def test_ties_go_to_the_newer_checkpoint_and_reasons_add_up():
    plan = decide(policy(keep_last=2, keep_best=1), rows({100: 1.0, 200: 1.0, 300: 1.0}))
    assert kept(plan) == [200, 300]
    assert reasons(plan)[300] == (
        "latest: the job resumes from it; one of the last 2; one of the best 1 by eval/fid (min): 1"
    )


def test_left_out_fields_come_from_the_settings():
    settings = Settings(keep_last=3, keep_best=1)
    inherited = policy_of({"retention": {"best_metric": "eval/hq", "mode": "max"}}, settings)
    assert (inherited.keep_last, inherited.keep_best) == (3, 1)
    assert inherited.source == {
        "keep_last": "GANFORGE_KEEP_LAST",
        "keep_best": "GANFORGE_KEEP_BEST",
    }
    own = policy_of({"retention": {"keep_last": 0, "keep_best": 0}}, settings)
    assert own.keeps_everything and own.source == {"keep_last": "spec", "keep_best": "spec"}
    # A job stored before retention existed takes the settings' defaults too.
    assert policy_of(TrainSpec().model_dump(mode="json"), settings).keep_last == 3
    assert policy_of({}, settings).best_metric == "eval/fid"


def test_settings_from_the_environment(monkeypatch):
    monkeypatch.setenv("GANFORGE_KEEP_LAST", "4")
    monkeypatch.setenv("GANFORGE_KEEP_BEST", "2")
    monkeypatch.setenv("GANFORGE_DELETE_GRACE_SECONDS", "5")
    settings = Settings()
    assert (settings.keep_last, settings.keep_best, settings.delete_grace_seconds) == (4, 2, 5)
    assert Settings.model_fields["delete_grace_seconds"].default == 60


@pytest.mark.parametrize(
    ("retention", "field", "reason"),
    [
        ({"keep_last": -1}, "retention.keep_last", "greater than or equal to 0"),
        ({"keep_best": "many"}, "retention.keep_best", "valid integer"),
        ({"mode": "lowest"}, "retention.mode", "'min' or 'max'"),
        ({"best_metric": "eval fid"}, "retention.best_metric", "must be a metric name"),
        ({"best_metric": ""}, "retention.best_metric", "at least 1 character"),
        ({"best_metric": 3}, "retention.best_metric", "valid string"),
        ({"keep": 3}, "retention.keep", "unknown field"),
    ],
)
def test_a_bad_retention_names_the_field(retention, field, reason):
    with pytest.raises(SpecError) as caught:
        parse_spec({"retention": retention})
    (problem,) = caught.value.problems
    assert problem.startswith(f"{field}: ") and reason in problem, problem


def test_retention_changes_no_training():
    spec = TrainSpec.model_validate({"retention": {"keep_last": 2, "keep_best": 1}})
    assert spec.model_copy(update={"retention": TrainSpec().retention}) == TrainSpec()
    assert TrainSpec().retention.keep_last is None and TrainSpec().retention.mode == "min"


def test_a_checkpoint_resumes_under_another_retention():
    from tests.trainer.factories import tiny_spec
    from trainer.sinks import MemoryCheckpoints, memory_sinks
    from trainer.training import Trainer

    spec = tiny_spec(steps=4, device="cpu", every={"checkpoint": 2})
    sinks = memory_sinks()
    Trainer(spec, evaluate=False).run(sinks)
    assert isinstance(sinks.checkpoints, MemoryCheckpoints)
    other = spec.model_copy(update={"retention": policy_spec(keep_last=1)})
    trainer = Trainer(other, evaluate=False)
    trainer.load(sinks.checkpoints.saved[2])
    assert trainer.step == 2


def policy_spec(**fields: object):
    from trainer.spec import Retention

    return Retention.model_validate(fields)

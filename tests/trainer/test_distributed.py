"""Distributed (DDP) jobs on CPU with gloo: 2 ranks x k micro-batches compute what 1 rank x
2k micro-batches does, in fp64, in every order and isolation mode; each network's gradient
is all-reduced exactly once per optimizer step; checkpoints cross world sizes.

Rank 0 runs in the test process (`ranks()` starts rank 1 with torch.multiprocessing), so
its networks, metrics and DDP hook counters are inspected directly."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from tests.trainer.factories import merge
from trainer.distributed import ranks
from trainer.sinks import MemoryCheckpoints, MemoryMetrics, memory_sinks
from trainer.spec import SpecError, TrainSpec, parse_spec
from trainer.training import Trainer

BASE: dict[str, Any] = {
    "steps": 4,
    "batch_size": 16,
    "precision": "fp64",
    "device": "cpu",
    "ema": 0.0,
    "model": {"latent_dim": 4, "width": 16, "depth": 2},
    "schedule": {"d_steps": 2},
    "every": {"metrics": 1, "samples": 0, "checkpoint": 0, "eval": 0},
}
COMPARED = ("loss/d", "loss/g", "d/real", "d/fake", "grad_norm/d", "grad_norm/g")
COMPARED += ("audit/leak_d", "audit/leak_g")


def spec(world: int, k: int, **overrides: Any) -> TrainSpec:
    settings = merge(BASE, {"accumulation": {"steps": k}, "distributed": {"world_size": world}})
    return TrainSpec.model_validate(merge(settings, overrides))


def flat(trainer: Trainer) -> torch.Tensor:
    params = [*trainer.generator.parameters(), *trainer.discriminator.parameters()]
    return torch.cat([p.detach().reshape(-1) for p in params])


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / a.norm())


def train(job: TrainSpec, **kwargs: Any) -> tuple[Trainer, Any]:
    """Train `job` to the end as rank 0 (starting the other ranks); the trainer and sinks."""
    sinks = memory_sinks()
    with ranks(job, threads=1, **kwargs) as rank:
        trainer = Trainer(job, rank=rank, evaluate=False, **kwargs)
        trainer.run(sinks)
    return trainer, sinks


def assert_same_run(one: tuple[Trainer, Any], two: tuple[Trainer, Any]) -> None:
    assert relative(flat(one[0]), flat(two[0])) < 1e-9
    rows_one, rows_two = one[1].metrics.rows, two[1].metrics.rows
    assert [s for s, _ in rows_one] == [s for s, _ in rows_two]
    for (step, a), (_, b) in zip(rows_one, rows_two, strict=True):
        for name in COMPARED:
            if name in a:
                # Reported numbers are float32 means (StepEngine._add): equal to their precision.
                assert b[name] == pytest.approx(a[name], rel=1e-6, abs=1e-12), (step, name)


SCHEDULES = [
    (order, isolation, zero_grad)
    for order in ("d_first", "g_first", "simultaneous")
    for isolation, zero_grad in (("freeze", "before"), ("autograd", "before"), ("none", "after"))
]


@pytest.mark.parametrize(("order", "isolation", "zero_grad"), SCHEDULES)
def test_two_ranks_of_two_micro_batches_equal_one_rank_of_four(order, isolation, zero_grad):
    schedule = {"order": order, "isolation": isolation, "zero_grad": zero_grad}
    one = train(spec(1, 4, schedule=schedule))
    two = train(spec(2, 2, schedule=schedule))
    assert_same_run(one, two)
    # The DDP communication hook saw one all-reduce per network per optimizer step (4 G
    # steps, 2 D steps each), though every rank ran 2 micro-batches per cycle.
    assert {n: c.calls for n, c in two[0].all_reduces.items()} == {"g": 4, "d": 8}
    if isolation == "none":
        # The leak reproduced on purpose is measured the same on two ranks as on one.
        assert one[1].metrics.rows[-1][1]["audit/leak_d"] > 0
    else:
        assert all(row["audit/leak_d"] == 0.0 for _, row in two[1].metrics.rows)


@pytest.mark.parametrize(
    "overrides",
    [
        {"loss": {"penalty": "wgan_gp", "kind": "wasserstein"}},
        {"model": {"d_norm": "spectral"}, "accumulation": {"normalize": "grad"}},
        {"model": {"d_norm": "layer", "g_norm": "batch"}, "accumulation": {"normalize": "none"}},
    ],
    ids=["wgan_gp", "spectral-grad", "norms-none"],
)
def test_parity_holds_with_penalties_norms_and_normalizations(overrides):
    assert_same_run(train(spec(1, 4, **overrides)), train(spec(2, 2, **overrides)))


def test_without_no_sync_every_micro_batch_is_all_reduced():
    """What no_sync saves (the benchmark's other arm): k all-reduces per step instead of 1."""
    job = spec(2, 4, steps=3, schedule={"d_steps": 1})
    trainer, _ = train(job, sync_once=False)
    assert {n: c.calls for n, c in trainer.all_reduces.items()} == {"g": 12, "d": 12}


@pytest.mark.parametrize(("first", "then"), [(2, 1), (1, 2)])
def test_a_checkpoint_resumes_with_another_world_size(first, then):
    """Stop at step 2 on `first` ranks, finish on `then` (the same k per rank, so the
    effective batch is cut into a different number of micro-batches): the same run as one
    go on one rank."""
    every = {"checkpoint": 2}
    whole, _ = train(spec(1, 2, every=every))
    begin, sinks = spec(first, 2, every=every), memory_sinks()
    with ranks(begin, threads=1) as rank:
        start = Trainer(begin, rank=rank, evaluate=False)
        assert start.run(sinks, should_stop=lambda: start.step >= 2).status == "stopped"
    assert isinstance(sinks.checkpoints, MemoryCheckpoints)
    checkpoint = sinks.checkpoints.saved[2]
    finish = spec(then, 2, every=every)
    resumed = memory_sinks()
    with ranks(finish, resume=checkpoint, threads=1) as rank:
        trainer = Trainer(finish, rank=rank, evaluate=False)
        trainer.load(checkpoint)
        trainer.run(resumed)
    assert trainer.step == 4
    assert relative(flat(whole), flat(trainer)) < 1e-9


def test_only_rank_zero_writes_and_metrics_cover_every_step():
    _, sinks = train(spec(2, 2, every={"checkpoint": 2, "samples": 2}))
    assert isinstance(sinks.metrics, MemoryMetrics)
    assert [s for s, _ in sinks.metrics.rows] == [1, 2, 3, 4]  # once each, not once per rank
    assert sorted(sinks.checkpoints.saved) == [2, 4]
    assert sorted(sinks.samples.images) == [2, 4]


def test_a_stop_on_rank_zero_stops_every_rank_at_the_same_step():
    job = spec(2, 2, steps=50, every={"checkpoint": 10})
    sinks = memory_sinks()
    with ranks(job, threads=1) as rank:
        trainer = Trainer(job, rank=rank, evaluate=False)
        result = trainer.run(sinks, should_stop=lambda: trainer.step >= 7)
    # Leaving `ranks` joined rank 1: it stopped at step 7 too, or the join would have hung.
    assert result.status == "stopped" and result.step == 7
    assert sorted(sinks.checkpoints.saved) == [7]


def test_spec_checks_the_split_across_ranks():
    with pytest.raises(SpecError) as err:
        parse_spec(
            {"batch_size": 12, "accumulation": {"steps": 2}, "distributed": {"world_size": 4}}
        )
    assert any(line.startswith("distributed.world_size:") for line in err.value.problems)
    with pytest.raises(SpecError) as err:
        parse_spec({"device": "cpu", "distributed": {"world_size": 2, "backend": "nccl"}})
    assert any(line.startswith("distributed.backend:") for line in err.value.problems)
    ok = parse_spec(
        {"batch_size": 16, "accumulation": {"steps": 2}, "distributed": {"world_size": 2}}
    )
    assert ok.micro_batch_size == 4


def test_a_trainer_refuses_a_world_size_it_was_not_started_with():
    with pytest.raises(ValueError, match="distributed.world_size"):
        Trainer(spec(2, 2), evaluate=False)

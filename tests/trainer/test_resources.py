"""resources.gpus: how many GPUs a job holds, left out (from the device) or given."""

from __future__ import annotations

import pytest

from trainer.spec import SpecError, TrainSpec, parse_spec

DISTRIBUTED = {"world_size": 2}


@pytest.mark.parametrize(
    ("raw", "gpus"),
    [
        ({}, 0),  # device auto: none held (a worker may lend it a free one)
        ({"device": "cpu"}, 0),
        ({"device": "cuda"}, 1),
        ({"device": "cuda:0"}, 1),
        ({"device": "cuda:1"}, 2),  # the job's devices are cuda:0.., so cuda:1 is its second
        ({"device": "cuda", "distributed": DISTRIBUTED}, 2),  # one per rank
        ({"device": "cuda:1", "distributed": DISTRIBUTED}, 3),
        ({"device": "auto", "distributed": DISTRIBUTED}, 0),
        ({"device": "cpu", "distributed": DISTRIBUTED}, 0),
        ({"device": "cuda", "resources": {"gpus": 4}}, 4),  # more than it uses: held anyway
        ({"device": "auto", "resources": {"gpus": 2}, "distributed": DISTRIBUTED}, 2),
        ({"device": "auto", "resources": {"gpus": 0}}, 0),  # auto, and never a GPU
        ({"device": "cpu", "resources": {"gpus": 0}}, 0),
    ],
)
def test_gpus_held_left_out_or_given(raw, gpus):
    spec = parse_spec(raw)
    assert spec.gpus == gpus
    assert spec.resources.gpus == raw.get("resources", {}).get("gpus")


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        ({"device": "cpu", "resources": {"gpus": 1}}, "device cpu uses no GPU, got 1"),
        ({"device": "cuda", "resources": {"gpus": 0}}, "needs at least 1 GPU, got 0"),
        (
            {"device": "cuda", "distributed": DISTRIBUTED, "resources": {"gpus": 1}},
            "device cuda with distributed.world_size=2 needs at least 2 GPUs",
        ),
        ({"device": "cuda:2", "resources": {"gpus": 2}}, "needs at least 3 GPUs"),
        (
            {"device": "auto", "distributed": DISTRIBUTED, "resources": {"gpus": 1}},
            "needs at least 2 GPUs",
        ),
        ({"resources": {"gpus": -1}}, "greater than or equal to 0"),
        ({"resources": {"gpus": 65}}, "less than or equal to 64"),
        ({"resources": {"cpus": 4}}, "unknown field"),
    ],
)
def test_an_impossible_gpu_count_names_resources_gpus(raw, reason):
    with pytest.raises(SpecError) as caught:
        parse_spec(raw)
    (line,) = caught.value.problems
    field = "resources.cpus" if "cpus" in raw["resources"] else "resources.gpus"
    assert line.startswith(f"{field}: ") and reason in line, line


def test_nccl_without_gpus_names_the_backend():
    with pytest.raises(SpecError, match=r"^distributed\.backend: nccl needs CUDA devices"):
        parse_spec({"distributed": {"world_size": 2, "backend": "nccl"}, "resources": {"gpus": 0}})


def test_the_default_spec_holds_no_gpu_and_dumps_resources():
    assert TrainSpec().gpus == 0
    assert TrainSpec().model_dump()["resources"] == {"gpus": None}

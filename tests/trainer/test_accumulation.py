"""Accumulation is an exact reformulation: k micro-batches == one batch (DESIGN.md s. 3)."""

from __future__ import annotations

import itertools

import pytest

from tests.trainer.factories import max_relative_difference, parameters, run, tiny_spec

ORDERS = ("d_first", "g_first", "simultaneous")
CASES = list(itertools.product(ORDERS, ("freeze", "autograd"), ("loss", "grad"), (1, 2)))


@pytest.mark.parametrize(("order", "isolation", "normalize", "d_steps"), CASES)
def test_four_micro_batches_match_one_batch_in_fp64(order, isolation, normalize, d_steps):
    def final(k: int):
        spec = tiny_spec(
            precision="fp64",
            accumulation={"steps": k, "normalize": normalize},
            schedule={"order": order, "isolation": isolation, "d_steps": d_steps},
        )
        return parameters(run(spec)[0])

    one, four = final(1), final(4)
    difference = max_relative_difference(one, four)
    assert difference < 1e-9
    # The comparison is not vacuous: training moved the parameters.
    from trainer.training import Trainer

    start = parameters(Trainer(tiny_spec(precision="fp64"), evaluate=False))
    assert max_relative_difference(start, one) > 1e-3


@pytest.mark.parametrize("d_norm", ["layer", "spectral"])
@pytest.mark.parametrize("penalty", ["wgan_gp", "r1"])
def test_parity_holds_with_norms_and_penalties(d_norm, penalty):
    def final(k: int):
        spec = tiny_spec(
            precision="fp64",
            accumulation={"steps": k},
            model={"d_norm": d_norm},
            loss={"kind": "wasserstein" if penalty == "wgan_gp" else "bce", "penalty": penalty},
        )
        return parameters(run(spec)[0])

    assert max_relative_difference(final(1), final(4)) < 1e-9


def test_normalize_none_sums_micro_batch_gradients():
    # SGD without momentum: summed gradients move k times as far as averaged ones on step 1.
    def first_step(k: int, normalize: str):
        spec = tiny_spec(
            precision="fp64",
            steps=1,
            accumulation={"steps": k, "normalize": normalize},
            optim={"g": {"name": "sgd", "lr": 1e-3}, "d": {"name": "sgd", "lr": 1e-3}},
        )
        from trainer.training import Trainer

        trainer = Trainer(spec, evaluate=False)
        before = parameters(trainer)
        trainer.engine.step()
        after = parameters(trainer)
        return {k_: after[k_] - before[k_] for k_ in before}

    mean_step, sum_step = first_step(4, "loss"), first_step(4, "none")
    key = next(k for k in mean_step if k.startswith("d.") and k.endswith("weight"))
    assert (sum_step[key] - 4 * mean_step[key]).abs().max() < 1e-12

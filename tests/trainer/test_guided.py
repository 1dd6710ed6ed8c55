"""Discriminator-guided sampling (trainer.guided): DRS is rejection sampling where the logit
is the log density ratio, refine climbs the discriminator, both are deterministic for a seed
and bounded, and a sampler that cannot help says so."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from pydantic import ValidationError
from torch import nn

from tests.trainer.factories import tiny_spec
from trainer.generate import LoadedGenerator, generate_array
from trainer.guided import Networks, Sampler, SamplerError, guided
from trainer.sinks import memory_sinks
from trainer.training import Trainer, generate_from

LOG4 = math.log(4.0)


class Identity2d(nn.Module):
    """G(z) = z on 2-D latents: p_g is N(0, I)."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(()))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return z * self.scale


class LogRatio(nn.Module):
    """The exact log p_data/p_g for p_data = N(0, 0.5^2 I), p_g = N(0, I) in 2-D:
    log 4 - 1.5 |x|^2. `flat` makes it a constant (a discriminator that prefers nothing)."""

    def __init__(self, *, flat: bool = False) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.tensor(0.0 if flat else 1.5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return LOG4 - self.weight * (x**2).sum(dim=1)


def exact(*, flat: bool = False, loss: str = "bce") -> Networks:
    return Networks(Identity2d(), LogRatio(flat=flat), latent=2, loss=loss, chunk=4096)


def drs(**options: float) -> Sampler:
    return Sampler.model_validate({"sampler": "drs", "drs": options})


def test_drs_with_gamma_zero_is_exact_rejection_sampling():
    """Accepting with probability exp(D - D_M) turns N(0, 1) into N(0, 0.5^2)."""
    samples, report = guided(exact(), 20_000, seed=0, sampler=drs(gamma=0.0))
    assert samples.shape == (20_000, 2)
    assert samples.std(dim=0).tolist() == pytest.approx([0.5, 0.5], rel=0.03)
    # The acceptance rate of exact rejection: E[exp(-1.5 |z|^2)] = 1/4 for z ~ N(0, I_2).
    assert report.acceptance == pytest.approx(0.25, rel=0.05)
    assert report.logit_returned > report.logit_plain


def test_drs_percentile_is_stricter_as_it_rises():
    spreads = []
    for percentile in (50, 95):
        samples, report = guided(exact(), 5_000, seed=1, sampler=drs(percentile=percentile))
        spreads.append((float(samples.std()), report.acceptance))
    (std_50, acc_50), (std_95, acc_95) = spreads
    assert std_95 < std_50 < 1.0  # closer to the centre than plain's std of 1
    assert acc_95 < acc_50


def test_each_sampler_is_deterministic_for_a_seed():
    nets = exact()
    for sampler in (drs(), Sampler(sampler="refine")):
        a, report_a = guided(nets, 500, seed=7, sampler=sampler)
        b, report_b = guided(nets, 500, seed=7, sampler=sampler)
        c, _ = guided(nets, 500, seed=8, sampler=sampler)
        assert torch.equal(a, b) and report_a.proposals == report_b.proposals
        assert not torch.equal(a, c)


def test_drs_is_bounded_and_says_why_it_stopped():
    """A fixed gamma that accepts almost nothing exhausts n / min_acceptance proposals."""
    with pytest.raises(SamplerError) as caught:
        guided(exact(), 1_000, seed=0, sampler=drs(gamma=30.0, min_acceptance=0.1))
    assert caught.value.field == "drs.min_acceptance"
    message = str(caught.value)
    assert "of 10000 proposals" in message and "short of n=1000" in message
    assert "lower drs.percentile" in message


def test_a_sampler_that_cannot_help_says_so():
    with pytest.raises(SamplerError, match="same logit"):
        guided(exact(flat=True), 100, seed=0, sampler=drs())
    with pytest.raises(SamplerError, match="gradient is zero"):
        guided(exact(flat=True), 100, seed=0, sampler=Sampler(sampler="refine"))
    with pytest.raises(SamplerError, match="trained with hinge"):
        guided(exact(loss="hinge"), 100, seed=0, sampler=drs())
    # refine needs only a gradient, so a hinge critic refines.
    refined, _ = guided(exact(loss="hinge"), 100, seed=0, sampler=Sampler(sampler="refine"))
    assert refined.shape == (100, 2)


def test_refine_moves_plain_samples_up_the_discriminator():
    """Each refined sample starts from plain's latent for the seed, and gets closer to the
    centre the log ratio favours; the parameters' gradients stay untouched."""
    nets = exact()
    plain = generate_from(nets.generator, 1_000, seed=3, latent=2)
    refined, report = guided(nets, 1_000, seed=3, sampler=Sampler(sampler="refine"))
    assert report.logit_returned > report.logit_plain
    assert bool((refined.norm(dim=1) <= plain.norm(dim=1) + 1e-12).all())
    # The first refine step from z: z - eta/2 * (z + 3z) = (1 - 2 eta) z, so every sample
    # shrinks towards 0 by (1 - 2 eta) per step, and none changes direction.
    one = Sampler.model_validate({"sampler": "refine", "refine": {"steps": 1}})
    stepped, _ = guided(nets, 1_000, seed=3, sampler=one)
    assert torch.allclose(stepped, plain * (1 - 2 * 0.01), atol=1e-6)
    assert all(p.grad is None for m in (nets.generator, nets.discriminator) for p in m.parameters())


def test_options_of_another_sampler_are_refused_by_name():
    with pytest.raises(ValidationError, match="only used with sampler drs, not refine"):
        Sampler.model_validate({"sampler": "refine", "drs": {"percentile": 90}})
    with pytest.raises(ValidationError, match="percentile"):
        drs(percentile=100)
    with pytest.raises(ValidationError, match="sampler"):
        Sampler.model_validate({"sampler": "dot"})


@pytest.fixture(scope="module")
def ring_checkpoint():
    """A 300-step ring run's checkpoint (EMA on, bce loss)."""
    spec = tiny_spec(steps=300, ema=0.9, every={"metrics": 50, "checkpoint": 300})
    sinks = memory_sinks()
    Trainer(spec, evaluate=False).run(sinks)
    return sinks.checkpoints.saved[300]


def test_a_checkpoint_samples_plain_as_before_and_guided_with_its_discriminator(ring_checkpoint):
    loaded = LoadedGenerator.of(ring_checkpoint)
    assert loaded.discriminator is not None and not loaded.discriminator.training
    plain, report = loaded.sample(200, seed=4)
    assert report is None
    # plain, named or left out, is today's generation to the bit.
    assert np.array_equal(plain, loaded.sample(200, seed=4, sampler=Sampler())[0])
    assert np.array_equal(plain, generate_array(ring_checkpoint, 200, seed=4))
    for name in ("drs", "refine"):
        guided_once, report = loaded.sample(200, seed=4, sampler=Sampler(sampler=name))
        again, _ = loaded.sample(200, seed=4, sampler=Sampler(sampler=name))
        assert guided_once.shape == (200, 2) and guided_once.dtype == np.float32
        assert np.array_equal(guided_once, again)
        assert not np.array_equal(guided_once, plain)
        assert report is not None and report.sampler == name
        assert report.headers()["X-Sampler"] == name
        if name == "drs":  # refine trades D's logit against the latent prior's pull to 0
            assert report.logit_returned > report.logit_plain


def test_a_checkpoint_without_its_discriminator_says_so(ring_checkpoint):
    from safetensors.torch import load, save

    from trainer.checkpoint import Checkpoint

    tensors = {k: v for k, v in load(ring_checkpoint.data).items() if "discriminator" not in k}
    stripped = Checkpoint(ring_checkpoint.step, save(tensors), ring_checkpoint.meta)
    loaded = LoadedGenerator.of(stripped)
    assert loaded.sample(10, seed=0)[0].shape == (10, 2)  # plain needs no discriminator
    with pytest.raises(SamplerError, match="holds none"):
        loaded.sample(10, seed=0, sampler=Sampler(sampler="drs"))


def test_evaluation_reports_guided_quality_beside_plain():
    spec = tiny_spec(steps=200, every={"metrics": 100, "eval": 200})
    sinks = memory_sinks()
    Trainer(spec).run(sinks)
    last = sinks.metrics.rows[-1][1]
    for suffix in ("", "_drs", "_refine"):
        assert 0 <= last[f"eval/modes{suffix}"] <= 8
        assert 0 <= last[f"eval/hq{suffix}"] <= 1
    assert 0 < last["eval/drs_acceptance"] <= 1
    assert last["audit/leak_d"] == 0 and last["audit/leak_g"] == 0

    hinge = tiny_spec(steps=200, loss={"kind": "hinge"}, every={"metrics": 100, "eval": 200})
    sinks = memory_sinks()
    Trainer(hinge).run(sinks)
    last = sinks.metrics.rows[-1][1]
    assert "eval/hq_refine" in last
    assert "eval/hq_drs" not in last and "eval/drs_acceptance" not in last  # cannot help


def test_guided_evaluation_leaves_training_as_it_was():
    """Evaluating (with the guided samplers) draws no training randomness and touches no
    gradient: the same spec trains to the same weights with and without evaluation."""
    spec = tiny_spec(steps=60, every={"metrics": 10, "eval": 20})
    with_eval, without = Trainer(spec), Trainer(spec, evaluate=False)
    with_eval.run(memory_sinks())
    without.run(memory_sinks())
    for a, b in zip(with_eval.generator.parameters(), without.generator.parameters(), strict=True):
        assert torch.equal(a, b)

"""Mixed precision: one GradScaler per optimizer, stepping and updating once per cycle."""

from __future__ import annotations

from collections import Counter

import pytest
import torch

from tests.trainer.factories import run, tiny_spec
from trainer.sinks import memory_sinks
from trainer.training import SKIPPED_STEPS_DIVERGED, Trainer, TrainingDiverged


@pytest.mark.parametrize("order", ["d_first", "g_first", "simultaneous"])
def test_fp16_steps_and_updates_each_scaler_once_per_cycle(order, monkeypatch):
    spec = tiny_spec(
        precision="fp16",
        steps=8,
        accumulation={"steps": 4},
        schedule={"order": order, "d_steps": 2},
    )
    trainer = Trainer(spec, evaluate=False)
    owner = {id(s): n for n, s in trainer.engine.scaler.items()}
    calls: Counter[tuple[str, str]] = Counter()
    scale_calls: Counter[str] = Counter()
    real_step, real_update, real_scale = (
        torch.amp.GradScaler.step,
        torch.amp.GradScaler.update,
        torch.amp.GradScaler.scale,
    )

    def step(self, optimizer, *args, **kwargs):
        calls[(owner[id(self)], "step")] += 1
        return real_step(self, optimizer, *args, **kwargs)

    def update(self, *args, **kwargs):
        calls[(owner[id(self)], "update")] += 1
        return real_update(self, *args, **kwargs)

    def scale(self, outputs):
        scale_calls[owner[id(self)]] += 1
        return real_scale(self, outputs)

    monkeypatch.setattr(torch.amp.GradScaler, "step", step)
    monkeypatch.setattr(torch.amp.GradScaler, "update", update)
    monkeypatch.setattr(torch.amp.GradScaler, "scale", scale)
    optimizer_steps: Counter[str] = Counter()
    trainer.opt_d.register_step_post_hook(lambda *_: optimizer_steps.update(["d"]))
    trainer.opt_g.register_step_post_hook(lambda *_: optimizer_steps.update(["g"]))

    skipped: Counter[str] = Counter()
    for _ in range(spec.steps):
        before = {n: s.get_scale() for n, s in trainer.engine.scaler.items()}
        trainer.engine.step()
        for n, s in trainer.engine.scaler.items():
            # A skipped step (inf/NaN found) is the only thing that lowers the scale.
            skipped[n] += s.get_scale() < before[n]

    cycles = {"d": spec.steps * 2, "g": spec.steps}
    for net, n in cycles.items():
        assert calls[(net, "step")] == n
        assert calls[(net, "update")] == n
        assert scale_calls[net] == 4 * n  # one scaled backward per micro-batch
        assert optimizer_steps[net] == n - skipped[net]
    assert optimizer_steps["d"] > 0 and optimizer_steps["g"] > 0


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_trains_with_finite_losses(precision):
    spec = tiny_spec(precision=precision, steps=30, accumulation={"steps": 2})
    trainer = Trainer(spec, evaluate=False)
    sinks = memory_sinks()
    trainer.run(sinks)
    losses = [v for _, v in sinks.metrics.series("loss/d")]
    assert len(losses) == 30 and all(torch.isfinite(torch.tensor(losses)))
    assert all(p.dtype == torch.float32 for p in trainer.generator.parameters())


DIGITS_CONV = {
    "batch_size": 64,
    "data": {"kind": "digits"},
    "model": {"kind": "conv", "latent_dim": 16, "width": 16},
}


@pytest.mark.parametrize("policy", [[], ["color", "translation", "cutout"]])
def test_fp16_digits_conv_trains_through_the_scalers_first_skipped_steps(policy):
    # The loss scale starts at 2**16, which overflows these conv nets' gradients: the scaler
    # skips the first step(s) and lowers the scale. That is not divergence (it used to stop the
    # run at step 1 on "grad_norm/d = nan").
    spec = tiny_spec(precision="fp16", augment={"policy": policy}, **DIGITS_CONV)
    trainer, sinks = run(spec)
    assert trainer.step == spec.steps
    skipped = [v for _, v in sinks.metrics.series("amp/skipped_d")]
    assert skipped[0] >= 1  # the overflow this test is about did happen
    assert skipped[-1] == 0
    norms = sinks.metrics.series("grad_norm/d")
    assert norms and all(torch.isfinite(torch.tensor([v for _, v in norms])))
    # A skipped step reports no gradient norm: the step-1 NaN is not a number of the run.
    assert 1 not in {step for step, _ in norms}


def test_fp16_scaler_skipping_every_step_is_reported_as_divergence():
    spec = tiny_spec(precision="fp16", steps=60, **DIGITS_CONV)
    trainer = Trainer(spec, evaluate=False)
    # D's gradients overflow at any loss scale; its losses stay finite.
    weight = next(trainer.discriminator.parameters())
    weight.register_hook(lambda grad: torch.full_like(grad, float("inf")))
    with pytest.raises(TrainingDiverged) as raised:
        trainer.run(memory_sinks())
    assert raised.value.metric == "amp/skipped_d"
    assert raised.value.step == SKIPPED_STEPS_DIVERGED


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_nan_loss_is_divergence_in_any_precision(precision):
    trainer = Trainer(tiny_spec(precision=precision, **DIGITS_CONV), evaluate=False)
    with torch.no_grad():
        next(trainer.discriminator.parameters()).fill_(float("nan"))
    with pytest.raises(TrainingDiverged) as raised:
        trainer.run(memory_sinks())
    assert (raised.value.step, raised.value.metric) == (1, "loss/d")

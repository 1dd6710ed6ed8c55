"""DiffAugment (trainer.augment): the transforms of Zhao et al. 2020, differentiable, and in
the engine on every image D sees, drawn per cycle so accumulation and DDP stay exact."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tests.trainer import test_distributed as ddp
from tests.trainer.factories import max_relative_difference, merge, parameters, run, tiny_spec
from trainer.augment import AugmentParams, DiffAugment
from trainer.data import DataError
from trainer.sinks import memory_sinks
from trainer.training import Trainer

ALL = ["color", "translation", "cutout"]
ORDERS = ("d_first", "g_first", "simultaneous")


def draw(policy: list[str], shape: tuple[int, ...], n: int, p: float = 1.0) -> AugmentParams:
    return DiffAugment(policy, p, shape).draw(
        n, torch.Generator().manual_seed(7), dtype=torch.float64
    )


def images(n: int, shape: tuple[int, ...]) -> torch.Tensor:
    # Strictly positive, so a zero in the output is a pixel the transform zeroed.
    return (
        torch.rand((n, *shape), generator=torch.Generator().manual_seed(3), dtype=torch.float64)
        + 0.5
    )


# ---- the paper's code (DiffAugment_pytorch.py), with its draws passed in ----------------


def paper_translation(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    translation_x, translation_y = shift[:, 0].view(-1, 1, 1), shift[:, 1].view(-1, 1, 1)
    grid_batch, grid_x, grid_y = torch.meshgrid(
        torch.arange(x.size(0)), torch.arange(x.size(2)), torch.arange(x.size(3)), indexing="ij"
    )
    grid_x = torch.clamp(grid_x + translation_x + 1, 0, x.size(2) + 1)
    grid_y = torch.clamp(grid_y + translation_y + 1, 0, x.size(3) + 1)
    x_pad = F.pad(x, [1, 1, 1, 1, 0, 0, 0, 0])
    return x_pad.permute(0, 2, 3, 1)[grid_batch, grid_x, grid_y].permute(0, 3, 1, 2)


def paper_cutout(x: torch.Tensor, hole: torch.Tensor) -> torch.Tensor:
    cutout_size = int(x.size(2) * 0.5 + 0.5), int(x.size(3) * 0.5 + 0.5)
    offset_x, offset_y = hole[:, 0].view(-1, 1, 1), hole[:, 1].view(-1, 1, 1)
    grid_batch, grid_x, grid_y = torch.meshgrid(
        torch.arange(x.size(0)),
        torch.arange(cutout_size[0]),
        torch.arange(cutout_size[1]),
        indexing="ij",
    )
    grid_x = torch.clamp(grid_x + offset_x - cutout_size[0] // 2, min=0, max=x.size(2) - 1)
    grid_y = torch.clamp(grid_y + offset_y - cutout_size[1] // 2, min=0, max=x.size(3) - 1)
    mask = torch.ones(x.size(0), x.size(2), x.size(3), dtype=x.dtype)
    mask[grid_batch, grid_x, grid_y] = 0
    return x * mask.unsqueeze(1)


def paper_color(x: torch.Tensor, v: dict[str, torch.Tensor]) -> torch.Tensor:
    def per(t: torch.Tensor) -> torch.Tensor:
        return t.view(-1, 1, 1, 1)

    x = x + per(v["brightness"])
    x_mean = x.mean(dim=1, keepdim=True)
    x = (x - x_mean) * per(v["saturation"] + 1) + x_mean
    x_mean = x.mean(dim=[1, 2, 3], keepdim=True)
    return (x - x_mean) * per(v["contrast"] + 1) + x_mean


# ---- the transforms ------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(1, 8, 8), (3, 16, 16), (3, 8, 12)])
def test_every_policy_keeps_the_shape(shape):
    x = images(5, shape)
    for policy in (["color"], ["translation"], ["cutout"], ALL, ALL[::-1]):
        out = DiffAugment(policy, 1.0, shape)(x, draw(policy, shape, 5))
        assert out.shape == x.shape and out.dtype == x.dtype
        assert not torch.equal(out, x)


@pytest.mark.parametrize("policy", [["color"], ["translation"], ["cutout"], ALL])
def test_gradients_reach_the_input_and_are_exact(policy):
    shape = (3, 8, 8)
    params = draw(policy, shape, 2)
    augment = DiffAugment(policy, 1.0, shape)
    x = images(2, shape).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda t: augment(t, params), (x,))
    augment(x, params).square().sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_translation_moves_pixels_by_up_to_an_eighth_with_zero_padding():
    shape = (3, 8, 12)
    x = images(400, shape)
    params = draw(["translation"], shape, 400)
    shift = params.values["shift"]
    out = DiffAugment(["translation"], 1.0, shape)(x, params)
    assert torch.equal(out, paper_translation(x, shift))
    # int(8/8 + 0.5) = 1 row, int(12/8 + 0.5) = 2 columns, every value drawn.
    assert set(shift[:, 0].tolist()) == {-1, 0, 1}
    assert set(shift[:, 1].tolist()) == {-2, -1, 0, 1, 2}
    for b in range(6):
        dy, dx = shift[b].tolist()
        for i in range(8):
            for j in range(12):
                inside = 0 <= i + dy < 8 and 0 <= j + dx < 12
                want = x[b, :, i + dy, j + dx] if inside else torch.zeros(3, dtype=x.dtype)
                assert torch.equal(out[b, :, i, j], want), (b, i, j)


def test_cutout_zeroes_a_square_of_half_the_side():
    shape = (2, 8, 12)
    x = images(400, shape)
    params = draw(["cutout"], shape, 400)
    out = DiffAugment(["cutout"], 1.0, shape)(x, params)
    assert torch.equal(out, paper_cutout(x, params.values["hole"]))
    zeroed = (out == 0).all(dim=1).sum(dim=(1, 2))
    # A 4 x 6 hole, clipped to at least 2 x 3 at the corners; the rest untouched.
    assert zeroed.max() == 24 and zeroed.min() >= 6
    kept = out != 0
    assert torch.equal(out[kept], x[kept])
    # The paper's centres: an even-sized hole's centre may sit one past the last pixel.
    assert set(params.values["hole"][:, 0].tolist()) == set(range(9))
    assert set(params.values["hole"][:, 1].tolist()) == set(range(13))


def test_color_is_the_papers_brightness_saturation_and_contrast():
    shape = (3, 8, 8)
    x = images(300, shape)
    params = draw(["color"], shape, 300)
    v = params.values
    out = DiffAugment(["color"], 1.0, shape)(x, params)
    assert torch.allclose(out, paper_color(x, v), rtol=0, atol=1e-12)
    assert -0.5 <= v["brightness"].min() and v["brightness"].max() < 0.5
    assert 0 <= v["saturation"].min() + 1 and v["saturation"].max() + 1 < 2
    assert 0.5 <= v["contrast"].min() + 1 and v["contrast"].max() + 1 < 1.5
    # The means (per pixel over channels, per image) change: it is not a no-op on color.
    assert (out.mean(dim=(1, 2, 3)) - x.mean(dim=(1, 2, 3))).abs().max() > 0.1


def test_p_zero_is_the_identity():
    shape = (3, 8, 8)
    x = images(64, shape)
    params = draw(ALL, shape, 64, p=0.0)
    assert torch.equal(DiffAugment(ALL, 0.0, shape)(x, params), x)


def test_p_is_drawn_per_example_and_per_transform():
    shape = (1, 8, 8)
    n = 4000
    x = images(n, shape)
    params = draw(ALL, shape, n, p=0.5)
    color = params.values["brightness"] != 0
    cut = params.values["cut"]
    assert 0.45 < color.double().mean() < 0.55 and 0.45 < cut.double().mean() < 0.55
    assert 0.2 < (color & cut).double().mean() < 0.3  # independent gates
    out = DiffAugment(["cutout"], 0.5, shape)(
        x, AugmentParams({"hole": params.values["hole"], "cut": cut})
    )
    changed = (out != x).flatten(1).any(dim=1)
    assert torch.equal(changed, cut)


def test_micro_batches_see_what_the_whole_batch_sees():
    shape = (3, 8, 8)
    x = images(32, shape)
    augment = DiffAugment(ALL, 0.7, shape)
    params = draw(ALL, shape, 32, p=0.7)
    whole = augment(x, params)
    parts = [augment(xs, ps) for xs, ps in zip(x.chunk(4), params.chunk(4), strict=True)]
    assert torch.equal(torch.cat(parts), whole)


def test_data_that_are_not_images_are_refused_naming_the_field(tmp_path):
    with pytest.raises(DataError, match=r"augment\.policy: augments images"):
        DiffAugment(ALL, 1.0, (4,))
    path = tmp_path / "vectors.npy"
    np.save(path, np.random.default_rng(0).normal(size=(64, 4)).astype(np.float32))
    spec = tiny_spec(data={"kind": "array", "path": str(path)}, augment={"policy": ["color"]})
    with pytest.raises(DataError, match=r"augment\.policy: .*shape \(4,\)"):
        Trainer(spec, evaluate=False)


# ---- in the engine -------------------------------------------------------------------------

DIGITS: dict[str, Any] = {
    "steps": 8,
    "precision": "fp64",
    "data": {"kind": "digits"},
    "model": {"kind": "conv", "width": 8},
    "augment": {"policy": ALL, "p": 0.5},
}


def digits_spec(**overrides: Any):
    return tiny_spec(**merge(DIGITS, overrides))


@pytest.mark.parametrize(
    ("order", "overrides"),
    [
        ("d_first", {}),
        ("g_first", {"schedule": {"d_steps": 2}}),
        ("simultaneous", {}),
        ("simultaneous", {"loss": {"kind": "wasserstein", "penalty": "wgan_gp"}}),
    ],
    ids=["d_first", "g_first-d_steps2", "simultaneous", "simultaneous-wgan_gp"],
)
def test_four_micro_batches_match_one_batch_with_augmentation(order, overrides):
    def final(k: int) -> dict[str, torch.Tensor]:
        spec = digits_spec(
            **merge({"accumulation": {"steps": k}, "schedule": {"order": order}}, overrides)
        )
        return parameters(run(spec)[0])

    one = final(1)
    assert max_relative_difference(one, final(4)) < 1e-9
    start = parameters(Trainer(digits_spec(), evaluate=False))
    assert max_relative_difference(start, one) > 1e-3  # training moved the parameters


def test_augmentation_changes_training_and_off_changes_nothing():
    on = parameters(run(digits_spec())[0])
    runs = [run(digits_spec(augment=a)) for a in ({"policy": []}, {"policy": [], "p": 0.3})]
    left_out = tiny_spec(**{k: v for k, v in DIGITS.items() if k != "augment"})
    runs.append(run(left_out))
    off = [parameters(trainer) for trainer, _ in runs]
    assert max_relative_difference(off[0], on) > 1e-3
    # Off is off: the same parameters, random stream and metrics as with no augment field.
    for (trainer, sinks), params in zip(runs[1:], off[1:], strict=True):
        assert all(torch.equal(params[k], off[0][k]) for k in params)
        assert torch.equal(trainer.rng.get_state(), runs[0][0].rng.get_state())
        strip = [
            {k: v for k, v in r.items() if not k.startswith("perf/")} for _, r in sinks.metrics.rows
        ]
        first = [
            {k: v for k, v in r.items() if not k.startswith("perf/")}
            for _, r in runs[0][1].metrics.rows
        ]
        assert strip == first


def _has_hole(x: torch.Tensor) -> torch.Tensor:
    """Per example: whether some 2 x 2 square is zero in every channel (a clipped cutout)."""
    zero = (x == 0).all(dim=1, keepdim=True).double()
    return (F.avg_pool2d(zero, 2, stride=1) == 1).flatten(1).any(dim=1)


@pytest.mark.parametrize("order", ORDERS)
def test_every_image_d_sees_is_augmented_real_or_generated(order):
    def inputs(augment: dict[str, Any]) -> list[torch.Tensor]:
        trainer = Trainer(digits_spec(schedule={"order": order}, augment=augment), evaluate=False)
        seen: list[torch.Tensor] = []
        trainer.discriminator.register_forward_pre_hook(
            lambda _, args: seen.append(args[0].detach())
        )
        trainer.engine.step()
        return seen

    # Cutout with p=1 leaves a zero square in each image: D's real and fake passes, the R1
    # penalty's pass at the (augmented) reals, and G's pass.
    seen = inputs({"policy": ["cutout"], "p": 1.0})
    assert len(seen) == (3 if order == "simultaneous" else 4)
    assert all(bool(_has_hole(x).all()) for x in seen)
    assert not all(bool(_has_hole(x).all()) for x in inputs({"policy": []}))


def test_resume_is_exact_with_augmentation():
    spec = digits_spec(steps=8, ema=0.5, accumulation={"steps": 2}, every={"checkpoint": 4})
    straight, _ = run(spec)
    first = Trainer(spec, evaluate=False)
    sinks = memory_sinks()
    first.run(sinks, should_stop=lambda: first.step >= 4)
    resumed = Trainer(spec, evaluate=False)
    resumed.load(sinks.checkpoints.saved[4])
    resumed.run(memory_sinks())
    a, b = straight.checkpoint().tensors(), resumed.checkpoint().tensors()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_trains_with_augmentation(precision):
    spec = digits_spec(precision=precision, augment={"p": 1.0})
    trainer = Trainer(spec, evaluate=False)
    start = parameters(trainer)
    # engine.step, not Trainer.run: fp16's first steps overflow at GradScaler's initial scale
    # (skipped by the scaler), and Trainer.run reads the non-finite grad_norm as divergence.
    for _ in range(4):
        stats = trainer.engine.step(record=True)
    assert stats is not None
    numbers = stats.numbers()
    assert np.isfinite(numbers["loss/d"]) and np.isfinite(numbers["loss/g"])
    end = parameters(trainer)
    assert all(bool(torch.isfinite(v).all()) for v in end.values())
    assert max_relative_difference(start, end) > 1e-4


def test_two_ranks_of_two_micro_batches_equal_one_rank_of_four_with_augmentation():
    overrides = {
        "data": {"kind": "digits"},
        "model": {"kind": "conv", "width": 8},
        "augment": {"policy": ALL, "p": 0.5},
        "schedule": {"order": "simultaneous", "isolation": "none", "zero_grad": "after"},
    }
    one, two = ddp.train(ddp.spec(1, 4, **overrides)), ddp.train(ddp.spec(2, 2, **overrides))
    ddp.assert_same_run(one, two)
    plain, _ = ddp.train(ddp.spec(1, 4, **merge(overrides, {"augment": {"policy": []}})))
    assert ddp.relative(ddp.flat(one[0]), ddp.flat(plain)) > 1e-3  # augmentation was on

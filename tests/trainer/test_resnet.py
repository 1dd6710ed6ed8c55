"""model.kind resnet: residual G and D for 16..128 px, exact accumulation, end-to-end runs."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn
from torch.overrides import TorchFunctionMode

from tests.trainer.factories import max_relative_difference, parameters, run, tiny_spec
from trainer.data import DataError, Dataset, check_model_fits, load_dataset
from trainer.generate import GENERATE_BUDGET_BYTES, LoadedGenerator, generate_array
from trainer.models import SpectralNorm, build_models
from trainer.resnet import ResNetDiscriminator, ResNetGenerator, widest_activation, widths
from trainer.spec import Data, Model
from trainer.training import Trainer

SMALL = {"kind": "resnet", "latent_dim": 8, "channels": 8}


def images_npy(tmp_path: Path, *, channels: int = 3, size: int = 16, n: int = 64) -> str:
    """A small uint8 (N, C, size, size) array on disk, for data.kind array."""
    path = tmp_path / f"images_{channels}x{size}.npy"
    rng = np.random.default_rng(0)
    np.save(path, rng.integers(0, 256, (n, channels, size, size), dtype=np.uint8))
    return str(path)


def resnet_spec(path: str, **overrides):
    return tiny_spec(
        **{"data": {"kind": "array", "path": path}, "batch_size": 16, "model": SMALL, **overrides}
    )


@pytest.mark.parametrize("size", [16, 32, 64, 128])
@pytest.mark.parametrize("channels", [1, 3])
def test_networks_map_noise_to_images_to_logits(size, channels):
    cfg = Model(kind="resnet", latent_dim=16, channels=4)
    generator, discriminator = build_models(cfg, (channels, size, size), seed=0)
    assert isinstance(generator, ResNetGenerator)
    assert isinstance(discriminator, ResNetDiscriminator)
    images = generator(torch.randn(3, 16))
    assert images.shape == (3, channels, size, size)
    assert images.abs().max() <= 1.0  # tanh
    assert discriminator(images).shape == (3,)


def test_widths_double_as_the_side_halves_capped_at_eight_times_the_base():
    assert widths(64, 16) == [64, 128, 256]  # sides 16, 8, 4
    assert widths(64, 64) == [64, 128, 256, 512, 512]
    assert widths(32, 128) == [32, 64, 128, 256, 256, 256]
    generator, discriminator = build_models(Model(kind="resnet", channels=8), (3, 64, 64), seed=0)
    assert generator.project.out_features == 64 * 16  # (8 x 8, 4, 4)
    assert [b.conv2.out_channels for b in generator.blocks] == [64, 32, 16, 8]
    sides = [b.conv1.in_channels for b in discriminator.blocks]
    assert sides == [3, 8, 16, 32, 64]


class LargestOutput(TorchFunctionMode):
    """Records the element count of every tensor a torch function returns, per sample."""

    def __init__(self) -> None:
        super().__init__()
        self.largest = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if isinstance(out, torch.Tensor) and out.ndim:
            self.largest = max(self.largest, out[0].numel())
        return out


@pytest.mark.parametrize("size", [16, 32, 64])
def test_generator_budget_counts_its_widest_activation(size):
    # trainer.generate caps n by this count, so it must not undercount any tensor.
    cfg = Model(kind="resnet", latent_dim=8, channels=4)
    generator, _ = build_models(cfg, (3, size, size), seed=0)
    with torch.no_grad(), LargestOutput() as mode:
        generator(torch.randn(2, 8))
    assert widest_activation(cfg, (3, size, size)) == mode.largest


def test_discriminator_is_spectral_by_default_without_batch_statistics():
    cfg = Model(kind="resnet", channels=8)
    assert cfg.d_norm == "spectral" and cfg.g_norm == "none"
    generator, discriminator = build_models(cfg, (3, 32, 32), seed=0)
    layers = [m for m in discriminator.modules() if isinstance(m, nn.Conv2d | nn.Linear)]
    assert len(layers) == 4 * 3 + 1  # 4 blocks of 2 convs and a 1x1 shortcut, the head
    for layer in layers:
        assert any(isinstance(p, SpectralNorm) for p in layer.parametrizations["weight"])
    norms = (nn.BatchNorm2d, nn.GroupNorm, nn.LayerNorm)
    assert not any(isinstance(m, norms) for m in [*discriminator.modules(), *generator.modules()])
    # No batch statistics: each example's logit is the same alone as in a batch (train mode).
    x = torch.randn(6, 3, 32, 32)
    together = discriminator(x)
    alone = torch.cat([discriminator(x[i : i + 1]) for i in range(6)])
    assert torch.allclose(together, alone, atol=1e-6)


def test_norm_options_add_their_layers():
    gen, disc = build_models(
        Model(kind="resnet", channels=4, g_norm="batch", d_norm="layer"), (1, 16, 16), seed=0
    )
    assert sum(isinstance(m, nn.BatchNorm2d) for m in gen.modules()) == 2 * 2 + 1
    assert not any(isinstance(m, SpectralNorm) for m in disc.modules())
    assert sum(isinstance(m, nn.GroupNorm) for m in disc.modules()) == 2 * 3
    plain = build_models(Model(kind="resnet", channels=4, d_norm="none"), (1, 16, 16), seed=0)[1]
    assert not any(isinstance(m, SpectralNorm | nn.GroupNorm) for m in plain.modules())


def test_initialisation_depends_on_the_seed_only():
    cfg = Model(kind="resnet", channels=4)
    torch.manual_seed(1)
    a = build_models(cfg, (3, 16, 16), seed=5)[0].state_dict()
    torch.manual_seed(2)
    b = build_models(cfg, (3, 16, 16), seed=5)[0].state_dict()
    c = build_models(cfg, (3, 16, 16), seed=6)[0].state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def image_data(shape: tuple[int, ...]) -> Dataset:
    return Dataset("array", shape, examples=torch.zeros(2, *shape))


@pytest.mark.parametrize("size", [16, 32, 64, 128])
def test_check_model_fits_takes_square_images_of_16_to_128_px(size):
    check_model_fits(Model(kind="resnet"), image_data((3, size, size)))
    check_model_fits(Model(kind="resnet"), image_data((1, size, size)))


@pytest.mark.parametrize(
    ("shape", "reason"),
    [
        ((2,), "model.kind: resnet needs image data, the data has shape (2,)"),
        ((48,), "model.kind: resnet needs image data"),
        ((3, 32, 16), "model.kind: resnet takes square images of 16, 32, 64 or 128 px, got 32x16"),
        ((3, 8, 8), "takes square images of 16, 32, 64 or 128 px, got 8x8"),
        ((3, 24, 24), "got 24x24"),
        ((3, 256, 256), "got 256x256"),
        ((4, 32, 32), "model.kind: resnet takes images of 1 or 3 channels, got 4"),
    ],
)
def test_check_model_fits_names_model_kind_and_the_reason(shape, reason):
    with pytest.raises(DataError, match=reason.replace("(", r"\(").replace(")", r"\)")):
        check_model_fits(Model(kind="resnet"), image_data(shape))


def test_a_mixture_is_refused_for_resnet():
    with pytest.raises(DataError, match="model.kind: resnet needs image data"):
        check_model_fits(Model(kind="resnet"), load_dataset(Data(kind="ring")))


@pytest.mark.parametrize("order", ["d_first", "g_first", "simultaneous"])
def test_four_micro_batches_match_one_batch_in_fp64(tmp_path, order):
    path = images_npy(tmp_path)

    def final(k: int) -> dict[str, torch.Tensor]:
        spec = resnet_spec(
            path, steps=3, precision="fp64", accumulation={"steps": k}, schedule={"order": order}
        )
        return parameters(run(spec)[0])

    one, four = final(1), final(4)
    assert max_relative_difference(one, four) < 1e-9
    # Not vacuous: training moved the parameters, and the spectral norm's vectors with them.
    start = parameters(Trainer(resnet_spec(path, precision="fp64"), evaluate=False))
    assert max_relative_difference(start, one) > 1e-4
    u = next(k for k in one if k.startswith("d.") and k.endswith(".u"))
    assert not torch.equal(start[u], one[u])


@pytest.mark.parametrize(
    ("d_norm", "loss"),
    [("layer", {"kind": "wasserstein", "penalty": "wgan_gp"}), ("none", {"kind": "hinge"})],
)
def test_parity_holds_with_other_norms_losses_and_penalties(tmp_path, d_norm, loss):
    path = images_npy(tmp_path)

    def final(k: int) -> dict[str, torch.Tensor]:
        model = {**SMALL, "d_norm": d_norm}
        spec = resnet_spec(
            path, steps=2, precision="fp64", accumulation={"steps": k}, model=model, loss=loss
        )
        return parameters(run(spec)[0])

    assert max_relative_difference(final(1), final(4)) < 1e-9


def test_batch_norm_in_the_generator_breaks_parity(tmp_path):
    # The documented reason g_norm defaults to none: each micro-batch has its own statistics.
    path = images_npy(tmp_path)

    def final(k: int) -> dict[str, torch.Tensor]:
        model = {**SMALL, "g_norm": "batch"}
        spec = resnet_spec(path, steps=2, precision="fp64", accumulation={"steps": k}, model=model)
        return parameters(run(spec)[0])

    assert max_relative_difference(final(1), final(4)) > 1e-6


def test_resnet_trains_end_to_end_and_writes_image_samples(tmp_path):
    spec = resnet_spec(
        images_npy(tmp_path, channels=3, size=16),
        steps=4,
        accumulation={"steps": 2},
        every={"metrics": 2, "samples": 4, "checkpoint": 4},
    )
    trainer, sinks = run(spec)
    last = dict(sinks.metrics.rows)[4]
    assert np.isfinite([last["loss/d"], last["loss/g"]]).all()
    assert last["audit/leak_d"] == 0.0 and last["audit/leak_g"] == 0.0
    assert trainer.generate(5, seed=0).shape == (5, 3, 16, 16)
    grid = Image.open(io.BytesIO(sinks.samples.images[4]))
    # 64 tiles of 16 px drawn at 32 px, 8 a row, 2 px gaps.
    assert grid.mode == "RGB" and grid.size == (8 * 34 + 2, 8 * 34 + 2)
    # The checkpoint's generator rebuilds from the spec and makes the same images.
    fresh = generate_array(sinks.checkpoints.saved[4], 3, seed=0)
    assert fresh.shape == (3, 3, 16, 16)
    np.testing.assert_allclose(fresh, trainer.generate(3, seed=0).numpy(), atol=1e-6)
    # What one generate call may make is capped by the generator's widest activation.
    loaded = LoadedGenerator.of(sinks.checkpoints.saved[4])
    widest = widest_activation(spec.model, (3, 16, 16))
    assert widest > 3 * 16 * 16
    assert loaded.max_n == GENERATE_BUDGET_BYTES // (widest * 4)


def test_a_grayscale_resnet_run_writes_grayscale_samples(tmp_path):
    spec = resnet_spec(images_npy(tmp_path, channels=1, size=32), steps=1, every={"samples": 1})
    _, sinks = run(spec)
    grid = Image.open(io.BytesIO(sinks.samples.images[1]))
    assert grid.mode == "L" and grid.size == (8 * 34 + 2, 8 * 34 + 2)


def test_a_trainer_refuses_data_resnet_cannot_take(tmp_path):
    spec = resnet_spec(images_npy(tmp_path, channels=3, size=24), steps=1)
    with pytest.raises(DataError, match="model.kind: resnet takes square images"):
        Trainer(spec, evaluate=False)

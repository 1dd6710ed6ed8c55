"""Networks: shapes for every image size, norms, and exact once-per-step spectral norm."""

from __future__ import annotations

import pytest
import torch

from tests.trainer.factories import tiny_spec
from trainer.models import SpectralNorm, build_models, refresh_spectral_norm
from trainer.spec import Model


@pytest.mark.parametrize("size", [8, 16, 32, 64])
@pytest.mark.parametrize("channels", [1, 3])
def test_conv_networks_map_noise_to_images_to_logits(size, channels):
    cfg = Model(kind="conv", latent_dim=16, width=64, d_norm="spectral", g_norm="batch")
    generator, discriminator = build_models(cfg, (channels, size, size), seed=0)
    images = generator(torch.randn(4, 16))
    assert images.shape == (4, channels, size, size)
    assert images.abs().max() <= 1.0  # tanh
    assert discriminator(images).shape == (4,)


@pytest.mark.parametrize("d_norm", ["none", "spectral", "layer", "batch"])
def test_mlp_networks_for_vectors(d_norm):
    generator, discriminator = build_models(Model(d_norm=d_norm, width=32), (2,), seed=0)
    x = generator(torch.randn(5, 64))
    assert x.shape == (5, 2)
    assert discriminator(x).shape == (5,)


def test_initialisation_depends_on_the_seed_only():
    torch.manual_seed(123)
    a, _ = build_models(Model(width=16), (2,), seed=7)
    torch.manual_seed(456)
    b, _ = build_models(Model(width=16), (2,), seed=7)
    c, _ = build_models(Model(width=16), (2,), seed=8)
    pa, pb, pc = (torch.cat([p.flatten() for p in m.parameters()]) for m in (a, b, c))
    assert torch.equal(pa, pb) and not torch.equal(pa, pc)


def test_spectral_norm_divides_by_the_top_singular_value():
    _, discriminator = build_models(Model(d_norm="spectral", width=32), (2,), seed=0)
    for _ in range(50):
        refresh_spectral_norm(discriminator)
    layer = discriminator.layers[2]  # a 32x32 hidden layer
    assert any(isinstance(p, SpectralNorm) for p in layer.parametrizations["weight"])
    sigma = torch.linalg.matrix_norm(layer.weight.detach(), ord=2)
    assert sigma == pytest.approx(1.0, abs=1e-2)  # power iteration converges slowly
    # Forward passes do not move the power iteration (that is what keeps accumulation exact).
    u = layer.parametrizations["weight"][0].u.clone()
    discriminator(torch.randn(8, 2))
    assert torch.equal(u, layer.parametrizations["weight"][0].u)


def test_conv_gan_trains_on_digits_with_evaluation():
    spec = tiny_spec(
        steps=4,
        data={"kind": "digits"},
        model={"kind": "conv", "width": 32, "d_norm": "spectral"},
        every={"eval": 4, "samples": 4},
    )
    from trainer.sinks import memory_sinks
    from trainer.training import Trainer

    trainer = Trainer(spec)
    sinks = memory_sinks()
    trainer.run(sinks)
    last = sinks.metrics.rows[-1][1]
    # 4 steps from random weights: far from real digits (which score about 9.6 and FCD 0).
    assert 1.0 <= last["eval/classifier_score"] < 9.0
    assert 1.0 < last["eval/fcd"] < 1e6
    assert sinks.samples.images[4][:4] == b"\x89PNG"

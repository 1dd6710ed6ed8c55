"""eval/fid and eval/kid (trainer.fid): torch-fidelity's Inception-v3 loaded from
GANFORGE_INCEPTION_WEIGHTS, the metrics against direct computations, the real features'
cache, a short training run that reports both, and a machine without weights.

No Inception weights exist offline, so every test uses a stand-in file
(tests.trainer.inception): torch-fidelity's own FeatureExtractorInceptionV3 with random
values, saved in the format the library loads: same keys, shapes and compute. Inception
costs a fraction of a second per image on a CPU whatever the input size (it resizes to
299 px), so the sets are 8 images and every image goes through it once or twice.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from tests.trainer.factories import merge, tiny_spec
from tests.trainer.inception import write_stand_in_weights
from trainer import fid
from trainer.data import Dataset, load_dataset
from trainer.sinks import memory_sinks
from trainer.spec import Data, TrainSpec
from trainer.training import Trainer

IMAGES = 8  # real images per set
NOISE = (0.1, 0.3, 1.0)  # std of the Gaussian noise the corrupted sets get, in [-1, 1] units


@pytest.fixture(scope="module")
def stand_in_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A stand-in for torch-fidelity's weights-inception-2015-12-05-6726825d.pth: the real
    architecture with random values (no weights can be fetched offline)."""
    return write_stand_in_weights(tmp_path_factory.mktemp("inception"))


@pytest.fixture()
def with_weights(stand_in_weights: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv(fid.WEIGHTS_ENV, str(stand_in_weights))
    return stand_in_weights


@pytest.fixture()
def no_weights(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A machine without weights: no env var, an empty torch hub cache, no download opt-in."""
    monkeypatch.delenv(fid.WEIGHTS_ENV, raising=False)
    monkeypatch.delenv(fid.DOWNLOAD_ENV, raising=False)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))


@pytest.fixture(scope="module")
def extractor(stand_in_weights: Path) -> tuple[nn.Module, str]:
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(fid.WEIGHTS_ENV, str(stand_in_weights))
        path = fid.find_weights()
    assert path == stand_in_weights
    return fid.load_extractor(path, torch.device("cpu"))


def real_images(n: int = IMAGES, seed: int = 0) -> torch.Tensor:
    """Smooth RGB images in [-1, 1]: random 4x4 colour fields upsampled to 16 px."""
    coarse = torch.rand(n, 3, 4, 4, generator=torch.Generator().manual_seed(seed))
    return nn.functional.interpolate(coarse, size=16, mode="bilinear") * 2 - 1


def as_dataset(images: torch.Tensor) -> Dataset:
    return Dataset("array", tuple(images.shape[1:]), examples=images)


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fid-cache")


@pytest.fixture(scope="module")
def reference(extractor: tuple[nn.Module, str], cache_dir: Path) -> fid.RealFeatures:
    """The real images' features, computed through the cache (the first use of cache_dir)."""
    fid.clear_memory_cache()
    model, sha = extractor
    return fid.real_features(
        as_dataset(real_images()), IMAGES, extractor=model, weights_sha256=sha, cache_dir=cache_dir
    )


@pytest.fixture(scope="module")
def corrupted(extractor: tuple[nn.Module, str]) -> list[np.ndarray]:
    """Features of the real images again (noise 0), then with more and more noise."""
    images = real_images()
    noise = torch.randn(images.shape, generator=torch.Generator().manual_seed(1))
    batch = torch.cat([fid.to_uint8(images + std * noise) for std in (0.0, *NOISE)])
    features = fid.inception_features(extractor[0], batch)
    return np.split(features, 1 + len(NOISE))


@pytest.fixture(autouse=True)
def _fresh_memory() -> Iterator[None]:
    yield
    fid.clear_memory_cache()


def test_stand_in_weights_load_through_the_env_var(extractor: tuple[nn.Module, str]) -> None:
    model, sha = extractor
    assert type(model).__name__ == "FeatureExtractorInceptionV3"
    assert len(sha) == 64 and not model.training
    (features,) = model(torch.zeros(2, 3, 16, 16, dtype=torch.uint8))
    assert features.shape == (2, 2048) and torch.isfinite(features).all()
    assert "torchvision" not in fid.inception_module().__dict__


def test_fid_of_the_real_set_against_itself_is_zero_and_grows_with_noise(
    reference: fid.RealFeatures, corrupted: list[np.ndarray]
) -> None:
    real = reference.features
    fids = [fid.frechet_distance(features, real) for features in corrupted]
    assert abs(fids[0]) < 1e-9 * fids[-1]
    assert fids == sorted(fids) and fids[1] > 100 * abs(fids[0]), fids
    kids = [fid.kernel_inception_distance(features, real) for features in corrupted]
    assert abs(kids[0]) < 0.01 * kids[-1]
    assert kids[1:] == sorted(kids[1:]) and kids[-1] > 0, kids


def test_fid_equals_a_direct_frechet_distance_on_the_same_features(
    reference: fid.RealFeatures, corrupted: list[np.ndarray]
) -> None:
    """The textbook formula on the 2048 x 2048 covariances, tr (S1 S2)^(1/2) taken as
    tr (R S1 R)^(1/2) with R = S2^(1/2), from symmetric eigendecompositions (scipy's sqrtm of
    the product takes minutes on 2 cores). 8 features span 7 dimensions: the eigenvalues
    that rounding leaves in the other 2041 are zeroed, else their square roots add up to
    1e-5 of the result."""

    def psd(values: torch.Tensor) -> torch.Tensor:
        return torch.where(values > 1e-10 * values.max(), values, 0.0)

    real = reference.features
    cov_real = np.cov(real, rowvar=False)
    values, vectors = torch.linalg.eigh(torch.from_numpy(cov_real))
    root = (vectors * psd(values).sqrt()) @ vectors.T
    for features in (corrupted[1], corrupted[-1]):
        cov = np.cov(features, rowvar=False)
        inner = torch.linalg.eigvalsh(root @ torch.from_numpy(cov) @ root)
        diff = features.mean(axis=0) - real.mean(axis=0)
        trace_root = float(psd(inner).sqrt().sum())
        direct = diff @ diff + np.trace(cov) + np.trace(cov_real) - 2 * trace_root
        assert fid.frechet_distance(features, real) == pytest.approx(direct, rel=1e-6)


def test_fid_of_sets_larger_than_the_feature_size_matches_the_covariance_formula() -> None:
    """More samples than dimensions takes the QR route; the same formula, small D."""
    rng = np.random.default_rng(0)
    a = rng.normal(size=(300, 12))
    b = rng.normal(size=(200, 12)) * 1.5 + 0.3
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    values, vectors = np.linalg.eigh(cov_a)
    root_a = (vectors * np.sqrt(values)) @ vectors.T
    trace_root = np.sqrt(np.linalg.eigvalsh(root_a @ cov_b @ root_a)).sum()
    diff = a.mean(axis=0) - b.mean(axis=0)
    direct = diff @ diff + np.trace(cov_a) + np.trace(cov_b) - 2 * trace_root
    assert fid.frechet_distance(a, b) == pytest.approx(direct, rel=1e-9)


def test_kid_is_the_unbiased_mmd_of_the_cubic_kernel() -> None:
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(6, 4)), rng.normal(size=(6, 4)) + 0.5
    k = lambda a, b: (a @ b / 4 + 1) ** 3  # noqa: E731
    within = sum(k(x[i], x[j]) + k(y[i], y[j]) for i in range(6) for j in range(6) if i != j)
    cross = sum(k(x[i], y[j]) for i in range(6) for j in range(6))
    assert fid.kernel_inception_distance(x, y) == pytest.approx(within / 30 - 2 * cross / 36)
    # Subsets smaller than the sets: a mean over them, deterministic for one seed.
    big_x, big_y = rng.normal(size=(40, 4)), rng.normal(size=(30, 4))
    first = fid.kernel_inception_distance(big_x, big_y, subsets=5, subset_size=10)
    assert first == fid.kernel_inception_distance(big_x, big_y, subsets=5, subset_size=10)


def test_real_features_are_cached_on_disk_by_the_data_sha256(
    reference: fid.RealFeatures, extractor: tuple[nn.Module, str], cache_dir: Path
) -> None:
    assert reference.origin == "computed"
    assert reference.key == fid.data_sha256(as_dataset(real_images()))
    (stored,) = (cache_dir / "inception").iterdir()
    assert stored.name.startswith(reference.key)
    model, sha = extractor
    again = fid.real_features(
        as_dataset(real_images()), IMAGES, extractor=model, weights_sha256=sha, cache_dir=cache_dir
    )
    assert again.origin == "disk"
    np.testing.assert_array_equal(again.features, reference.features)
    # One changed pixel value is other data, with another key; so is another resolution.
    changed = real_images()
    changed[0, 0, 0, 0] = 1.0 if changed[0, 0, 0, 0] < 0 else -1.0
    assert fid.data_sha256(as_dataset(changed)) != reference.key
    smaller = nn.functional.interpolate(real_images(), size=8, mode="bilinear")
    assert fid.data_sha256(as_dataset(smaller)) != reference.key
    assert (
        fid.data_sha256(as_dataset(real_images())) == reference.key
    )  # and the same data, the same key


def _image_spec(tmp_path: Path, **overrides: Any) -> TrainSpec:
    """A conv GAN on the real images saved as uint8 .npy (what an uploaded archive holds)."""
    path = tmp_path / "images.npy"
    np.save(path, fid.to_uint8(real_images()).numpy())
    base = {
        "steps": 4,
        "data": {"kind": "array", "path": str(path)},
        "model": {"kind": "conv", "latent_dim": 8, "width": 8},
        "eval": {"samples": 16},
        "every": {"metrics": 2, "eval": 2},
    }
    return tiny_spec(**merge(base, overrides))


def test_a_short_image_run_reports_fid_and_kid(
    with_weights: Path,
    reference: fid.RealFeatures,
    cache_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The module's cache already holds these images' features: the run reads them from disk.
    monkeypatch.setenv("GANFORGE_CACHE_DIR", str(cache_dir))
    spec = _image_spec(tmp_path, ema=0.9, every={"eval": 4})  # samples from the EMA weights
    trainer = Trainer(spec)
    sinks = memory_sinks()
    trainer.run(sinks)
    fids, kids = sinks.metrics.series("eval/fid"), sinks.metrics.series("eval/kid")
    assert [step for step, _ in fids] == [4] and [step for step, _ in kids] == [4]
    assert fids[0][1] > 0 and np.isfinite(kids[0][1])
    assert sinks.warnings.messages == []
    assert len(list((cache_dir / "inception").iterdir())) == 1  # no second copy of the data


def test_without_weights_a_run_reports_no_fid_and_one_warning(
    no_weights: None, tmp_path: Path
) -> None:
    trainer = Trainer(_image_spec(tmp_path))
    sinks = memory_sinks()
    trainer.run(sinks)  # evaluations due at steps 2 and 4
    assert not any(name.startswith("eval/") for _, row in sinks.metrics.rows for name in row)
    assert sinks.metrics.rows  # the run itself logged its losses
    ((step, message),) = sinks.warnings.messages
    assert step == 0 and message.startswith("eval/fid, eval/kid: not computed")
    assert fid.WEIGHTS_ENV in message and f"{fid.DOWNLOAD_ENV}=1" in message
    assert "weights-inception-2015-12-05-6726825d.pth" in message
    assert not (tmp_path / "torch-home").exists()  # nothing was downloaded, nor tried


@pytest.mark.parametrize("problem", ["missing", "wrong keys", "not a state dict", "pickle"])
def test_a_bad_weights_file_is_a_warning_naming_it(
    problem: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "weights.pth"
    if problem == "wrong keys":
        torch.save({"fc.weight": torch.zeros(3, 3)}, path)
    elif problem == "not a state dict":
        torch.save([torch.zeros(1)], path)
    elif problem == "pickle":
        torch.save({"fc.weight": Path("/")}, path)  # an object torch will not load safely
    monkeypatch.setenv(fid.WEIGHTS_ENV, str(path))
    with pytest.raises(
        fid.EvaluationUnavailable, match=r"^eval/fid, eval/kid: not computed: "
    ) as info:
        fid.load_extractor(fid.find_weights(), torch.device("cpu"))
    assert str(path) in str(info.value)


def test_weights_in_torch_hubs_cache_are_found_without_the_env_var(
    no_weights: None, stand_in_weights: Path
) -> None:
    with pytest.raises(fid.EvaluationUnavailable):
        fid.find_weights()
    cached = fid.hub_weights_path()
    assert cached.name == "weights-inception-2015-12-05-6726825d.pth"
    cached.parent.mkdir(parents=True)
    cached.symlink_to(stand_in_weights)
    assert fid.find_weights() == cached


def test_fid_is_for_images_other_than_digits(tmp_path: Path) -> None:
    images, vectors = tmp_path / "images.npy", tmp_path / "vectors.npy"
    np.save(images, np.zeros((4, 1, 8, 8), np.uint8))
    np.save(vectors, np.zeros((4, 5), np.float32))
    kinds = [{"kind": "digits"}, {"kind": "ring"}, {"kind": "array", "path": str(vectors)}]
    for data in kinds:
        assert not fid.applies_to(load_dataset(Data.model_validate(data))), data
    assert fid.applies_to(load_dataset(Data(kind="array", path=str(images))))

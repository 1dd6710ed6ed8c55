"""Evaluation metrics: PacGAN mode coverage and the digits classifier score / FCD."""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.model_selection import train_test_split

from trainer import evaluation
from trainer.data import grid_centres, ring_centres
from trainer.evaluation import (
    EVAL_SAMPLES,
    DigitsEvaluator,
    clear_memory_cache,
    load_digits_data,
    mixture_quality,
    train_classifier,
)

RING_STD = 0.01


def test_eval_sample_count_is_pacgans() -> None:
    assert EVAL_SAMPLES == 2500


def test_points_exactly_at_every_centre_cover_all_modes() -> None:
    centres = ring_centres(8, 1.0)
    result = mixture_quality(centres.repeat(3, 1), centres, RING_STD)
    assert result == {"eval/modes": 8.0, "eval/hq": 1.0}
    assert all(type(value) is float for value in result.values())


def test_collapsed_samples_cover_one_mode() -> None:
    centres = ring_centres(8, 1.0)
    samples = centres[3].repeat(100, 1) + 0.5 * RING_STD
    assert mixture_quality(samples, centres, RING_STD) == {"eval/modes": 1.0, "eval/hq": 1.0}


def test_far_away_samples_are_low_quality_and_cover_nothing() -> None:
    centres = ring_centres(8, 1.0)
    samples = 10 * centres  # nearest centre is still well defined, 9 units away
    assert mixture_quality(samples, centres, RING_STD) == {"eval/modes": 0.0, "eval/hq": 0.0}


@pytest.mark.parametrize(("offset", "high_quality"), [(2.99, True), (3.01, False)])
def test_three_std_boundary(offset: float, high_quality: bool) -> None:
    centres = np.array([[0.0, 0.0], [1.0, 0.0]])
    std = 0.05
    # Move diagonally so the test depends on the Euclidean radius, not one coordinate.
    sample = centres[1] + offset * std * np.array([[-1.0, 1.0]]) / math.sqrt(2)
    result = mixture_quality(sample, centres, std)
    assert result == {"eval/modes": float(high_quality), "eval/hq": float(high_quality)}


def test_sample_near_a_centre_but_not_high_quality_does_not_cover_it() -> None:
    centres = ring_centres(8, 1.0)
    samples = torch.stack([centres[0], centres[1] + torch.tensor([4 * RING_STD, 0.0])])
    assert mixture_quality(samples, centres, RING_STD) == {"eval/modes": 1.0, "eval/hq": 0.5}


def test_real_grid_samples_cover_all_25_modes() -> None:
    centres, std = grid_centres(5, 2.0), 0.05
    generator = torch.Generator().manual_seed(0)
    index = torch.randint(25, (EVAL_SAMPLES,), generator=generator)
    samples = centres[index] + std * torch.randn(EVAL_SAMPLES, 2, generator=generator).double()
    result = mixture_quality(samples.numpy(), centres.numpy(), std)
    assert result["eval/modes"] == 25.0
    # A 2-D Gaussian lies within 3 std (radius) with probability 1 - exp(-4.5) = 0.989.
    assert 0.98 < result["eval/hq"] < 0.996


def test_non_finite_samples_are_low_quality() -> None:
    centres = ring_centres(8, 1.0)
    samples = torch.cat([centres[:2], torch.full((2, 2), float("nan"))])
    assert mixture_quality(samples, centres, RING_STD) == {"eval/modes": 2.0, "eval/hq": 0.5}


def test_mismatched_shapes_raise() -> None:
    with pytest.raises(ValueError, match="agree on D"):
        mixture_quality(np.zeros((4, 3)), np.zeros((8, 2)), 0.1)
    with pytest.raises(ValueError, match="at least one"):
        mixture_quality(np.zeros((0, 2)), np.zeros((8, 2)), 0.1)


# Digits -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def digits_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("ganforge-cache")


@pytest.fixture(scope="module")
def evaluator(digits_cache: Path) -> DigitsEvaluator:
    """One real (fully trained) evaluator for the whole module, cached in `digits_cache`."""
    clear_memory_cache()
    return DigitsEvaluator.load(digits_cache)


@pytest.fixture()
def real_digits() -> torch.Tensor:
    x, _ = load_digits_data()
    return x


@pytest.fixture()
def counted_training(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    """Count classifier trainings; the stand-in trains one epoch to keep retrain tests fast."""
    calls: list[int] = []
    real_train: Callable[..., evaluation.DigitsClassifier] = evaluation.train_classifier

    def train(x: torch.Tensor, y: torch.Tensor, **_: object) -> evaluation.DigitsClassifier:
        calls.append(1)
        return real_train(x, y, epochs=1)

    monkeypatch.setattr(evaluation, "train_classifier", train)
    clear_memory_cache()
    yield calls
    clear_memory_cache()


def test_classifier_generalises_to_held_out_digits() -> None:
    x, y = load_digits_data()
    train, test = train_test_split(
        np.arange(len(x)), test_size=0.2, random_state=0, stratify=y.numpy()
    )
    model = train_classifier(x[train], y[train])
    accuracy = (model(x[test]).argmax(dim=1) == y[test]).double().mean().item()
    assert accuracy > 0.95


def test_training_is_deterministic_and_leaves_the_global_rng_alone() -> None:
    x, y = load_digits_data()
    state, threads = torch.get_rng_state(), torch.get_num_threads()
    first, second = train_classifier(x, y, epochs=1), train_classifier(x, y, epochs=1)
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.get_num_threads() == threads
    for (name, a), (_, b) in zip(
        first.state_dict().items(), second.state_dict().items(), strict=True
    ):
        assert torch.equal(a, b), name


def test_real_digits_score_well(evaluator: DigitsEvaluator, real_digits: torch.Tensor) -> None:
    order = torch.randperm(len(real_digits), generator=torch.Generator().manual_seed(0))
    result = evaluator.evaluate(real_digits[order[:500]])
    assert set(result) == {"eval/classifier_score", "eval/fcd"}
    assert result["eval/classifier_score"] > 7.0
    assert result["eval/fcd"] < 5.0
    assert evaluator.evaluate(real_digits)["eval/fcd"] < 1e-6  # the statistics it was fit on


def test_uniform_noise_scores_much_worse(
    evaluator: DigitsEvaluator, real_digits: torch.Tensor
) -> None:
    noise = torch.rand(EVAL_SAMPLES, 64, generator=torch.Generator().manual_seed(1)) * 2 - 1
    real = evaluator.evaluate(real_digits)
    fake = evaluator.evaluate(noise)
    assert fake["eval/classifier_score"] < real["eval/classifier_score"] / 2
    assert fake["eval/fcd"] > 100.0


def test_mode_collapse_scores_near_one(
    evaluator: DigitsEvaluator, real_digits: torch.Tensor
) -> None:
    _, labels = load_digits_data()
    result = evaluator.evaluate(real_digits[labels == 3])
    assert result["eval/classifier_score"] < 1.5  # one class: p(y|x) equals p(y)
    assert result["eval/fcd"] > 50.0
    # Every sample identical: singular covariance must still give a finite distance.
    same = evaluator.evaluate(real_digits[:1].repeat(100, 1))
    assert math.isfinite(same["eval/fcd"]) and same["eval/fcd"] > 50.0


def test_image_shaped_tensors_and_arrays_agree(
    evaluator: DigitsEvaluator, real_digits: torch.Tensor
) -> None:
    flat = evaluator.evaluate(real_digits[:300].numpy())
    images = evaluator.evaluate(real_digits[:300].reshape(300, 1, 8, 8).double())
    assert flat == pytest.approx(images)


def test_bad_digits_input(evaluator: DigitsEvaluator) -> None:
    with pytest.raises(ValueError, match="shape"):
        evaluator.evaluate(np.zeros((10, 3, 8, 8)))
    with pytest.raises(ValueError, match="at least 2"):
        evaluator.evaluate(np.zeros((1, 64)))
    nan = evaluator.evaluate(np.full((10, 64), np.nan))
    assert all(math.isnan(value) for value in nan.values())


def test_second_load_uses_the_disk_cache(
    evaluator: DigitsEvaluator,
    digits_cache: Path,
    counted_training: list[int],
    real_digits: torch.Tensor,
) -> None:
    weights, sidecar = DigitsEvaluator.cache_files(digits_cache)
    mtimes = weights.stat().st_mtime_ns, sidecar.stat().st_mtime_ns
    loaded = DigitsEvaluator.load(digits_cache)
    assert loaded is not evaluator and loaded.origin == "disk"
    assert counted_training == []
    assert (weights.stat().st_mtime_ns, sidecar.stat().st_mtime_ns) == mtimes
    sample = real_digits[:200]
    assert loaded.evaluate(sample) == pytest.approx(evaluator.evaluate(sample))
    assert DigitsEvaluator.load(digits_cache) is loaded  # in-process cache from now on


def test_cache_dir_comes_from_the_environment(
    evaluator: DigitsEvaluator,
    digits_cache: Path,
    counted_training: list[int],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("GANFORGE_CACHE_DIR", str(digits_cache))
    assert evaluation.default_cache_dir() == digits_cache
    assert DigitsEvaluator.load().origin == "disk"
    assert counted_training == []


def copy_cache(source: Path, target: Path) -> tuple[Path, Path]:
    for path in DigitsEvaluator.cache_files(source):
        (target / path.name).write_bytes(path.read_bytes())
    return DigitsEvaluator.cache_files(target)


@pytest.mark.parametrize(
    "damage",
    [
        "flip_byte",
        "truncate",
        "garbage_with_matching_hash",
        "bad_sidecar",
        "old_version",
        "missing_weights",
    ],
)
def test_damaged_cache_is_detected_and_retrained(
    evaluator: DigitsEvaluator,
    digits_cache: Path,
    counted_training: list[int],
    tmp_path: Path,
    damage: str,
) -> None:
    weights, sidecar = copy_cache(digits_cache, tmp_path)
    data = weights.read_bytes()
    meta = json.loads(sidecar.read_text())
    if damage == "flip_byte":
        weights.write_bytes(data[:-10] + bytes([data[-10] ^ 0xFF]) + data[-9:])
    elif damage == "truncate":
        weights.write_bytes(data[: len(data) // 2])
    elif damage == "garbage_with_matching_hash":
        weights.write_bytes(b"not safetensors")
        meta["sha256"] = hashlib.sha256(b"not safetensors").hexdigest()
        sidecar.write_text(json.dumps(meta))
    elif damage == "bad_sidecar":
        sidecar.write_text("{not json")
    elif damage == "old_version":
        sidecar.write_text(json.dumps(meta | {"version": "digits-mlp-v0"}))
    else:
        weights.unlink()

    loaded = DigitsEvaluator.load(tmp_path)
    assert loaded.origin == "trained"
    assert counted_training == [1]
    # The rewritten cache is whole again: a fresh process loads it without training.
    clear_memory_cache()
    assert DigitsEvaluator.load(tmp_path).origin == "disk"
    assert counted_training == [1]
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_unwritable_cache_dir_still_evaluates(
    counted_training: list[int], tmp_path: Path, real_digits: torch.Tensor
) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("a file where the cache dir should be")
    loaded = DigitsEvaluator.load(blocker / "cache")
    assert counted_training == [1]
    assert math.isfinite(loaded.evaluate(real_digits[:50])["eval/fcd"])

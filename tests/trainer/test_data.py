"""Datasets: the benchmark mixtures, bundled digits, uploaded arrays."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from trainer.data import (
    DataError,
    check_model_fits,
    grid_centres,
    load_array,
    load_dataset,
    ring_centres,
)
from trainer.spec import Data, Model


def test_ring_and_grid_are_the_pacgan_mixtures():
    ring = ring_centres(8, 1.0)
    assert ring.shape == (8, 2)
    assert torch.allclose(ring.norm(dim=1), torch.ones(8, dtype=torch.float64))
    grid = grid_centres(5, 2.0)
    assert sorted(set(grid[:, 0].tolist())) == [-4.0, -2.0, 0.0, 2.0, 4.0]
    assert grid.shape == (25, 2)
    assert load_dataset(Data(kind="ring")).std == 0.01
    assert load_dataset(Data(kind="grid")).std == 0.05


def test_mixture_samples_sit_on_their_modes_and_follow_the_generator():
    dataset = load_dataset(Data(kind="grid"))
    a = dataset.sample(4000, torch.Generator().manual_seed(3))
    b = dataset.sample(4000, torch.Generator().manual_seed(3))
    assert torch.equal(a, b)
    nearest = torch.cdist(a, dataset.centres.to(a)).min(dim=1).values
    assert nearest.max() < 6 * 0.05  # all within 6 std of a centre
    assert 0.04 < a[:, 0].sub(a[:, 0].round()).std() < 0.06  # the spread is the std


def test_digits_are_8x8_images_in_minus_one_one():
    dataset = load_dataset(Data(kind="digits"))
    assert dataset.shape == (1, 8, 8) and dataset.is_image
    assert dataset.examples is not None and len(dataset.examples) == 1797
    assert dataset.examples.min() == -1.0 and dataset.examples.max() == 1.0


def test_arrays_load_from_npy_and_npz(tmp_path):
    np.save(tmp_path / "u8.npy", np.full((10, 3, 16, 16), 255, dtype=np.uint8))
    images = load_array(tmp_path / "u8.npy")
    assert images.shape == (10, 3, 16, 16) and torch.all(images == 1.0)
    np.savez(tmp_path / "gray.npz", x=np.zeros((5, 8, 8), dtype=np.float64))
    assert load_array(tmp_path / "gray.npz").shape == (5, 1, 8, 8)
    np.save(tmp_path / "vec.npy", np.ones((7, 5), dtype=np.float32))
    dataset = load_dataset(Data(kind="array", path=str(tmp_path / "vec.npy")))
    assert dataset.shape == (5,)


@pytest.mark.parametrize(
    ("array", "message"),
    [
        (np.zeros((4,), dtype=np.float32), r"is not \(N, D\)"),
        (np.zeros((4, 2), dtype=np.int64), "is not float or uint8"),
        (np.array([[np.nan, 1.0]], dtype=np.float32), "NaN"),
    ],
)
def test_bad_arrays_are_refused_with_the_reason(tmp_path, array, message):
    np.save(tmp_path / "bad.npy", array)
    with pytest.raises(DataError, match=message):
        load_array(tmp_path / "bad.npy")


def test_unreadable_array_and_dataset_id_without_service(tmp_path):
    (tmp_path / "junk.npy").write_bytes(b"not numpy")
    with pytest.raises(DataError, match="data.path: cannot read"):
        load_array(tmp_path / "junk.npy")
    with pytest.raises(DataError, match="data.dataset_id"):
        load_dataset(Data(kind="array", dataset_id="abc"))
    resolved = load_dataset(
        Data(kind="array", dataset_id="abc"),
        resolve_dataset=lambda _: (
            np.save(tmp_path / "ok.npy", np.ones((3, 2))),
            tmp_path / "ok.npy",
        )[1],
    )
    assert resolved.shape == (2,)


def test_conv_needs_square_power_of_two_images():
    check_model_fits(Model(kind="conv"), load_dataset(Data(kind="digits")))
    ring = load_dataset(Data(kind="ring"))
    with pytest.raises(DataError, match="model.kind: conv needs image data"):
        check_model_fits(Model(kind="conv"), ring)

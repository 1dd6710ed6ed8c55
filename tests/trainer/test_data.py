"""Datasets: the benchmark mixtures, bundled digits, uploaded arrays (uint8 memory-mapped),
local folders and archives of images."""

from __future__ import annotations

import io
import json
import logging
import tracemalloc
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from tests.trainer.factories import tiny_spec
from trainer.cli import cli
from trainer.data import (
    DataError,
    check_model_fits,
    grid_centres,
    load_array,
    load_dataset,
    ring_centres,
)
from trainer.sinks import memory_sinks
from trainer.spec import Data, Model
from trainer.training import Trainer


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
        (np.array([[1e300, 1.0]], dtype=np.float64), "infinite"),  # beyond float32
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


# ---- uint8 arrays: memory-mapped, scaled per drawn row -----------------------------------


def _uint8_images(path: Path, shape: tuple[int, ...], seed: int = 0) -> Path:
    array = np.random.default_rng(seed).integers(0, 256, size=shape, dtype=np.uint8)
    np.save(path, array)
    return path


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_a_mapped_uint8_array_samples_bit_identically_to_the_whole_array_scaled(tmp_path, dtype):
    path = _uint8_images(tmp_path / "u8.npy", (50, 3, 8, 8))
    dataset = load_dataset(Data(kind="array", path=str(path))).to(torch.device("cpu"), dtype)
    assert isinstance(dataset.stored, np.memmap) and dataset.stored.dtype == np.uint8
    assert dataset.examples is None and dataset.shape == (3, 8, 8) and dataset.count == 50
    # The old way: scale the whole array to float32, move it, index it.
    whole = load_array(path).to(dtype=dtype)
    for seed in range(3):
        drawn = dataset.sample(64, torch.Generator().manual_seed(seed))
        index = torch.randint(50, (64,), generator=torch.Generator().manual_seed(seed))
        assert drawn.dtype == dtype and drawn.is_contiguous()
        assert torch.equal(drawn, whole[index])
    assert torch.equal(
        dataset.reference(10),
        whole[torch.randint(50, (10,), generator=torch.Generator().manual_seed(12345))],
    )
    assert whole.min() == -1.0 and whole.max() == 1.0


def test_a_gray_uint8_array_gains_a_channel_and_an_npz_is_read_whole(tmp_path):
    gray = np.random.default_rng(1).integers(0, 256, size=(20, 8, 8), dtype=np.uint8)
    np.save(tmp_path / "gray.npy", gray)
    np.savez(tmp_path / "gray.npz", x=gray)
    mapped = load_dataset(Data(kind="array", path=str(tmp_path / "gray.npy")))
    packed = load_dataset(Data(kind="array", path=str(tmp_path / "gray.npz")))
    assert mapped.shape == packed.shape == (1, 8, 8) and mapped.is_image
    assert isinstance(mapped.stored, np.memmap) and not isinstance(packed.stored, np.memmap)
    a = mapped.sample(30, torch.Generator().manual_seed(5))
    b = packed.sample(30, torch.Generator().manual_seed(5))
    assert torch.equal(a, b) and a.shape == (30, 1, 8, 8)


def test_a_uint8_npy_is_not_read_into_memory(tmp_path):
    """The file is 24 MiB: scaled whole to float32 it took 96 MiB more; mapped, a draw of 64
    rows allocates under 2 MiB (the rows, as uint8 and as float32)."""
    path = _uint8_images(tmp_path / "big.npy", (8192, 3, 32, 32))
    size = path.stat().st_size
    tracemalloc.start()
    try:
        dataset = load_dataset(Data(kind="array", path=str(path)))
        batch = dataset.sample(64, torch.Generator().manual_seed(0))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert batch.shape == (64, 3, 32, 32)
    assert peak < size / 8, f"peak {peak} bytes while reading a {size}-byte array"


# ---- data.kind images: a local folder or archive ----------------------------------------


def _png(seed: int, size: tuple[int, int] = (12, 10)) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, size=(size[1], size[0], 3))
    buffer = io.BytesIO()
    Image.fromarray(pixels.astype(np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def _image_folder(root: Path, count: int) -> Path:
    root.mkdir()
    for i in range(count):
        (root / f"img_{i:02d}.png").write_bytes(_png(i))
    (root / "notes.txt").write_text("not an image")
    return root


def _images_spec(path: Path, **data: object) -> dict[str, object]:
    return {
        "steps": 3,
        "data": {"kind": "images", "path": str(path), "resolution": 8, **data},
        "model": {"kind": "conv", "latent_dim": 8, "width": 8},
        "every": {"metrics": 1, "samples": 3, "checkpoint": 3, "eval": 0},
    }


def test_images_train_from_a_folder_and_skipped_files_are_logged(tmp_path, caplog):
    folder = _image_folder(tmp_path / "pictures", 12)
    spec = tiny_spec(**_images_spec(folder))
    with caplog.at_level(logging.WARNING, logger="trainer.data"):
        trainer = Trainer(spec, evaluate=False)
    assert "skipped 1 of 13 files (notes.txt: not an image)" in caplog.text
    assert str(folder) in caplog.text
    assert trainer.dataset.kind == "images" and trainer.dataset.shape == (3, 8, 8)
    assert trainer.dataset.count == 12
    real = trainer.dataset.sample(16, torch.Generator().manual_seed(0))
    assert real.min() >= -1.0 and real.max() <= 1.0 and real.dtype == torch.float32
    sinks = memory_sinks()
    result = trainer.run(sinks)
    assert result.step == 3
    assert [step for step, _ in sinks.metrics.rows] == [1, 2, 3]
    # One channel when asked for (the pictures are in colour).
    gray = load_dataset(Data(kind="images", path=str(folder), resolution=8, channels=1))
    assert gray.shape == (1, 8, 8)


def test_ganforge_train_reads_a_zip_of_images(tmp_path):
    archive = tmp_path / "pictures.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for i in range(10):
            zf.writestr(f"set/img_{i}.png", _png(i, size=(16, 16)))
        zf.writestr("set/broken.png", b"\\x89PNG not really")
    spec_path = tmp_path / "spec.json"
    spec_path.write_text(json.dumps(tiny_spec(**_images_spec(archive)).model_dump(mode="json")))
    done = CliRunner().invoke(
        cli, ["train", str(spec_path), "--out", str(tmp_path / "run"), "--no-progress"]
    )
    assert done.exit_code == 0, done.output
    run = tmp_path / "run"
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3]
    sample = Image.open(run / "samples" / "step_000003.png")
    assert sample.mode == "RGB"  # an image grid, not a scatter plot
    assert (run / "checkpoints" / "step_000003.safetensors").exists()


def test_images_with_nothing_usable_name_data_path(tmp_path):
    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "a.txt").write_text("text")
    with pytest.raises(DataError, match=r"^data\.path: .*junk: no usable image among 1 files"):
        load_dataset(Data(kind="images", path=str(junk), resolution=8))
    with pytest.raises(DataError, match=r"^data\.path: cannot read .*missing"):
        load_dataset(Data(kind="images", path=str(tmp_path / "missing"), resolution=8))
    spec_path = tmp_path / "spec.json"
    spec_path.write_text(
        json.dumps({"data": {"kind": "images", "path": str(junk), "resolution": 8}})
    )
    done = CliRunner().invoke(cli, ["train", str(spec_path), "--out", str(tmp_path / "run")])
    assert done.exit_code == 2
    assert "error: data.path:" in done.output and "no usable image" in done.output

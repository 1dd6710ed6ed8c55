"""PNG rendering of sample grids and scatter plots."""

from __future__ import annotations

import io
import threading

import numpy as np
import pytest
import torch
from PIL import Image

from trainer.samples import render_png


def decode(png: bytes) -> Image.Image:
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    image = Image.open(io.BytesIO(png))
    image.load()
    return image


def grid_size(count: int, tile: int, columns: int = 8) -> tuple[int, int]:
    """(width, height) of a grid of `count` tiles of `tile` px with 2 px gaps and frame."""
    rows = -(-count // columns)
    return min(count, columns) * (tile + 2) + 2, rows * (tile + 2) + 2


def test_grayscale_digits_grid_is_upscaled_to_32px_tiles() -> None:
    images = np.zeros((16, 1, 8, 8), dtype=np.float32)
    image = decode(render_png(images))
    assert image.mode == "L"
    assert image.size == grid_size(16, 32)


def test_grid_shows_at_most_64_images_8_per_row() -> None:
    image = decode(render_png(np.zeros((100, 3, 32, 32))))
    assert image.mode == "RGB"
    assert image.size == grid_size(64, 32)  # 8 x 8 tiles, no 13th row


def test_partial_row_and_large_tiles_are_not_upscaled() -> None:
    image = decode(render_png(np.zeros((3, 1, 40, 40))))
    assert image.size == grid_size(3, 40)


def test_tiles_hold_their_pixels_clipped_and_gaps_are_grey() -> None:
    images = np.empty((2, 1, 8, 8))
    images[0] = 1.0
    images[1] = -5.0  # outside [-1, 1]: clipped to black, not wrapped around
    images[1, 0, 0, 0] = 7.0  # clipped to white
    pixels = np.asarray(decode(render_png(images)))
    assert (pixels[2:34, 2:34] == 255).all()  # first tile white, upscaled 4x
    assert (pixels[2:6, 36:40] == 255).all()  # top-left source pixel of the second tile
    assert (pixels[6:34, 36:68] == 0).all()
    assert (pixels[:, 34:36] == 128).all() and (pixels[:2] == 128).all()  # gaps
    assert (pixels[:, -2:] == 128).all() and (pixels[-2:] == 128).all()


def test_grid_colour_channels_and_midpoint() -> None:
    images = np.zeros((1, 3, 8, 8))
    images[0, 0] = 1.0  # red channel full, green at 0 -> mid grey level, blue empty
    images[0, 2] = -1.0
    pixels = np.asarray(decode(render_png(images)))
    assert tuple(pixels[10, 10]) == (255, 128, 0)


def test_grid_accepts_tensors_and_stores_title() -> None:
    images = torch.zeros(4, 1, 8, 8, requires_grad=True)
    image = decode(render_png(images, title="step 200"))
    assert image.text["Title"] == "step 200"


def test_nan_images_render() -> None:
    image = decode(render_png(np.full((2, 1, 8, 8), np.nan)))
    assert image.size == grid_size(2, 32)


def test_scatter_2d_over_real_is_about_480px_and_has_both_colours() -> None:
    rng = np.random.default_rng(0)
    real = rng.normal(size=(500, 2))
    samples = rng.normal(size=(500, 2)) * 0.5
    image = decode(render_png(samples, real=real, title="ring8"))
    assert image.size == (480, 480)
    pixels = np.asarray(image.convert("RGB")).astype(int)
    red, green, blue = pixels[..., 0], pixels[..., 1], pixels[..., 2]
    orange = (red > 200) & (green > 90) & (green < 180) & (blue < 80)
    grey = (abs(red - green) < 8) & (abs(green - blue) < 8) & (red > 120) & (red < 190)
    assert orange.sum() > 200
    assert grey.sum() > 200


def test_scatter_without_real_draws_the_samples() -> None:
    samples = np.random.default_rng(1).uniform(-3, 3, size=(300, 2))
    image = decode(render_png(samples))
    assert image.size == (480, 480)


def test_scatter_high_dimensional_points_plot_two_coordinates() -> None:
    rng = np.random.default_rng(2)
    image = decode(render_png(rng.normal(size=(200, 5)), real=rng.normal(size=(200, 5))))
    assert image.size == (480, 480)


def test_scatter_of_one_point_and_nan_points_render() -> None:
    decode(render_png(np.zeros((1, 2))))
    decode(render_png(np.array([[np.nan, 0.0], [1.0, 2.0]])))


def test_scatter_renders_from_threads() -> None:
    results: list[bytes] = []
    points = np.random.default_rng(3).normal(size=(100, 2))

    def draw() -> None:
        results.append(render_png(points, real=points))

    threads = [threading.Thread(target=draw) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(results) == 3
    assert all(decode(png).size == (480, 480) for png in results)


@pytest.mark.parametrize(
    ("samples", "real", "message"),
    [
        (np.zeros(5), None, "shape"),
        (np.zeros((2, 8, 8)), None, "shape"),
        (np.zeros((2, 1, 1, 8, 8)), None, "shape"),
        (np.zeros((2, 2, 8, 8)), None, "channels"),
        (np.zeros((0, 1, 8, 8)), None, "no image"),
        (np.zeros((5, 1)), None, "D >= 2"),
        (np.zeros((0, 2)), None, "empty"),
        (np.zeros((5, 2)), np.zeros((5, 3)), "real"),
    ],
)
def test_bad_shapes_raise_value_error(
    samples: np.ndarray, real: np.ndarray | None, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        render_png(samples, real=real)

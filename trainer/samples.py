"""Sample pictures as PNG bytes: an image grid for image data, a scatter plot for vectors.

Nothing here touches files; a `SampleSink` decides where the bytes go. Matplotlib is used
through `Figure` and the Agg canvas, never `pyplot`, so worker threads can render at once.
"""

from __future__ import annotations

import io
import math

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image
from PIL.PngImagePlugin import PngInfo

GRID_MAX_IMAGES = 64
GRID_COLUMNS = 8
GRID_MIN_TILE_PX = 32
GRID_GAP_PX = 2
# Mid grey, so the gaps show between tiles whether the images are dark (digits) or light.
GRID_GAP_LEVEL = 128
SCATTER_PX = 480
_SCATTER_DPI = 100
_MARGIN = 0.10  # fraction of the data's extent left free on each side of a scatter plot

ArrayLike = np.ndarray | torch.Tensor


def _as_numpy(array: ArrayLike) -> np.ndarray:
    if isinstance(array, torch.Tensor):
        # Samples may still live on the GPU or carry autograd history.
        return array.detach().to("cpu", torch.float64).numpy()
    return np.asarray(array, dtype=np.float64)


def render_png(
    samples: ArrayLike, *, real: ArrayLike | None = None, title: str | None = None
) -> bytes:
    """Render samples as PNG bytes: a grid for (N, C, H, W) images, a scatter for (N, D) points.

    Images are expected in [-1, 1] (values outside are clipped) with C = 1 or 3; `real` is
    ignored for them and `title` is stored as the PNG's Title text chunk. Points are drawn
    over `real` (when given) and only their first two coordinates are plotted.
    Raises ValueError for any other shape.
    """
    array = _as_numpy(samples)
    if array.ndim == 4:
        return image_grid_png(array, title=title)
    if array.ndim == 2:
        return scatter_png(array, real=None if real is None else _as_numpy(real), title=title)
    raise ValueError(
        f"samples must be images (N, C, H, W) or points (N, D), got shape {tuple(array.shape)}"
    )


def image_grid_png(images: np.ndarray, *, title: str | None = None) -> bytes:
    """Encode the first 64 of (N, C, H, W) images in [-1, 1] as a PNG grid, 8 per row.

    Each tile is enlarged by an integer factor (nearest neighbour) to at least 32 px and
    tiles are separated, and framed, by 2 px of mid grey. Mode "L" for C = 1, "RGB" for C = 3.
    """
    if images.ndim != 4:
        raise ValueError(f"images must have shape (N, C, H, W), got {tuple(images.shape)}")
    count, channels, height, width = images.shape
    if channels not in (1, 3):
        raise ValueError(f"images must have 1 or 3 channels, got {channels} (shape {images.shape})")
    if count == 0 or height == 0 or width == 0:
        raise ValueError(f"no image to draw: shape {tuple(images.shape)}")

    # A diverged generator yields NaN/inf; draw those as mid grey / the extremes, not crash.
    tiles = np.nan_to_num(images[:GRID_MAX_IMAGES].astype(np.float64), nan=0.0)
    tiles = np.clip(tiles, -1.0, 1.0)
    pixels = np.rint((tiles + 1.0) * 127.5).astype(np.uint8)  # (n, C, H, W)
    scale = max(1, math.ceil(GRID_MIN_TILE_PX / min(height, width)))
    pixels = pixels.repeat(scale, axis=2).repeat(scale, axis=3)
    pixels = pixels.transpose(0, 2, 3, 1)  # (n, h, w, C): the layout Pillow expects
    n, tile_h, tile_w = pixels.shape[:3]

    columns = min(GRID_COLUMNS, n)
    rows = math.ceil(n / GRID_COLUMNS)
    canvas_h = rows * (tile_h + GRID_GAP_PX) + GRID_GAP_PX
    canvas_w = columns * (tile_w + GRID_GAP_PX) + GRID_GAP_PX
    canvas = np.full((canvas_h, canvas_w, channels), GRID_GAP_LEVEL, dtype=np.uint8)
    for index in range(n):
        top = GRID_GAP_PX + (index // GRID_COLUMNS) * (tile_h + GRID_GAP_PX)
        left = GRID_GAP_PX + (index % GRID_COLUMNS) * (tile_w + GRID_GAP_PX)
        canvas[top : top + tile_h, left : left + tile_w] = pixels[index]

    image = Image.fromarray(canvas[:, :, 0] if channels == 1 else canvas)
    info = PngInfo()
    if title:
        info.add_text("Title", title)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", pnginfo=info)
    return buffer.getvalue()


def _square_limits(points: np.ndarray) -> tuple[tuple[float, float], tuple[float, float]]:
    """Equal-span x and y limits around the finite points, with a margin on every side."""
    finite = points[np.isfinite(points).all(axis=1)]
    if len(finite) == 0:
        return (-1.0, 1.0), (-1.0, 1.0)
    low, high = finite.min(axis=0), finite.max(axis=0)
    centre = (low + high) / 2
    half = float((high - low).max()) / 2
    # All points on one spot would give a zero-size frame; show a unit square instead.
    half = half * (1 + 2 * _MARGIN) if half > 0 else 1.0
    return (
        (float(centre[0] - half), float(centre[0] + half)),
        (float(centre[1] - half), float(centre[1] + half)),
    )


def scatter_png(
    samples: np.ndarray,
    *,
    real: np.ndarray | None = None,
    title: str | None = None,
    label: str = "generated",
) -> bytes:
    """A 480x480 PNG scatter of generated points (orange) over real points (grey).

    Both arrays are (N, D) with D >= 2; only the first two coordinates are drawn (and the
    title says so when D > 2). The frame is square, fitted to the real points (to the
    samples when there is no `real`) with a 10% margin, so a generator that drifts away
    shows as points leaving the frame rather than as a shrunken real distribution.
    `label` names the orange points in the legend (a dataset's preview: its examples).
    """
    if samples.ndim != 2 or samples.shape[1] < 2:
        raise ValueError(f"points must have shape (N, D) with D >= 2, got {tuple(samples.shape)}")
    if len(samples) == 0:
        raise ValueError("no points to draw: samples is empty")
    if real is not None and (real.ndim != 2 or real.shape[1] != samples.shape[1]):
        raise ValueError(
            f"real must have shape (M, {samples.shape[1]}) like the samples, "
            f"got {tuple(real.shape)}"
        )
    dims = samples.shape[1]
    reference = real if real is not None and len(real) > 0 else samples
    xlim, ylim = _square_limits(reference[:, :2])

    figure = Figure(
        figsize=(SCATTER_PX / _SCATTER_DPI, SCATTER_PX / _SCATTER_DPI), dpi=_SCATTER_DPI
    )
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    if real is not None and len(real) > 0:
        axes.scatter(real[:, 0], real[:, 1], s=2, c="0.6", linewidths=0, label="real")
    axes.scatter(samples[:, 0], samples[:, 1], s=3, c="tab:orange", linewidths=0, label=label)
    axes.set_xlim(*xlim)
    axes.set_ylim(*ylim)
    axes.set_aspect("equal")
    axes.tick_params(labelsize=7)
    axes.legend(loc="upper right", fontsize=7, markerscale=3, frameon=False)

    heading = title or ""
    if dims > 2:
        heading = f"{heading} (first 2 of {dims} dims)".strip()
    if heading:
        axes.set_title(heading, fontsize=9)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=_SCATTER_DPI)
    return buffer.getvalue()

"""GET /api/datasets/{id}/preview.png on a real database (SQLite and PostgreSQL): the real
images of an uploaded dataset as a grid, vectors as a scatter plot, the reasons for none."""

from __future__ import annotations

import io
import math
import tracemalloc
from pathlib import Path
from typing import Any

import numpy as np
from fastapi.testclient import TestClient
from PIL import Image

from app.auth import COOKIE
from app.routes.dataset_preview import preview_png
from app.tokens import create_token
from trainer.samples import GRID_COLUMNS, GRID_GAP_PX, GRID_MIN_TILE_PX


def upload(client: TestClient, array: np.ndarray[Any, Any], name: str = "d.npy") -> str:
    buffer = io.BytesIO()
    np.save(buffer, array)
    made = client.post("/api/datasets", files={"file": (name, buffer.getvalue())})
    assert made.status_code == 201, made.text
    dataset_id: str = made.json()["id"]
    return dataset_id


def preview(client: TestClient, dataset_id: str, **headers: str) -> Any:
    return client.get(f"/api/datasets/{dataset_id}/preview.png", headers=headers)


def tile(image: np.ndarray[Any, Any], index: int, size: int) -> np.ndarray[Any, Any]:
    """The index-th tile of a grid of `size`-pixel tiles, as trainer.samples lays them out."""
    top = GRID_GAP_PX + (index // GRID_COLUMNS) * (size + GRID_GAP_PX)
    left = GRID_GAP_PX + (index % GRID_COLUMNS) * (size + GRID_GAP_PX)
    return image[top : top + size, left : left + size]


def grid_side(count: int, size: int) -> int:
    return count * (size + GRID_GAP_PX) + GRID_GAP_PX


def test_color_images_make_a_grid_of_every_image(client):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(10, 3, 8, 8), dtype=np.uint8)
    answer = preview(client, upload(client, images, "faces.npy"))
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"] == "image/png"
    png = Image.open(io.BytesIO(answer.content))
    scale = math.ceil(GRID_MIN_TILE_PX / 8)  # tiles are enlarged to 32 px
    assert png.mode == "RGB" and png.text["Title"] == "faces.npy"
    assert png.size == (grid_side(8, 8 * scale), grid_side(2, 8 * scale))  # 8 + 2 in 2 rows
    pixels = np.asarray(png)
    for index in (0, 7, 9):  # each tile is its image, enlarged: the real pixels
        expected = images[index].transpose(1, 2, 0).repeat(scale, 0).repeat(scale, 1)
        assert np.array_equal(tile(pixels, index, 8 * scale), expected)


def test_a_large_gray_set_shows_64_evenly_spaced_images_first_and_last(client):
    # Each image one flat gray level, so a tile tells which image it is.
    levels = np.arange(100, dtype=np.uint8) * 2
    images = np.broadcast_to(levels[:, None, None], (100, 16, 16)).copy()
    answer = preview(client, upload(client, images))
    assert answer.status_code == 200, answer.text
    png = Image.open(io.BytesIO(answer.content))
    assert png.mode == "L" and png.size == (grid_side(8, 32), grid_side(8, 32))  # 8 x 8
    pixels = np.asarray(png)
    shown = [int(tile(pixels, i, 32)[0, 0]) for i in range(64)]
    assert shown[0] == 0 and shown[-1] == 198  # the first and the last image
    assert shown == sorted(shown) and len(set(shown)) == 64


def test_vectors_are_a_scatter_plot_and_single_numbers_a_422(client):
    points = np.random.default_rng(1).normal(size=(300, 5)).astype(np.float32)
    answer = preview(client, upload(client, points))
    assert answer.status_code == 200, answer.text
    assert Image.open(io.BytesIO(answer.content)).size == (480, 480)

    numbers = upload(client, np.arange(6, dtype=np.float32).reshape(6, 1))
    refused = preview(client, numbers)
    assert refused.status_code == 422
    detail = refused.json()["detail"]
    assert numbers in detail and "single numbers (shape (6, 1))" in detail


def test_unknown_dataset_is_404_and_a_lost_file_too(client):
    missing = preview(client, "nope")
    assert missing.status_code == 404 and missing.json()["detail"] == "dataset nope not found"
    dataset_id = upload(client, np.zeros((4, 2), dtype=np.float32))
    root: Path = client.app.state.store.root  # type: ignore[attr-defined]
    (root / "datasets" / f"{dataset_id}.npy").unlink()
    gone = preview(client, dataset_id)
    assert gone.status_code == 404 and "missing from the store" in gone.json()["detail"]


def test_the_etag_spares_a_second_render(client):
    dataset_id = upload(client, np.zeros((4, 1, 8, 8), dtype=np.uint8))
    first = preview(client, dataset_id)
    etag = first.headers["etag"]
    sha256 = client.get(f"/api/datasets/{dataset_id}").json()["sha256"]
    assert etag == f'"{sha256}"' and first.headers["cache-control"] == "private, no-cache"
    again = preview(client, dataset_id, **{"If-None-Match": f'W/"other", {etag}'})
    assert again.status_code == 304 and again.content == b""
    assert preview(client, dataset_id, **{"If-None-Match": '"other"'}).status_code == 200


def test_it_needs_a_token_like_other_downloads(client):
    dataset_id = upload(client, np.zeros((4, 1, 8, 8), dtype=np.uint8))
    with client.app.state.sessions() as session:  # type: ignore[attr-defined]
        token = create_token(session.connection(), "viewer")
        session.commit()
    assert preview(client, dataset_id).status_code == 401
    assert preview(client, dataset_id, authorization=f"Bearer {token}").status_code == 200
    client.cookies.set(COOKIE, token)  # what the dashboard's <img> sends
    try:
        assert preview(client, dataset_id).status_code == 200
    finally:
        client.cookies.clear()


def test_a_large_stored_array_is_read_memory_mapped(tmp_path):
    """24 MiB of images: only the 64 rows drawn are read into memory."""
    path = tmp_path / "big.npy"
    np.save(path, np.random.default_rng(2).integers(0, 256, (8192, 3, 32, 32), dtype=np.uint8))
    tracemalloc.start()
    try:
        png = preview_png(path, title="big")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert Image.open(io.BytesIO(png)).size == (grid_side(8, 32), grid_side(8, 32))
    assert peak < path.stat().st_size / 4, f"peak {peak} bytes for a {path.stat().st_size} file"

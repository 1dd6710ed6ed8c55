"""An image job end to end in a real browser: a zip of PNGs uploaded to the service, a
`model.kind: resnet` job trained on it by the real worker, and its job page showing the
RGB sample grid, the checkpoint and fresh samples generated from it."""

from __future__ import annotations

import io
import zipfile
from typing import Any

import numpy as np
from PIL import Image

from tests.browser.conftest import screenshot
from tests.browser.test_new_job_page import _run_to_the_end
from tests.service.conftest import Service

SIDE = 16


def _png_zip(count: int) -> bytes:
    """`count` 24x20 RGB PNGs (cropped and scaled to 16 px by the upload), plus a note."""
    rng = np.random.default_rng(7)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for i in range(count):
            pixels = rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)
            png = io.BytesIO()
            Image.fromarray(pixels).save(png, format="PNG")
            archive.writestr(f"faces/{i:03d}.png", png.getvalue())
        archive.writestr("faces/README.txt", "not an image")
    return buffer.getvalue()


def _image_size(page: Any, selector: str) -> tuple[int, int]:
    page.wait_for_function(
        "s => { const i = document.querySelector(s); return i?.complete && i.naturalWidth > 0 }",
        arg=selector,
    )
    width, height = page.locator(selector).evaluate("i => [i.naturalWidth, i.naturalHeight]")
    return int(width), int(height)


def test_a_resnet_job_on_uploaded_pngs_shows_its_samples_and_generates(page, live: Service):
    with live.client() as client:
        made = client.post(
            "/api/datasets",
            files={"file": ("faces.zip", _png_zip(24))},
            data={"resolution": str(SIDE)},
        )
        assert made.status_code == 201, made.text
        dataset = made.json()
        assert dataset["shape"] == [24, 3, SIDE, SIDE] and dataset["count"] == 24
        assert [s["name"] for s in dataset["skipped"]] == ["faces/README.txt"]
        spec = {
            "steps": 6,
            "batch_size": 8,
            "data": {"kind": "array", "dataset_id": dataset["id"]},
            "model": {"kind": "resnet", "channels": 4, "latent_dim": 8},
            "every": {"metrics": 1, "samples": 3, "checkpoint": 6, "eval": 0},
        }
        answer = client.post("/api/jobs", json={"spec": spec, "name": "resnet on pngs"})
        assert answer.status_code == 201, answer.text
        job = answer.json()
    assert job["spec"]["model"]["d_norm"] == "spectral"  # resnet's default
    done = _run_to_the_end(live, job["id"])
    assert done["status"] == "succeeded", done

    page.goto(f"/jobs/{job['id']}")
    page.wait_for_function("() => window.gfJob && window.gfJob.ready === true")
    page.locator("#job-status", has_text="succeeded").wait_for()
    assert page.locator("#sample-step-label").inner_text() == "step 6"
    width, height = _image_size(page, "#sample-img")
    assert width == height and width > 4 * SIDE  # a grid of 16 px tiles
    assert page.locator("#checkpoints tbody tr").count() == 1

    # Fresh samples from the checkpoint, as a PNG shown inline and as an .npy of RGB images.
    page.get_by_label("Samples (n)", exact=True).fill("16")
    page.get_by_label("Format", exact=True).select_option("png")
    page.get_by_role("button", name="Generate").click()
    width, height = _image_size(page, "#gen-result img")
    assert width > 4 * SIDE and height > SIDE  # 16 tiles of 16 px
    page.get_by_label("Format", exact=True).select_option("npy")
    with page.expect_download() as npy:
        page.get_by_role("button", name="Generate").click()
    array = np.load(npy.value.path())
    assert array.shape == (16, 3, SIDE, SIDE) and array.dtype == np.float32
    assert np.abs(array).max() <= 1.0  # tanh
    screenshot(page, "resnet_job_page")

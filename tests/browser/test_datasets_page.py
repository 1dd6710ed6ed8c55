"""The Datasets page (/datasets) and the New-job page's dataset picker in a real browser
against the real service: each dataset with its facts and its preview grid, delete after
confirming, the refusal naming the jobs that still use a dataset, and a job submitted on a
dataset picked from the list.

The service's single worker is shared by every browser test: the job trained here is small
and waited for; the one kept queued (it asks for a GPU the service has not) is cancelled."""

from __future__ import annotations

import io
import re
import uuid
from typing import Any

import numpy as np
from PIL import Image
from playwright.sync_api import expect

from tests.browser.conftest import screenshot
from tests.browser.test_new_job_page import (
    JOB_URL,
    QUICK,
    _editor_spec,
    _expect_editor,
    _finish,
    _no_sideways_scroll,
    _run_to_the_end,
    _set_editor,
    _valid,
)
from tests.service.conftest import Service


def _upload(live: Service, array: np.ndarray[Any, Any], stem: str) -> dict[str, Any]:
    """Upload an array through the API; the name is unique, so a test finds its own card."""
    buffer = io.BytesIO()
    np.save(buffer, array)
    name = f"{stem}-{uuid.uuid4().hex[:6]}.npy"
    with live.client() as client:
        made = client.post("/api/datasets", files={"file": (name, buffer.getvalue())})
    assert made.status_code == 201, made.text
    dataset: dict[str, Any] = made.json()
    return dataset


def _card(page: Any, dataset_id: str) -> Any:
    return page.locator(f'.ds-card[data-dataset="{dataset_id}"]')


def _fact(card: Any, name: str) -> Any:
    return card.locator(f'dd[data-fact="{name}"]')


def _loaded_size(page: Any, image: Any) -> tuple[int, int]:
    """The natural size of an <img> once the browser has decoded it."""
    handle = image.element_handle()
    page.wait_for_function("img => img.complete && img.naturalWidth > 0", arg=handle)
    width, height = handle.evaluate("img => [img.naturalWidth, img.naturalHeight]")
    return int(width), int(height)


def _human(size: int) -> str:
    """What the page writes for a size: 1536 -> 1.5 KiB."""
    if size < 1024:
        return f"{size} B"
    value, units = size / 1024, ["KiB", "MiB", "GiB"]
    while value >= 1024 and len(units) > 1:
        value, units = value / 1024, units[1:]
    unit = units[0]
    return f"{value:.0f} {unit}" if value >= 100 else f"{value:.1f} {unit}"


def test_the_page_shows_each_dataset_with_its_preview_and_deletes_one(page, live):
    rng = np.random.default_rng(0)
    images = _upload(live, rng.integers(0, 256, (20, 3, 16, 16), dtype=np.uint8), "faces")
    points = _upload(live, rng.normal(size=(50, 3)).astype(np.float32), "points")
    page.goto("/datasets")
    nav = page.get_by_role("navigation", name="Main").get_by_role("link", name="Datasets")
    expect(nav).to_have_attribute("aria-current", "page")

    card = _card(page, images["id"])
    expect(card.get_by_role("heading", level=2)).to_have_text(images["filename"])
    expect(_fact(card, "shape")).to_have_text("(20, 3, 16, 16)")
    expect(_fact(card, "examples")).to_have_text("20")
    expect(_fact(card, "type")).to_have_text("uint8")
    expect(_fact(card, "size")).to_have_text(_human(images["size"]))
    expect(_fact(card, "created")).to_have_text(re.compile(r"\d{4}|\d{1,2}:\d{2}"))
    expect(_fact(card, "id")).to_have_text(images["id"])
    grid = card.get_by_role("img")
    expect(grid).to_have_attribute("alt", f"The 20 images in {images['filename']}")
    # 20 images of 16 px, enlarged to 32 px tiles, 8 per row with 2 px gaps: 3 rows.
    assert _loaded_size(page, grid) == (8 * 34 + 2, 3 * 34 + 2)
    scatter = _card(page, points["id"]).get_by_role("img")
    expect(scatter).to_have_attribute("alt", re.compile("^Scatter plot of the first two"))
    assert _loaded_size(page, scatter) == (480, 480)
    screenshot(page, "datasets")

    # Delete asks first; dismissed, nothing happens.
    questions: list[str] = []

    def dismiss(dialog: Any) -> None:
        questions.append(dialog.message)
        dialog.dismiss()

    page.once("dialog", dismiss)
    card.get_by_role("button", name="Delete").click()
    expect(card).to_have_count(1)
    assert images["filename"] in questions[0] and "cannot be undone" in questions[0]
    page.once("dialog", lambda dialog: dialog.accept())
    card.get_by_role("button", name="Delete").click()
    expect(card).to_have_count(0)
    expect(page.locator("#toast")).to_have_text(f"Deleted {images['filename']}.")
    with live.client() as client:
        assert client.get(f"/api/datasets/{images['id']}").status_code == 404
    page.reload()
    expect(_card(page, points["id"])).to_have_count(1)
    expect(_card(page, images["id"])).to_have_count(0)
    page.set_viewport_size({"width": 375, "height": 800})
    _no_sideways_scroll(page)
    screenshot(page, "datasets-375")


def test_a_dataset_a_queued_job_uses_is_kept_and_the_refusal_names_the_job(page, live):
    page.watch.allow(r"/api/datasets/[0-9a-f]{32}$", 409)
    made = _upload(live, np.zeros((8, 2), dtype=np.float32), "in-use")
    # A job asking for a GPU stays queued: this service's worker has none.
    spec = {"data": {"kind": "array", "dataset_id": made["id"]}, "device": "cuda"}
    with live.client() as client:
        job = client.post("/api/jobs", json={"spec": spec}).json()
    assert job["status"] == "queued", job
    try:
        page.goto("/datasets")
        card = _card(page, made["id"])
        page.once("dialog", lambda dialog: dialog.accept())
        card.get_by_role("button", name="Delete").click()
        refusal = card.get_by_role("alert")
        expect(refusal).to_contain_text(
            f"Not deleted: dataset {made['id']} is used by 1 queued, running or cancelling job(s)"
        )
        expect(refusal).to_contain_text("cancel them or wait for them to finish")
        link = refusal.get_by_role("link", name=job["id"])
        expect(link).to_have_attribute("href", f"/jobs/{job['id']}")
        expect(card).to_have_count(1)
        screenshot(page, "datasets-in-use")
    finally:
        assert _finish(live, job["id"])["status"] == "cancelled"
    # Once the job is over, the dataset goes.
    page.once("dialog", lambda dialog: dialog.accept())
    card.get_by_role("button", name="Delete").click()
    expect(card).to_have_count(0)


def test_the_new_job_page_trains_on_a_dataset_picked_from_the_list(page, live):
    rng = np.random.default_rng(1)
    first = _upload(live, rng.integers(0, 256, (64, 1, 8, 8), dtype=np.uint8), "digits-a")
    second = _upload(live, rng.integers(0, 256, (64, 8, 8), dtype=np.uint8), "digits-b")
    # From the Datasets page: "New job with it" opens the form on that dataset.
    page.goto("/datasets")
    _card(page, first["id"]).get_by_role("link", name="New job with it").click()
    page.wait_for_url(re.compile(r"/jobs/new\?dataset="))
    picker = page.get_by_label("Uploaded dataset")
    expect(picker).to_have_value(first["id"])
    spec = _expect_editor(page, lambda s: s["data"].get("dataset_id") == first["id"])
    assert spec["data"] == {"kind": "array", "dataset_id": first["id"]}
    expect(page.locator("#nf-upload-status")).to_contain_text(f"Using {first['filename']}")
    _valid(page)

    # Another from the list: the spec follows; the editor's other fields stay.
    _set_editor(page, {**_editor_spec(page), **QUICK})
    _valid(page)
    picker.select_option(second["id"])
    spec = _expect_editor(page, lambda s: s["data"].get("dataset_id") == second["id"])
    assert spec["data"] == {"kind": "array", "dataset_id": second["id"]}
    assert spec["steps"] == QUICK["steps"] and spec["model"] == QUICK["model"]
    expect(page.locator("#nf-upload-status")).to_contain_text("shape (64, 8, 8), uint8")
    # A spec naming a dataset in the editor shows it in the picker too.
    _set_editor(page, {**spec, "data": {"kind": "array", "dataset_id": first["id"]}})
    expect(picker).to_have_value(first["id"])
    picker.select_option(second["id"])
    _valid(page)

    page.get_by_role("button", name="Submit job").click()
    page.wait_for_url(JOB_URL, wait_until="commit")
    job_id = JOB_URL.search(page.url).group(1)  # type: ignore[union-attr]
    page.goto("about:blank")
    job = _run_to_the_end(live, job_id)
    assert job["status"] == "succeeded", job["error"]
    data = job["spec"]["data"]
    assert data["kind"] == "array" and data["dataset_id"] == second["id"]
    # The worker trained on the stored uint8 images: its samples are a grid of gray images.
    with live.client() as client:
        samples = client.get(f"/api/jobs/{job_id}/samples").json()["items"]
        png = client.get(samples[-1]["url"]).content
    assert Image.open(io.BytesIO(png)).mode == "L"

"""The New-job page (/jobs/new) in a real browser against the real service: presets, the form
and the YAML editor kept in sync both ways, checks while editing (leak warnings, field errors
next to the field), submitting, cloning with ?from=, dataset uploads; at 1366x768 and 375 px.

The service's single worker is shared by every browser test: each job started here is small
and is waited for (or cancelled) before the test ends."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from playwright.sync_api import expect

from tests.browser.conftest import screenshot
from tests.service.conftest import Service

FINISHED = ("cancelled", "succeeded", "failed")
# Small enough to finish in a few seconds on one CPU thread.
QUICK = {
    "steps": 40,
    "model": {"width": 32, "depth": 2, "latent_dim": 8},
    "every": {"metrics": 5, "samples": 20, "checkpoint": 20, "eval": 40},
}
JOB_URL = re.compile(r"/jobs/([0-9a-f]{32})$")


def _field(page: Any, path: str) -> Any:
    """The control of a spec field (`accumulation.steps`) or body field (`tags`)."""
    return page.locator(f'#nf-form [name="{path}"]')


def _error(page: Any, field: str) -> Any:
    """The error slot (role=alert) next to a field, by the path the API names."""
    return page.locator(f'[data-field="{field}"] .nf-error[role="alert"]')


def _editor_spec(page: Any) -> Any:
    return yaml.safe_load(page.locator("#nf-editor").input_value())


def _expect_editor(page: Any, check: Any, timeout: float = 5.0) -> Any:
    """Wait until the editor's spec passes `check` (it is rewritten as the form changes)."""
    deadline = page.evaluate("Date.now()") + timeout * 1000
    while True:
        spec = _editor_spec(page)
        try:
            if check(spec):
                return spec
        except (KeyError, TypeError):
            pass
        if page.evaluate("Date.now()") > deadline:
            raise AssertionError(f"editor spec never matched: {spec}")
        page.wait_for_timeout(50)


def _set_editor(page: Any, spec: dict[str, Any]) -> None:
    """Type a whole spec into the editor and leave it (Tab), as a user would."""
    editor = page.locator("#nf-editor")
    editor.fill(yaml.safe_dump(spec, sort_keys=False))
    editor.press("Tab")


def _open(page: Any, path: str = "/jobs/new") -> None:
    page.goto(path)
    expect(page.locator('.nf-preset[data-preset="ring"]')).to_be_visible()
    expect(page.locator("#nf-state")).to_have_text(re.compile(r"^Valid|problem"))


def _valid(page: Any) -> None:
    expect(page.locator("#nf-state")).to_have_text(re.compile(r"^Valid"))


def _finish(live: Service, job_id: str) -> dict[str, Any]:
    """Free the shared worker: cancel the job if it still runs, wait until it stopped."""
    with live.client() as client:
        client.post(f"/api/jobs/{job_id}/cancel")
    return live.wait_for(job_id, FINISHED, timeout=120)


def _run_to_the_end(live: Service, job_id: str) -> dict[str, Any]:
    """Wait for a small job to finish; cancel it if it takes too long (the worker is shared)."""
    try:
        return live.wait_for(job_id, FINISHED, timeout=120)
    except AssertionError:
        _finish(live, job_id)
        raise


def _no_sideways_scroll(page: Any) -> None:
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth + 1")


def test_preset_form_and_editor_stay_in_sync_and_submit_lands_on_the_job(page, live):
    _open(page)
    # The default recipe is chosen to begin with; pick the grid.
    expect(page.locator('[data-preset="ring"]')).to_have_attribute("aria-pressed", "true")
    page.locator('[data-preset="grid"]').click()
    expect(page.locator('[data-preset="grid"]')).to_have_attribute("aria-pressed", "true")
    expect(_field(page, "data.kind")).to_have_value("grid")
    assert _editor_spec(page) == {"name": "default grid", "data": {"kind": "grid"}}

    # Form -> editor: fields the form shows are written into the spec, in spec order.
    _field(page, "accumulation.steps").fill("4")
    _field(page, "schedule.order").select_option("g_first")
    _field(page, "name").fill("grid from the browser")
    spec = _expect_editor(
        page, lambda s: s["accumulation"]["steps"] == 4 and s["schedule"]["order"] == "g_first"
    )
    assert spec["name"] == "grid from the browser" and spec["data"] == {"kind": "grid"}
    assert list(spec) == ["name", "accumulation", "schedule", "data"]
    expect(page.locator("#nf-micro")).to_contain_text("Micro-batches of 64 (256 / 4)")

    # Editor -> form: the editor wins, also for fields the form does not show.
    _set_editor(page, {**spec, **QUICK})
    expect(_field(page, "steps")).to_have_value("40")
    expect(_field(page, "accumulation.steps")).to_have_value("4")
    _valid(page)
    # The form keeps what only the editor holds when it writes.
    _field(page, "optim.d.lr").fill("0.002")
    spec = _expect_editor(page, lambda s: s["optim"]["d"]["lr"] == 0.002)
    assert spec["model"] == QUICK["model"] and spec["every"] == QUICK["every"]
    _field(page, "tags").fill("browser, new-page")
    _valid(page)
    screenshot(page, "new-job-grid-edited")
    # The editor speaks JSON too: switching rewrites the same spec.
    page.get_by_label("Editor format").select_option("json")
    text = page.locator("#nf-editor").input_value()
    assert text.startswith("{") and json.loads(text) == spec
    page.get_by_label("Editor format").select_option("yaml")
    assert _editor_spec(page) == spec

    page.get_by_role("button", name="Submit job").click()
    page.wait_for_url(JOB_URL, wait_until="commit")
    job_id = JOB_URL.search(page.url).group(1)  # type: ignore[union-attr]
    page.goto("about:blank")  # the job page is tested on its own
    job = _run_to_the_end(live, job_id)
    assert job["spec"]["accumulation"]["steps"] == 4
    assert job["spec"]["schedule"]["order"] == "g_first"
    assert job["spec"]["data"]["kind"] == "grid" and job["spec"]["steps"] == 40
    assert job["spec"]["model"]["width"] == 32 and job["spec"]["optim"]["d"]["lr"] == 0.002
    assert job["name"] == "grid from the browser" and job["tags"] == ["browser", "new-page"]
    assert job["status"] == "succeeded", job["error"]


def test_a_bad_field_shows_the_api_message_next_to_it(page, live):
    page.watch.allow(r"/api/specs/validate$", 422)
    page.watch.allow(r"/api/jobs$", 422)
    _open(page)
    with live.client() as client:
        before = len(client.get("/api/jobs", params={"limit": 500}).json()["items"])

    # While editing: the check's 422 lands next to the field, before any submit.
    _field(page, "accumulation.steps").fill("3")
    error = _error(page, "spec.accumulation.steps")
    expect(error).to_have_text("spec.accumulation.steps: must divide batch_size=256")
    expect(_field(page, "accumulation.steps")).to_have_attribute("aria-invalid", "true")
    described = _field(page, "accumulation.steps").get_attribute("aria-describedby") or ""
    assert error.get_attribute("id") in described.split()
    expect(page.locator("#nf-state")).to_have_text("1 problem")

    # Submitting anyway: POST /api/jobs says the same, next to the same field; nothing stored.
    page.get_by_role("button", name="Submit job").click()
    expect(page.locator("#nf-submit-error")).to_contain_text("Not submitted")
    expect(error).to_have_text("spec.accumulation.steps: must divide batch_size=256")
    expect(_field(page, "accumulation.steps")).to_be_focused()
    assert page.url.endswith("/jobs/new")
    screenshot(page, "new-job-bad-field")

    # Fixing it clears the error.
    _field(page, "accumulation.steps").fill("4")
    expect(error).to_have_text("")
    _valid(page)

    # A field the form does not show: its error is next to the editor.
    spec = _editor_spec(page)
    _set_editor(page, {**spec, "model": {"width": 0}})
    expect(page.locator("#nf-editor-error")).to_contain_text(
        "spec.model.width: Input should be greater than or equal to 1"
    )
    expect(page.locator("#nf-editor")).to_have_attribute("aria-invalid", "true")
    # A YAML syntax error is shown there too (found in the browser, no request).
    page.locator("#nf-editor").fill("steps: [40\n")
    page.locator("#nf-editor").press("Tab")
    expect(page.locator("#nf-editor-error")).to_contain_text("not valid YAML/JSON")
    _set_editor(page, spec)
    _valid(page)

    # A body field: a bad tag is refused by POST /api/jobs, shown next to the tags.
    _field(page, "tags").fill("fine, not fine!")
    page.get_by_role("button", name="Submit job").click()
    expect(_error(page, "tags")).to_contain_text("tags.1: String should match pattern")
    with live.client() as client:
        assert len(client.get("/api/jobs", params={"limit": 500}).json()["items"]) == before


def test_the_seed_broken_preset_warns_of_the_leak_before_submitting(page, live):
    _open(page)
    broken = page.locator('[data-preset="seed-broken"]')
    fixed = page.locator('[data-preset="seed-fixed"]')
    # The two sit side by side in one group that says how they differ.
    pair = page.get_by_role("group", name=re.compile("broken and fixed"))
    expect(pair).to_contain_text("isolation: none")
    expect(pair.locator(".nf-preset")).to_have_count(2)
    box_broken, box_fixed = broken.bounding_box(), fixed.bounding_box()
    assert box_broken and box_fixed and abs(box_broken["y"] - box_fixed["y"]) < 2

    # Keyboard: focus the preset and press Enter.
    broken.focus()
    page.keyboard.press("Enter")
    expect(broken).to_have_attribute("aria-pressed", "true")
    leak = page.locator("#nf-leak")
    expect(leak).to_contain_text("This schedule leaks gradient into D and G")
    expect(page.locator("#nf-warnings")).to_contain_text("leaks gradient")
    expect(_field(page, "schedule.isolation")).to_have_value("none")
    expect(_field(page, "schedule.zero_grad")).to_have_value("after")
    assert page.url.endswith("/jobs/new")  # nothing submitted
    screenshot(page, "new-job-seed-broken")

    fixed.focus()
    page.keyboard.press(" ")
    expect(leak).to_contain_text("No gradient leak")
    expect(page.locator("#nf-warnings")).to_be_empty()
    # Changing the schedule in the form brings the warning back.
    _field(page, "schedule.isolation").select_option("none")
    expect(leak).to_contain_text("leaks gradient into D and G")

    page.set_viewport_size({"width": 375, "height": 800})
    broken.click()
    expect(leak).to_contain_text("leaks gradient into D and G")
    _no_sideways_scroll(page)
    for path in ("accumulation.steps", "schedule.order", "data.kind", "device"):
        box = _field(page, path).bounding_box()
        assert box and box["x"] >= 0 and box["x"] + box["width"] <= 375, path
    screenshot(page, "new-job-seed-broken-375")


def test_from_clones_a_job(page, live):
    spec = {
        **QUICK,
        "name": "to clone",
        "accumulation": {"steps": 2, "normalize": "grad"},
        "schedule": {"order": "simultaneous", "d_steps": 2},
        "precision": "fp64",
    }
    with live.client() as client:
        made = client.post("/api/jobs", json={"spec": spec, "tags": ["clone-me", "x"]})
    assert made.status_code == 201, made.text
    job = made.json()
    try:
        _open(page, f"/jobs/new?from={job['id']}")
        expect(_field(page, "name")).to_have_value("to clone (copy)")
        expect(_field(page, "schedule.order")).to_have_value("simultaneous")
        expect(_field(page, "schedule.d_steps")).to_have_value("2")
        expect(_field(page, "accumulation.normalize")).to_have_value("grad")
        expect(_field(page, "precision")).to_have_value("fp64")
        expect(_field(page, "tags")).to_have_value("clone-me, x")
        expect(page.locator("#nf-clone")).to_contain_text("A copy of to clone")
        cloned = _editor_spec(page)
        assert cloned == {**job["spec"], "name": "to clone (copy)"}
        assert page.locator(".nf-preset[aria-pressed=true]").count() == 0
        _valid(page)
        screenshot(page, "new-job-clone")
    finally:
        _finish(live, job["id"])

    page.watch.allow(r"/api/jobs/nope$", 404)
    page.goto("/jobs/new?from=nope")
    expect(page.locator("#nf-load-error")).to_contain_text(
        "Cannot copy job nope: job nope not found"
    )
    expect(page.locator('[data-preset="ring"]')).to_have_attribute("aria-pressed", "true")


def _save(path: Path, array: Any) -> Path:
    with path.open("wb") as fh:
        np.save(fh, array)
    return path


def test_uploading_a_dataset_sets_the_data_fields(page, live, tmp_path):
    page.watch.allow(r"/api/datasets$", 422)
    page.watch.allow(r"/api/specs/validate$", 422)
    _open(page)
    # Array data needs a dataset: the check says so next to the file input.
    _field(page, "data.kind").select_option("array")
    expect(_error(page, "spec.data.dataset_id")).to_contain_text(
        "spec.data.dataset_id: kind=array needs exactly one of dataset_id or path"
    )
    rng = np.random.default_rng(0)
    points = _save(tmp_path / "points.npy", rng.normal(size=(64, 2)).astype("f4"))
    file_input = page.get_by_label("Upload a dataset (.npy or .npz)")
    file_input.set_input_files(points)
    status = page.locator("#nf-upload-status")
    expect(status).to_contain_text("Uploaded points.npy: shape (64, 2), float32")
    spec = _expect_editor(page, lambda s: s["data"]["kind"] == "array")
    dataset_id = spec["data"]["dataset_id"]
    assert re.fullmatch(r"[0-9a-f]{32}", dataset_id)
    expect(status).to_contain_text(dataset_id)
    expect(_field(page, "data.kind")).to_have_value("array")
    expect(page.locator("#nf-use-conv")).to_be_hidden()  # vectors: no conv
    _valid(page)

    # Square images: conv is suggested, one click applies it.
    images = _save(tmp_path / "images.npy", rng.random((32, 8, 8)).astype("f4"))
    file_input.set_input_files(images)
    expect(status).to_contain_text("shape (32, 8, 8)")
    page.get_by_role("button", name=re.compile("Use conv networks")).click()
    expect(_field(page, "model.kind")).to_have_value("conv")
    spec = _expect_editor(page, lambda s: s["model"]["kind"] == "conv")
    assert spec["data"]["dataset_id"] != dataset_id
    _valid(page)
    screenshot(page, "new-job-upload")

    # An unusable file: the API's message next to the file input; the spec keeps its data.
    bad = _save(tmp_path / "ints.npy", np.arange(20, dtype=np.int64).reshape(10, 2))
    file_input.set_input_files(bad)
    upload_error = page.locator('[data-field="spec.data.dataset_id"] #nf-upload-error')
    expect(upload_error).to_have_attribute("role", "alert")
    expect(upload_error).to_have_text("file: dtype int64 not supported; use float or uint8")
    assert _editor_spec(page)["data"]["dataset_id"] == spec["data"]["dataset_id"]
    described = (file_input.get_attribute("aria-describedby") or "").split()
    assert "nf-upload-error" in described and "nf-dataset-error" in described

    # Leaving array data drops the dataset id again; the upload's error stays until the next.
    _field(page, "data.kind").select_option("digits")
    spec = _expect_editor(page, lambda s: s["data"] == {"kind": "digits"})
    _valid(page)
    expect(upload_error).to_contain_text("int64")
    page.set_viewport_size({"width": 375, "height": 800})
    _no_sideways_scroll(page)
    screenshot(page, "new-job-upload-375")


def test_ranks_split_the_batch_and_a_split_that_does_not_fit_is_named(page, live):
    """The DDP world size: the note counts each rank's micro-batches; a world size whose
    split does not divide the batch gets the API's message next to the Ranks field."""
    page.watch.allow(r"/api/specs/validate$", 422)
    _open(page)
    _field(page, "accumulation.steps").fill("2")
    _field(page, "distributed.world_size").fill("2")
    _expect_editor(page, lambda spec: spec["distributed"]["world_size"] == 2)
    expect(page.locator("#nf-micro")).to_have_text(
        "Micro-batches of 64 (256 / 4), 2 per optimizer step on each of 2 ranks "
        "(gradient averaged once per step)."
    )
    _field(page, "distributed.world_size").fill("3")
    expect(_error(page, "spec.distributed.world_size")).to_have_text(
        "spec.distributed.world_size: world_size x accumulation.steps = 6 must divide "
        "batch_size=256 (each rank takes an equal share)"
    )
    screenshot(page, "new-job-ranks")


def test_the_sweep_section_turns_the_form_into_a_sweep_and_back(page, live):
    """Run as a sweep shows the section and makes the button Submit sweep; a picked select
    field is offered its choices; off again, the form submits jobs. The Sweeps page's
    "New sweep" opens the form with it on. (Submitting sweeps: test_sweeps_page.py.)"""
    _open(page)
    section = page.locator("#sw-body")
    expect(section).to_be_hidden()
    page.get_by_label("Run as a sweep").check()
    expect(section).to_be_visible()
    expect(page.get_by_role("button", name="Submit sweep")).to_be_visible()
    page.get_by_label("Field to vary").fill("schedule.order")
    page.get_by_label("Field to vary").press("Tab")
    expect(page.get_by_label("Values")).to_have_value("d_first, g_first, simultaneous")
    expect(page.locator('[data-field="space.schedule.order"]')).to_have_count(1)
    # Every leaf of the default spec can be varied (the field list).
    options = page.locator("#sw-paths option").evaluate_all("os => os.map(o => o.value)")
    assert {"optim.g.lr", "accumulation.steps", "model.width", "schedule.zero_grad"} <= set(options)
    assert "name" not in options
    screenshot(page, "new-job-sweep-section")
    page.get_by_label("Run as a sweep").uncheck()
    expect(section).to_be_hidden()
    expect(page.get_by_role("button", name="Submit job")).to_be_visible()

    # The Sweeps page's "New sweep" opens the form with the section on.
    page.goto("/sweeps")
    page.get_by_role("link", name="New sweep").click()
    expect(page).to_have_url(re.compile(r"/jobs/new#nf-sweep$"))
    expect(page.locator('.nf-preset[data-preset="ring"]')).to_be_visible()
    expect(page.get_by_label("Run as a sweep")).to_be_checked()
    expect(page.get_by_role("button", name="Submit sweep")).to_be_visible()
    _no_sideways_scroll(page)

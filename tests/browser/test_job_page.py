"""The job page (/jobs/{id}) against a real service and its one worker: live charts from the
event stream, the sample gallery and its large view, downloads (one sample, the zip, fresh
samples as .npy and PNG, a checkpoint), a failed job's error, cancel and resume.

The worker is shared by every browser test: every job started here is finished (or
cancelled) before its test ends."""

from __future__ import annotations

import hashlib
import io
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.browser.conftest import screenshot
from tests.service.conftest import Service, tiny_spec

FINISHED = ("succeeded", "failed", "cancelled")
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
STEPS = 600


def _stop(live: Service, job_id: str) -> None:
    """Leave no job running on the shared worker."""
    with live.client() as client:
        status = client.get(f"/api/jobs/{job_id}").json()["status"]
        if status in ("queued", "running"):
            client.post(f"/api/jobs/{job_id}/cancel")
    live.wait_for(job_id, FINISHED, timeout=60)


@pytest.fixture(scope="module")
def trained(live: Service) -> Iterator[str]:
    """A 600-step job, submitted when the module starts: the first test watches it run."""
    spec = tiny_spec(
        steps=STEPS, every={"metrics": 5, "samples": 100, "checkpoint": 100, "eval": 300}
    )
    with live.client() as client:
        answer = client.post(
            "/api/jobs", json={"spec": spec, "name": "ring8 demo", "tags": ["browser", "ring"]}
        )
        assert answer.status_code == 201, answer.text
        job_id = answer.json()["id"]
    yield job_id
    _stop(live, job_id)


def _ready(page: Any, job_id: str) -> None:
    page.goto(f"/jobs/{job_id}")
    page.wait_for_function("() => window.gfJob && window.gfJob.ready === true")


def _downloaded(download: Any) -> bytes:
    return Path(download.path()).read_bytes()


def test_a_running_job_updates_its_charts_live_until_it_succeeds(page, live, trained):
    page.goto(f"/jobs/{trained}")
    page.evaluate("window.notReloaded = true")
    page.wait_for_function(
        "() => window.gfJob && gfJob.plots.loss && gfJob.plots.loss.data[0].length > 0",
        timeout=60_000,
    )
    first = page.evaluate("gfJob.plots.loss.data[0].length")
    # Step back to the first sample while more arrive: the slider stays where the user put it.
    page.wait_for_function("() => gfJob.state.samples.length >= 2", timeout=60_000)
    page.locator("#sample-slider").focus()
    page.keyboard.press("Home")
    page.locator("#job-status", has_text="succeeded").wait_for(timeout=60_000)
    page.wait_for_function(f"() => gfJob.plots.loss.data[0].length === {STEPS // 5}")
    assert first < STEPS // 5, "the loss chart had every point at once: nothing was live"
    growth = page.evaluate("gfJob.state.lossHistory")
    assert len(set(growth)) >= 2 and growth == sorted(growth)
    assert page.evaluate("window.notReloaded") is True

    # Every chart of the metrics a ring job has, and no other.
    groups = page.locator("#charts .chart-card").evaluate_all(
        "cards => cards.map(c => c.dataset.group)"
    )
    assert groups == ["loss", "d", "grad", "audit", "eval", "samplers_hq", "samplers_modes", "perf"]
    series = page.evaluate("gfJob.plots.loss.series.slice(1).map(s => s.label)")
    assert series == ["loss/d", "loss/g", "loss/penalty"]
    assert page.evaluate("gfJob.plots.eval.series.slice(1).map(s => s.label)") == [
        "eval/modes",
        "eval/hq",
    ]
    assert page.locator("#chart-audit .chart-note").inner_text() == "0.0 at every step: no leak"

    # The rest followed the stream too: progress, samples, checkpoints, the timeline.
    assert "600 / 600" in page.locator("#job-step").inner_text()
    page.locator("#sample-count", has_text="1 of 6").wait_for()
    assert page.locator("#sample-step-label").inner_text() == "step 100"
    page.keyboard.press("End")  # back at the latest: new ones would be followed again
    assert page.locator("#sample-count").inner_text() == "6 of 6 (latest)"
    page.locator("#checkpoints tbody tr").nth(5).wait_for()
    assert page.locator("#checkpoints tbody tr").count() == 6
    assert page.locator("#gen-step option").all_inner_texts() == [
        "latest (step 600)",
        *[f"step {s}" for s in range(600, 0, -100)],
    ]
    assert page.locator("#timeline li.done").count() == 3
    assert page.locator("#job-cancel").is_hidden() and page.locator("#job-resume").is_hidden()
    assert page.locator("#job-clone").get_attribute("href") == f"/jobs/new?from={trained}"
    assert page.locator("#job-compare").get_attribute("href") == f"/compare?ids={trained}"
    assert page.locator("#job-error").is_hidden()


def test_gallery_downloads_and_generation_of_a_finished_job(page, live, trained):
    job = live.wait_for(trained, ("succeeded",))
    _ready(page, trained)
    assert page.evaluate("window.gfJob.source") is None  # a finished job opens no stream
    # Where it ran: the worker that held it, and no GPU on this machine.
    assert f"(worker {job['worker']}, no GPU)" in page.locator("#job-attempt").inner_text()

    # The slider runs over every saved step; the latest is on show.
    slider = page.locator("#sample-slider")
    assert slider.get_attribute("max") == "5"
    latest = page.locator("#sample-img").get_attribute("src")
    assert page.locator("#sample-step-label").inner_text() == "step 600"
    slider.focus()
    page.keyboard.press("Home")
    assert page.locator("#sample-step-label").inner_text() == "step 100"
    assert page.locator("#sample-img").get_attribute("src") != latest
    page.keyboard.press("ArrowRight")
    assert page.locator("#sample-step-label").inner_text() == "step 200"
    assert slider.get_attribute("aria-valuetext") == "step 200"
    page.wait_for_function("() => document.getElementById('sample-img').naturalWidth > 0")

    # The large view opens from the keyboard and closes with Escape.
    page.locator("#sample-open").focus()
    page.keyboard.press("Enter")
    dialog = page.locator("#sample-dialog")
    assert dialog.is_visible()
    assert page.locator("#sample-dialog-title").inner_text() == "Samples at step 200"
    page.wait_for_function("() => document.getElementById('sample-dialog-img').naturalWidth > 0")
    page.keyboard.press("ArrowRight")
    assert page.locator("#sample-dialog-title").inner_text() == "Samples at step 300"
    page.keyboard.press("Escape")
    assert dialog.is_hidden()
    assert page.locator("#sample-step-label").inner_text() == "step 300"

    # One sample, then all of them.
    with page.expect_download() as one:
        page.locator("#sample-download").click()
    assert one.value.suggested_filename == f"{trained}-step_000300.png"
    assert _downloaded(one.value).startswith(PNG_SIGNATURE)
    with page.expect_download() as every:
        page.locator("#samples-zip").click()
    with zipfile.ZipFile(io.BytesIO(_downloaded(every.value))) as archive:
        names = archive.namelist()
        assert names == [f"step_{s:06d}.png" for s in range(100, 700, 100)]
        assert archive.read(names[0]).startswith(PNG_SIGNATURE)

    # A checkpoint, whose bytes hash to the SHA-256 the table shows in full on hover.
    row = page.locator("#checkpoints tbody tr").filter(has_text="300").first
    sha = row.locator("code").get_attribute("title")
    with page.expect_download() as checkpoint:
        row.get_by_role("link", name="Download the checkpoint of step 300").click()
    assert hashlib.sha256(_downloaded(checkpoint.value)).hexdigest() == sha

    # Fresh samples as .npy from a chosen checkpoint: saved by the browser, loadable.
    page.get_by_label("Samples (n)", exact=True).fill("50")
    page.get_by_label("Seed", exact=True).fill("3")
    page.get_by_label("Format", exact=True).select_option("npy")
    page.get_by_label("Checkpoint", exact=True).select_option("300")
    with page.expect_download() as npy:
        page.get_by_role("button", name="Generate").click()
    assert npy.value.suggested_filename == f"{trained}-step_300-seed_3.npy"
    array = np.load(io.BytesIO(_downloaded(npy.value)))
    assert array.shape == (50, 2) and array.dtype == np.float32
    assert "50 × 2" in page.locator("#gen-result").inner_text()

    # PNG from the latest checkpoint shows inline, with a download link.
    page.get_by_label("Format", exact=True).select_option("png")
    page.get_by_label("Checkpoint", exact=True).select_option("")
    page.get_by_role("button", name="Generate").click()
    page.wait_for_function("() => document.querySelector('#gen-result img')?.naturalWidth > 0")
    link = page.locator("#gen-result a[download]")
    assert link.get_attribute("download") == f"{trained}-step_600-seed_3.png"
    with page.expect_download() as png:
        link.click()
    assert _downloaded(png.value).startswith(PNG_SIGNATURE)
    assert page.locator("#gen-error").inner_text() == ""

    page.evaluate("document.activeElement.blur(); window.scrollTo(0, 0)")
    screenshot(page, "job_page_1366")
    screenshot(page, "job_page_1366_fold", full_page=False)

    # A refused request is explained next to the form.
    page.watch.allow(r"/generate$", 422)
    page.get_by_label("Samples (n)", exact=True).fill("20000")
    page.get_by_role("button", name="Generate").click()
    page.locator("#gen-error", has_text="at most 10000").wait_for()

    page.set_viewport_size({"width": 375, "height": 812})
    page.wait_for_timeout(300)  # charts follow their containers' width
    assert page.evaluate("document.documentElement.scrollWidth") <= 375
    assert page.evaluate("Math.max(...Object.values(gfJob.plots).map(p => p.width))") <= 375
    screenshot(page, "job_page_375")


def test_the_generate_box_offers_the_guided_samplers(page, live: Service, trained: str):
    """drs as .npy (the API's bytes for the same request, and a line saying how many
    proposals it accepted), refine as a PNG beside plain's."""
    live.wait_for(trained, FINISHED, timeout=120)
    _ready(page, trained)
    # The evaluation's guided numbers chart beside plain's.
    for key, names in (("samplers_hq", "eval/hq, "), ("samplers_modes", "eval/modes, ")):
        chart = page.locator(f"#chart-{key} .chart")
        chart.wait_for()
        assert names in chart.get_attribute("aria-label")
        assert "eval/" + key.split("_")[1] + "_refine" in chart.get_attribute("aria-label")
    sampler = page.get_by_label("Sampler", exact=True)
    assert sampler.input_value() == "plain"
    assert [o.get_attribute("value") for o in sampler.locator("option").all()] == [
        "plain",
        "drs",
        "refine",
    ]
    page.get_by_label("Samples (n)", exact=True).fill("200")
    page.get_by_label("Seed", exact=True).fill("5")
    page.get_by_label("Format", exact=True).select_option("npy")
    sampler.select_option("drs")
    with page.expect_download() as npy:
        page.get_by_role("button", name="Generate").click()
    assert npy.value.suggested_filename == f"{trained}-step_600-seed_5-drs.npy"
    with live.client() as client:
        body = {"n": 200, "seed": 5, "format": "npy", "sampler": "drs"}
        direct = client.post(f"/api/jobs/{trained}/generate", json=body)
    assert direct.status_code == 200, direct.text
    assert _downloaded(npy.value) == direct.content
    report = page.locator("#gen-result .gen-sampler-report").inner_text()
    assert report.startswith("drs: ") and "proposals accepted" in report
    assert f"of {int(direct.headers['x-sampler-proposals']):,} proposals" in report

    page.get_by_label("Format", exact=True).select_option("png")
    sampler.select_option("refine")
    page.get_by_role("button", name="Generate").click()
    page.locator("#gen-result .gen-sampler-report", has_text="refine: ").wait_for()
    page.wait_for_function("() => document.querySelector('#gen-result img')?.naturalWidth > 0")
    link = page.locator("#gen-result a[download]")
    assert link.get_attribute("download") == f"{trained}-step_600-seed_5-refine.png"
    assert page.locator("#gen-error").inner_text() == ""


def test_a_leaking_schedule_shows_its_warning_and_the_leak_in_the_audit(page, live):
    schedule = {"order": "d_first", "isolation": "none", "zero_grad": "after"}
    with live.client() as client:
        answer = client.post("/api/jobs", json={"spec": tiny_spec(schedule=schedule)})
        assert answer.status_code == 201, answer.text
        job = answer.json()
    assert job["warnings"]  # from the spec; the audit adds one when it sees the first leak
    job = live.wait_for(job["id"], FINISHED, timeout=60)
    assert job["status"] == "succeeded"

    _ready(page, job["id"])
    assert page.locator("#job-name").inner_text() == f"Job {job['id'][:8]}"
    warnings = page.locator("#job-warnings .warning")
    assert warnings.count() == len(job["warnings"])
    assert "leaks gradient" in warnings.first.inner_text()
    note = page.locator("#chart-audit .chart-note")
    assert "leak" in note.get_attribute("class").split()
    assert note.inner_text().startswith("Leak: audit/leak_d max ")
    screenshot(page, "job_page_leak", full_page=False)
    # The spec can be copied (to the clipboard, or selected where the browser refuses).
    page.get_by_role("button", name="Copy").click()
    page.locator("#toast", has_text="Spec").wait_for()


def test_a_failed_job_shows_its_error(page, live):
    buffer = io.BytesIO()
    np.save(buffer, np.random.default_rng(0).normal(size=(256, 2)).astype(np.float32))
    with live.client() as client:
        uploaded = client.post(
            "/api/datasets",
            files={"file": ("points.npy", buffer.getvalue(), "application/octet-stream")},
        )
        assert uploaded.status_code == 201, uploaded.text
        spec = tiny_spec(
            data={"kind": "array", "dataset_id": uploaded.json()["id"]}, model={"kind": "conv"}
        )
        answer = client.post("/api/jobs", json={"spec": spec, "name": "conv on points"})
        assert answer.status_code == 201, answer.text
        job_id = answer.json()["id"]
    job = live.wait_for(job_id, FINISHED, timeout=60)
    assert job["status"] == "failed" and job["error"]

    _ready(page, job_id)
    alert = page.get_by_role("alert").filter(has_text="The job failed.")
    assert alert.is_visible()
    assert job["error"].splitlines()[0] in alert.inner_text()
    assert page.locator("#job-status").inner_text() == "failed"
    assert page.locator("#job-resume").is_visible() and page.locator("#job-cancel").is_hidden()
    assert page.locator("#timeline li.failed").count() == 1
    assert page.locator("#gen-submit").is_disabled()
    assert "wrote no checkpoint" in page.locator("#gen-hint").inner_text()
    screenshot(page, "job_page_failed", full_page=False)


def test_cancel_and_resume_a_running_job_from_the_page(page, live):
    with live.client() as client:
        answer = client.post(
            "/api/jobs",
            json={"spec": tiny_spec(steps=1_000_000), "name": "endless", "tags": ["long"]},
        )
        job_id = answer.json()["id"]
    try:
        _ready(page, job_id)
        status = page.locator("#job-status")
        page.locator("#job-status", has_text="running").wait_for(timeout=60_000)
        page.wait_for_function("() => gfJob.state.job.step > 0")
        assert page.locator("#job-resume").is_hidden()
        assert "left" in page.locator("#job-timing").inner_text()
        screenshot(page, "job_page_running", full_page=False)
        page.get_by_role("button", name="Cancel").click()
        page.locator("#job-status", has_text="cancelled").wait_for(timeout=30_000)
        assert page.locator("#job-cancel").is_hidden()

        # Resume: back in the queue, then running again on the page's new stream.
        page.get_by_role("button", name="Resume").click()
        page.locator("#job-status", has_text="running").wait_for(timeout=60_000)
        assert page.evaluate("gfJob.state.job.attempt") == 2
        assert "Attempt 2" in page.locator("#job-attempt").inner_text()
        page.get_by_role("button", name="Cancel").click()
        page.locator("#job-status", has_text="cancelled").wait_for(timeout=30_000)
        assert status.inner_text() == "cancelled"
    finally:
        _stop(live, job_id)
    assert live.wait_for(job_id, FINISHED)["status"] == "cancelled"

"""The job page's checkpoint list (/jobs/{id}): each checkpoint's size, the best one marked,
pin/unpin, and delete with a confirmation, refused for the newest checkpoint of a job that
is not finished (it resumes from it).

The service's single worker is shared by every browser test: the job started here is
cancelled and stopped before the test ends."""

from __future__ import annotations

import re
from typing import Any

from playwright.sync_api import expect

from tests.browser.conftest import screenshot
from tests.service.conftest import Service, tiny_spec

FINISHED = ("cancelled", "succeeded", "failed")


def _rows(page: Any) -> Any:
    return page.locator("#checkpoints tbody tr")


def _row(page: Any, step: int) -> Any:
    return page.locator(f'#checkpoints tbody tr[data-step="{step}"]')


def _checkpoints(live: Service, job_id: str) -> list[dict[str, Any]]:
    with live.client() as client:
        items: list[dict[str, Any]] = client.get(f"/api/jobs/{job_id}/checkpoints").json()["items"]
    return items


def test_pin_unpin_and_delete_checkpoints_from_the_job_page(page, live):
    spec = tiny_spec(
        steps=1_000_000,
        every={"metrics": 5, "samples": 0, "checkpoint": 100, "eval": 0},
        retention={"best_metric": "loss/d", "mode": "min"},  # keeps every checkpoint
    )
    with live.client() as client:
        answer = client.post("/api/jobs", json={"spec": spec, "name": "checkpoint ui"})
        assert answer.status_code == 201, answer.text
        job_id = answer.json()["id"]
    try:
        page.goto(f"/jobs/{job_id}")
        page.wait_for_function("() => window.gfJob && window.gfJob.ready === true")
        # Running: the newest checkpoint's Delete is disabled, an older one's is not.
        page.wait_for_function(
            "() => document.querySelectorAll('#checkpoints tbody tr').length >= 2",
            timeout=60_000,
        )
        expect(_rows(page).first.locator("button.delete")).to_be_disabled()
        expect(_rows(page).first.locator("button.delete")).to_have_attribute(
            "title", re.compile("newest checkpoint of an unfinished job")
        )
        expect(_rows(page).last.locator("button.delete")).to_be_enabled()
    finally:
        with live.client() as client:
            client.post(f"/api/jobs/{job_id}/cancel")
        live.wait_for(job_id, FINISHED, timeout=60)

    items = _checkpoints(live, job_id)
    steps = [c["step"] for c in items]
    assert len(steps) >= 3, steps
    best = next(c["step"] for c in items if c["best"])
    page.reload()
    page.wait_for_function("() => window.gfJob && window.gfJob.ready === true")
    expect(_rows(page)).to_have_count(len(steps))
    expect(page.locator("#job-status")).to_have_text("cancelled")
    # Finished: every Delete is enabled, the newest's too. Sizes and the best are shown.
    expect(_rows(page).first.locator("button.delete")).to_be_enabled()
    expect(_row(page, steps[0]).locator("td.size")).to_have_text(re.compile(r"^\d+(\.\d)? KB$"))
    expect(_row(page, best).locator(".badge.best")).to_have_text("best")
    expect(page.locator("#checkpoints .badge.best")).to_have_count(1)
    expect(page.locator("#retention-note")).to_contain_text("keeps every checkpoint")

    # Pin the first: it says so, the API agrees, and it cannot be deleted until unpinned.
    first = _row(page, steps[0])
    first.get_by_role("button", name=f"Pin the checkpoint of step {steps[0]}").click()
    expect(first.locator(".badge.pinned")).to_have_text("pinned")
    expect(first.locator("button.pin")).to_have_text("Unpin")
    expect(first.locator("button.delete")).to_be_disabled()
    assert [c["pinned"] for c in _checkpoints(live, job_id)][0] is True
    screenshot(page, "job-checkpoints-pinned")

    # Delete the second: a dismissed confirmation deletes nothing, an accepted one does.
    second = _row(page, steps[1])
    page.once("dialog", lambda dialog: dialog.dismiss())
    second.locator("button.delete").click()
    expect(_rows(page)).to_have_count(len(steps))
    page.once("dialog", lambda dialog: dialog.accept())
    second.locator("button.delete").click()
    expect(_row(page, steps[1])).to_have_count(0)
    assert [c["step"] for c in _checkpoints(live, job_id)] == [steps[0], *steps[2:]]

    # Unpin the first: its Delete comes back.
    _row(page, steps[0]).locator("button.pin").click()
    expect(_row(page, steps[0]).locator("button.pin")).to_have_text("Pin")
    expect(_row(page, steps[0]).locator(".badge.pinned")).to_have_count(0)
    expect(_row(page, steps[0]).locator("button.delete")).to_be_enabled()
    assert [c["pinned"] for c in _checkpoints(live, job_id)][0] is False

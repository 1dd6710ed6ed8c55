"""The Jobs page (/): a live table of jobs (no reload), filters kept in the URL, the row
actions (cancel, resume, delete, clone), paging with "Load more" and the phone layout.

The service's single worker is shared by every browser test: a test that starts a long job
cancels it and waits for `cancelled` before it ends."""

from __future__ import annotations

import re
import time
import uuid
from typing import Any

from playwright.sync_api import expect

from tests.browser.conftest import screenshot
from tests.service.conftest import Service, tiny_spec

LONG = 1_000_000
FINISHED = ("cancelled", "succeeded", "failed")


def _tag(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def _submit(live: Service, *, steps: int = 40, name: str | None = None, tags=()) -> dict:
    body: dict[str, Any] = {"spec": tiny_spec(steps=steps), "tags": list(tags)}
    if name is not None:
        body["name"] = name
    with live.client() as client:
        answer = client.post("/api/jobs", json=body)
    assert answer.status_code == 201, answer.text
    return answer.json()


def _cancel_and_wait(live: Service, job_id: str) -> None:
    """Free the shared worker: cancel the job (if it still runs) and wait until it stopped."""
    with live.client() as client:
        answer = client.post(f"/api/jobs/{job_id}/cancel")
    assert answer.status_code in (200, 409), answer.text
    live.wait_for(job_id, FINISHED, timeout=60)


def _row(page: Any, job_id: str) -> Any:
    return page.locator(f'#jobs-body tr[data-id="{job_id}"]')


def test_empty_states_link_to_the_submit_page_or_clear_the_filters(page, live):
    with live.client() as client:
        nothing_yet = client.get("/api/jobs", params={"limit": 1}).json()["items"] == []
    if nothing_yet:  # the first browser test of the session sees an empty service
        page.goto("/")
        empty = page.locator("#jobs-empty")
        expect(empty).to_contain_text("No jobs yet")
        expect(empty.get_by_role("link", name="submit one")).to_have_attribute("href", "/jobs/new")
        screenshot(page, "jobs-empty")
    page.goto(f"/?tag={_tag('nothing')}")
    expect(page.get_by_text("No jobs match these filters.")).to_be_visible()
    page.locator("#jobs-empty").get_by_role("button", name="Clear filters").click()
    expect(page).to_have_url(re.compile(r"/$"))
    expect(page.get_by_label("Tag", exact=True)).to_have_value("")


def test_a_job_submitted_through_the_api_appears_and_finishes_without_reload(page, live):
    tag = _tag("live")
    page.goto(f"/?tag={tag}")
    expect(page.get_by_text("No jobs match these filters.")).to_be_visible()
    page.evaluate("window.notReloaded = true")

    # Long enough (a few seconds) that the 2 s poll sees it before it ends, even on a fast CPU.
    job = _submit(live, steps=1200, name=f"live {tag}", tags=[tag])
    row = _row(page, job["id"])
    expect(row).to_be_visible()
    bar = row.locator("progress")
    expect(bar).to_have_attribute("aria-label", re.compile(rf"^Progress of live {tag}"))
    seen = []
    # Generous: on a loaded 2-core machine 1,200 steps took over a minute once.
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        status = row.locator(".badge").inner_text()
        seen.append((status, bar.evaluate("p => p.value")))
        if status == "succeeded":
            break
        time.sleep(0.1)
    assert seen[-1][0] == "succeeded", seen
    assert seen[0][0] in ("queued", "running"), seen  # it was on the page before it finished
    expect(row.locator(".step-text")).to_have_text(re.compile(r"^1,?200 / 1,?200$"))
    assert bar.evaluate("p => [p.value, p.max]") == [1200, 1200]
    expect(row.locator(".col-elapsed")).to_have_text(re.compile(r"^\d+s$"))
    assert page.evaluate("window.notReloaded") is True
    screenshot(page, "jobs-live-succeeded")


def test_status_and_tag_filters_narrow_the_rows_and_survive_a_reload(page, live):
    tag, other = _tag("filter"), _tag("other")
    done = _submit(live, name=f"done {tag}", tags=[tag, "shared"])
    stopped = _submit(live, steps=LONG, name=f"stopped {tag}", tags=[tag])
    _cancel_and_wait(live, stopped["id"])
    foreign = _submit(live, tags=[other, "shared"])
    for job in (done, foreign):
        assert live.wait_for(job["id"], FINISHED)["status"] == "succeeded"

    page.goto("/")
    for job in (done, stopped, foreign):
        expect(_row(page, job["id"])).to_be_visible()
    screenshot(page, "jobs-desktop")

    page.get_by_label("Tag", exact=True).fill(tag)
    expect(_row(page, foreign["id"])).to_have_count(0)
    expect(page.locator("#jobs-body tr")).to_have_count(2)
    expect(page).to_have_url(re.compile(rf"\?tag={tag}$"))

    page.get_by_label("Status").select_option("cancelled")
    expect(_row(page, done["id"])).to_have_count(0)
    expect(page.locator("#jobs-body tr")).to_have_count(1)
    expect(_row(page, stopped["id"]).locator(".badge")).to_have_text("cancelled")
    expect(page).to_have_url(re.compile(r"status=cancelled"))

    page.reload()
    expect(page.get_by_label("Status")).to_have_value("cancelled")
    expect(page.get_by_label("Tag", exact=True)).to_have_value(tag)
    expect(_row(page, stopped["id"])).to_be_visible()
    expect(page.locator("#jobs-body tr")).to_have_count(1)
    screenshot(page, "jobs-filtered")

    # A tag in a row filters by that tag.
    page.get_by_role("button", name="Clear filters").first.click()
    expect(page).to_have_url(re.compile(r"/$"))
    expect(_row(page, done["id"])).to_be_visible()
    _row(page, foreign["id"]).get_by_role("button", name=f"Show only jobs tagged {other}").click()
    expect(page).to_have_url(re.compile(rf"\?tag={other}$"))
    expect(page.get_by_label("Tag", exact=True)).to_have_value(other)
    expect(page.locator("#jobs-body tr")).to_have_count(1)
    expect(_row(page, foreign["id"])).to_be_visible()


def test_cancel_and_resume_a_running_job_from_the_page(page, live):
    tag = _tag("cancel")
    job = _submit(live, steps=LONG, name=f"long {tag}", tags=[tag])
    try:
        page.goto(f"/?tag={tag}")
        row = _row(page, job["id"])
        expect(row.locator(".badge")).to_have_text("running", timeout=60_000)
        expect(row.locator(".col-remaining")).not_to_have_text("–")
        screenshot(page, "jobs-running")

        # By keyboard: the focus stays in the row while its buttons change.
        row.locator('button[data-action="cancel"]').focus()
        page.keyboard.press("Enter")
        expect(row.locator(".badge")).to_have_text("cancelled", timeout=30_000)
        resume = row.locator('button[data-action="resume"]')
        expect(resume).to_be_focused()
        expect(row.locator('button[data-action="cancel"]')).to_have_count(0)

        resume.click()
        expect(row.locator(".badge")).to_have_text(re.compile(r"^(queued|running)$"))
        expect(row.locator('button[data-action="cancel"]')).to_be_visible()
        expect(row.locator('button[data-action="resume"]')).to_have_count(0)
    finally:
        _cancel_and_wait(live, job["id"])
    expect(row.locator(".badge")).to_have_text("cancelled")


def test_an_action_the_server_refuses_shows_its_reason(page, live):
    page.watch.allow(r"/api/jobs/[^/]+/cancel$", 409)
    tag = _tag("refused")
    job = _submit(live, steps=LONG, tags=[tag])
    try:
        page.clock.install()
        page.goto(f"/?tag={tag}")
        row = _row(page, job["id"])
        cancel = row.locator('button[data-action="cancel"]')
        expect(cancel).to_be_visible()
        # Stop the page's clock, so it does not poll, and cancel behind its back.
        page.clock.pause_at(page.evaluate("Date.now()") + 100)
        _cancel_and_wait(live, job["id"])
        expect(cancel).to_be_visible()
        cancel.click()
        toast = page.locator("#toast")
        expect(toast).to_contain_text("Could not cancel")
        expect(toast).to_contain_text("only a queued or running job can be cancelled")
        # The page fetched the list again after the refusal.
        expect(row.locator(".badge")).to_have_text("cancelled")
        expect(row.locator('button[data-action="resume"]')).to_be_visible()
    finally:
        _cancel_and_wait(live, job["id"])


def test_delete_a_finished_job_after_confirming(page, live):
    tag = _tag("delete")
    job = _submit(live, name=f"doomed {tag}", tags=[tag])
    live.wait_for(job["id"], ("succeeded",))
    page.goto(f"/?tag={tag}")
    row = _row(page, job["id"])
    expect(row.locator(".badge")).to_have_text("succeeded")
    expect(row.locator('button[data-action="cancel"]')).to_have_count(0)
    expect(row.locator('button[data-action="resume"]')).to_have_count(0)
    delete = row.get_by_role("button", name=f"Delete doomed {tag}")

    messages = []

    def dismiss(dialog):
        messages.append(dialog.message)
        dialog.dismiss()

    page.once("dialog", dismiss)
    delete.click()
    expect(row).to_be_visible()
    assert messages and f"doomed {tag}" in messages[0]
    with live.client() as client:
        assert client.get(f"/api/jobs/{job['id']}").status_code == 200

    page.once("dialog", lambda dialog: dialog.accept())
    delete.click()
    expect(row).to_have_count(0)
    expect(page.get_by_text("No jobs match these filters.")).to_be_visible()
    with live.client() as client:
        assert client.get(f"/api/jobs/{job['id']}").status_code == 404


def test_load_more_pages_on_and_rows_link_to_the_job_and_its_clone(page, live):
    tag = _tag("pages")
    jobs = [_submit(live, tags=[tag])] + [
        _submit(live, name=f"page {i} {tag}", tags=[tag]) for i in (1, 2)
    ]
    page.goto(f"/?tag={tag}&limit=2")
    body = page.locator("#jobs-body tr")
    expect(body).to_have_count(2)
    expect(body.nth(0)).to_have_attribute("data-id", jobs[2]["id"])
    more = page.get_by_role("button", name="Load more")
    more.click()
    expect(body).to_have_count(3)
    expect(more).to_be_hidden()

    oldest = _row(page, jobs[0]["id"])
    name = oldest.locator("a.job-name")
    expect(name).to_have_text(jobs[0]["id"][:8])  # no name: the short id
    expect(name).to_have_attribute("href", f"/jobs/{jobs[0]['id']}")
    clone = oldest.get_by_role("link", name="Clone")
    expect(clone).to_have_attribute("href", f"/jobs/new?from={jobs[0]['id']}")

    # The live updates keep all three rows (they poll for as many as are shown).
    for job in jobs:
        live.wait_for(job["id"], ("succeeded",))
    for job in jobs:
        expect(_row(page, job["id"]).locator(".badge")).to_have_text("succeeded")
    expect(body).to_have_count(3)


def test_phone_and_tablet_widths_show_the_rows_without_horizontal_overflow(page, live):
    tag = _tag("phone")
    job = _submit(
        live, name=f"a rather long job name for a phone screen {tag}", tags=[tag, "small", "mnist"]
    )
    live.wait_for(job["id"], ("succeeded",))
    # The widest progress text there is ("0 / 1,000,000"), and a failed job's error line.
    wide = _submit(live, steps=LONG, name=f"wide {tag}", tags=[tag, "a-rather-long-tag-name"])
    _cancel_and_wait(live, wide["id"])
    for width, path in (
        (375, f"/?tag={tag}"),
        (375, "/"),
        (800, "/"),
        (1100, "/"),
        (1100, f"/?tag={tag}"),
        (1280, f"/?tag={tag}"),
    ):
        page.set_viewport_size({"width": width, "height": 800})
        page.goto(path)
        row = _row(page, job["id"])
        expect(row.locator("a.job-name")).to_be_visible()
        expect(row.locator("progress")).to_be_visible()
        expect(row.get_by_role("link", name="Clone")).to_be_visible()
        expect(row.locator('button[data-action="delete"]')).to_be_visible()
        expect(page.get_by_label("Status")).to_be_visible()
        width_of_page = page.evaluate("document.documentElement.scrollWidth")
        assert width_of_page <= width + 2, f"{path}: the page is {width_of_page} px at {width} px"
        wrap = page.locator(".jobs-wrap").evaluate("w => [w.scrollWidth, w.clientWidth]")
        assert wrap[0] <= wrap[1] + 1, f"{path}: the table scrolls sideways at {width} px: {wrap}"
        box = row.bounding_box()
        assert box["x"] >= 0 and box["x"] + box["width"] <= width + 1, (path, width, box)
        screenshot(page, f"jobs-{width}" + ("-filtered" if "tag" in path else ""))

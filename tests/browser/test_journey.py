"""Issue 4's first acceptance point as one user journey: submit a job through the form, see
it appear in the jobs table, see its progress move and its loss chart gain points, all
without reloading a page."""

from __future__ import annotations

import re

from playwright.sync_api import expect

from tests.browser.conftest import screenshot
from tests.browser.test_new_job_page import JOB_URL, _finish, _open, _set_editor, _valid

STEPS = 6000  # long enough to still run when the test reaches the jobs table
SPEC = {
    "name": "journey through the form",
    "steps": STEPS,
    "model": {"width": 32, "depth": 2, "latent_dim": 8},
    "every": {"metrics": 10, "samples": 2000, "checkpoint": 2000, "eval": 0},
}


def test_submit_through_the_form_then_watch_progress_and_chart_grow(page, live):
    _open(page)
    _set_editor(page, SPEC)
    _valid(page)
    page.get_by_role("button", name="Submit job").click()
    page.wait_for_url(JOB_URL)
    job_id = JOB_URL.search(page.url).group(1)  # type: ignore[union-attr]
    try:
        page.evaluate("window.notReloaded = true")
        page.wait_for_function("() => window.gfJob && window.gfJob.ready === true")
        # The loss chart gains points while the job runs, without a reload.
        page.wait_for_function(
            "() => gfJob.plots.loss && gfJob.plots.loss.data[0].length > 0", timeout=60_000
        )
        first = page.evaluate("gfJob.plots.loss.data[0].length")
        page.wait_for_function(f"() => gfJob.plots.loss.data[0].length > {first}", timeout=60_000)
        assert page.evaluate("window.notReloaded") is True
        screenshot(page, "journey-job-page-running")

        # The jobs table lists it and its progress bar moves, without a reload.
        page.goto("/")
        page.evaluate("window.notReloaded = true")
        row = page.locator(f'#jobs-body tr[data-id="{job_id}"]')
        expect(row).to_be_visible()
        bar = row.locator("progress")
        start = bar.evaluate("p => p.value")
        page.wait_for_function(
            f"""() => {{
                const p = document.querySelector('#jobs-body tr[data-id="{job_id}"] progress');
                return p && p.value > {start};
            }}""",
            timeout=60_000,
        )
        expect(row.locator(".badge")).to_have_text("succeeded", timeout=120_000)
        expect(row.locator(".step-text")).to_have_text(re.compile(r"^6,?000 / 6,?000$"))
        assert page.evaluate("window.notReloaded") is True
        screenshot(page, "journey-jobs-table-done")
    finally:
        _finish(live, job_id)

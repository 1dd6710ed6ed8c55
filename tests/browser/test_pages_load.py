"""Every dashboard page loads without a console error or a failed request, and the vendored
chart library is served from the app itself (no network)."""

from __future__ import annotations

from tests.browser.conftest import screenshot


def test_every_page_loads_cleanly_with_the_vendored_chart_library(page):
    for path in ("/", "/jobs/new", "/compare"):
        page.goto(path)
        assert page.locator("h1").first.is_visible()
        assert page.evaluate("typeof uPlot") == "function"
        screenshot(page, f"load{path.replace('/', '_') or '_root'}")
    for path in ("/datasets", "/sweeps"):  # pages without charts
        page.goto(path)
        assert page.locator("h1").first.is_visible()
        screenshot(page, f"load{path.replace('/', '_')}")
    licence = page.request.get("/static/vendor/uplot/LICENSE")
    assert licence.ok and "MIT" in licence.text()


def test_an_unknown_job_page_is_a_404(page):
    page.watch.allow(r"/jobs/nope$", 404)
    answer = page.goto("/jobs/nope")
    assert answer.status == 404

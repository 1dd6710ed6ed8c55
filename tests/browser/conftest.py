"""Browser tests: Playwright for Python driving Debian's headless Chromium against a real
`ganforge up` (API + worker, embedded backend). Every page is watched: a console error, an
uncaught exception or a failed request fails the test unless the test declared it expected.
Screenshots go to test-artifacts/screenshots/ (kept after the run)."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.service.conftest import ROOT, Service, running_service

CHROMIUM = os.environ.get("GANFORGE_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
SCREENSHOTS = ROOT / "test-artifacts" / "screenshots"


def _require_chromium() -> None:
    if not Path(CHROMIUM).exists():
        message = f"Chromium is not installed at {CHROMIUM} (apt-get install chromium)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)


@pytest.fixture(scope="session")
def live(tmp_path_factory) -> Iterator[Service]:
    """One service for the whole browser session."""
    with running_service(tmp_path_factory.mktemp("browser-service")) as service:
        yield service


@pytest.fixture(scope="session")
def playwright() -> Iterator[Any]:
    """The one Playwright of the session (a second cannot run beside it)."""
    _require_chromium()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as running:
        yield running


@pytest.fixture(scope="session")
def browser(playwright: Any) -> Iterator[Any]:
    chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
    yield chromium
    chromium.close()


@dataclass
class PageWatch:
    """What went wrong on a page: console errors, page errors, failed requests."""

    problems: list[str] = field(default_factory=list)
    allowed: list[tuple[re.Pattern[str], int]] = field(default_factory=list)

    def allow(self, url_pattern: str, status: int) -> None:
        """Declare an expected error answer (e.g. the 422 of a form with a bad field)."""
        self.allowed.append((re.compile(url_pattern), status))

    def expected(self, url: str, status: int) -> bool:
        return any(p.search(url) and s == status for p, s in self.allowed)


def watch(page: Any, base_url: str) -> PageWatch:
    seen = PageWatch()
    failed_statuses: list[tuple[str, int]] = []

    def on_console(msg: Any) -> None:
        if msg.type != "error":
            return
        text = msg.text
        # Chromium logs every 4xx/5xx fetch as a console error; those are judged by status.
        if text.startswith("Failed to load resource: the server responded with a status of"):
            status = int(text.split("status of ")[1].split()[0])
            url = msg.location.get("url", "")
            if seen.expected(url, status) or any(
                s == status and seen.expected(u, s) for u, s in failed_statuses
            ):
                return
        seen.problems.append(f"console error: {text} ({msg.location.get('url', '')})")

    def on_response(response: Any) -> None:
        if response.status >= 400 and response.url.startswith(base_url):
            failed_statuses.append((response.url, response.status))
            if not seen.expected(response.url, response.status):
                seen.problems.append(f"request failed: {response.status} {response.url}")

    def on_request_failed(request: Any) -> None:
        failure = request.failure or ""
        # Navigating away aborts open event streams and image loads: not a failure.
        if "ERR_ABORTED" in failure:
            return
        seen.problems.append(f"request failed: {failure} {request.url}")

    page.on("console", on_console)
    page.on("pageerror", lambda exc: seen.problems.append(f"page error: {exc}"))
    page.on("response", on_response)
    page.on("requestfailed", on_request_failed)
    return seen


@pytest.fixture
def page(browser: Any, live: Service, request: pytest.FixtureRequest) -> Iterator[Any]:
    """A fresh 1366x768 page on the live service; fails the test on any page problem."""
    yield from watched_page(browser, live, request)


def watched_page(browser: Any, service: Service, request: pytest.FixtureRequest) -> Iterator[Any]:
    """The body of a page fixture on `service`: a fresh 1366x768 page, watched; on teardown
    a screenshot if the test failed, and a failure for any page problem."""
    context = browser.new_context(
        base_url=service.url, viewport={"width": 1366, "height": 768}, accept_downloads=True
    )
    page = context.new_page()
    page.set_default_timeout(15_000)
    page.watch = watch(page, service.url)
    yield page
    problems = list(page.watch.problems)
    if request.node.rep_call.failed if hasattr(request.node, "rep_call") else False:
        screenshot(page, f"FAILED-{request.node.name}")
    context.close()
    assert not problems, "problems on the page:\n" + "\n".join(problems)


def screenshot(page: Any, name: str, *, full_page: bool = True) -> Path:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{re.sub(r'[^A-Za-z0-9_.-]+', '_', name)}.png"
    page.screenshot(path=str(path), full_page=full_page)
    return path


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: Any) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()
    setattr(item, f"rep_{report.when}", report)

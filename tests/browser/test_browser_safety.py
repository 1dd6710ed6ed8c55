"""The attacks of issue 16 in a real Chromium against a real `ganforge up`, and the pages
working under their Content-Security-Policy.

The attacks run in a second Chromium that behaves like browsers without Chromium's own
Local Network Access checks (Firefox, Safari, older Chromium): those checks are turned off,
so what stops each attack is the server, not this browser. It resolves `evil.example` to
127.0.0.1, as a rebinding domain does after its flip.

- DNS rebinding: the attacker's page, same-origin with the service by name, gets a 400 for
  every request, so it can neither read the dashboard nor submit a job.
- A cross-site write: a page on another origin POSTs to the service (no-cors, as a hostile
  page may): the server refuses it (403) and stores nothing.
- Framing: another page puts the dashboard in an iframe; Chromium refuses to show it.
- The CSP: every page runs its scripts, charts and forms with no policy violation.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import httpx2
import pytest
from playwright.sync_api import expect

from tests.browser.conftest import CHROMIUM, CHROMIUM_ARGS, screenshot
from tests.service.conftest import Service, tiny_spec

EVIL = "evil.example"
RECORD_VIOLATIONS = """
window.__violations = [];
document.addEventListener("securitypolicyviolation",
  (e) => window.__violations.push(`${e.violatedDirective} ${e.blockedURI}`));
"""


def job_count(live: Service) -> int:
    with live.client() as client:
        return len(client.get("/api/jobs", params={"limit": 500}).json()["items"])


# Chromium's Local Network Access checks, which would block a public page's requests to
# loopback before they reach the server.
LNA_FEATURES = (
    "LocalNetworkAccessChecks,PrivateNetworkAccessRespectPreflightResults,"
    "BlockInsecurePrivateNetworkRequests"
)


@pytest.fixture(scope="module")
def attacked_browser(playwright: Any) -> Iterator[Any]:
    """A Chromium without Local Network Access checks, for which evil.example is 127.0.0.1."""
    chromium = playwright.chromium.launch(
        executable_path=CHROMIUM,
        args=[
            *CHROMIUM_ARGS,
            f"--host-resolver-rules=MAP {EVIL} 127.0.0.1",
            f"--disable-features={LNA_FEATURES}",
        ],
    )
    yield chromium
    chromium.close()


def test_a_rebinding_page_can_neither_read_the_dashboard_nor_submit(
    attacked_browser: Any, live: Service
) -> None:
    port = live.url.rsplit(":", 1)[1]
    evil = f"http://{EVIL}:{port}"
    before = job_count(live)
    page = attacked_browser.new_page()
    try:
        answer = page.goto(evil + "/")
        assert answer is not None and answer.status == 400
        assert "GANFORGE_ALLOWED_HOSTS" in page.content()
        # The attacker's own page at that origin (its server before the DNS flip) ...
        page.route(
            evil + "/attack.html",
            lambda route: route.fulfill(content_type="text/html", body="<p>hello</p>"),
        )
        page.goto(evil + "/attack.html")
        # ... reaches 127.0.0.1 same-origin now: a read and a submit, both refused.
        result = page.evaluate(
            """async (spec) => {
              const read = await fetch("/api/jobs");
              const write = await fetch("/api/jobs", {method: "POST",
                headers: {"content-type": "application/json"},
                body: JSON.stringify({spec})});
              return [read.status, write.status, (await write.json()).detail];
            }""",
            tiny_spec(),
        )
        screenshot(page, "safety_rebinding")
    finally:
        page.close()
    assert result[:2] == [400, 400], result
    assert "GANFORGE_ALLOWED_HOSTS" in result[2]
    assert job_count(live) == before


def test_a_cross_site_post_is_refused_and_stores_nothing(
    attacked_browser: Any, live: Service
) -> None:
    before = job_count(live)
    with live.client() as client:
        datasets = client.get("/api/datasets").json()
    page = attacked_browser.new_page()
    seen: list[tuple[str, str | None, int]] = []

    def on_response(response: Any) -> None:
        if response.url.startswith(live.url):
            seen.append((response.url, response.request.headers.get("origin"), response.status))

    page.on("response", on_response)
    try:
        page.route(
            "http://attacker.example/attack.html",
            lambda route: route.fulfill(content_type="text/html", body="<p>hello</p>"),
        )
        page.goto("http://attacker.example/attack.html")
        # A hostile page cannot read the answer (no CORS), but a no-cors POST still goes out.
        page.evaluate(
            """async ([url, spec]) => {
              await fetch(url + "/api/jobs", {method: "POST", mode: "no-cors",
                headers: {"content-type": "text/plain"}, body: JSON.stringify({spec})});
              const form = new FormData();
              form.append("file", new Blob(["x"]), "x.npy");
              await fetch(url + "/api/datasets", {method: "POST", mode: "no-cors", body: form});
            }""",
            [live.url, tiny_spec()],
        )
    finally:
        page.close()
    assert [(o, s) for _, o, s in seen] == [("http://attacker.example", 403)] * 2, seen
    assert job_count(live) == before
    with live.client() as client:
        assert client.get("/api/datasets").json() == datasets


def test_another_site_cannot_frame_the_dashboard(attacked_browser: Any, live: Service) -> None:
    page = attacked_browser.new_page()
    console: list[str] = []
    page.on("console", lambda msg: console.append(msg.text))
    try:
        page.route(
            "http://attacker.example/frame.html",
            lambda route: route.fulfill(
                content_type="text/html",
                body=f'<iframe id="f" src="{live.url}/" width="800" height="600"></iframe>',
            ),
        )
        page.goto("http://attacker.example/frame.html")
        page.wait_for_timeout(1000)
        frame = page.frame_locator("#f")
        assert frame.locator("#jobs-table").count() == 0
        screenshot(page, "safety_framed")
    finally:
        page.close()
    assert any("frame-ancestors" in line for line in console), console


@pytest.mark.parametrize("path", ["/", "/jobs/new", "/jobs/JOB", "/compare?ids=JOB,JOB2"])
def test_every_page_works_under_its_csp(page: Any, live: Service, path: str) -> None:
    with httpx2.Client(base_url=live.url, timeout=30) as client:
        ids = [client.post("/api/jobs", json={"spec": tiny_spec()}).json()["id"] for _ in "ab"]
    for job_id in ids:
        live.wait_for(job_id, ("succeeded",))
    path = path.replace("JOB2", ids[1]).replace("JOB", ids[0])
    page.add_init_script(RECORD_VIOLATIONS)
    answer = page.goto(path)
    assert answer is not None
    assert "script-src 'self'" in answer.headers["content-security-policy"]
    assert page.evaluate("typeof uPlot") == "function"  # the vendored script ran
    if path.startswith("/jobs/") and path != "/jobs/new":
        page.locator("#charts .uplot").first.wait_for()  # charts drawn from the event stream
    elif path.startswith("/compare"):
        page.locator(".uplot").first.wait_for()
        page.locator(".swatch").first.wait_for()  # styled through the CSSOM, not an attribute
    elif path == "/":
        page.locator(f"tr[data-id='{ids[0]}']").wait_for()
    else:
        expect(page.locator("#nf-editor")).to_have_value(re.compile(r"\S"))  # written by new.js
    page.wait_for_timeout(300)
    assert page.evaluate("window.__violations") == []

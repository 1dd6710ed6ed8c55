"""The dashboard on a server that has an API token: it asks for the token, keeps it in the
browser, sends it with writes, and shows sample images and downloads only with it.

A service of its own (the shared one stays open for the other browser tests); the token is
made with `ganforge token create`, as a user would, while the service runs."""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import expect

from tests.browser.conftest import screenshot, watched_page
from tests.browser.test_new_job_page import JOB_URL, _open, _set_editor, _valid
from tests.service.conftest import ROOT, Service, running_service, tiny_spec

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _token(service: Service, name: str, *command: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "app.cli", "token", *(command or ("create",)), name],
        cwd=ROOT,
        env=service.env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return done.stdout.strip()


@pytest.fixture(scope="module")
def locked(tmp_path_factory) -> Iterator[tuple[Service, str, str]]:
    """A service with a token `alice` (and a revoked `mallory`), and a finished job."""
    with running_service(tmp_path_factory.mktemp("locked-service")) as service:
        token = _token(service, "alice")
        revoked = _token(service, "mallory")
        _token(service, "mallory", "revoke")
        with service.client() as client:
            made = client.post(
                "/api/jobs",
                json={"spec": tiny_spec()},
                headers={"Authorization": f"Bearer {token}"},
            )
            assert made.status_code == 201, made.text
            job_id = made.json()["id"]
        assert service.wait_for(job_id, ("succeeded",))["created_by"] == "alice"
        yield service, token, revoked


@pytest.fixture
def locked_page(
    browser: Any, locked: tuple[Service, str, str], request: pytest.FixtureRequest
) -> Iterator[Any]:
    yield from watched_page(browser, locked[0], request)


def _job_id(service: Service) -> str:
    with service.client() as client:
        job_id: str = client.get("/api/jobs", params={"status": "succeeded"}).json()["items"][-1][
            "id"
        ]
    return job_id


def _enter_token(page: Any, token: str) -> None:
    dialog = page.locator("#token-dialog")
    expect(dialog).to_be_visible()
    page.get_by_label("Token", exact=True).fill(token)
    page.get_by_role("button", name="Save token").click()


def test_a_locked_server_shows_no_samples_until_the_token_is_entered(locked_page, locked):
    page, (service, token, revoked) = locked_page, locked
    job_id = _job_id(service)
    page.goto(f"/jobs/{job_id}")
    expect(page.locator("#auth-state")).to_have_text("Read-only: no token")
    locked_note = page.locator("#samples-locked")
    expect(locked_note).to_be_visible()
    assert page.locator("#sample-img").get_attribute("src") is None
    screenshot(page, "auth_locked_job_page")

    # A download link while locked asks for the token instead of fetching a 401.
    page.locator("#samples-zip").click()
    expect(page.locator("#token-dialog")).to_be_visible()
    page.get_by_role("button", name="Cancel").click()
    expect(page.locator("#token-dialog")).to_be_hidden()

    # A wrong and a revoked token are refused in the dialog, with the reason.
    page.get_by_role("button", name="Enter token").first.click()
    _enter_token(page, "gf_nothing0_" + "x" * 40)
    expect(page.locator("#token-error")).to_have_text(re.compile("refused: the token is not valid"))
    page.get_by_label("Token", exact=True).fill(revoked)
    page.get_by_role("button", name="Save token").click()
    expect(page.locator("#token-error")).to_have_text(re.compile("'mallory' was revoked"))
    screenshot(page, "auth_token_refused")
    page.get_by_label("Token", exact=True).fill(token)
    page.get_by_role("button", name="Save token").click()
    expect(page.locator("#token-dialog")).to_be_hidden()
    expect(page.locator("#auth-state")).to_have_text("Token: alice")

    # Now the images show, and the downloads work (the cookie carries the token).
    expect(locked_note).to_be_hidden()
    image = page.locator("#sample-img")
    expect(image).to_have_attribute("src", re.compile(r"/api/jobs/.+/samples/\d+"))
    page.wait_for_function(
        "() => { const i = document.getElementById('sample-img'); "
        "return i.complete && i.naturalWidth > 0; }"
    )
    with page.expect_download() as one:
        page.locator("#sample-download").click()
    assert Path(one.value.path()).read_bytes().startswith(PNG_SIGNATURE)
    with page.expect_download() as checkpoint:
        page.locator("#checkpoints a", has_text="Download").first.click()
    assert Path(checkpoint.value.path()).stat().st_size > 1000
    screenshot(page, "auth_unlocked_job_page")

    # The token survives a reload (kept in the browser); forgetting it locks the page again.
    page.reload()
    expect(page.locator("#auth-state")).to_have_text("Token: alice")
    expect(page.locator("#sample-img")).to_have_attribute("src", re.compile("/samples/"))
    page.get_by_role("button", name="Forget token").click()
    expect(page.locator("#auth-state")).to_have_text("Read-only: no token")
    expect(locked_note).to_be_visible()


def test_a_write_without_a_token_asks_for_one_and_then_goes_through(locked_page, locked):
    page, (service, token, _) = locked_page, locked
    page.watch.allow(r"/api/jobs$", 401)  # the first try, before the token is entered
    _open(page)
    _set_editor(page, {**tiny_spec(), "name": "submitted with a token"})
    _valid(page)  # validation is open to everyone: it changes nothing
    page.get_by_role("button", name="Submit job").click()
    expect(page.locator("#token-why")).to_contain_text("this server needs a token for that")
    screenshot(page, "auth_asked_on_submit")
    _enter_token(page, token)
    page.wait_for_url(JOB_URL)
    job_id = JOB_URL.search(page.url).group(1)  # type: ignore[union-attr]
    job = service.wait_for(job_id, ("succeeded",))
    assert job["name"] == "submitted with a token" and job["created_by"] == "alice"


def test_a_saved_token_that_was_revoked_is_dropped_with_a_message(locked_page, locked):
    page, (service, _, _) = locked_page, locked
    spare = _token(service, "spare")
    page.goto("/")
    page.evaluate(f"localStorage.setItem('ganforge.token', '{spare}')")
    page.reload()
    expect(page.locator("#auth-state")).to_have_text("Token: spare")
    _token(service, "spare", "revoke")
    page.reload()
    expect(page.locator("#toast")).to_contain_text("'spare' was revoked")
    expect(page.locator("#auth-state")).to_have_text("Read-only: no token")
    assert page.evaluate("localStorage.getItem('ganforge.token')") is None


def test_the_cli_submits_with_its_token_and_is_refused_without(locked, tmp_path):
    """`ganforge submit` against the same locked server (no browser needed)."""
    service, token, revoked = locked
    spec = tmp_path / "job.yaml"
    spec.write_text("steps: 40\nbatch_size: 64\nmodel: {width: 32, depth: 2, latent_dim: 8}\n")

    def submit(*extra: str, env: dict[str, str] | None = None) -> Any:
        return subprocess.run(
            [sys.executable, "-m", "app.cli", "submit", str(spec), "--server", service.url, *extra],
            cwd=ROOT,
            env={**service.env, **(env or {})},
            capture_output=True,
            text=True,
            timeout=120,
        )

    refused = submit()
    assert refused.returncode == 1
    assert "401" in refused.stderr and "needs a token" in refused.stderr
    gone = submit("--token", revoked)
    assert gone.returncode == 1 and "'mallory' was revoked" in gone.stderr
    done = submit("--watch", env={"GANFORGE_TOKEN": token})
    assert done.returncode == 0, done.stderr

"""The Sweeps pages (/sweeps, /sweeps/{id}) and the New-job page's sweep mode in a real browser
against the real service (`ganforge up`: API, one worker, the sweep controller beside its
reconciler): the list, the trials table sorted by its headers, the best trial marked, the
objective charted against each parameter, the leak audit, "Compare the best N", cancel and
delete, a sweep submitted from the form, and the seed's study preset in one click.

The service's single worker is shared by every browser test: each sweep here is tiny (40-step
trials) and is waited for, or cancelled and waited for, before its test ends."""

from __future__ import annotations

import re
import time
from typing import Any

import pytest
import yaml
from playwright.sync_api import expect

from tests.browser.conftest import screenshot
from tests.service.conftest import Service, tiny_spec

SWEEP_URL = re.compile(r"/sweeps/([0-9a-f]{32})$")
ENDED = ("finished", "cancelled")
TRIAL_ENDED = ("succeeded", "failed", "cancelled", "pruned")
# G first with zero_grad after: isolation none leaks into both networks, freeze into neither.
LEAKY_BASE = {"schedule": {"order": "g_first", "zero_grad": "after"}}


def _quick(**overrides: Any) -> dict[str, Any]:
    """A trial spec of about a second: 40 steps, evaluated at 20 and 40."""
    spec = tiny_spec(**overrides)
    spec["every"] = {**spec["every"], "eval": 20}
    return spec


def _create(live: Service, **body: Any) -> dict[str, Any]:
    with live.client() as client:
        answer = client.post("/api/sweeps", json=body)
    assert answer.status_code == 201, answer.text
    return answer.json()


def _get(live: Service, sweep_id: str) -> dict[str, Any]:
    with live.client() as client:
        answer = client.get(f"/api/sweeps/{sweep_id}")
    assert answer.status_code == 200, answer.text
    return answer.json()


def _settled(sweep: dict[str, Any]) -> bool:
    return sweep["status"] in ENDED and all(t["status"] in TRIAL_ENDED for t in sweep["trials"])


def _wait(live: Service, sweep_id: str, timeout: float = 300) -> dict[str, Any]:
    """Until the sweep ended and none of its trials runs any more."""
    deadline = time.monotonic() + timeout
    while True:
        sweep = _get(live, sweep_id)
        if _settled(sweep):
            return sweep
        if time.monotonic() > deadline:
            raise AssertionError(
                f"sweep {sweep_id} still {sweep['status']} after {timeout} s: {sweep['counts']};"
                " log:\n" + live.log.read_text()[-3000:]
            )
        time.sleep(0.2)


def _stop(live: Service, sweep_id: str) -> dict[str, Any]:
    """Free the shared worker: cancel the sweep if it still runs, wait until it stopped."""
    with live.client() as client:
        answer = client.post(f"/api/sweeps/{sweep_id}/cancel")
    assert answer.status_code in (200, 409), answer.text
    return _wait(live, sweep_id)


def _rank(sweep: dict[str, Any]) -> list[str]:
    """Job ids of the trials with an objective value, best first (ties: the lower number)."""
    sign = -1 if sweep["objective"]["mode"] == "max" else 1
    scored = [t for t in sweep["trials"] if t["value"] is not None]
    scored.sort(key=lambda t: (sign * t["value"], t["number"]))
    ids = [t["job_id"] for t in scored]
    best = sweep["best"]["job_id"]
    return [best] + [i for i in ids if i != best]


@pytest.fixture(scope="module")
def grid(live: Service) -> dict[str, Any]:
    """A finished grid sweep of 4 trials: G's learning rate x isolation (freeze, none)."""
    sweep = _create(
        live,
        name="browser grid",
        base=_quick(**LEAKY_BASE),
        space={
            "optim.g.lr": {"values": [0.001, 0.004]},
            "schedule.isolation": {"values": ["freeze", "none"]},
        },
        method="grid",
        objective={"metric": "eval/modes", "mode": "max"},
        budget={"trials": 4, "concurrent": 2},
    )
    return _wait(live, sweep["id"])


def _rows(page: Any) -> Any:
    return page.locator("#trials-body tr")


def _column(page: Any, key: str) -> list[str]:
    return [t.strip() for t in page.locator(f'#trials-body td[data-col="{key}"]').all_inner_texts()]


def test_the_list_shows_each_sweep_and_links_to_its_page(page, live, grid):
    assert grid["status"] == "finished" and grid["counts"] == {"succeeded": 4}, grid["counts"]
    page.goto("/sweeps")
    expect(page.locator("header nav a", has_text="Sweeps")).to_have_attribute(
        "aria-current", "page"
    )
    row = page.locator(f'#sweeps-body tr[data-id="{grid["id"]}"]')
    expect(row).to_be_visible()
    expect(row.locator(".badge")).to_have_text("finished")
    expect(row).to_contain_text("grid")
    expect(row).to_contain_text("eval/modes (max)")
    expect(row.locator(".step-text")).to_have_text("4 / 4")
    best = grid["best"]
    expect(row.locator(".col-best a")).to_have_attribute("href", f"/jobs/{best['job_id']}")
    screenshot(page, "sweeps-list")
    row.get_by_role("link", name="browser grid").click()
    expect(page).to_have_url(re.compile(rf"/sweeps/{grid['id']}$"))
    expect(page.locator("#sweep-name")).to_have_text("browser grid")


def test_the_sweep_page_shows_the_trials_the_best_the_audit_and_charts(page, live, grid):
    page.goto(f"/sweeps/{grid['id']}")
    expect(page.locator("#sweep-status")).to_have_text("finished")
    expect(page.locator("#sweep-progress-text")).to_contain_text("4 of 4 trials done")
    expect(page.locator('#sweep-counts li[data-status="succeeded"]')).to_contain_text("4")
    expect(_rows(page)).to_have_count(4)
    # Every trial links to its job.
    for trial in grid["trials"]:
        link = page.locator(f'#trials-body tr[data-job="{trial["job_id"]}"] a.trial-link')
        expect(link).to_have_attribute("href", f"/jobs/{trial['job_id']}")
        expect(link).to_have_text(f"#{trial['number']}")
    # The best trial is marked, in the table and above it.
    best = page.locator("#trials-body tr.is-best")
    expect(best).to_have_count(1)
    expect(best).to_have_attribute("data-job", grid["best"]["job_id"])
    expect(best.locator(".badge.best")).to_have_text("best")
    expect(page.locator("#sweep-best")).to_contain_text("eval/modes")
    # The leak audit: isolation none leaks, freeze does not.
    headers = page.locator("#trials-head th")
    names = ["Trial", "optim.g.lr", "schedule.isolation", "eval/modes", "Status", "Step"]
    expect(headers).to_contain_text([*names, "Steps/s", "Leak audit (mean)"])
    expect(headers).to_have_count(8)
    for trial in grid["trials"]:
        leak = page.locator(f'#trials-body tr[data-job="{trial["job_id"]}"] td[data-col="leak"]')
        if trial["params"]["schedule.isolation"] == "none":
            assert trial["audit_leak"] > 0, trial
            expect(leak).not_to_have_text(re.compile(r"^(0|–)$"))
        else:
            assert trial["audit_leak"] == 0, trial
            expect(leak).to_have_text("0")
    # One scatter per varied parameter; the isolation's categories label its axis.
    charts = page.locator("#sweep-charts .chart-card")
    expect(charts).to_have_count(2)
    expect(charts.locator("canvas")).to_have_count(2)
    # (uPlot draws its axes on the canvas: read the category under the cursor in the legend.)
    x_legend = page.locator('[data-param="schedule.isolation"] .u-legend .u-series').first
    for index, category in enumerate(["freeze", "none"]):
        page.evaluate(
            """([i]) => { const u = gfSweep.plots["schedule.isolation"];
                          u.setCursor({left: u.valToPos(i, "x"), top: 10}); }""",
            [index],
        )
        expect(x_legend).to_contain_text(category)
    # Nothing skipped in this grid.
    expect(page.locator("#skipped")).to_be_hidden()
    expect(page.locator("#sweep-cancel")).to_be_hidden()
    expect(page.locator("#sweep-delete")).to_be_visible()
    screenshot(page, "sweep-finished")


def test_clicking_a_header_sorts_the_trials_by_that_column(page, live, grid):
    page.goto(f"/sweeps/{grid['id']}")
    expect(_rows(page)).to_have_count(4)
    by_number = sorted(grid["trials"], key=lambda t: t["number"])
    assert page.locator("#trials-body tr").evaluate_all("rows => rows.map(r => r.dataset.job)") == [
        t["job_id"] for t in by_number
    ]

    lr = page.locator('#trials-head button[data-sort="param:optim.g.lr"]')
    lr.click()
    expect(page.locator('#trials-head th[data-col="param:optim.g.lr"]')).to_have_attribute(
        "aria-sort", "ascending"
    )
    assert _column(page, "param:optim.g.lr") == ["0.001", "0.001", "0.004", "0.004"]
    lr.click()
    expect(page.locator('#trials-head th[data-col="param:optim.g.lr"]')).to_have_attribute(
        "aria-sort", "descending"
    )
    assert _column(page, "param:optim.g.lr") == ["0.004", "0.004", "0.001", "0.001"]

    page.locator('#trials-head button[data-sort="leak"]').click()
    leaks = [t["audit_leak"] for t in sorted(grid["trials"], key=lambda t: t["audit_leak"])]
    shown = page.locator("#trials-body tr").evaluate_all("rows => rows.map(r => r.dataset.job)")
    assert [next(t for t in grid["trials"] if t["job_id"] == j)["audit_leak"] for j in shown] == (
        leaks
    )
    isolation = _column(page, "param:schedule.isolation")
    assert isolation == ["freeze", "freeze", "none", "none"]

    # The objective sorts best first (max: descending) on its first click.
    page.locator('#trials-head button[data-sort="value"]').click()
    expect(page.locator('#trials-head th[data-col="value"]')).to_have_attribute(
        "aria-sort", "descending"
    )
    shown = page.locator("#trials-body tr").evaluate_all("rows => rows.map(r => r.dataset.job)")
    by_job = {t["job_id"]: t for t in grid["trials"]}
    values = [by_job[j]["value"] for j in shown]
    assert values == sorted(values, reverse=True), values
    page.locator('#trials-head button[data-sort="value"]').click()
    shown = page.locator("#trials-body tr").evaluate_all("rows => rows.map(r => r.dataset.job)")
    assert [by_job[j]["value"] for j in shown] == sorted(values)


def test_compare_the_best_two_opens_the_compare_page_on_them(page, live, grid):
    page.goto(f"/sweeps/{grid['id']}")
    expect(_rows(page)).to_have_count(4)
    expect(page.locator("#compare-n")).to_have_value("3")
    page.get_by_label("Compare the best").select_option("2")
    top = _rank(grid)[:2]
    compare = page.locator("#sweep-compare")
    expect(compare).to_have_attribute("href", f"/compare?ids={','.join(top)}")
    compare.click()
    expect(page).to_have_url(re.compile(r"/compare\?ids="))
    assert page.url.split("ids=")[1].split(",") == top
    expect(page.locator("#compare-jobs li")).to_have_count(2)
    page.locator("#compare-charts .uplot").first.wait_for()
    screenshot(page, "sweep-compare-best-2")


def test_a_running_sweep_updates_live_then_cancel_and_delete(page, live):
    sweep = _create(
        live,
        name="browser cancel",
        base=tiny_spec(steps=1_000_000),  # runs until cancelled
        space={"optim.g.lr": {"values": [0.001, 0.002, 0.004]}},
        method="grid",
        objective={"metric": "eval/modes", "mode": "max"},
        budget={"trials": 3, "concurrent": 1},
    )
    try:
        page.goto(f"/sweeps/{sweep['id']}")
        page.evaluate("window.notReloaded = true")
        expect(page.locator("#sweep-status")).to_have_text("running")
        # Without a reload, the first trial shows up and starts running (one at a time).
        running = page.locator('#trials-body tr[data-status="running"]')
        expect(running).to_have_count(1, timeout=60_000)
        expect(page.locator("#sweep-progress-text")).to_contain_text("0 of 3 trials done")
        expect(page.locator("#sweep-compare")).to_have_attribute("aria-disabled", "true")
        expect(page.locator("#sweep-delete")).to_be_hidden()
        screenshot(page, "sweep-running")

        page.get_by_role("button", name="Cancel sweep").click()
        expect(page.locator("#sweep-status")).to_have_text("cancelled")
        expect(page.locator("#sweep-cancel")).to_be_hidden()
        expect(page.locator('#trials-body tr[data-status="cancelled"]')).to_have_count(
            1, timeout=60_000
        )
        assert page.evaluate("window.notReloaded") is True
    finally:
        ended = _stop(live, sweep["id"])
    assert ended["status"] == "cancelled"
    assert len(ended["trials"]) == 1 and ended["trials"][0]["status"] == "cancelled"

    page.once("dialog", lambda dialog: dialog.accept())
    page.get_by_role("button", name="Delete sweep").click()
    expect(page).to_have_url(re.compile(r"/sweeps$"))
    expect(page.locator(f'#sweeps-body tr[data-id="{sweep["id"]}"]')).to_have_count(0)
    with live.client() as client:
        assert client.get(f"/api/sweeps/{sweep['id']}").status_code == 404
        assert client.get(f"/api/jobs/{ended['trials'][0]['job_id']}").status_code == 404


def _open_new(page: Any) -> None:
    page.goto("/jobs/new")
    expect(page.locator('.nf-preset[data-preset="ring"]')).to_be_visible()
    expect(page.locator("#nf-state")).to_have_text(re.compile(r"^Valid|problem"))


def _set_editor(page: Any, spec: dict[str, Any]) -> None:
    editor = page.locator("#nf-editor")
    editor.fill(yaml.safe_dump(spec, sort_keys=False))
    editor.press("Tab")
    expect(page.locator("#nf-state")).to_have_text(re.compile(r"^Valid"))


def test_the_new_job_form_submits_a_sweep_and_shows_the_apis_field_errors(page, live):
    _open_new(page)
    _set_editor(page, {"name": "form sweep", **_quick()})
    page.get_by_label("Run as a sweep").check()
    expect(page.get_by_role("button", name="Submit sweep")).to_be_visible()
    # A value that makes an invalid spec: the API's 422 names the field, shown by its row.
    page.get_by_label("Field to vary").fill("accumulation.steps")
    page.get_by_label("Field to vary").press("Tab")
    page.get_by_label("Values").fill("1, 3")
    page.get_by_label("Trials").fill("2")
    page.get_by_label("At once").fill("1")
    page.watch.allow(r"/api/sweeps$", 422)
    page.get_by_role("button", name="Submit sweep").click()
    error = page.locator('[data-field="space.accumulation.steps"] .nf-error')
    expect(error).to_contain_text("3")
    expect(error).to_contain_text("batch_size")
    expect(page.locator("#nf-submit-error")).to_contain_text("Not submitted")
    screenshot(page, "new-sweep-422")

    # Fixed: two learning rates of G, a grid; it lands on the sweep's page.
    page.get_by_label("Field to vary").fill("optim.g.lr")
    page.get_by_label("Field to vary").press("Tab")
    page.get_by_label("Values").fill("0.001, 0.002")
    page.get_by_label("Search").select_option("grid")
    page.get_by_role("button", name="Submit sweep").click()
    page.wait_for_url(SWEEP_URL, wait_until="commit")
    sweep_id = SWEEP_URL.search(page.url).group(1)  # type: ignore[union-attr]
    try:
        expect(page.locator("#sweep-name")).to_have_text("form sweep")
        sweep = _get(live, sweep_id)
        assert sweep["method"] == "grid"
        assert sweep["space"] == {"optim.g.lr": {"values": [0.001, 0.002]}}
        assert sweep["budget"] == {"trials": 2, "concurrent": 1}
        assert sweep["objective"] == {"metric": "eval/modes", "mode": "max"}
        assert sweep["base"]["steps"] == 40
        expect(_rows(page)).to_have_count(2, timeout=60_000)
    finally:
        ended = _wait(live, sweep_id)
    assert ended["status"] == "finished", ended["counts"]
    expect(page.locator("#sweep-status")).to_have_text("finished")


def test_the_seed_study_preset_submits_its_grid_in_one_click(page, live):
    _open_new(page)
    study = page.locator('.nf-preset[data-preset="seed-study"]')
    expect(study).to_contain_text("The seed's study")
    expect(study).to_contain_text("36")
    study.click()
    page.wait_for_url(SWEEP_URL, wait_until="commit")
    sweep_id = SWEEP_URL.search(page.url).group(1)  # type: ignore[union-attr]
    try:
        sweep = _get(live, sweep_id)
        assert sweep["method"] == "grid"
        assert sweep["budget"] == {"trials": 36, "concurrent": 2}
        assert sweep["objective"] == {"metric": "eval/modes", "mode": "max"}
        assert {p: len(d["values"]) for p, d in sweep["space"].items()} == {
            "schedule.order": 3,
            "schedule.isolation": 3,
            "schedule.zero_grad": 2,
            "accumulation.steps": 2,
        }
        assert sweep["base"]["steps"] == 2000
        expect(page.locator("#sweep-name")).to_have_text("The seed's study")
        expect(page.locator("#sweep-progress-text")).to_contain_text("of 36 trials done")
        expect(page.locator("#trials-head th").last).to_have_text("Leak audit (mean)")
        screenshot(page, "sweep-seed-study")
    finally:
        ended = _stop(live, sweep_id)  # 36 trials of 2,000 steps: too long for a test
    assert ended["status"] == "cancelled"


RECORD_VIOLATIONS = """
window.__violations = [];
document.addEventListener("securitypolicyviolation",
  (e) => window.__violations.push(`${e.violatedDirective} ${e.blockedURI}`));
"""


def test_the_sweep_pages_work_under_their_csp_and_an_unknown_sweep_is_a_404(page, live, grid):
    page.add_init_script(RECORD_VIOLATIONS)
    for path, ready in (("/sweeps", "#sweeps-body tr"), (f"/sweeps/{grid['id']}", ".uplot")):
        answer = page.goto(path)
        assert answer is not None and answer.status == 200
        assert "script-src 'self'" in answer.headers["content-security-policy"]
        page.locator(ready).first.wait_for()
        page.wait_for_timeout(300)
        assert page.evaluate("window.__violations") == [], path
    page.watch.allow(r"/sweeps/nope$", 404)
    answer = page.goto("/sweeps/nope")
    assert answer is not None and answer.status == 404


def test_the_sweep_page_fits_a_phone(page, live, grid):
    page.set_viewport_size({"width": 375, "height": 800})
    page.goto(f"/sweeps/{grid['id']}")
    expect(_rows(page)).to_have_count(4)
    page.locator("#sweep-charts canvas").first.wait_for()
    # The table scrolls inside its frame; the page itself does not scroll sideways.
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth + 1")
    screenshot(page, "sweep-375")

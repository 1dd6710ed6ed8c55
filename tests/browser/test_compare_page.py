"""/compare?ids=...: two real jobs of the live service that differ in schedule.order and
accumulation.steps, overlaid one chart per metric, lines labelled by the differing fields;
the picker; the messages for too few, too many and unknown ids."""

from __future__ import annotations

import re
from typing import Any

import pytest
from playwright.sync_api import expect

from tests.browser.conftest import screenshot
from tests.service.conftest import Service, tiny_spec


@pytest.fixture(scope="module")
def two_jobs(live: Service) -> list[dict[str, Any]]:
    """d_first without accumulation beside g_first with 4 micro-batches of 16, both done."""
    specs = [
        tiny_spec(schedule={"order": "d_first"}, accumulation={"steps": 1}),
        tiny_spec(schedule={"order": "g_first"}, accumulation={"steps": 4}),
    ]
    with live.client() as client:
        ids = []
        for spec in specs:
            answer = client.post("/api/jobs", json={"spec": spec, "tags": ["compare-page"]})
            assert answer.status_code == 201, answer.text
            ids.append(answer.json()["id"])
    jobs = [live.wait_for(i, ("succeeded", "failed", "cancelled")) for i in ids]
    assert [j["status"] for j in jobs] == ["succeeded", "succeeded"], jobs
    return jobs


def metric_names(live: Service, job_ids: list[str]) -> set[str]:
    with live.client() as client:
        return {
            name
            for job_id in job_ids
            for name in client.get(f"/api/jobs/{job_id}/metrics").json()["series"]
        }


def test_two_jobs_overlay_one_chart_per_metric_labelled_by_their_differences(page, live, two_jobs):
    a, b = (j["id"] for j in two_jobs)
    names = metric_names(live, [a, b])
    assert {"loss/d", "audit/leak_d", "eval/modes", "perf/steps_per_s"} <= names

    page.goto(f"/compare?ids={a},{b}")
    charts = page.locator("figure.compare-chart")
    charts.nth(len(names) - 1).wait_for()
    assert charts.count() == len(names)
    assert sorted(charts.evaluate_all("fs => fs.map(f => f.dataset.metric)")) == sorted(names)
    # Every chart draws a line for each job and names both in its legend (after "step").
    assert set(charts.evaluate_all("fs => fs.map(f => f.dataset.lines)")) == {"2"}
    legends = charts.evaluate_all(
        "fs => fs.map(f => [...f.querySelectorAll('.u-legend .u-series .u-label')]"
        ".map(l => l.textContent))"
    )
    steps = re.compile(r"(accumulation\.)?steps=")
    for legend in legends:
        assert legend[0] == "step" and len(legend) == 3, legend
        first, second = legend[1:]
        assert "order=d_first" in first and "order=g_first" in second, legend
        assert re.search(r"(accumulation\.)?steps=1\b", first), legend
        assert re.search(r"(accumulation\.)?steps=4\b", second), legend
        assert steps.search(first) and "name=" not in first
    # The table of differing fields: exactly the two the specs differ in, a column per job.
    rows = page.locator("#compare-diff tbody tr")
    assert rows.locator("th").all_inner_texts() == ["accumulation.steps", "schedule.order"]
    assert rows.nth(0).locator("td").all_inner_texts() == ["1", "4"]
    assert rows.nth(1).locator("td").all_inner_texts() == ["d_first", "g_first"]
    # The jobs link to their pages; the picker is folded but lists both, ticked.
    assert page.locator(f'#compare-jobs a[href="/jobs/{a}"]').is_visible()
    assert not page.locator("#picker").evaluate("d => d.open")
    expect(page.locator(f"#pick-{a}")).to_be_checked()
    expect(page.locator(f"#pick-{b}")).to_be_checked()
    assert page.locator("#compare-error").is_hidden()
    screenshot(page, "compare_two_jobs")

    # Phone width: one column, nothing wider than the screen.
    page.set_viewport_size({"width": 375, "height": 800})
    page.wait_for_function(
        "() => [...document.querySelectorAll('.compare-chart .uplot')]"
        ".every(u => u.getBoundingClientRect().right <= 375)"
    )
    assert page.evaluate("document.documentElement.scrollWidth") <= 375
    screenshot(page, "compare_two_jobs_375")


def test_the_picker_builds_the_link_by_keyboard(page, live, two_jobs):
    a, b = (j["id"] for j in two_jobs)
    page.goto("/compare")
    assert page.locator("#picker").evaluate("d => d.open")
    page.locator(f"#pick-{a}").wait_for()
    # Each checkbox's label names its job (what a screen reader reads).
    name = page.get_by_role("checkbox", name=re.compile(a[:8])).get_attribute("id")
    assert name == f"pick-{a}"
    assert "succeeded" in page.locator(f'label[for="pick-{a}"]').inner_text()
    # Too few: the form says so and stays.
    page.locator(f"#pick-{a}").focus()
    page.keyboard.press("Space")
    page.get_by_role("button", name="Compare").focus()
    page.keyboard.press("Enter")
    assert page.locator("#picker-error").inner_text() == "Pick 2 to 6 jobs (1 selected)."
    page.locator(f"#pick-{b}").focus()
    page.keyboard.press("Space")
    assert page.locator("#picker-count").inner_text() == "2 selected"
    with live.client() as client:
        more = client.get("/api/jobs", params={"limit": 25}).json()["next_cursor"] is not None
    assert page.locator("#picker-more").is_visible() == more
    screenshot(page, "compare_picker")
    page.get_by_role("button", name="Compare").focus()
    page.keyboard.press("Enter")
    page.wait_for_url(re.compile(rf"/compare\?ids={a},{b}$"))
    page.locator("figure.compare-chart").first.wait_for()
    assert page.locator("#compare-jobs li").count() == 2


def test_the_picker_allows_at_most_six(page, live, two_jobs):
    # Five more jobs, cancelled while queued (at once, no training): seven to choose from.
    with live.client() as client:
        for _ in range(5):
            job = client.post("/api/jobs", json={"spec": tiny_spec(), "tags": ["compare-page"]})
            client.post(f"/api/jobs/{job.json()['id']}/cancel")
    page.goto("/compare")
    page.locator("#picker-list input").nth(6).wait_for()
    boxes = page.locator("#picker-list input[type=checkbox]")
    for i in range(6):
        boxes.nth(i).check()
    assert page.locator("#picker-count").inner_text() == "6 selected (the most)"
    assert boxes.nth(6).is_disabled()


def test_bad_links_show_a_message(page, live, two_jobs):
    a, b = (j["id"] for j in two_jobs)
    page.watch.allow(r"/api/jobs/no-such-job$", 404)
    page.goto(f"/compare?ids={a},no-such-job")
    error = page.locator("#compare-error")
    error.wait_for()
    assert "No job with id “no-such-job”" in error.inner_text()
    assert page.locator("#compare-result").is_hidden()
    assert page.locator("#picker").evaluate("d => d.open")
    expect(page.locator(f"#pick-{a}")).to_be_checked()
    screenshot(page, "compare_unknown_id")

    # One id (the job page's "Compare with…"): that job ticked, asking for more.
    page.goto(f"/compare?ids={a}")
    hint = page.locator("#compare-hint")
    hint.wait_for()
    assert f"Pick at least one more job to compare with {a[:8]}" in hint.inner_text()
    expect(page.locator(f"#pick-{a}")).to_be_checked()
    assert page.locator("#compare-error").is_hidden()
    seven = ",".join(f"id{i}" for i in range(7))
    page.goto(f"/compare?ids={seven}")
    assert "at most 6 jobs" in page.locator("#compare-error").inner_text()
    assert page.locator("#compare-result").is_hidden()


def test_labels_use_the_last_segment_only_when_unambiguous(page, live):
    page.goto("/compare")
    page.wait_for_function("() => typeof compare === 'object'")
    labels = page.evaluate(
        """() => {
          const jobs = [
            {id: "aaaaaaaa1", name: "x", spec: {name: "x", steps: 10, accumulation: {steps: 1},
              optim: {g: {lr: 1}, d: {lr: 1}}, schedule: {order: "d_first"}}},
            {id: "bbbbbbbb2", name: "y", spec: {name: "y", steps: 10, accumulation: {steps: 2},
              optim: {g: {lr: 2}, d: {lr: 1}}, schedule: {order: "g_first"}}},
          ];
          const same = jobs.map(j => ({...j, spec: jobs[0].spec}));
          return [
            compare.lineLabels(jobs, compare.differences(jobs.map(j => j.spec))),
            compare.lineLabels(same, compare.differences(same.map(j => j.spec))),
          ];
        }"""
    )
    assert labels[0] == [
        "accumulation.steps=1, optim.g.lr=1, order=d_first",
        "accumulation.steps=2, optim.g.lr=2, order=g_first",
    ]
    assert labels[1] == ["x", "y"]  # nothing differs: the job names

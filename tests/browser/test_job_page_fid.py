"""The job page of an image job: with Inception weights on the worker its Evaluation chart
shows eval/fid and eval/kid; without them the job has no Evaluation chart and shows the one
warning that says how to enable FID.

The weights are the stand-in of tests.trainer.inception (random values, the real network):
no weights can be fetched offline."""

from __future__ import annotations

import io
import os
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from tests.browser.conftest import screenshot, watched_page
from tests.service.conftest import Service, running_service, tiny_spec
from tests.trainer.inception import write_stand_in_weights
from trainer import fid

FINISHED = ("succeeded", "failed", "cancelled")


@pytest.fixture(scope="module")
def fid_service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    """A service of its own whose worker has GANFORGE_INCEPTION_WEIGHTS (the shared one has
    no weights, like a machine without network)."""
    weights = write_stand_in_weights(tmp_path_factory.mktemp("inception"))
    overrides = {fid.WEIGHTS_ENV: str(weights)}
    with running_service(tmp_path_factory.mktemp("fid-service"), env_overrides=overrides) as live:
        yield live


@pytest.fixture()
def fid_page(browser: Any, fid_service: Service, request: pytest.FixtureRequest) -> Iterator[Any]:
    yield from watched_page(browser, fid_service, request)


def _finished_image_job(service: Service) -> dict[str, Any]:
    """A conv job on 8 uploaded 16 px images, evaluated once (16 samples), to its end."""
    images = np.random.default_rng(0).integers(0, 256, (8, 3, 16, 16), dtype=np.uint8)
    buffer = io.BytesIO()
    np.save(buffer, images)
    with service.client() as client:
        made = client.post("/api/datasets", files={"file": ("images.npy", buffer.getvalue())})
        assert made.status_code == 201, made.text
        spec = tiny_spec(
            steps=4,
            data={"kind": "array", "dataset_id": made.json()["id"]},
            model={"kind": "conv", "latent_dim": 8, "width": 8},
            eval={"samples": 16},
            every={"metrics": 2, "samples": 4, "checkpoint": 4, "eval": 4},
        )
        answer = client.post("/api/jobs", json={"spec": spec, "name": "images"})
        assert answer.status_code == 201, answer.text
    return service.wait_for(answer.json()["id"], FINISHED, timeout=180)


def _open(page: Any, job_id: str) -> None:
    page.goto(f"/jobs/{job_id}")
    page.wait_for_function("() => window.gfJob && window.gfJob.ready === true")


def test_an_image_job_charts_fid_and_kid(fid_page: Any, fid_service: Service) -> None:
    job = _finished_image_job(fid_service)
    assert job["status"] == "succeeded", job
    assert job["warnings"] == []
    _open(fid_page, job["id"])
    fid_page.wait_for_function("() => gfJob.plots.eval !== undefined")
    labels = fid_page.evaluate("gfJob.plots.eval.series.slice(1).map(s => s.label)")
    assert labels == ["eval/fid", "eval/kid"]
    axes = fid_page.evaluate("gfJob.plots.eval.axes.map(a => a.label).filter(Boolean)")
    assert axes == ["step", "FID", "KID"]
    assert fid_page.locator("#chart-eval .chart-title").inner_text() == "Evaluation"
    assert fid_page.locator("#job-warnings .warning").count() == 0
    screenshot(fid_page, "job-fid")


def test_without_weights_an_image_job_warns_once_and_charts_no_fid(
    page: Any, live: Service
) -> None:
    if os.environ.get(fid.WEIGHTS_ENV) or fid.hub_weights_path().is_file():
        pytest.skip("this machine has Inception weights: the shared service would compute FID")
    job = _finished_image_job(live)
    assert job["status"] == "succeeded", job
    (warning,) = job["warnings"]
    assert warning.startswith("eval/fid, eval/kid: not computed: no Inception-v3 weights")
    _open(page, job["id"])
    shown = page.locator("#job-warnings .warning")
    assert shown.count() == 1 and fid.DOWNLOAD_ENV in shown.inner_text()
    page.locator("#chart-loss").wait_for()
    assert page.locator("#chart-eval").count() == 0
    screenshot(page, "job-no-fid-weights")

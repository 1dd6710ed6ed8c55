"""The browser dashboard (DESIGN.md section 5): server-rendered pages that fetch the REST API.

    /                 jobs             /jobs/new        submit a job
    /jobs/{id}        one job          /compare?ids=    overlay 2 to 6 jobs
    /datasets         uploaded datasets: previews, delete
    /sweeps           sweeps           /sweeps/{id}     one sweep: trials, chart, best

Pages are Jinja2 templates under app/templates with a little plain JavaScript each
(app/static/js); charts use uPlot, vendored under app/static/vendor with its licence, so the
dashboard needs no network.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import APIRouter, FastAPI, HTTPException, Request
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates

from app.deps import SessionDep
from app.hostguard import DASHBOARD_CSP
from app.models import JOB_STATUSES, Job, Sweep

HERE = Path(__file__).resolve().parent
templates = Jinja2Templates(directory=HERE / "templates")
router = APIRouter(include_in_schema=False)


def page(request: Request, name: str, title: str, **context: Any) -> HTMLResponse:
    return templates.TemplateResponse(
        request,
        name,
        {"title": title, "statuses": JOB_STATUSES, **context},
        headers={"Content-Security-Policy": DASHBOARD_CSP},
    )


@router.get("/", response_class=HTMLResponse)
def jobs_page(request: Request) -> HTMLResponse:
    return page(request, "jobs.html", "Jobs")


@router.get("/jobs/new", response_class=HTMLResponse)
def new_job_page(request: Request) -> HTMLResponse:
    return page(request, "new.html", "New job")


@router.get("/jobs/{job_id}", response_class=HTMLResponse)
def job_page(request: Request, job_id: str, session: SessionDep) -> HTMLResponse:
    job = session.get(Job, job_id)
    if job is None:
        raise HTTPException(404, f"job {job_id} not found")
    return page(request, "job.html", job.name or f"Job {job_id[:8]}", job_id=job_id)


@router.get("/datasets", response_class=HTMLResponse)
def datasets_page(request: Request) -> HTMLResponse:
    return page(request, "datasets.html", "Datasets")


@router.get("/sweeps", response_class=HTMLResponse)
def sweeps_page(request: Request) -> HTMLResponse:
    return page(request, "sweeps.html", "Sweeps")


@router.get("/sweeps/{sweep_id}", response_class=HTMLResponse)
def sweep_page(request: Request, sweep_id: str, session: SessionDep) -> HTMLResponse:
    sweep = session.get(Sweep, sweep_id)
    if sweep is None:
        raise HTTPException(404, f"sweep {sweep_id} not found")
    return page(request, "sweep.html", sweep.name or f"Sweep {sweep_id[:8]}", sweep_id=sweep_id)


@router.get("/compare", response_class=HTMLResponse)
def compare_page(request: Request, ids: str = "") -> HTMLResponse:
    return page(request, "compare.html", "Compare", ids=ids)


def mount(app: FastAPI) -> None:
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")
    app.include_router(router)

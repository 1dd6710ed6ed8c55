"""/api routes for a job's artifacts (DESIGN.md section 5): samples, checkpoints, generation.

    GET  /api/jobs/{id}/samples                   {"items": [{id, step, url}]}, by step
    GET  /api/jobs/{id}/samples/{sample_id}       the PNG (inline; ?download=1: attachment)
    GET  /api/jobs/{id}/samples.zip               every sample PNG; 404 while there are none
    GET  /api/jobs/{id}/checkpoints               {"items": [{step, sha256, size, url, created_at,
                                                   pinned, best}]}
    GET  /api/jobs/{id}/checkpoints/{step}        the .safetensors file (?part=sidecar: the JSON)
    POST /api/jobs/{id}/generate                  fresh samples from a checkpoint's generator

Rows hold paths relative to the artifact store (app/store.py: a folder, S3 or the database). A
row whose file is gone is a 404 on download. A folder store's files are served as files (with
ranges); the other stores' are streamed in chunks, never read whole. Checkpoint downloads
are not re-hashed (that would read the whole file per request); they carry the stored
SHA-256 (`X-Checkpoint-SHA256`, and `Repr-Digest` as in RFC 9530) for the client to check.
Generation does verify it (`ArtifactStore.load_checkpoint`) before loading: a mismatch is a
409 naming the file and SHA-256.

Generation runs in worker threads (`anyio.to_thread.run_sync`) from an `async def`
endpoint, at most GENERATE_CONCURRENCY at a time per app (the others wait on the event
loop, holding no thread). The torch thread count is left as the process set it.
"""

from __future__ import annotations

import base64
import tempfile
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import IO, Annotated, Literal

import anyio
import anyio.to_thread
from fastapi import APIRouter, FastAPI, HTTPException, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, Response, StreamingResponse
from pydantic import BaseModel, Field
from sqlalchemy import select
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from app import retention
from app.auth import download
from app.deps import SessionDep, SettingsDep, StoreDep, job_or_404
from app.models import Checkpoint, Job, Sample
from app.settings import Settings
from app.store import ArtifactStore, StoreError
from trainer.checkpoint import CheckpointError
from trainer.generate import MAX_GENERATE, GeneratorCache, npy_bytes
from trainer.guided import Sampler, SamplerError, SamplerReport

router = APIRouter(prefix="/api")

# A PNG of more points than this is unreadable (and images beyond the grid's 64 are not drawn).
MAX_PNG = 10_000
GENERATE_CONCURRENCY = 2
GENERATOR_CACHE_SIZE = 4
ZIP_CHUNK = 256 * 1024

# Integer columns: a path id or step outside this range names no row (and PostgreSQL would
# refuse to compare with it).
INT32_MAX = 2**31 - 1
StepInt = Annotated[int, Field(ge=0, le=INT32_MAX)]


# ---- bodies -------------------------------------------------------------------------------


class SampleOut(BaseModel):
    id: int
    step: int
    url: str


class SampleList(BaseModel):
    items: list[SampleOut]


class CheckpointOut(BaseModel):
    step: int
    sha256: str
    size: int
    url: str
    created_at: datetime
    pinned: bool = Field(description="kept whatever the retention policy says")
    best: bool = Field(
        description="the best by the job's retention.best_metric and mode (NaN never is)"
    )


class CheckpointList(BaseModel):
    items: list[CheckpointOut]


class GenerateRequest(Sampler):
    """n, seed, format and step; `sampler` and its options (`drs`, `refine`) come from
    trainer.guided.Sampler."""

    n: int = Field(
        64,
        ge=1,
        le=MAX_GENERATE,
        description=f"how many samples; format png takes at most {MAX_PNG}, and large "
        "generators fewer (the 422 says how many)",
    )
    seed: int = Field(0, ge=0, le=2**63 - 1, description="the noise seed: same seed, same bytes")
    format: Literal["png", "npy"] = Field(
        "png", description="png: a grid or scatter plot; npy: float32 array (n, D) or (n, C, H, W)"
    )
    step: StepInt | None = Field(None, description="the checkpoint's step; null: the latest")


# ---- samples ------------------------------------------------------------------------------


def _sample_url(job_id: str, sample_id: int) -> str:
    return f"/api/jobs/{job_id}/samples/{sample_id}"


def _samples(session: Session, job_id: str) -> list[Sample]:
    return list(
        session.scalars(select(Sample).where(Sample.job_id == job_id).order_by(Sample.step))
    )


def _served(
    store: ArtifactStore,
    relative: str,
    *,
    media_type: str,
    filename: str,
    inline: bool = False,
    headers: dict[str, str] | None = None,
) -> Response | None:
    """The stored file as a response, or None when it is gone (or outside the store): a
    folder store's file as FileResponse (ranges, If-Modified-Since); any other store's
    streamed in chunks with its length, so a large checkpoint is never read whole."""
    try:
        local = store.local_file(relative)
        if local is not None:
            return FileResponse(
                local,
                media_type=media_type,
                filename=filename,
                stat_result=local.stat(),
                headers=headers,
                content_disposition_type="inline" if inline else "attachment",
            )
        size = store.size(relative)
        chunks = store.chunks(relative) if size is not None else None
    except (StoreError, OSError):  # ArtifactMissing is an OSError
        return None
    if chunks is None:
        return None
    disposition = "inline" if inline else "attachment"
    return StreamingResponse(
        chunks,
        media_type=media_type,
        headers={
            **(headers or {}),
            "Content-Length": str(size),
            "Content-Disposition": f'{disposition}; filename="{filename}"',
        },
    )


@router.get("/jobs/{job_id}/samples")
def list_samples(job_id: str, session: SessionDep) -> SampleList:
    """The job's sample images, by step."""
    job_or_404(session, job_id)
    return SampleList(
        items=[
            SampleOut(id=s.id, step=s.step, url=_sample_url(job_id, s.id))
            for s in _samples(session, job_id)
        ]
    )


@router.get(
    "/jobs/{job_id}/samples.zip",
    response_class=StreamingResponse,
    responses={200: {"content": {"application/zip": {}}}, 404: {"description": "none yet"}},
)
@download
def samples_zip(job_id: str, session: SessionDep, store: StoreDep) -> StreamingResponse:
    """Every sample PNG of the job as `step_000200.png`, ... (404 while there are none).

    Built in an anonymous temporary file (PNGs are stored, not recompressed) and streamed
    from it, so memory stays bounded; sample files deleted meanwhile are left out.
    """
    job_or_404(session, job_id)
    samples = _samples(session, job_id)
    if not samples:
        raise HTTPException(404, f"job {job_id} has no samples yet")
    spool: IO[bytes] = tempfile.TemporaryFile()  # closed by _stream, or below on error
    try:
        written = 0
        with zipfile.ZipFile(spool, "w", compression=zipfile.ZIP_STORED) as archive:
            for sample in samples:
                try:
                    png = store.read(sample.path)
                except (StoreError, OSError):
                    continue  # deleted meanwhile
                archive.writestr(f"step_{sample.step:06d}.png", png)
                written += 1
        if written == 0:
            raise HTTPException(404, f"job {job_id}: its sample files are gone")
        size = spool.tell()
        spool.seek(0)
    except BaseException:
        spool.close()
        raise
    return StreamingResponse(
        _stream(spool),
        media_type="application/zip",
        headers={
            "Content-Disposition": f'attachment; filename="{job_id}-samples.zip"',
            "Content-Length": str(size),
        },
    )


def _stream(spool: IO[bytes]) -> Iterator[bytes]:
    try:
        while chunk := spool.read(ZIP_CHUNK):
            yield chunk
    finally:
        spool.close()


@router.get(
    "/jobs/{job_id}/samples/{sample_id}",
    response_class=FileResponse,
    responses={200: {"content": {"image/png": {}}}, 404: {"description": "no such sample"}},
)
@download
def get_sample(
    job_id: str,
    sample_id: int,
    session: SessionDep,
    store: StoreDep,
    download: Annotated[bool, Query(description="attachment instead of inline")] = False,
) -> Response:
    """One sample PNG of this job."""
    job_or_404(session, job_id)
    sample = None
    if 0 <= sample_id <= INT32_MAX:
        query = select(Sample).where(Sample.id == sample_id, Sample.job_id == job_id)
        sample = session.scalar(query)
    if sample is None:
        raise HTTPException(404, f"job {job_id} has no sample {sample_id}")
    served = _served(
        store,
        sample.path,
        media_type="image/png",
        filename=f"{job_id}-step_{sample.step:06d}.png",
        inline=not download,
    )
    if served is None:
        raise HTTPException(404, f"sample {sample_id} of job {job_id}: its file is gone")
    return served


# ---- checkpoints --------------------------------------------------------------------------


def _checkpoints(session: Session, job_id: str) -> list[Checkpoint]:
    query = select(Checkpoint).where(Checkpoint.job_id == job_id).order_by(Checkpoint.step)
    return list(session.scalars(query))


def checkpoint_at(session: Session, job_id: str, step: int) -> Checkpoint:
    row = None
    if 0 <= step <= INT32_MAX:
        query = select(Checkpoint).where(Checkpoint.job_id == job_id, Checkpoint.step == step)
        row = session.scalar(query)
    if row is None:
        raise HTTPException(404, f"job {job_id} has no checkpoint at step {step}")
    return row


def checkpoint_items(session: Session, job: Job, settings: Settings) -> list[CheckpointOut]:
    """The job's checkpoints as listed, by step, the best one marked (app.retention)."""
    best = {e.step for e in retention.plan(session, job, settings).entries if e.best}
    return [
        CheckpointOut(
            step=c.step,
            sha256=c.sha256,
            size=c.size,
            url=f"/api/jobs/{job.id}/checkpoints/{c.step}",
            created_at=c.created_at,
            pinned=c.pinned,
            best=c.step in best,
        )
        for c in _checkpoints(session, job.id)
    ]


@router.get("/jobs/{job_id}/checkpoints")
def list_checkpoints(job_id: str, session: SessionDep, settings: SettingsDep) -> CheckpointList:
    """The job's checkpoints, by step: `pinned` ones are kept whatever the retention policy
    says, `best` is the best by the policy's metric."""
    job = job_or_404(session, job_id)
    return CheckpointList(items=checkpoint_items(session, job, settings))


@router.get(
    "/jobs/{job_id}/checkpoints/{step}",
    response_class=FileResponse,
    responses={
        200: {"content": {"application/octet-stream": {}, "application/json": {}}},
        404: {"description": "no such checkpoint, or its file is gone"},
        409: {"description": "the file's size is not the one stored"},
    },
)
@download
def get_checkpoint(
    job_id: str,
    step: int,
    session: SessionDep,
    store: StoreDep,
    part: Annotated[
        Literal["tensors", "sidecar"],
        Query(description="tensors: the .safetensors file; sidecar: its JSON sidecar"),
    ] = "tensors",
) -> Response:
    """Download a checkpoint; headers `X-Checkpoint-SHA256` and `Repr-Digest` carry its hash."""
    job_or_404(session, job_id)
    row = checkpoint_at(session, job_id, step)
    headers = {"X-Checkpoint-SHA256": row.sha256, "X-Checkpoint-Step": str(row.step)}
    stem = f"{job_id}-step_{row.step:06d}"
    if part == "sidecar":
        served = _served(
            store,
            store.sidecar_path(row.path),
            media_type="application/json",
            filename=f"{stem}.json",
            headers=headers,
        )
    else:
        size = store.size(row.path)
        if size is not None and size != row.size:
            raise HTTPException(
                409,
                f"checkpoint step {step} of job {job_id}: {Path(row.path).name} has {size} "
                f"bytes, {row.size} were stored; it is damaged",
            )
        digest = base64.b64encode(bytes.fromhex(row.sha256)).decode("ascii")
        headers["Repr-Digest"] = f"sha-256=:{digest}:"
        served = _served(
            store,
            row.path,
            media_type="application/octet-stream",
            filename=f"{stem}.safetensors",
            headers=headers,
        )
    if served is None:
        raise HTTPException(404, f"checkpoint step {step} of job {job_id}: its {part} file is gone")
    return served


# ---- generation ---------------------------------------------------------------------------


def _field_error(
    field: str, message: str, value: object, kind: str = "value_error"
) -> RequestValidationError:
    """A 422 for the body's `field` (dotted: `drs.min_acceptance`), as FastAPI's own are."""
    return RequestValidationError(
        [{"type": kind, "loc": ("body", *field.split(".")), "msg": message, "input": value}]
    )


def _n_error(n: int, message: str) -> RequestValidationError:
    return _field_error("n", message, n, "less_than_equal")


@dataclass
class _Generated:
    data: bytes
    shape: tuple[int, ...]
    step: int
    report: SamplerReport | None


def _generate(
    generators: GeneratorCache,
    relative: str,
    sha256: str,
    body: GenerateRequest,
    store: ArtifactStore,
) -> _Generated:
    """Runs in a worker thread: load (or reuse) the generator, check n, generate, encode."""
    loaded = generators.get(
        f"{store.url}/{relative}", sha256, lambda: store.load_checkpoint(relative, sha256=sha256)
    )
    if body.n > loaded.max_n:
        raise _n_error(
            body.n,
            f"this checkpoint's generator makes at most {loaded.max_n} samples a request",
        )
    if body.format == "npy":
        array, report = loaded.sample(body.n, seed=body.seed, sampler=body)
        return _Generated(npy_bytes(array), tuple(array.shape), loaded.step, report)
    png, report = loaded.png(
        body.n,
        seed=body.seed,
        sampler=body,
        resolve_dataset=lambda dataset_id: store.fetch(store.dataset_path(dataset_id)),
    )
    return _Generated(png, (body.n, *loaded.shape), loaded.step, report)


def _pick_checkpoint(session: Session, job_id: str, step: int | None) -> Checkpoint:
    job_or_404(session, job_id)
    if step is not None:
        return checkpoint_at(session, job_id, step)
    row = session.scalar(
        select(Checkpoint)
        .where(Checkpoint.job_id == job_id)
        .order_by(Checkpoint.step.desc())
        .limit(1)
    )
    if row is None:
        raise HTTPException(409, f"job {job_id} has no checkpoint yet")
    return row


def _generators(app: FastAPI) -> GeneratorCache:
    generators: GeneratorCache | None = getattr(app.state, "generators", None)
    if generators is None:
        generators = app.state.generators = GeneratorCache(GENERATOR_CACHE_SIZE)
    return generators


def _limiter(app: FastAPI) -> anyio.CapacityLimiter:
    # Made on first use, inside the app's event loop (a module-level one would bind to the
    # first loop that used it).
    limiter: anyio.CapacityLimiter | None = getattr(app.state, "generate_limiter", None)
    if limiter is None:
        limiter = anyio.CapacityLimiter(GENERATE_CONCURRENCY)
        app.state.generate_limiter = limiter
    return limiter


@router.post(
    "/jobs/{job_id}/generate",
    response_class=Response,
    responses={
        200: {
            "content": {"image/png": {}, "application/octet-stream": {}},
            "description": "PNG, or a float32 .npy; header X-Shape: the shape generated",
        },
        404: {"description": "unknown job, or no checkpoint at that step"},
        409: {"description": "no checkpoint yet, or the checkpoint fails its SHA-256 check"},
    },
)
async def generate(
    job_id: str, body: GenerateRequest, request: Request, session: SessionDep, store: StoreDep
) -> Response:
    """Fresh samples from a checkpoint's generator (EMA weights when the run kept them),
    plain or guided by its discriminator (`sampler`: drs or refine; X-Sampler-* headers say
    what the sampler did). The same checkpoint, n, seed and sampler give the same bytes.
    """
    if body.format == "png" and body.n > MAX_PNG:
        raise _n_error(body.n, f"format png takes at most {MAX_PNG} samples; use npy for more")
    row = await run_in_threadpool(_pick_checkpoint, session, job_id, body.step)
    name = f"checkpoint step {row.step} of job {job_id}"
    try:
        result = await anyio.to_thread.run_sync(
            _generate,
            _generators(request.app),
            row.path,
            row.sha256,
            body,
            store,
            limiter=_limiter(request.app),
        )
    except SamplerError as exc:
        message = f"{name}: {str(exc).removeprefix('sampler: ')}"
        raise _field_error(exc.field, message, body.sampler) from None
    except (CheckpointError, StoreError) as exc:
        raise HTTPException(409, f"{name}: {str(exc).removeprefix('checkpoint: ')}") from None
    headers: dict[str, str] = {
        "X-Shape": ",".join(str(d) for d in result.shape),
        "X-Checkpoint-Step": str(result.step),
        "X-Checkpoint-SHA256": row.sha256,
        **(result.report.headers() if result.report is not None else {}),
    }
    stem = f"{job_id}-step_{result.step}-seed_{body.seed}"
    if body.sampler != "plain":
        stem += f"-{body.sampler}"
    if body.format == "npy":
        headers["Content-Disposition"] = f'attachment; filename="{stem}.npy"'
        return Response(result.data, media_type="application/octet-stream", headers=headers)
    headers["Content-Disposition"] = f'inline; filename="{stem}.png"'
    return Response(result.data, media_type="image/png", headers=headers)

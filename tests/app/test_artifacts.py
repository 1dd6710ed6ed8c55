"""Samples, checkpoints and generation over the API, on SQLite and PostgreSQL.

The artifacts are real: a tiny run's sample PNGs and checkpoints, stored the way the worker
stores them (files in the artifact store, Sample and Checkpoint rows with store paths).
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session, sessionmaker

from app.models import Checkpoint as CheckpointRow
from app.models import Sample
from app.routes.artifacts import MAX_PNG
from app.store import ArtifactStore
from tests.trainer.factories import tiny_spec
from trainer import generate
from trainer.checkpoint import Checkpoint, CheckpointRecord, write_checkpoint
from trainer.generate import MAX_GENERATE, generate_array
from trainer.sinks import MemoryCheckpoints, MemorySamples, memory_sinks
from trainer.training import Trainer

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
SPEC = tiny_spec(steps=4, ema=0.5, device="cpu", every={"samples": 2, "checkpoint": 2})


class StoreSamples:
    """A sample sink as the worker's: the PNG at store.sample_path, plus a Sample row."""

    def __init__(self, store: ArtifactStore, sessions: sessionmaker[Session], job_id: str):
        self.store, self.sessions, self.job_id = store, sessions, job_id

    def write(self, step: int, png: bytes) -> None:
        path = self.store.sample_path(self.job_id, step)
        self.store.write(path, png)
        with self.sessions() as session:
            session.add(Sample(job_id=self.job_id, step=step, path=path))
            session.commit()


class StoreCheckpoints:
    """A checkpoint sink as the worker's: write_checkpoint into the job's checkpoint folder."""

    def __init__(self, store: ArtifactStore, sessions: sessionmaker[Session], job_id: str):
        self.store, self.sessions, self.job_id = store, sessions, job_id

    def write(self, checkpoint: Checkpoint) -> CheckpointRecord:
        folder = self.store.path(self.store.checkpoint_dir(self.job_id))
        record = write_checkpoint(folder, checkpoint)
        assert record.path is not None
        relative = Path(record.path).relative_to(self.store.root).as_posix()
        with self.sessions() as session:
            session.add(
                CheckpointRow(
                    job_id=self.job_id,
                    step=record.step,
                    path=relative,
                    sha256=record.sha256,
                    size=record.size,
                )
            )
            session.commit()
        return record


class Run:
    """What the tiny run produced (kept in memory, stored anew for each job)."""

    def __init__(self) -> None:
        sinks = memory_sinks()
        Trainer(SPEC, evaluate=False).run(sinks)
        assert isinstance(sinks.samples, MemorySamples)
        assert isinstance(sinks.checkpoints, MemoryCheckpoints)
        self.samples = sinks.samples.images
        self.checkpoints = sinks.checkpoints.saved
        assert sorted(self.samples) == [2, 4] and sorted(self.checkpoints) == [2, 4]


@pytest.fixture(scope="module")
def run() -> Run:
    return Run()


def store_of(client: TestClient) -> ArtifactStore:
    store: ArtifactStore = client.app.state.store  # type: ignore[attr-defined]
    return store


def make_job(
    client: TestClient, run: Run, *, samples: bool = True, checkpoints: bool = True
) -> str:
    """A job through the API, with the run's artifacts stored as the worker stores them."""
    made = client.post("/api/jobs", json={"spec": SPEC.model_dump(mode="json")})
    assert made.status_code == 201, made.text
    job_id: str = made.json()["id"]
    store, sessions = store_of(client), client.app.state.sessions  # type: ignore[attr-defined]
    if samples:
        sample_sink = StoreSamples(store, sessions, job_id)
        for step, png in sorted(run.samples.items()):
            sample_sink.write(step, png)
    if checkpoints:
        checkpoint_sink = StoreCheckpoints(store, sessions, job_id)
        for _, ckpt in sorted(run.checkpoints.items()):
            checkpoint_sink.write(ckpt)
    return job_id


def field_of(answer: Any) -> str:
    assert answer.status_code == 422, answer.text
    field: str = answer.json()["detail"][0]["field"]
    return field


# ---- samples ------------------------------------------------------------------------------


def test_samples_are_listed_by_step_and_served_as_png(client: TestClient, run: Run) -> None:
    job = make_job(client, run)
    items = client.get(f"/api/jobs/{job}/samples").json()["items"]
    assert [s["step"] for s in items] == [2, 4]
    for item in items:
        assert item["url"] == f"/api/jobs/{job}/samples/{item['id']}"
        answer = client.get(item["url"])
        assert answer.status_code == 200, answer.text
        assert answer.headers["content-type"] == "image/png"
        assert answer.content.startswith(PNG_SIGNATURE)
        assert answer.content == run.samples[item["step"]]
        name = f"{job}-step_{item['step']:06d}.png"
        assert answer.headers["content-disposition"] == f'inline; filename="{name}"'
    download = client.get(items[0]["url"], params={"download": 1})
    assert download.headers["content-disposition"].startswith("attachment;")


def test_samples_zip_holds_every_sample(client: TestClient, run: Run) -> None:
    job = make_job(client, run)
    answer = client.get(f"/api/jobs/{job}/samples.zip")
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"] == "application/zip"
    assert answer.headers["content-disposition"] == f'attachment; filename="{job}-samples.zip"'
    with zipfile.ZipFile(io.BytesIO(answer.content)) as archive:
        assert archive.namelist() == ["step_000002.png", "step_000004.png"]
        assert archive.read("step_000004.png") == run.samples[4]
    # A sample file deleted meanwhile is left out; with none left it is a 404.
    store = store_of(client)
    store.delete(store.sample_path(job, 2))
    with zipfile.ZipFile(io.BytesIO(client.get(f"/api/jobs/{job}/samples.zip").content)) as z:
        assert z.namelist() == ["step_000004.png"]
    store.delete(store.sample_path(job, 4))
    assert client.get(f"/api/jobs/{job}/samples.zip").status_code == 404


def test_samples_zip_of_a_job_without_samples_is_a_404(client: TestClient, run: Run) -> None:
    job = make_job(client, run, samples=False, checkpoints=False)
    answer = client.get(f"/api/jobs/{job}/samples.zip")
    assert answer.status_code == 404 and answer.json()["detail"] == f"job {job} has no samples yet"
    assert client.get(f"/api/jobs/{job}/samples").json() == {"items": []}
    assert client.get("/api/jobs/nope/samples.zip").status_code == 404


def test_sample_errors(client: TestClient, run: Run) -> None:
    job = make_job(client, run)
    other = make_job(client, run, checkpoints=False)
    theirs = client.get(f"/api/jobs/{other}/samples").json()["items"][0]["id"]
    assert client.get("/api/jobs/nope/samples").status_code == 404
    assert client.get("/api/jobs/nope/samples/1").status_code == 404
    assert client.get(f"/api/jobs/{job}/samples/999999").status_code == 404
    assert client.get(f"/api/jobs/{job}/samples/99999999999").status_code == 404
    assert client.get(f"/api/jobs/{job}/samples/-1").status_code == 404
    answer = client.get(f"/api/jobs/{job}/samples/{theirs}")  # another job's sample
    assert answer.status_code == 404 and answer.json()["detail"].startswith(f"job {job} has no")
    assert client.get(f"/api/jobs/{other}/samples/{theirs}").status_code == 200
    assert field_of(client.get(f"/api/jobs/{job}/samples/abc")) == "sample_id"
    store_of(client).delete(store_of(client).sample_path(other, 2))
    gone = client.get(f"/api/jobs/{other}/samples/{theirs}")
    assert gone.status_code == 404 and "gone" in gone.json()["detail"]


# ---- checkpoints --------------------------------------------------------------------------


def test_checkpoints_are_listed_and_downloaded_with_their_sha256(
    client: TestClient, run: Run
) -> None:
    job = make_job(client, run)
    items = client.get(f"/api/jobs/{job}/checkpoints").json()["items"]
    assert [c["step"] for c in items] == [2, 4]
    for item in items:
        assert item["url"] == f"/api/jobs/{job}/checkpoints/{item['step']}"
        assert item["sha256"] == run.checkpoints[item["step"]].sha256
        assert item["created_at"].endswith(("+00:00", "Z"))
        answer = client.get(item["url"])
        assert answer.status_code == 200, answer.text
        assert answer.headers["content-type"] == "application/octet-stream"
        name = f"{job}-step_{item['step']:06d}.safetensors"
        assert answer.headers["content-disposition"] == f'attachment; filename="{name}"'
        digest = hashlib.sha256(answer.content)
        assert digest.hexdigest() == item["sha256"] == answer.headers["x-checkpoint-sha256"]
        assert len(answer.content) == item["size"]
        b64 = base64.b64encode(digest.digest()).decode()
        assert answer.headers["repr-digest"] == f"sha-256=:{b64}:"
    sidecar = client.get(f"/api/jobs/{job}/checkpoints/4", params={"part": "sidecar"})
    assert sidecar.status_code == 200 and sidecar.headers["content-type"] == "application/json"
    meta = json.loads(sidecar.content)
    assert meta["step"] == 4 and meta["sha256"] == items[1]["sha256"]


def test_checkpoint_errors(client: TestClient, run: Run) -> None:
    job = make_job(client, run, samples=False)
    assert client.get("/api/jobs/nope/checkpoints").status_code == 404
    assert client.get("/api/jobs/nope/checkpoints/2").status_code == 404
    unknown = client.get(f"/api/jobs/{job}/checkpoints/3")
    assert unknown.status_code == 404
    assert unknown.json()["detail"] == f"job {job} has no checkpoint at step 3"
    assert client.get(f"/api/jobs/{job}/checkpoints/99999999999").status_code == 404
    assert client.get(f"/api/jobs/{job}/checkpoints/-2").status_code == 404
    assert field_of(client.get(f"/api/jobs/{job}/checkpoints/latest")) == "step"
    assert field_of(client.get(f"/api/jobs/{job}/checkpoints/2", params={"part": "x"})) == "part"
    store = store_of(client)
    folder = store.path(store.checkpoint_dir(job))
    (folder / "step_000002.json").unlink()
    gone = client.get(f"/api/jobs/{job}/checkpoints/2", params={"part": "sidecar"})
    assert gone.status_code == 404 and "gone" in gone.json()["detail"]
    (folder / "step_000002.safetensors").unlink()
    assert client.get(f"/api/jobs/{job}/checkpoints/2").status_code == 404
    tensors = folder / "step_000004.safetensors"
    tensors.write_bytes(tensors.read_bytes()[:-10])  # truncated
    short = client.get(f"/api/jobs/{job}/checkpoints/4")
    assert short.status_code == 409 and "damaged" in short.json()["detail"]


# ---- generation ---------------------------------------------------------------------------


def test_generate_npy_is_deterministic_and_png_is_a_png(client: TestClient, run: Run) -> None:
    job = make_job(client, run, samples=False)
    url = f"/api/jobs/{job}/generate"
    answer = client.post(url, json={"n": 16, "seed": 3, "format": "npy"})
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"] == "application/octet-stream"
    assert answer.headers["x-shape"] == "16,2" and answer.headers["x-checkpoint-step"] == "4"
    expected = f'attachment; filename="{job}-step_4-seed_3.npy"'
    assert answer.headers["content-disposition"] == expected
    array = np.load(io.BytesIO(answer.content), allow_pickle=False)
    assert array.shape == (16, 2) and array.dtype == np.float32
    # The same as the trainer's own generation from that checkpoint (EMA weights).
    assert np.array_equal(array, generate_array(run.checkpoints[4], 16, seed=3))
    again = client.post(url, json={"n": 16, "seed": 3, "format": "npy"})
    assert again.content == answer.content
    other_seed = client.post(url, json={"n": 16, "seed": 4, "format": "npy"})
    assert other_seed.content != answer.content
    earlier = client.post(url, json={"n": 16, "seed": 3, "format": "npy", "step": 2})
    assert earlier.headers["x-checkpoint-step"] == "2" and earlier.content != answer.content
    png = client.post(url, json={"n": 100})
    assert png.status_code == 200, png.text
    assert png.headers["content-type"] == "image/png" and png.headers["x-shape"] == "100,2"
    assert png.content.startswith(PNG_SIGNATURE)


def test_generate_errors(client: TestClient, run: Run) -> None:
    assert client.post("/api/jobs/nope/generate", json={}).status_code == 404
    bare = make_job(client, run, samples=False, checkpoints=False)
    none_yet = client.post(f"/api/jobs/{bare}/generate", json={})
    assert none_yet.status_code == 409
    assert none_yet.json()["detail"] == f"job {bare} has no checkpoint yet"
    job = make_job(client, run, samples=False)
    url = f"/api/jobs/{job}/generate"
    unknown = client.post(url, json={"step": 3})
    assert unknown.status_code == 404 and "step 3" in unknown.json()["detail"]
    assert field_of(client.post(url, json={"n": 0})) == "n"
    assert field_of(client.post(url, json={"n": MAX_GENERATE + 1, "format": "npy"})) == "n"
    too_many = client.post(url, json={"n": MAX_PNG + 1})
    assert field_of(too_many) == "n" and "npy" in too_many.json()["detail"][0]["message"]
    assert field_of(client.post(url, json={"format": "gif"})) == "format"
    assert field_of(client.post(url, json={"colour": "red"})) == "colour"
    assert field_of(client.post(url, json={"seed": -1})) == "seed"
    assert field_of(client.post(url, json={"step": "last"})) == "step"
    assert field_of(client.post(url, json={"step": 2**40})) == "step"


def test_generate_with_a_guided_sampler(client: TestClient, run: Run) -> None:
    """drs and refine use the checkpoint's discriminator: the same request gives the same
    bytes, the trainer's own guided generation gives them too, headers say what was done."""
    from trainer.generate import LoadedGenerator
    from trainer.guided import Sampler

    job = make_job(client, run, samples=False)
    url = f"/api/jobs/{job}/generate"
    plain = client.post(url, json={"n": 64, "seed": 5, "format": "npy"})
    assert "x-sampler" not in plain.headers
    named = client.post(url, json={"n": 64, "seed": 5, "format": "npy", "sampler": "plain"})
    assert named.content == plain.content  # plain, named or not, is today's generation
    loaded = LoadedGenerator.of(run.checkpoints[4])
    for name in ("drs", "refine"):
        body = {"n": 64, "seed": 5, "format": "npy", "sampler": name}
        answer = client.post(url, json=body)
        assert answer.status_code == 200, answer.text
        assert answer.headers["x-sampler"] == name and answer.headers["x-shape"] == "64,2"
        assert float(answer.headers["x-sampler-acceptance"]) > 0
        assert int(answer.headers["x-sampler-proposals"]) >= 64
        float(answer.headers["x-sampler-logit-plain"])  # numbers, both
        float(answer.headers["x-sampler-logit-returned"])
        disposition = f'attachment; filename="{job}-step_4-seed_5-{name}.npy"'
        assert answer.headers["content-disposition"] == disposition
        array = np.load(io.BytesIO(answer.content), allow_pickle=False)
        expected, _ = loaded.sample(64, seed=5, sampler=Sampler(sampler=name))
        assert np.array_equal(array, expected)
        assert client.post(url, json=body).content == answer.content
        assert answer.content != plain.content
    png = client.post(url, json={"n": 100, "sampler": "refine", "refine": {"steps": 5}})
    assert png.status_code == 200 and png.content.startswith(PNG_SIGNATURE)


def test_guided_generation_errors_name_the_field(client: TestClient, run: Run) -> None:
    job = make_job(client, run, samples=False)
    url = f"/api/jobs/{job}/generate"
    assert field_of(client.post(url, json={"sampler": "dot"})) == "sampler"
    other = client.post(url, json={"sampler": "refine", "drs": {"percentile": 90}})
    assert field_of(other) == "drs"
    assert "only used with sampler drs, not refine" in other.json()["detail"][0]["message"]
    bad = client.post(url, json={"sampler": "drs", "drs": {"percentile": 100}})
    assert field_of(bad) == "drs.percentile"
    assert field_of(client.post(url, json={"sampler": "refine", "refine": {"steps": 0}})) == (
        "refine.steps"
    )
    # Rejection is bounded: too strict a gamma runs out of proposals and says so.
    strict = {"sampler": "drs", "drs": {"gamma": 50, "min_acceptance": 0.5}, "format": "npy"}
    answer = client.post(url, json={"n": 100, **strict})
    assert field_of(answer) == "drs.min_acceptance"
    message = answer.json()["detail"][0]["message"]
    assert f"checkpoint step 4 of job {job}" in message and "of 200 proposals" in message


def test_generate_caps_n_by_the_generators_size(
    client: TestClient, run: Run, monkeypatch: pytest.MonkeyPatch
) -> None:
    job = make_job(client, run, samples=False)
    # The tiny generator's widest activation is its 32 hidden units (float32): 128 bytes.
    monkeypatch.setattr(generate, "GENERATE_BUDGET_BYTES", 128 * 50)
    url = f"/api/jobs/{job}/generate"
    assert client.post(url, json={"n": 50, "format": "npy"}).headers["x-shape"] == "50,2"
    over = client.post(url, json={"n": 51, "format": "npy"})
    assert field_of(over) == "n" and "at most 50" in over.json()["detail"][0]["message"]
    # Guided samplers make at most 50 x max_n = 2,500 generator forwards a request.
    drs = client.post(url, json={"n": 50, "format": "npy", "sampler": "drs"})
    assert drs.status_code == 200, drs.text  # the burn-in shrinks to a fifth: 500
    assert int(drs.headers["x-sampler-proposals"]) <= 2_000
    burn = client.post(url, json={"n": 50, "sampler": "drs", "drs": {"burn_in": 2_500}})
    assert field_of(burn) == "drs.burn_in"
    refine = client.post(url, json={"n": 50, "sampler": "refine", "refine": {"steps": 51}})
    assert field_of(refine) == "refine.steps" and "2550" in refine.json()["detail"][0]["message"]


def test_generate_refuses_a_tampered_checkpoint(client: TestClient, run: Run) -> None:
    job = make_job(client, run, samples=False)
    store = store_of(client)
    tensors = store.path(store.checkpoint_dir(job)) / "step_000004.safetensors"
    data = bytearray(tensors.read_bytes())
    data[len(data) // 2] ^= 0xFF
    tensors.write_bytes(bytes(data))
    answer = client.post(f"/api/jobs/{job}/generate", json={"format": "npy"})
    assert answer.status_code == 409, answer.text
    detail = answer.json()["detail"]
    assert detail.startswith(f"checkpoint step 4 of job {job}: ") and "SHA-256" in detail
    assert "step_000004.safetensors" in detail
    # The download still works (same size), and its SHA-256 shows the damage.
    download = client.get(f"/api/jobs/{job}/checkpoints/4")
    assert hashlib.sha256(download.content).hexdigest() != download.headers["x-checkpoint-sha256"]
    # The intact checkpoint still generates; a missing one is a 409 naming its file.
    assert client.post(f"/api/jobs/{job}/generate", json={"step": 2}).status_code == 200
    (tensors.parent / "step_000004.json").unlink()
    missing = client.post(f"/api/jobs/{job}/generate", json={"step": 4})
    assert missing.status_code == 409
    assert "step_000004.json is missing from the store" in missing.json()["detail"]

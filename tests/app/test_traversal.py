"""Files are found by id in the database, never by a path from the client: traversal payloads
in every path parameter and a symlink planted in the store never return a file outside the
store, and never a 500 (the class of bug behind MLflow's CVE-2023-1177, CVE-2024-1483, ...)."""

from __future__ import annotations

import zipfile
from io import BytesIO
from pathlib import Path

import pytest
from sqlalchemy import insert

from app.models import Sample

SECRET = "ganforge-secret-outside-the-store"
PAYLOADS = [
    "../../../../etc/passwd",
    "..%2f..%2f..%2fetc%2fpasswd",
    "%2e%2e/%2e%2e/etc/passwd",
    "%252e%252e%252fetc%252fpasswd",
    "..\\..\\..\\etc\\passwd",
    "/etc/passwd",
    "%2Fetc%2Fpasswd",
    "1;cat /etc/passwd",
    "1#/../../etc/passwd",
    "....//....//etc/passwd",
    "%00",
]


@pytest.fixture
def job_with_planted_link(client, tmp_path) -> str:
    """A job whose sample row points at a symlink, in the store, to a file outside it."""
    secret = tmp_path / "outside.txt"
    secret.write_text(SECRET)
    job_id = client.post("/api/jobs", json={"spec": {"steps": 10}}).json()["id"]
    store = client.app.state.store
    link = Path(store.path(store.sample_path(job_id, 5)))
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(secret)
    engine = client.app.state.sessions.kw["bind"]
    with engine.begin() as conn:
        conn.execute(
            insert(Sample).values(job_id=job_id, step=5, path=store.sample_path(job_id, 5))
        )
    return job_id


@pytest.mark.parametrize("payload", PAYLOADS)
def test_traversal_payloads_never_reach_a_file_outside_the_store(
    client, job_with_planted_link, payload
):
    job = job_with_planted_link
    urls = [
        f"/api/jobs/{payload}",
        f"/api/jobs/{payload}/samples",
        f"/api/jobs/{job}/samples/{payload}",
        f"/api/jobs/{job}/checkpoints/{payload}",
        f"/api/jobs/{job}/checkpoints/5?part={payload}",
        f"/api/datasets/{payload}",
        f"/static/{payload}",
        f"/static/vendor/{payload}",
        f"/jobs/{payload}",
    ]
    for url in urls:
        answer = client.get(url)
        assert answer.status_code < 500, (url, answer.status_code, answer.text[:200])
        assert SECRET not in answer.text and "root:x:0:0" not in answer.text, url


def test_a_symlink_planted_in_the_store_is_not_followed_out_of_it(client, job_with_planted_link):
    job = job_with_planted_link
    listed = client.get(f"/api/jobs/{job}/samples").json()["items"]
    assert [s["step"] for s in listed] == [5]
    one = client.get(listed[0]["url"])
    assert one.status_code == 404 and SECRET not in one.text
    archive = client.get(f"/api/jobs/{job}/samples.zip")
    if archive.status_code == 200:
        names = zipfile.ZipFile(BytesIO(archive.content)).namelist()
        assert names == [] and SECRET.encode() not in archive.content
    else:
        assert archive.status_code == 404


class _Planted:
    """Unpickling this creates a marker file: proof that something unpickled it."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_a_pickle_bearing_checkpoint_is_refused_and_never_unpickled(client, tmp_path):
    import hashlib
    import json
    import pickle

    from app.models import Checkpoint
    from trainer.checkpoint import FORMAT

    marker = tmp_path / "unpickled"
    job_id = client.post("/api/jobs", json={"spec": {"steps": 10}}).json()["id"]
    store = client.app.state.store
    data = pickle.dumps({"generator.weight": _Planted(marker)})
    digest = hashlib.sha256(data).hexdigest()
    relative = f"{store.checkpoint_dir(job_id)}/step_000005.safetensors"
    store.write(relative, data)
    sidecar = {"format": FORMAT, "step": 5, "sha256": digest, "spec": {}, "data_shape": [2]}
    store.write(relative.replace(".safetensors", ".json"), json.dumps(sidecar).encode())
    engine = client.app.state.sessions.kw["bind"]
    with engine.begin() as conn:
        conn.execute(
            insert(Checkpoint).values(
                job_id=job_id, step=5, path=relative, sha256=digest, size=len(data)
            )
        )
    answer = client.post(f"/api/jobs/{job_id}/generate", json={"n": 4, "format": "npy"})
    assert answer.status_code == 409, answer.text
    assert not marker.exists()
    # The same file with a checksum the database does not expect: refused before loading.
    with engine.begin() as conn:
        conn.execute(Checkpoint.__table__.update().values(sha256="0" * 64))
    mismatch = client.post(f"/api/jobs/{job_id}/generate", json={"n": 4, "format": "npy"})
    assert mismatch.status_code == 409 and "SHA-256" in mismatch.text
    assert not marker.exists()

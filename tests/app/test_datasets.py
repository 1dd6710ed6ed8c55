"""Dataset uploads on a real database (SQLite and PostgreSQL): store, check, list, delete."""

from __future__ import annotations

import hashlib
import io
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient

from app.api import create_app
from app.datasets import (
    DatasetFileError,
    display_filename,
    resolve_dataset_path,
    usable_with,
    validate_array_file,
)
from app.db import make_engine
from app.models import Job
from app.multipart_upload import MULTIPART_OVERHEAD
from app.settings import Settings
from trainer.data import DataError, load_array

SMALL_LIMIT = 4096


def save_npy(path: Path, array: np.ndarray[Any, Any]) -> Path:
    with path.open("wb") as fh:  # (np.save would append .npy to other names)
        np.save(fh, array)
    return path


def upload(client: TestClient, path: Path, name: str | None = None) -> Any:
    with path.open("rb") as fh:
        files = {"file": (name or path.name, fh, "application/octet-stream")}
        return client.post("/api/datasets", files=files)


def datasets_folder(client: TestClient) -> Path:
    root: Path = client.app.state.store.root  # type: ignore[attr-defined]
    return root / "datasets"


def stored_files(client: TestClient) -> list[str]:
    folder = datasets_folder(client)
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def assert_file_error(answer: Any, status: int, *words: str) -> str:
    assert answer.status_code == status, answer.text
    detail = answer.json()["detail"]
    assert detail[0]["field"] == "file", detail
    message: str = detail[0]["message"]
    assert message.startswith("file: "), message
    for word in words:
        assert word in message, message
    return message


@pytest.fixture
def small_client(database_url: str, tmp_path: Path) -> Iterator[TestClient]:
    """The API with a 4 KiB upload limit."""
    engine = make_engine(database_url)
    settings = Settings(
        database_url=database_url,
        artifact_dir=tmp_path / "artifacts",
        max_upload_bytes=SMALL_LIMIT,
    )
    with TestClient(create_app(settings, engine), base_url="http://localhost") as test_client:
        yield test_client
    engine.dispose()


# ---- uploads that work ------------------------------------------------------------------


def test_float_vectors_upload_and_the_trainer_reads_the_stored_file(client, tmp_path):
    array = np.random.default_rng(0).normal(size=(100, 2)).astype(np.float32)
    answer = upload(client, save_npy(tmp_path / "ring.npy", array), name="../../etc/ring.npy")
    assert answer.status_code == 201, answer.text
    made = answer.json()
    assert set(made) == {
        "id",
        "filename",
        "shape",
        "count",
        "dtype",
        "size",
        "sha256",
        "usable_with",
        "created_at",
        "created_by",
        "skipped",
        "skipped_count",
    }
    assert made["shape"] == [100, 2] and made["count"] == 100 and made["dtype"] == "float32"
    assert made["skipped"] == [] and made["skipped_count"] == 0
    assert made["usable_with"] == ["mlp"]
    assert made["filename"] == "ring.npy"  # for display only: no path
    assert made["created_at"].endswith(("+00:00", "Z"))

    stored = datasets_folder(client) / f"{made['id']}.npy"
    assert stored_files(client) == [stored.name]  # no temporary file left beside it
    assert made["size"] == stored.stat().st_size
    assert made["sha256"] == hashlib.sha256(stored.read_bytes()).hexdigest()
    assert torch.equal(load_array(stored), torch.from_numpy(array))

    app = client.app
    with app.state.sessions() as session:  # type: ignore[attr-defined]
        found = resolve_dataset_path(session, app.state.store, made["id"])  # type: ignore[attr-defined]
    assert found == stored
    del made["skipped"], made["skipped_count"]  # the upload's answer only
    assert client.get(f"/api/datasets/{made['id']}").json() == made


def test_uint8_images_are_usable_with_conv(client, tmp_path):
    images = np.random.default_rng(1).integers(0, 256, size=(10, 8, 8), dtype=np.uint8)
    made = upload(client, save_npy(tmp_path / "img.npy", images)).json()
    assert made["shape"] == [10, 8, 8] and made["dtype"] == "uint8"
    assert made["usable_with"] == ["mlp", "conv"]
    loaded = load_array(datasets_folder(client) / f"{made['id']}.npy")
    assert loaded.shape == (10, 1, 8, 8)
    assert torch.allclose(loaded[:, 0], torch.from_numpy(images.astype(np.float32) / 127.5 - 1))

    odd = np.zeros((4, 3, 10, 10), dtype=np.float16)  # fine for an MLP, not for conv
    made = upload(client, save_npy(tmp_path / "odd.npy", odd)).json()
    assert made["usable_with"] == ["mlp"] and made["dtype"] == "float16"
    fortran = np.asfortranarray(np.ones((5, 1, 16, 16), dtype=">f8"))  # big-endian, F order
    made = upload(client, save_npy(tmp_path / "f.npy", fortran)).json()
    assert made["usable_with"] == ["mlp", "conv", "resnet"] and made["dtype"] == "float64"
    assert torch.equal(
        load_array(datasets_folder(client) / f"{made['id']}.npy"), torch.ones(5, 1, 16, 16)
    )


def test_npz_uploads_store_the_chosen_array_as_npy(client, tmp_path):
    single = np.arange(12, dtype=np.float64).reshape(6, 2)
    np.savez(tmp_path / "one.npz", points=single)
    made = upload(client, tmp_path / "one.npz").json()
    assert made["shape"] == [6, 2] and made["dtype"] == "float64"
    assert made["filename"] == "one.npz"
    stored = datasets_folder(client) / f"{made['id']}.npy"
    assert torch.equal(load_array(stored), torch.from_numpy(single.astype(np.float32)))

    x = np.ones((3, 4), dtype=np.float32)
    np.savez_compressed(tmp_path / "xy.npz", y=np.zeros(3), x=x)  # several: `x` is the data
    made = upload(client, tmp_path / "xy.npz").json()
    assert made["shape"] == [3, 4]
    assert np.array_equal(np.load(datasets_folder(client) / f"{made['id']}.npy"), x)

    np.savez(tmp_path / "ab.npz", a=x, b=x)
    assert_file_error(upload(client, tmp_path / "ab.npz"), 422, "2 arrays (a, b)", "x or data")
    assert len(stored_files(client)) == 2


# ---- uploads that are refused -------------------------------------------------------------


def npy(array: np.ndarray[Any, Any], **kwargs: Any) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, **kwargs)
    return buffer.getvalue()


def npz(**arrays: np.ndarray[Any, Any]) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def zip_of(name: str, text: str) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr(name, text)
    return buffer.getvalue()


BAD_FILES: dict[str, tuple[bytes, str]] = {
    "int64": (npy(np.arange(10).reshape(5, 2)), "dtype int64 not supported"),
    "bool": (npy(np.ones((5, 2), bool)), "dtype bool not supported"),
    "complex": (npy(np.ones((5, 2), complex)), "dtype complex128 not supported"),
    "structured": (npy(np.zeros((5, 2), [("a", "f4")])), "structured"),
    "object": (npy(np.array([{"a": 1}, None], dtype=object), allow_pickle=True), "pickle"),
    "nan": (npy(np.array([[0.0, np.nan], [1, 2]])), "NaN or infinite"),
    "inf": (npy(np.array([[0.0, 1], [np.inf, 2]], np.float16)), "NaN or infinite"),
    "1d": (npy(np.ones(5, np.float32)), "shape (5,) not supported"),
    "5d": (npy(np.ones((2, 1, 1, 1, 1))), "(N, C, H, W)"),
    "one example": (npy(np.ones((1, 2))), "need at least 2"),
    "empty axis": (npy(np.ones((3, 0))), "empty axis"),
    "two channels": (npy(np.ones((4, 2, 8, 8), np.uint8)), "C = 1 or 3, got 2"),
    "channels last": (npy(np.ones((4, 8, 8, 3), np.uint8)), "channels last? transpose"),
    "garbage": (b"hello, not an array" * 10, "not a .npy/.npz file"),
    "empty": (b"", "not a .npy/.npz file"),
    "bad header": (b"\x93NUMPY\x01\x00\x10\x00{'descr': 1}    \n", "bad .npy header"),
    "truncated": (npy(np.ones((50, 2), np.float32))[:-16], "truncated"),
    "trailing bytes": (npy(np.ones((50, 2), np.float32)) + b"junk", "stray bytes"),
    "bad zip": (b"PK\x03\x04" + b"\0" * 60, "not a readable .npz"),
    "npz with a bad member": (zip_of("x.npy", "not really"), "bad .npy header"),
    "npz of int": (npz(x=np.ones((3, 2), int)), "dtype int64"),
    "npz of objects": (npz(x=np.array([None, 1], dtype=object)), "pickle"),
}


@pytest.mark.parametrize("case", list(BAD_FILES))
def test_unusable_files_are_422_naming_file_and_leave_nothing(client, tmp_path, case):
    content, words = BAD_FILES[case]
    path = tmp_path / "bad.npy"
    path.write_bytes(content)
    assert_file_error(upload(client, path), 422, words)
    assert stored_files(client) == []
    assert client.get("/api/datasets").json()["items"] == []


def test_int64_message_says_what_to_use(client, tmp_path):
    path = save_npy(tmp_path / "i.npy", np.arange(10).reshape(5, 2))
    message = assert_file_error(upload(client, path), 422)
    assert message == "file: dtype int64 not supported; use float or uint8"


def test_missing_file_field_or_not_multipart_is_422(client, tmp_path):
    path = save_npy(tmp_path / "a.npy", np.ones((3, 2)))
    with path.open("rb") as fh:
        answer = client.post("/api/datasets", files={"data": ("a.npy", fh)})
    assert_file_error(answer, 422, "Field required")
    form = client.post("/api/datasets", data={"name": "x"})  # url-encoded, no file
    assert_file_error(form, 422, "multipart/form-data")
    assert_file_error(client.post("/api/datasets", json={"file": "x"}), 422, "multipart/form-data")
    assert_file_error(client.post("/api/datasets"), 422, "multipart/form-data")
    with path.open("rb") as one, path.open("rb") as two:
        answer = client.post("/api/datasets", files=[("file", one), ("file", two)])
    assert_file_error(answer, 422, "one file")
    truncated = b"--B\r\nContent-Disposition: form-data; name=file; filename=a.npy\r\n\r\n"
    answer = client.post(
        "/api/datasets",
        content=truncated + path.read_bytes(),
        headers={"content-type": "multipart/form-data; boundary=B"},
    )
    assert_file_error(answer, 422, "ended inside the file")
    assert stored_files(client) == []


# ---- the size limit -----------------------------------------------------------------------


def test_files_over_the_limit_are_413_naming_file_and_the_limit(small_client, tmp_path):
    under = save_npy(tmp_path / "under.npy", np.ones((100, 2), np.float32))  # 928 bytes
    assert upload(small_client, under).status_code == 201
    over = save_npy(tmp_path / "over.npy", np.ones((1000, 2), np.float32))  # 8 KB
    assert_file_error(upload(small_client, over), 413, "file: larger than", "4096 bytes")
    # Far over: refused from Content-Length, before the body is read.
    far = save_npy(tmp_path / "far.npy", np.ones((MULTIPART_OVERHEAD, 2), np.float32))
    assert_file_error(upload(small_client, far), 413, "4096 bytes")
    # A small .npz that inflates past the limit.
    np.savez_compressed(tmp_path / "bomb.npz", x=np.zeros((100_000, 8), np.float32))
    assert (tmp_path / "bomb.npz").stat().st_size < SMALL_LIMIT
    assert_file_error(upload(small_client, tmp_path / "bomb.npz"), 413, "uncompressed", "4096")
    assert len(stored_files(small_client)) == 1
    assert len(small_client.get("/api/datasets").json()["items"]) == 1


def asgi_post(
    app: Any, headers: list[tuple[bytes, bytes]], chunks: Iterator[bytes]
) -> tuple[int, bytes, int]:
    """POST /api/datasets straight to the ASGI app: (status, body, chunks the app asked for)."""
    asked = 0
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        nonlocal asked
        asked += 1
        chunk = next(chunks, None)
        return {"type": "http.request", "body": chunk or b"", "more_body": chunk is not None}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/api/datasets",
        "raw_path": b"/api/datasets",
        "root_path": "",
        "query_string": b"",
        "headers": [(b"host", b"localhost"), *headers],
        "client": ("test", 1),
        "server": ("test", 80),
    }
    anyio.run(app, scope, receive, send)
    return sent[0]["status"], b"".join(m.get("body", b"") for m in sent[1:]), asked


MULTIPART = (b"content-type", b"multipart/form-data; boundary=B")


def test_a_streamed_upload_is_cut_off_at_the_limit(small_client):
    """No Content-Length: the app stops reading once the file passes the limit."""

    def body() -> Iterator[bytes]:
        yield b"--B\r\nContent-Disposition: form-data; name=file; filename=big.npy\r\n\r\n"
        for _ in range(1000):  # 1 MB of file data in 1 KiB chunks
            yield b"\0" * 1024
        yield b"\r\n--B--\r\n"

    status, content, asked = asgi_post(small_client.app, [MULTIPART], body())
    assert status == 413 and b"4096 bytes" in content
    assert asked <= 2 + SMALL_LIMIT // 1024  # the header chunk, the limit, one more
    assert stored_files(small_client) == []


def test_content_length_over_the_limit_is_refused_unread(small_client):
    too_long = (b"content-length", str(10**12).encode())
    status, content, asked = asgi_post(small_client.app, [MULTIPART, too_long], iter([]))
    assert status == 413 and asked == 0
    assert b'"field":"file"' in content and b"4096 bytes" in content


# ---- list, get, delete ------------------------------------------------------------------


def test_list_get_and_delete(client, tmp_path):
    ids = []
    for i in range(3):
        path = save_npy(tmp_path / f"d{i}.npy", np.full((2, 2), i, np.float32))
        ids.append(upload(client, path).json()["id"])
    listed = client.get("/api/datasets").json()["items"]
    assert [d["id"] for d in listed] == ids[::-1]
    assert [d["filename"] for d in listed] == ["d2.npy", "d1.npy", "d0.npy"]
    assert [d["id"] for d in client.get("/api/datasets?limit=2").json()["items"]] == ids[:0:-1]
    assert client.get("/api/datasets?limit=0").status_code == 422

    missing = client.get("/api/datasets/nope")
    assert missing.status_code == 404 and "nope" in missing.json()["detail"]

    gone = client.delete(f"/api/datasets/{ids[1]}")
    assert gone.status_code == 204 and gone.content == b""
    assert client.get(f"/api/datasets/{ids[1]}").status_code == 404
    assert f"{ids[1]}.npy" not in stored_files(client) and len(stored_files(client)) == 2
    assert client.delete(f"/api/datasets/{ids[1]}").status_code == 404
    assert [d["id"] for d in client.get("/api/datasets").json()["items"]] == [ids[2], ids[0]]


def test_a_dataset_in_use_by_an_active_job_cannot_be_deleted(client, tmp_path):
    made = upload(client, save_npy(tmp_path / "d.npy", np.ones((4, 2), np.float32))).json()
    spec = {"data": {"kind": "array", "dataset_id": made["id"]}, "model": {"kind": "mlp"}}
    job = client.post("/api/jobs", json={"spec": spec})
    assert job.status_code == 201, job.text
    second = upload(client, save_npy(tmp_path / "e.npy", np.ones((4, 2), np.float32))).json()
    other = {"data": {"kind": "array", "dataset_id": second["id"]}}
    other_job = client.post("/api/jobs", json={"spec": other}).json()

    refused = client.delete(f"/api/datasets/{made['id']}")
    assert refused.status_code == 409
    detail = refused.json()["detail"]
    assert made["id"] in detail and job.json()["id"] in detail and other_job["id"] not in detail
    assert client.get(f"/api/datasets/{made['id']}").status_code == 200
    assert f"{made['id']}.npy" in stored_files(client)

    with client.app.state.sessions() as session:  # type: ignore[attr-defined]
        session.get(Job, job.json()["id"]).status = "succeeded"
        session.commit()
    assert client.delete(f"/api/datasets/{made['id']}").status_code == 204
    assert stored_files(client) == [f"{second['id']}.npy"]


def test_resolve_dataset_path_raises_data_error(client, tmp_path):
    app = client.app
    store = app.state.store  # type: ignore[attr-defined]
    with app.state.sessions() as session:  # type: ignore[attr-defined]
        with pytest.raises(DataError, match=r"^data\.dataset_id: no dataset nope$"):
            resolve_dataset_path(session, store, "nope")
        made = upload(client, save_npy(tmp_path / "d.npy", np.ones((4, 2)))).json()
        (datasets_folder(client) / f"{made['id']}.npy").unlink()
        with pytest.raises(DataError, match=rf"^data\.dataset_id: no dataset {made['id']} "):
            resolve_dataset_path(session, store, made["id"])


# ---- the checks on their own (no database) --------------------------------------------------


def test_validate_array_file_reads_headers_and_npz(tmp_path):
    path = save_npy(tmp_path / "a.npy", np.zeros((7, 3, 32, 32), np.float32))
    assert validate_array_file(path) == ((7, 3, 32, 32), "float32")
    np.savez(tmp_path / "b.npz", data=np.zeros((2, 5), np.uint8), labels=np.arange(2))
    assert validate_array_file(tmp_path / "b.npz") == ((2, 5), "uint8")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.npy", "b.npz"]  # temp removed
    with pytest.raises(DatasetFileError, match="holds 2 arrays"):
        np.savez(tmp_path / "c.npz", p=np.zeros((2, 5)), q=np.zeros((2, 5)))
        validate_array_file(tmp_path / "c.npz")
    with pytest.raises(DatasetFileError, match="uncompressed"):
        validate_array_file(tmp_path / "b.npz", max_bytes=10)


def test_display_filename():
    assert display_filename("C:\\Users\\me\\x.npy") == "x.npy"
    assert display_filename("a/b\x00\x07c.npz") == "bc.npz"
    assert display_filename("..") == "upload" and display_filename(None) == "upload"
    assert len(display_filename("n" * 1000)) == 300


def test_usable_with():
    assert usable_with((5, 2)) == ["mlp"]
    assert usable_with((5, 8, 8)) == ["mlp", "conv"]
    assert usable_with((5, 64, 64)) == ["mlp", "conv", "resnet"]
    assert usable_with((5, 3, 32, 32)) == ["mlp", "conv", "resnet"]
    assert usable_with((5, 3, 32, 16)) == ["mlp"]
    assert usable_with((5, 1, 128, 128)) == ["mlp", "resnet"]
    assert usable_with((5, 4, 32, 32)) == ["mlp", "conv"]  # resnet: 1 or 3 channels

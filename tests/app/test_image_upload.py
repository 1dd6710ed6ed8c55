"""POST /api/datasets with archives of images (DESIGN section 8), on a real database: what is
stored and skipped, how a zip of images is told from an .npz, the form fields, decompression
bombs (refused or skipped without the memory they ask for), and a job that uses the result."""

from __future__ import annotations

import gzip
import io
import struct
import tarfile
import tracemalloc
import zipfile
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from app.api import create_app
from app.db import make_engine, upgrade
from app.settings import Settings
from tests.app.test_datasets import assert_file_error, datasets_folder, stored_files
from tests.trainer.test_images import MEMBERS, png
from trainer.data import load_array

MIB = 1024 * 1024


def zip_bytes(members: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return out.getvalue()


def tar_bytes(members: dict[str, bytes], mode: str = "w") -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode=mode) as archive:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return out.getvalue()


ARCHIVES = {
    "zip": lambda m: zip_bytes(m),
    "tar": lambda m: tar_bytes(m),
    "tar.gz": lambda m: tar_bytes(m, "w:gz"),
}


def post(client: TestClient, name: str, content: bytes, **fields: Any) -> Any:
    data = {key: str(value) for key, value in fields.items()}
    return client.post("/api/datasets", files={"file": (name, content)}, data=data)


def stored_array(client: TestClient, dataset_id: str) -> np.ndarray[Any, Any]:
    array: np.ndarray[Any, Any] = np.load(datasets_folder(client) / f"{dataset_id}.npy")
    return array


def assert_field_error(answer: Any, field: str, *words: str) -> None:
    assert answer.status_code == 422, answer.text
    detail = answer.json()["detail"]
    assert detail[0]["field"] == field and detail[0]["loc"] == ["body", field], detail
    assert detail[0]["message"].startswith(f"{field}: "), detail
    for word in words:
        assert word in detail[0]["message"], detail


@pytest.fixture
def tight_client(tmp_path: Path) -> Iterator[TestClient]:
    """The API on SQLite with a 1 MiB upload limit."""
    url = f"sqlite:///{tmp_path / 'tight.db'}"
    upgrade(url)
    engine = make_engine(url)
    settings = Settings(
        database_url=url,
        broker_url=f"sqla+sqlite:///{tmp_path / 'broker.db'}",
        artifact_dir=tmp_path / "artifacts",
        max_upload_bytes=MIB,
    )
    with TestClient(create_app(settings, engine), base_url="http://localhost") as client:
        yield client
    engine.dispose()


def peak_bytes_of(call: Any) -> tuple[Any, int]:
    """(what `call()` returned, the peak of memory Python allocated meanwhile, every thread)."""
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        result = call()
        return result, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


# ---- archives that work -------------------------------------------------------------------


@pytest.mark.parametrize("kind", list(ARCHIVES))
def test_an_archive_stores_its_images_and_names_each_member_left_out(client, kind):
    answer = post(client, f"pictures.{kind}", ARCHIVES[kind](MEMBERS), resolution=16)
    assert answer.status_code == 201, answer.text
    made = answer.json()
    assert made["shape"] == [4, 3, 16, 16] and made["count"] == 4 and made["dtype"] == "uint8"
    assert made["filename"] == f"pictures.{kind}"
    reasons = {s["name"]: s["reason"] for s in made["skipped"]}
    assert set(reasons) == {"notes.txt", "broken.png", "e.gif"} and made["skipped_count"] == 3
    assert reasons["notes.txt"] == "not an image"
    assert reasons["broken.png"].startswith("corrupt")
    assert reasons["e.gif"] == "GIF is not one of PNG, JPEG, WEBP, BMP"
    assert made["usable_with"] == ["mlp", "conv", "resnet"]

    array = stored_array(client, made["id"])
    assert array.dtype == np.uint8 and array.shape == (4, 3, 16, 16)
    means = array.reshape(4, 3, -1).mean(-1).round().tolist()
    assert [255, 0, 0] in means and [255, 255, 0] in means  # the PNG and the BMP
    assert stored_files(client) == [f"{made['id']}.npy"]  # nothing extracted, no temp left
    listed = client.get(f"/api/datasets/{made['id']}").json()
    assert listed["shape"] == [4, 3, 16, 16] and listed["count"] == 4


def test_the_stored_images_train_as_an_array_dataset(client):
    members = {f"{i}.png": png((40 * i, 0, 255 - 40 * i), size=(24, 24)) for i in range(6)}
    made = post(client, "six.zip", zip_bytes(members), resolution=16).json()
    loaded = load_array(datasets_folder(client) / f"{made['id']}.npy")
    assert tuple(loaded.shape) == (6, 3, 16, 16) and -1 <= loaded.min() < loaded.max() <= 1
    spec = {
        "steps": 2,
        "batch_size": 4,
        "data": {"kind": "array", "dataset_id": made["id"]},
        "model": {"kind": "conv"},
    }
    job = client.post("/api/jobs", json={"spec": spec})
    assert job.status_code == 201, job.text
    assert job.json()["spec"]["data"]["dataset_id"] == made["id"]


def test_channels_default_to_gray_when_every_image_is_and_can_be_chosen(client):
    gray = zip_bytes({"a.png": png(40), "b.png": png((90, 90, 90))})
    assert post(client, "g.zip", gray, resolution=8).json()["shape"] == [2, 1, 8, 8]
    three = post(client, "g.zip", gray, resolution=8, channels=3).json()
    assert three["shape"] == [2, 3, 8, 8]
    colour = zip_bytes({"a.png": png((200, 10, 10))})
    one = post(client, "c.zip", colour, resolution=8, channels=1).json()
    assert one["shape"] == [1, 1, 8, 8]
    assert int(stored_array(client, one["id"]).mean().round()) == (299 * 200 + 701 * 10) // 1000


def test_crop_center_keeps_the_middle_and_resize_squashes(client):
    wide = io.BytesIO()  # 64 x 16: left quarter black, the rest white
    pixels = np.full((16, 64), 255, np.uint8)
    pixels[:, :16] = 0
    from PIL import Image

    Image.fromarray(pixels).save(wide, format="PNG")
    archive = zip_bytes({"wide.png": wide.getvalue()})
    center = post(client, "w.zip", archive, resolution=16, crop="center").json()
    squashed = post(client, "w.zip", archive, resolution=16, crop="resize").json()
    assert stored_array(client, center["id"]).min() > 225  # the middle is all white
    assert stored_array(client, squashed["id"])[0, 0, :, :3].max() < 30  # squashed: black left


def test_a_zip_of_images_is_not_taken_for_an_npz_and_an_npz_still_works(client):
    images = post(client, "x.zip", zip_bytes({"1.png": png(1), "2.png": png(2)}), resolution=8)
    assert images.status_code == 201, images.text  # not "the .npz holds no arrays"
    assert images.json()["shape"] == [2, 1, 8, 8]
    npz = io.BytesIO()
    np.savez(npz, x=np.ones((3, 2), np.float32))
    array = post(client, "x.npz", npz.getvalue())
    assert array.status_code == 201 and array.json()["shape"] == [3, 2]
    assert array.json()["skipped"] == [] and array.json()["count"] == 3
    # Told by content: an .npz named .zip is an .npz, a zip of images named .npz is images.
    assert post(client, "arrays.zip", npz.getvalue()).json()["shape"] == [3, 2]
    named = post(client, "i.npz", zip_bytes({"1.png": png(1)}), resolution=8)
    assert named.json()["shape"] == [1, 1, 8, 8]


def test_an_upload_sent_chunked_with_the_fields_after_the_file_is_read(client):
    archive = tar_bytes({"a.png": png((1, 2, 3)), "b.png": png((4, 5, 6))}, "w:gz")

    def body() -> Iterator[bytes]:  # no Content-Length: sent chunked
        yield b'--B\r\nContent-Disposition: form-data; name="file"; filename="a.tgz"\r\n\r\n'
        for start in range(0, len(archive), 100):
            yield archive[start : start + 100]
        yield b'\r\n--B\r\nContent-Disposition: form-data; name="resolution"\r\n\r\n8'
        yield b"\r\n--B--\r\n"

    answer = client.post(
        "/api/datasets",
        content=body(),
        headers={"content-type": "multipart/form-data; boundary=B"},
    )
    assert answer.status_code == 201, answer.text
    assert answer.json()["shape"] == [2, 3, 8, 8]


def test_the_answer_lists_the_first_thousand_members_left_out(client):
    members = {f"note{i:04}.txt": b"x" for i in range(1001)} | {"z.png": png(9)}
    made = post(client, "notes.zip", zip_bytes(members), resolution=8).json()
    assert made["count"] == 1 and made["skipped_count"] == 1001
    assert len(made["skipped"]) == 1000 and made["skipped"][0]["name"] == "note0000.txt"


# ---- archives that are refused ------------------------------------------------------------


def test_an_archive_without_a_usable_image_is_422_saying_why(client):
    texts = zip_bytes({"a.txt": b"hello", "b.txt": b"x"})
    assert_file_error(
        post(client, "t.zip", texts, resolution=8),
        422,
        "no usable image among 2 files (e.g. 'a.txt': not an image)",
    )
    assert_file_error(post(client, "e.tar", tar_bytes({}), resolution=8), 422, "no files in it")
    not_tar = gzip.compress(b"just some gzipped text" * 100)
    assert_file_error(post(client, "n.tgz", not_tar, resolution=8), 422, "not a readable .tar.gz")
    assert_file_error(post(client, "z.zip", b"PK\x03\x04" + b"\0" * 600), 422, "not a readable")
    assert_file_error(post(client, "x.bin", b"\x89PNG plain"), 422, "nor a .zip, .tar or .tar.gz")
    assert stored_files(client) == []
    assert client.get("/api/datasets").json()["items"] == []


BAD_FIELDS = [
    ({"resolution": "abc"}, "resolution", "must be a whole number, not 'abc'"),
    ({"resolution": "4"}, "resolution", "must be 8 to 256, not 4"),
    ({"resolution": "300"}, "resolution", "must be 8 to 256, not 300"),
    ({"resolution": "16.5"}, "resolution", "whole number"),
    ({"resolution": "16", "channels": "2"}, "channels", "must be 1 or 3, not 2"),
    ({"resolution": "16", "channels": "rgb"}, "channels", "whole number"),
    ({"resolution": "16", "crop": "fill"}, "crop", "must be center or resize, not 'fill'"),
    ({}, "resolution", "needed for an archive of images"),
    ({"resolution": ""}, "resolution", "needed for an archive of images"),
    ({"resolution": "1" * 2000}, "resolution", "longer than 1000 bytes"),
]


@pytest.mark.parametrize(("fields", "field", "words"), BAD_FIELDS)
def test_bad_form_fields_are_422_naming_the_field(tight_client, fields, field, words):
    answer = post(tight_client, "a.zip", zip_bytes({"a.png": png(3)}), **fields)
    assert_field_error(answer, field, words)
    assert stored_files(tight_client) == []


def test_image_fields_on_an_array_upload_are_422(tight_client):
    npy = io.BytesIO()
    np.save(npy, np.ones((3, 2), np.float32))
    answer = post(tight_client, "a.npy", npy.getvalue(), resolution=16)
    assert_field_error(answer, "resolution", "only used with an archive of images, not a .npy")
    answer = post(tight_client, "a.npy", npy.getvalue(), crop="resize")
    assert_field_error(answer, "crop", "only used with an archive")
    many = tight_client.post(
        "/api/datasets",
        files=[("file", ("a.zip", zip_bytes({"a.png": png(3)})))],
        data={"resolution": ["8", "16"]},
    )
    assert_field_error(many, "resolution", "send it once")


# ---- decompression bombs ------------------------------------------------------------------


def png_claiming(width: int, height: int) -> bytes:
    """A small PNG whose header (CRC intact) says it is width x height."""
    data = bytearray(png(7, size=(4, 4)))
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    return bytes(data)


def test_an_image_claiming_huge_dimensions_is_skipped_unread(tight_client):
    archive = zip_bytes({"huge.png": png_claiming(100_000, 100_000), "ok.png": png(5)})
    answer, peak = peak_bytes_of(lambda: post(tight_client, "b.zip", archive, resolution=8))
    assert answer.status_code == 201, answer.text
    made = answer.json()
    assert made["count"] == 1
    [(name, reason)] = [(s["name"], s["reason"]) for s in made["skipped"]]
    assert name == "huge.png" and reason.startswith("too many pixels")
    assert peak < 20 * MIB  # 10^10 pixels were never allocated


def test_a_zip_member_that_inflates_past_the_limit_is_refused_unread(tight_client):
    bomb = zip_bytes({"bomb.png": b"\0" * (48 * MIB), "ok.png": png(5)})
    assert len(bomb) < 100_000
    answer, peak = peak_bytes_of(lambda: post(tight_client, "b.zip", bomb, resolution=8))
    assert_file_error(answer, 413, "inflates to 50331", "past the limit of 1048576 bytes")
    assert peak < 8 * MIB
    assert stored_files(tight_client) == []


def test_a_tar_header_that_inflates_past_the_limit_is_refused_unread(tight_client):
    """A GNU long-name header is read into memory whole by `tarfile`: 48 MiB of it, gzipped
    to a few KB, stops at the limit instead."""
    size = 48 * MIB
    header = tarfile.TarInfo("././@LongLink")
    header.type, header.size = tarfile.GNUTYPE_LONGNAME, size
    raw = io.BytesIO()
    with gzip.GzipFile(fileobj=raw, mode="wb") as out:
        out.write(header.tobuf(tarfile.GNU_FORMAT))
        for _ in range(size // MIB):
            out.write(b"a" * MIB)
    bomb = raw.getvalue()
    assert len(bomb) < 200_000
    answer, peak = peak_bytes_of(lambda: post(tight_client, "b.tgz", bomb, resolution=8))
    assert_file_error(answer, 413, "inflates past the limit of 1048576 bytes")
    assert peak < 8 * MIB


def test_many_small_images_that_decode_past_the_limit_are_refused_before_decoding(tight_client):
    archive = tar_bytes({f"{i}.png": png(i, size=(1, 1)) for i in range(8)})
    answer = post(tight_client, "tiny.tar", archive, resolution=256)  # 8 x 192 KiB > 1 MiB
    assert_file_error(answer, 413, "8 files at 256 px decode to up to 1572864 bytes")
    assert post(tight_client, "tiny.tar", archive, resolution=128).status_code == 201

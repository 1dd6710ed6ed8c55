"""`ganforge dataset upload PATH` against a real `ganforge api` process: a folder of PNGs sent
as a tar made on the fly (chunked), an archive, an array; the token; the server's refusals;
and the mistakes caught before anything is sent."""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
import tarfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx2
import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from app.cli import cli
from app.dataset_upload import source_for
from app.tarstream import CHUNK_BYTES, FolderChanged, FolderTar
from tests.service.conftest import ROOT, _free_port

TOKEN = "gf-test-token-for-the-dataset-cli"
LIMIT = 2 * 1024 * 1024


@dataclass
class Api:
    url: str
    process: subprocess.Popen[bytes]
    log: Path

    def get(self, path: str) -> httpx2.Response:
        return httpx2.get(self.url + path, timeout=10)


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    """`ganforge api` on SQLite, with a token and a 2 MiB upload limit."""
    workdir = tmp_path_factory.mktemp("dataset-cli")
    port = _free_port()
    env = {
        **os.environ,
        "GANFORGE_DATABASE_URL": f"sqlite:///{workdir / 'api.db'}",
        "GANFORGE_BROKER_URL": f"sqla+sqlite:///{workdir / 'broker.db'}",
        "GANFORGE_ARTIFACT_DIR": str(workdir / "artifacts"),
        "GANFORGE_API_TOKENS": f"cli={TOKEN}",
        "GANFORGE_MAX_UPLOAD_BYTES": str(LIMIT),
    }
    log = workdir / "api.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "app.cli", "api", "--port", str(port)],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    running = Api(f"http://127.0.0.1:{port}", process, log)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if running.get("/api/health").status_code == 200:
                    break
            except httpx2.HTTPError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError("ganforge api did not come up:\n" + log.read_text()[-3000:])
            time.sleep(0.2)
        yield running
    finally:
        process.terminate()
        process.wait(timeout=30)


def write_png(path: Path, value: int, size: tuple[int, int] = (20, 12)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("L", size, value).save(path, format="PNG")


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """Six gray PNGs (two in a subfolder, one with a long non-ASCII name) and a text file."""
    root = tmp_path / "pictures"
    for i in range(4):
        write_png(root / f"{i}.png", 40 * i)
    write_png(root / "sub" / "deeper" / ("é" * 120 + ".png"), 200)
    write_png(root / "sub" / "x.png", 250)
    (root / "README.txt").write_text("not an image")
    return root


def run(*args: str) -> tuple[int, str, str]:
    """`ganforge ARGS` in this process (the server is the real one)."""
    result = CliRunner().invoke(cli, list(args))
    return result.exit_code, result.stdout, result.stderr


# ---- against the server -------------------------------------------------------------------


def test_upload_a_folder_of_pngs_as_a_user_would(api, folder):
    done = subprocess.run(
        [sys.executable, "-m", "app.cli", "dataset", "upload", str(folder), "--resolution", "16"]
        + ["--server", api.url, "--token", TOKEN],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    found = re.search(r"^dataset (\w+): 6 images, shape \[6, 1, 16, 16\], uint8", done.stdout)
    assert found, done.stdout
    assert "skipped README.txt: not an image" in done.stdout
    assert f"data: {{kind: array, dataset_id: {found[1]}}}" in done.stdout
    assert "100%" in done.stderr  # the progress bar ran to the end

    stored = api.get(f"/api/datasets/{found[1]}").json()
    assert stored["shape"] == [6, 1, 16, 16] and stored["filename"] == "pictures.tar"
    spec = {"steps": 2, "batch_size": 4, "data": {"kind": "array", "dataset_id": found[1]}}
    job = httpx2.post(
        api.url + "/api/jobs",
        json={"spec": {**spec, "model": {"kind": "conv"}}},
        headers={"Authorization": f"Bearer {TOKEN}"},
    )
    assert job.status_code == 201, job.text


def test_upload_an_archive_and_an_array_with_the_token_from_the_environment(
    api, folder, tmp_path, monkeypatch
):
    monkeypatch.setenv("GANFORGE_TOKEN", TOKEN)
    monkeypatch.setenv("GANFORGE_SERVER", api.url)
    archive = tmp_path / "pictures.tgz"
    with tarfile.open(archive, "w:gz") as out:
        out.add(folder / "0.png", "a.png")
        out.add(folder / "3.png", "b.png")
    code, stdout, stderr = run("dataset", "upload", str(archive), "--resolution", "8")
    assert code == 0, stderr
    assert "2 images, shape [2, 1, 8, 8]" in stdout and "skipped" not in stdout
    code, stdout, _ = run("dataset", "upload", str(archive), "--resolution", "8", "--channels", "3")
    assert "shape [2, 3, 8, 8]" in stdout
    np.save(tmp_path / "ring.npy", np.ones((10, 2), np.float32))
    code, stdout, stderr = run("dataset", "upload", str(tmp_path / "ring.npy"))
    assert code == 0, stderr
    assert "10 examples, shape [10, 2], float32" in stdout


def test_the_servers_refusals_are_reported(api, folder, tmp_path):
    args = ["--resolution", "16", "--server", api.url]
    code, _, stderr = run("dataset", "upload", str(folder), *args)
    assert code == 1 and "error: server: 401 authorization:" in stderr
    noise = np.random.default_rng(0).integers(0, 256, (1024, 1024, 3), dtype=np.uint8)
    Image.fromarray(noise).save(folder / "noise.bmp")  # 3 MiB: past the 2 MiB limit
    args = [*args, "--token", TOKEN]
    code, _, stderr = run("dataset", "upload", str(folder), *args)
    assert code == 2 and "error: file: larger than the upload limit of 2097152 bytes" in stderr
    texts = tmp_path / "texts"
    (texts / "a").mkdir(parents=True)
    (texts / "a" / "notes.txt").write_text("hello")
    code, _, stderr = run("dataset", "upload", str(texts), *args)
    assert code == 2
    assert "error: file: no usable image among 1 files (e.g. 'a/notes.txt': not an image)" in (
        stderr
    )


# ---- caught before anything is sent (no server at that address) ---------------------------

NOBODY = "http://127.0.0.1:9"  # the discard port: nothing answers


def test_mistakes_are_caught_before_sending(folder, tmp_path):
    for args, words in (
        ([str(folder)], "error: resolution: needed for an archive of images"),
        ([str(folder), "--resolution", "4"], "error: resolution: must be 8 to 256, not 4"),
        ([str(folder), "--resolution", "8", "--channels", "2"], "channels: must be 1 or 3"),
        ([str(folder), "--resolution", "8", "--crop", "fill"], "crop: must be center or resize"),
    ):
        code, _, stderr = run("dataset", "upload", *args, "--server", NOBODY)
        assert code == 2 and words in stderr, stderr
    np.save(tmp_path / "a.npy", np.ones((3, 2)))
    code, _, stderr = run("dataset", "upload", str(tmp_path / "a.npy"), "--resolution", "8")
    assert code == 2 and "resolution: only used with an archive of images, not a .npy" in stderr
    (tmp_path / "a.txt").write_text("hello")
    code, _, stderr = run("dataset", "upload", str(tmp_path / "a.txt"), "--server", NOBODY)
    assert code == 2 and "a.txt: not a .npy/.npz file, nor a .zip, .tar or .tar.gz" in stderr
    (tmp_path / "empty").mkdir()
    code, _, stderr = run("dataset", "upload", str(tmp_path / "empty"), "--resolution", "8")
    assert code == 2 and "no files in the folder" in stderr
    code, _, stderr = run("dataset", "upload", str(folder), "--resolution", "8", "--server", NOBODY)
    assert code == 1 and "error: server: cannot upload to http://127.0.0.1:9" in stderr


# ---- the folder as a tar, made while it is sent -------------------------------------------


def test_a_folder_streams_as_a_tar_in_bounded_chunks(folder):
    (folder / "big.bin").write_bytes(os.urandom(2 * CHUNK_BYTES + 123))
    tar = FolderTar(folder)
    chunks = list(tar)
    assert max(len(c) for c in chunks) <= CHUNK_BYTES  # never a whole file in memory
    data = b"".join(chunks)
    assert len(data) == tar.size and len(data) % tarfile.RECORDSIZE == 0
    with tarfile.open(fileobj=io.BytesIO(data)) as archive:
        names = archive.getnames()
        big = archive.extractfile("big.bin")
        assert big is not None and big.read() == (folder / "big.bin").read_bytes()
    top = ["0.png", "1.png", "2.png", "3.png", "README.txt", "big.bin"]
    assert names == [*top, "sub/x.png", "sub/deeper/" + "é" * 120 + ".png"]  # walk order


def test_a_file_that_shrinks_while_it_is_sent_stops_the_stream(folder):
    tar = iter(FolderTar(folder))
    next(tar)  # the first header: 0.png is listed
    (folder / "0.png").write_bytes(b"x")
    with pytest.raises(FolderChanged, match="shorter than when listed"):
        list(tar)


def test_a_folder_goes_chunked_and_a_file_with_its_length(folder, tmp_path):
    fields = {"resolution": "16"}
    (tmp_path / "a.tar").write_bytes(b"".join(FolderTar(folder)))
    for path, chunked in ((folder, True), (tmp_path / "a.tar", False)):
        source = source_for(path, fields)
        with source.stream(lambda n: None) as stream:
            request = httpx2.Request(
                "POST", "http://x/api/datasets", files={"file": ("f", stream)}, data=fields
            )
            headers = request.headers
            assert ("transfer-encoding" in headers) is chunked
            assert ("content-length" in headers) is not chunked


def test_the_upload_command_starts_without_torch_or_the_database_layer():
    """An upload of a big folder should start sending at once (torch takes seconds to load)."""
    probe = (
        "import sys, app.cli, app.dataset_upload; "
        "print(sorted({'torch', 'sqlalchemy'} & set(sys.modules)))"
    )
    done = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout.strip() == "[]", done.stdout + done.stderr

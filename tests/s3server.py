"""A real S3-API server for the tests: moto's standalone server (`moto[server]`) in a
subprocess on a free local port, with fake credentials. Every test takes its own bucket
(`new_bucket()`), so one server serves the whole session."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from typing import IO, Any

from tests.services import require_server

CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class S3Server:
    """`python -m moto.server` on 127.0.0.1; `endpoint_url` once `start()` returned."""

    def __init__(self) -> None:
        self.port = _free_port()
        self.endpoint_url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen[bytes] | None = None
        self._client: Any = None
        self.log: IO[bytes] | None = None

    @property
    def env(self) -> dict[str, str]:
        """The fake credentials (boto3's default chain reads them from the environment)."""
        return dict(CREDENTIALS)

    def start(self, timeout: float = 30.0) -> S3Server:
        # Its request log goes to a file: a pipe nobody reads would fill and stall the server.
        self.log = tempfile.TemporaryFile()
        command = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)]
        self.process = subprocess.Popen(
            command, env={**os.environ, **self.env}, stdout=self.log, stderr=subprocess.STDOUT
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                self.log.seek(0)
                said = self.log.read().decode(errors="replace")[-2000:]
                raise RuntimeError(f"moto server exited ({self.process.returncode}): {said}")
            try:
                with urllib.request.urlopen(f"{self.endpoint_url}/moto-api/", timeout=1):
                    return self
            except urllib.error.HTTPError:
                return self  # it answers
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"moto server did not answer at {self.endpoint_url} in {timeout:.0f} s")

    def stop(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None
        if self.log is not None:
            self.log.close()
            self.log = None

    def client(self) -> Any:
        """A boto3 S3 client on the server, with the fake credentials."""
        if self._client is None:
            import boto3

            self._client = boto3.client(
                "s3",
                endpoint_url=self.endpoint_url,
                aws_access_key_id=CREDENTIALS["AWS_ACCESS_KEY_ID"],
                aws_secret_access_key=CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
                region_name=CREDENTIALS["AWS_DEFAULT_REGION"],
            )
        return self._client

    def new_bucket(self) -> str:
        """A fresh bucket's name, created."""
        name = f"ganforge-test-{uuid.uuid4().hex[:16]}"
        self.client().create_bucket(Bucket=name)
        return name


def start_s3_server() -> S3Server:
    """A started server; without moto (or when it does not start) a failure under CI, a
    skip elsewhere (tests.services.require_server)."""
    server = S3Server()
    try:
        import boto3  # noqa: F401
        import moto.server  # noqa: F401

        return server.start()
    except Exception as exc:
        server.stop()
        require_server("moto S3 server", exc)
        raise  # require_server always raises (fail or skip)


def s3_env(server: S3Server) -> dict[str, str]:
    """The environment a subprocess (the service) needs to reach the server's buckets."""
    return {"GANFORGE_S3_ENDPOINT_URL": server.endpoint_url, **server.env}

"""Artifact-store throughput benchmark (not a test): checkpoint write and read MB/s for each
store on this machine.

    python bench/stores.py [--mb 64] [--rounds 3] [--stores file,s3,db-sqlite,db-postgresql]
                           [--write docs/benchmarks.md]

Each round writes one checkpoint of `--mb` MB of random tensors the way a worker does
(`ArtifactStore.write_checkpoint`: the tensors, then the sidecar), then reads it back the two
ways the service does: whole, SHA-256 checked, as a resume or `generate` loads it
(`load_checkpoint`), and streamed in chunks as a download is served (`chunks`). MB/s =
checkpoint bytes / seconds (1 MB = 10^6 bytes); the median of the rounds is reported.

- file: a folder under the system's temporary directory (the page cache makes reads fast);
- s3: moto's standalone S3 server on 127.0.0.1 (tests/s3server.py): a local stand-in that
  keeps objects in its own process's memory, so this measures the client, the HTTP hop and
  moto's handling, not a real S3 service's network;
- db-sqlite: the `db` store on a SQLite file; db-postgresql: on a fresh PostgreSQL database
  at GANFORGE_TEST_POSTGRES_URL (default postgresql+psycopg://postgres@127.0.0.1:5432/test).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from app.db import upgrade  # noqa: E402
from app.store import ArtifactStore  # noqa: E402
from app.stores import open_store  # noqa: E402
from bench.report import replace_section  # noqa: E402
from trainer.checkpoint import Checkpoint, make_checkpoint  # noqa: E402

KINDS = ["file", "s3", "db-sqlite", "db-postgresql"]


def checkpoint(megabytes: int, step: int) -> Checkpoint:
    generator = torch.Generator().manual_seed(step)
    count = megabytes * 1_000_000 // 4 // 8
    tensors = {f"generator.w{i}": torch.rand(count, generator=generator) for i in range(8)}
    return make_checkpoint(step, tensors, {"spec": {}})


@contextmanager
def opened(kind: str, scratch: Path) -> Iterator[ArtifactStore]:
    cache = scratch / "cache"
    with ExitStack() as stack:
        if kind == "file":
            store = open_store(str(scratch / "artifacts"), cache=cache)
        elif kind == "s3":
            from tests.s3server import start_s3_server

            server = start_s3_server()
            stack.callback(server.stop)
            os.environ.update(server.env)
            url = f"s3://{server.new_bucket()}/bench"
            store = open_store(url, cache=cache, s3_endpoint_url=server.endpoint_url)
        else:
            url = database(kind, scratch, stack)
            upgrade(url, "head")
            store = open_store("db", database_url=url, cache=cache)
        stack.callback(store.close)
        yield store


def database(kind: str, scratch: Path, stack: ExitStack) -> str:
    if kind == "db-sqlite":
        return f"sqlite:///{scratch / 'bench.db'}"
    from tests.app.conftest import _fresh_postgres

    databases = _fresh_postgres()
    url = next(databases)
    stack.callback(lambda: list(databases))
    return url


def timed(body: Callable[[], object]) -> float:
    started = time.perf_counter()
    body()
    return time.perf_counter() - started


def drain(chunks: Iterator[bytes]) -> int:
    return sum(len(chunk) for chunk in chunks)


def bench_store(kind: str, megabytes: int, rounds: int, scratch: Path) -> list[str]:
    writes, loads, streams = [], [], []
    with opened(kind, scratch / kind) as store:
        for step in range(1, rounds + 1):
            ckpt = checkpoint(megabytes, step)
            size = len(ckpt.data) / 1e6
            folder = f"jobs/bench/checkpoints-{step}"
            path = f"{folder}/step_{step:06d}.safetensors"
            writes.append(size / timed(lambda: store.write_checkpoint(folder, ckpt)))  # noqa: B023
            loads.append(size / timed(lambda: store.load_checkpoint(path, sha256=ckpt.sha256)))  # noqa: B023
            streams.append(size / timed(lambda: drain(store.chunks(path))))  # noqa: B023
            print(
                f"{kind:14} round {step}: write {writes[-1]:7.1f}  load {loads[-1]:7.1f}  "
                f"stream {streams[-1]:7.1f} MB/s",
                flush=True,
            )
            store.delete_prefix(folder)
    return [
        kind,
        f"{len(ckpt.data) / 1e6:.0f}",
        *(f"{statistics.median(values):.0f}" for values in (writes, loads, streams)),
    ]


def table(rows: list[list[str]]) -> str:
    head = ["store", "checkpoint MB", "write MB/s", "load (SHA-256 checked) MB/s", "stream MB/s"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--stores", default=",".join(KINDS))
    parser.add_argument("--write", type=Path, help="markdown file to update")
    args = parser.parse_args()
    kinds = [k for k in args.stores.split(",") if k]
    unknown = sorted(set(kinds) - set(KINDS))
    if unknown:
        parser.error(f"--stores: unknown {', '.join(unknown)} (from {', '.join(KINDS)})")
    print(f"cores {os.cpu_count()}, load {' / '.join(f'{x:.2f}' for x in os.getloadavg())}")
    with tempfile.TemporaryDirectory(prefix="ganforge-bench-stores-") as tmp:
        rows = [bench_store(kind, args.mb, args.rounds, Path(tmp)) for kind in kinds]
    print()
    print(table(rows))
    if args.write:
        command = "python bench/stores.py " + " ".join(sys.argv[1:])
        info = f"{os.cpu_count()} cores, {platform.processor() or platform.machine()}"
        replace_section(
            args.write,
            "stores",
            f"Command: `{command.strip()}` ({info}). Median of the rounds. write: "
            "`write_checkpoint` (tensors + sidecar); load: whole, SHA-256 checked, as a "
            "resume or generate reads it; stream: chunks, as a download is served. s3 is "
            "moto's standalone server on this machine (objects in its memory, no network), "
            "not a real S3 service.\n\n"
            f"{table(rows)}",
        )


if __name__ == "__main__":
    main()

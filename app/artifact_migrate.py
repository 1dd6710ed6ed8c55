"""Copying a deployment's artifacts from one store to another (`ganforge artifacts migrate`).

Every file of the source store is streamed through a local temporary file (never held whole
in memory), its SHA-256 taken on the way; a checkpoint's or dataset's must match the one its
row records (else the source copy is damaged, and reported). The copy is then read back from
the target and its SHA-256 compared. A file the target already holds with the same content is
left as it is, so a migration that stopped half-way can be run again. Rows hold store paths,
so nothing in the database changes: point GANFORGE_ARTIFACT_URL at the target afterwards.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from app.models import Checkpoint, Dataset, Sample
from app.store import ArtifactMissing, ArtifactStore


@dataclass
class Migration:
    copied: int = 0
    skipped: int = 0  # already in the target, same SHA-256
    bytes: int = 0
    problems: list[str] = field(default_factory=list)


def recorded(engine: Engine) -> dict[str, str | None]:
    """Every store path the database lists, with the SHA-256 it records (None: not kept,
    as for samples and checkpoint sidecars)."""
    paths: dict[str, str | None] = {}
    with Session(engine) as session:
        for path, sha256 in session.execute(select(Checkpoint.path, Checkpoint.sha256)):
            paths[path] = sha256
            paths[ArtifactStore.sidecar_path(path)] = None
        for path, sha256 in session.execute(select(Dataset.path, Dataset.sha256)):
            paths[path] = sha256
        for (path,) in session.execute(select(Sample.path)):
            paths[path] = None
    return paths


def _digest(chunks: Iterator[bytes]) -> str:
    digest = hashlib.sha256()
    for chunk in chunks:
        digest.update(chunk)
    return digest.hexdigest()


def _spool(source: ArtifactStore, relative: str, folder: Path) -> tuple[Path, str, int]:
    fd, name = tempfile.mkstemp(prefix=".migrate.", suffix=".tmp", dir=folder)
    digest, size = hashlib.sha256(), 0
    try:
        with os.fdopen(fd, "wb") as out:
            for chunk in source.chunks(relative):
                digest.update(chunk)
                size += len(chunk)
                out.write(chunk)
    except BaseException:
        Path(name).unlink(missing_ok=True)
        raise
    return Path(name), digest.hexdigest(), size


def copy_one(
    source: ArtifactStore, target: ArtifactStore, relative: str, want: str | None, report: Migration
) -> None:
    """Copy one file and check it; problems go into the report."""
    spooled, sha256, size = _spool(source, relative, target.staging())
    try:
        if want is not None and sha256 != want:
            report.problems.append(
                f"{relative}: SHA-256 {sha256[:12]}... in the source, {want[:12]}... recorded; "
                "the source copy is damaged (not copied)"
            )
            return
        if target.size(relative) == size and _digest(target.chunks(relative)) == sha256:
            report.skipped += 1
            return
        target.write_file(relative, spooled, move=True)
    finally:
        spooled.unlink(missing_ok=True)
    copied = _digest(target.chunks(relative))
    if copied != sha256:
        report.problems.append(f"{relative}: the target's copy has SHA-256 {copied[:12]}...")
        return
    report.copied += 1
    report.bytes += size


def migrate(
    engine: Engine,
    source: ArtifactStore,
    target: ArtifactStore,
    progress: Callable[[str, int], None] = lambda _path, _size: None,
) -> Migration:
    """Copy every file of `source` into `target`, checking each; and report the files the
    database lists that the source lacks."""
    report = Migration()
    listed = recorded(engine)
    seen = set()
    for relative, size in list(source.list()):
        seen.add(relative)
        try:
            copy_one(source, target, relative, listed.get(relative), report)
        except ArtifactMissing:
            continue  # deleted meanwhile (a retention pass): nothing lists it any more
        progress(relative, size)
    for relative in sorted(set(listed) - seen):
        report.problems.append(f"{relative}: listed in the database, missing from the source")
    return report

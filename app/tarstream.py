"""A folder as an uncompressed tar, produced piece by piece while it is sent
(`ganforge dataset upload FOLDER`): never written to disk, never held in memory whole.

The headers are `tarfile`'s own (`TarInfo.tobuf`, pax format, so long and non-ASCII names
survive); each file follows in chunks of at most CHUNK_BYTES, then the end-of-archive blocks,
padded to a whole record as `tarfile` pads them. Only the list of files (name, size) is kept,
so the exact length is known before the first byte is sent.
"""

from __future__ import annotations

import os
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

CHUNK_BYTES = 1024 * 1024
_BLOCK = tarfile.BLOCKSIZE
_RECORD = tarfile.RECORDSIZE


class FolderChanged(OSError):
    """A file changed size or vanished between listing the folder and sending it."""


@dataclass(frozen=True)
class Entry:
    path: Path
    name: str  # the member name: relative to the folder, with `/`
    size: int
    mtime: int


def folder_entries(root: Path) -> list[Entry]:
    """Every regular file under `root` (symlinks to files followed, to folders not), in name
    order."""
    entries = []
    for folder, dirs, files in os.walk(root):
        dirs.sort()
        for file in sorted(files):
            path = Path(folder, file)
            if not path.is_file():
                continue
            stat = path.stat()
            name = path.relative_to(root).as_posix()
            entries.append(Entry(path, name, stat.st_size, int(stat.st_mtime)))
    return entries


def _header(entry: Entry) -> bytes:
    info = tarfile.TarInfo(entry.name)
    info.size, info.mtime, info.mode = entry.size, entry.mtime, 0o644
    return info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")


def _padding(size: int) -> int:
    return -size % _BLOCK


class FolderTar:
    """Iterating gives the tar's bytes; `size` is their exact total."""

    def __init__(self, root: Path):
        self.root = root
        self.entries = folder_entries(root)
        body = sum(len(_header(e)) + e.size + _padding(e.size) for e in self.entries)
        self.size = body + self._end_length(body)

    @staticmethod
    def _end_length(body: int) -> int:
        """Two zero blocks, then zeros to the end of the record."""
        return 2 * _BLOCK + (-(body + 2 * _BLOCK) % _RECORD)

    def __iter__(self) -> Iterator[bytes]:
        sent = 0
        for entry in self.entries:
            header = _header(entry)
            yield header
            yield from _content(entry)
            sent += len(header) + entry.size + _padding(entry.size)
        yield bytes(self._end_length(sent))


def _content(entry: Entry) -> Iterator[bytes]:
    """Exactly `entry.size` bytes of the file, in chunks, then the block padding."""
    left = entry.size
    try:
        with entry.path.open("rb") as fh:
            while left:
                chunk = fh.read(min(left, CHUNK_BYTES))
                if not chunk:
                    raise FolderChanged(f"{entry.path}: shorter than when listed ({entry.size} B)")
                left -= len(chunk)
                yield chunk
    except FileNotFoundError:
        raise FolderChanged(f"{entry.path}: removed while the folder was sent") from None
    if _padding(entry.size):
        yield bytes(_padding(entry.size))

"""The artifact store: a folder (GANFORGE_ARTIFACT_DIR, default ./var/artifacts).

The database keeps paths relative to the store's root, so a store can move (or be mounted
at another path in another container) without rewriting rows. Layout, the same names as
`ganforge train --out DIR` (DESIGN.md section 6):

    jobs/<job id>/samples/step_000200.png
    jobs/<job id>/checkpoints/step_000500.safetensors   (+ step_000500.json sidecar)
    datasets/<dataset id>.npy
"""

from __future__ import annotations

import shutil
from pathlib import Path

from trainer.checkpoint import atomic_write


class StoreError(ValueError):
    """A path that does not belong to the store."""


class ArtifactStore:
    def __init__(self, root: str | Path):
        self.root = Path(root).resolve()

    def path(self, relative: str) -> Path:
        """The absolute path of a stored file; refuses anything outside the store."""
        full = (self.root / relative).resolve()
        if not full.is_relative_to(self.root):
            raise StoreError(f"path: {relative!r} is outside the artifact store")
        return full

    def relative(self, path: str | Path) -> str:
        """The store path of an absolute path inside the store."""
        full = Path(path).resolve()
        if not full.is_relative_to(self.root):
            raise StoreError(f"path: {str(path)!r} is outside the artifact store")
        return full.relative_to(self.root).as_posix()

    def write(self, relative: str, data: bytes) -> Path:
        """Write atomically (temporary name, fsync, rename)."""
        full = self.path(relative)
        atomic_write(full, data)
        return full

    def read(self, relative: str) -> bytes:
        return self.path(relative).read_bytes()

    def exists(self, relative: str) -> bool:
        return self.path(relative).is_file()

    def delete(self, relative: str) -> None:
        self.path(relative).unlink(missing_ok=True)

    # ---- where things go ------------------------------------------------------------

    @staticmethod
    def job_dir(job_id: str) -> str:
        return f"jobs/{job_id}"

    @classmethod
    def sample_path(cls, job_id: str, step: int) -> str:
        return f"{cls.job_dir(job_id)}/samples/step_{step:06d}.png"

    @classmethod
    def checkpoint_dir(cls, job_id: str) -> str:
        return f"{cls.job_dir(job_id)}/checkpoints"

    @staticmethod
    def dataset_path(dataset_id: str) -> str:
        return f"datasets/{dataset_id}.npy"

    def delete_job(self, job_id: str) -> None:
        """Remove every file of a job."""
        shutil.rmtree(self.path(self.job_dir(job_id)), ignore_errors=True)

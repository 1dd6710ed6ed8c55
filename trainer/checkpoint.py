"""Checkpoints: safetensors tensors plus a JSON sidecar; never pickle.

Tensor keys are the modules' state-dict keys under `generator.`, `discriminator.`,
`generator_ema.` (EMA on), `opt_g.` and `opt_d.` (optimizer state as
`opt_g.state.<param index>.<name>`). The sidecar holds the step, the spec, the data shape,
the optimizers' hyper-parameters, the GradScaler state, the RNG states and the SHA-256 of
the tensor file, which `read_checkpoint` checks before anything is loaded.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load as load_tensors
from safetensors.torch import save as save_tensors

FORMAT = "ganforge-checkpoint/1"


class CheckpointError(ValueError):
    """A checkpoint that cannot be trusted or used; `str()` says which file and why."""


@dataclass
class Checkpoint:
    """An in-memory checkpoint: the tensors' safetensors bytes and the sidecar."""

    step: int
    data: bytes
    meta: dict[str, Any]
    sha256: str = ""

    def __post_init__(self) -> None:
        if not self.sha256:
            self.sha256 = hashlib.sha256(self.data).hexdigest()
        self.meta["sha256"] = self.sha256

    def tensors(self, prefix: str = "") -> dict[str, torch.Tensor]:
        """The tensors whose key starts with `prefix`, with the prefix removed."""
        try:
            loaded = load_tensors(self.data)
        except Exception as exc:  # noqa: BLE001 - safetensors' own error type
            raise CheckpointError(
                f"checkpoint: step {self.step} is not safetensors: {exc}"
            ) from None
        return {k[len(prefix) :]: v for k, v in loaded.items() if k.startswith(prefix)}

    @property
    def sidecar_json(self) -> str:
        return json.dumps(self.meta, indent=1, sort_keys=True)


@dataclass
class CheckpointRecord:
    """Where a sink put a checkpoint: what the database and the API list."""

    step: int
    sha256: str
    size: int
    path: str | None = None


def _contiguous_cpu(t: torch.Tensor) -> torch.Tensor:
    return t.detach().to("cpu").contiguous().clone()


def pack_optimizer(prefix: str, opt: torch.optim.Optimizer) -> tuple[dict, dict]:
    """Split an optimizer's state dict into tensors (keyed under prefix) and JSON."""
    state = opt.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, Any] = {}
    for index, values in state["state"].items():
        for name, value in values.items():
            if torch.is_tensor(value):
                tensors[f"{prefix}state.{index}.{name}"] = _contiguous_cpu(value)
            else:
                scalars[f"{index}.{name}"] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def unpack_optimizer(prefix: str, ckpt: Checkpoint, meta: dict) -> dict[str, Any]:
    """The optimizer state dict that `pack_optimizer` split apart."""
    state: dict[int, dict[str, Any]] = {}
    for key, value in ckpt.tensors(prefix + "state.").items():
        index, name = key.split(".", 1)
        state.setdefault(int(index), {})[name] = value
    for key, value in meta["scalars"].items():
        index, name = key.split(".", 1)
        state.setdefault(int(index), {})[name] = value
    return {"state": state, "param_groups": meta["param_groups"]}


def module_tensors(prefix: str, module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {prefix + k: _contiguous_cpu(v) for k, v in module.state_dict().items()}


def encode_rng(state: torch.Tensor) -> str:
    return base64.b64encode(state.numpy().tobytes()).decode("ascii")


def decode_rng(text: str) -> torch.Tensor:
    return torch.frombuffer(bytearray(base64.b64decode(text)), dtype=torch.uint8).clone()


def make_checkpoint(step: int, tensors: dict[str, torch.Tensor], meta: dict) -> Checkpoint:
    meta = {"format": FORMAT, "step": step, "torch": torch.__version__, **meta}
    return Checkpoint(step=step, data=save_tensors(tensors), meta=meta)


def atomic_write(path: Path, data: bytes | Iterable[bytes]) -> None:
    """Write `data` (bytes, or chunks of them) to a temporary name in the same folder, fsync,
    then rename over `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            for chunk in [data] if isinstance(data, bytes) else data:
                fh.write(chunk)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def checkpoint_paths(folder: Path, step: int) -> tuple[Path, Path]:
    stem = f"step_{step:06d}"
    return folder / f"{stem}.safetensors", folder / f"{stem}.json"


def write_checkpoint(folder: Path, ckpt: Checkpoint) -> CheckpointRecord:
    """Tensors first, sidecar last: a sidecar on disk means its tensor file is complete."""
    tensors_path, sidecar_path = checkpoint_paths(folder, ckpt.step)
    atomic_write(tensors_path, ckpt.data)
    atomic_write(sidecar_path, ckpt.sidecar_json.encode())
    return CheckpointRecord(ckpt.step, ckpt.sha256, len(ckpt.data), str(tensors_path))


def read_checkpoint(path: str | Path, *, expected_sha256: str | None = None) -> Checkpoint:
    """Load `step_N.safetensors` (or its `.json` sidecar) and verify its SHA-256."""
    path = Path(path)
    tensors_path = path.with_suffix(".safetensors")
    sidecar_path = path.with_suffix(".json")
    try:
        meta_bytes = sidecar_path.read_bytes()
        data = tensors_path.read_bytes()
    except FileNotFoundError as exc:
        hint = ""
        if Path(str(exc.filename)) == sidecar_path:
            hint = (
                f": a checkpoint is {tensors_path.name} with its JSON sidecar beside it "
                "(the service serves it at /api/jobs/ID/checkpoints/STEP?part=sidecar)"
            )
        raise CheckpointError(f"checkpoint: {exc.filename} does not exist{hint}") from None
    except OSError as exc:
        raise CheckpointError(f"checkpoint: cannot read {path}: {exc}") from None
    return parse_checkpoint(
        data, meta_bytes, name=tensors_path.name, expected_sha256=expected_sha256
    )


def parse_checkpoint(
    data: bytes, sidecar: bytes, *, name: str, expected_sha256: str | None = None
) -> Checkpoint:
    """A checkpoint from its tensor bytes and sidecar JSON (`name`: the tensor file's, for
    errors), after checking the SHA-256 against the sidecar's and the caller's."""
    sidecar_name = name.removesuffix(".safetensors") + ".json"
    try:
        meta = json.loads(sidecar)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"checkpoint: cannot read {sidecar_name}: {exc}") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(f"checkpoint: {sidecar_name} is not a {FORMAT} sidecar")
    digest = hashlib.sha256(data).hexdigest()
    for source, want in (("sidecar", meta.get("sha256")), ("caller", expected_sha256)):
        if want is not None and want != digest:
            raise CheckpointError(
                f"checkpoint: {name} has SHA-256 {digest[:12]}..., "
                f"the {source} expects {str(want)[:12]}...; refusing to load it"
            )
    _check_safetensors_header(data, name)
    return Checkpoint(step=int(meta["step"]), data=data, meta=meta, sha256=digest)


def _check_safetensors_header(data: bytes, name: str) -> None:
    """A safetensors file starts with an 8-byte little-endian header length and a JSON header;
    anything else (a pickle, say) is refused here, before any loader sees it."""
    if len(data) < 8:
        raise CheckpointError(f"checkpoint: {name} is not a safetensors file (too short)")
    size = int.from_bytes(data[:8], "little")
    if size > len(data) - 8:
        raise CheckpointError(f"checkpoint: {name} is not a safetensors file (bad header)")
    try:
        header = json.loads(data[8 : 8 + size])
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise CheckpointError(
            f"checkpoint: {name} is not a safetensors file (bad header)"
        ) from None
    if not isinstance(header, dict):
        raise CheckpointError(f"checkpoint: {name} is not a safetensors file (bad header)")

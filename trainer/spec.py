"""The job spec: the one definition of a job's settings (DESIGN.md section 2).

`TrainSpec` is frozen and forbids unknown fields; every field has a default, so `{}` is a
valid spec that trains an 8-Gaussian ring. `spec_errors` turns a pydantic error into
one-line messages that name the field path; `TrainSpec.warnings()` lists settings that are
legal but harmful.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from trainer.errors import first_line
from trainer.leaks import leaking_networks

Order = Literal["d_first", "g_first", "simultaneous"]
ZeroGrad = Literal["before", "after"]
Isolation = Literal["freeze", "autograd", "none"]
Normalize = Literal["loss", "grad", "none"]
Precision = Literal["fp32", "fp64", "bf16", "fp16"]

PositiveInt = Annotated[int, Field(ge=1)]
# 0 switches a periodic action off.
Interval = Annotated[int, Field(ge=0)]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class Accumulation(_Section):
    steps: int = Field(1, ge=1, le=1024, description="micro-batches per optimizer step")
    normalize: Normalize = "loss"


class Schedule(_Section):
    order: Order = "d_first"
    d_steps: int = Field(1, ge=1, le=100, description="D optimizer steps per G step")
    zero_grad: ZeroGrad = "before"
    isolation: Isolation = "freeze"


class Data(_Section):
    kind: Literal["ring", "grid", "digits", "array", "images"] = "ring"
    # ring
    modes: int = Field(8, ge=1, le=1000)
    radius: float = Field(1.0, gt=0)
    # grid: size x size centres spaced `spacing` apart, centred on 0
    size: int = Field(5, ge=1, le=100)
    spacing: float = Field(2.0, gt=0)
    # ring and grid; None means the benchmark value (ring 0.01, grid 0.05)
    std: float | None = Field(None, gt=0)
    # array: an uploaded dataset (service) or a local .npy/.npz file (CLI)
    dataset_id: str | None = Field(None, min_length=1, max_length=200, pattern=r"^[A-Za-z0-9_.-]+$")
    # array: a local .npy/.npz; images: a local folder or .zip/.tar/.tar.gz of images (CLI)
    path: str | None = Field(None, min_length=1)
    # images: the square side images are cropped/resized to, their channels (None: 1 when
    # every image is grayscale, else 3) and how they are fitted (trainer.images)
    resolution: int | None = Field(None, ge=8, le=256)
    channels: Literal[1, 3] | None = None
    crop: Literal["center", "resize"] = "center"

    @property
    def mixture_std(self) -> float:
        if self.std is not None:
            return self.std
        return 0.05 if self.kind == "grid" else 0.01

    @model_validator(mode="after")
    def _array_source(self) -> Data:
        given = [name for name in ("dataset_id", "path") if getattr(self, name) is not None]
        if self.kind == "array" and len(given) != 1:
            raise ValueError("data.dataset_id: kind=array needs exactly one of dataset_id or path")
        if self.kind == "images":
            if self.path is None or self.dataset_id is not None:
                raise ValueError(
                    "data.path: kind=images needs path (a folder or an archive of images); "
                    "an uploaded image archive is used as kind=array with its dataset_id"
                )
            if self.resolution is None:
                raise ValueError("data.resolution: kind=images needs a resolution (8 to 256)")
        elif self.kind != "array" and given:
            raise ValueError(f"data.{given[0]}: only used with kind=array, not kind={self.kind}")
        if self.kind != "images":
            for name in ("resolution", "channels"):
                if getattr(self, name) is not None:
                    raise ValueError(f"data.{name}: only used with kind=images")
        return self


class Model(_Section):
    kind: Literal["mlp", "conv", "resnet"] = "mlp"
    latent_dim: int = Field(64, ge=1, le=4096)
    width: int = Field(128, ge=1, le=8192)
    depth: int = Field(4, ge=1, le=32)
    # resnet: the base width (channels of the widest-resolution block); mlp and conv use width
    channels: int = Field(64, ge=4, le=1024)
    # Left out: the kind's default, spectral for resnet (the project's exact spectral norm,
    # so accumulation stays exact), none for mlp and conv.
    d_norm: Literal["none", "spectral", "layer", "batch"] = "none"
    g_norm: Literal["none", "batch"] = "none"

    @model_validator(mode="before")
    @classmethod
    def _kind_defaults(cls, data: Any) -> Any:
        if isinstance(data, Mapping) and data.get("kind") == "resnet" and "d_norm" not in data:
            return {**data, "d_norm": "spectral"}
        return data


class Augment(_Section):
    """DiffAugment (Zhao et al. 2020): every image D sees, real or generated, in D's and G's
    passes, goes through the same differentiable transforms; `policy: []` is off."""

    policy: list[Literal["color", "translation", "cutout"]] = Field(default_factory=list)
    p: float = Field(1.0, ge=0, le=1, description="probability each transform applies")

    @field_validator("policy")
    @classmethod
    def _no_repeats(cls, policy: list[str]) -> list[str]:
        if len(set(policy)) != len(policy):
            raise ValueError(f"each transform at most once, got {policy}")
        return policy


class Eval(_Section):
    """How evaluation runs (every.eval says when)."""

    # 500: about 2 CPU minutes of Inception per evaluation; papers report 10,000-50,000 (GPU),
    # and FID from fewer samples is biased upwards, so compare runs at the same count.
    samples: int = Field(
        500, ge=16, le=100_000, description="generated samples per eval/fid and eval/kid"
    )


# The usual weight of each penalty when penalty_weight is left out: wgan_gp's 10 (Gulrajani
# 2017); for r1 the weight that trains the default recipe best on ring and grid.
PENALTY_WEIGHTS = {"none": 0.0, "wgan_gp": 10.0, "r1": 0.01}


class Loss(_Section):
    kind: Literal["bce", "hinge", "wasserstein"] = "bce"
    penalty: Literal["none", "wgan_gp", "r1"] = "r1"
    penalty_weight: float | None = Field(None, ge=0, le=1e6)

    @property
    def weight(self) -> float:
        """The penalty's weight: penalty_weight, or the penalty's usual weight."""
        if self.penalty_weight is not None:
            return self.penalty_weight
        return PENALTY_WEIGHTS[self.penalty]


class Optimizer(_Section):
    name: Literal["adam", "adamw", "sgd", "rmsprop"] = "adam"
    lr: float = Field(4e-3, gt=0, le=10)
    betas: tuple[float, float] = (0.5, 0.9)
    weight_decay: float = Field(0.0, ge=0)
    momentum: float = Field(0.0, ge=0, lt=1)
    # Learning-rate decay over the run's generator steps: none, or linear / cosine to 0.
    decay: Literal["none", "linear", "cosine"] = "linear"

    @field_validator("betas")
    @classmethod
    def _betas_in_range(cls, betas: tuple[float, float]) -> tuple[float, float]:
        if not all(0.0 <= b < 1.0 for b in betas):
            raise ValueError(f"each beta must be in [0, 1), got {list(betas)}")
        return betas


class Optim(_Section):
    g: Optimizer = Optimizer()
    d: Optimizer = Optimizer()


class Every(_Section):
    metrics: PositiveInt = 10
    samples: Interval = 200
    checkpoint: Interval = 500
    eval: Interval = 500


class Distributed(_Section):
    """Data-parallel training with torch.distributed (DDP): `world_size` processes each take
    an equal share of every cycle's micro-batches; gradients are averaged once per optimizer
    step. `batch_size` stays the effective batch of the whole job."""

    world_size: int = Field(1, ge=1, le=64, description="processes (ranks) training together")
    backend: Literal["auto", "gloo", "nccl"] = Field(
        "auto", description="auto: nccl on CUDA, gloo on CPU"
    )


class Resources(_Section):
    """What a job holds on its worker's machine while it runs (the service; `ganforge train`
    ignores it). `gpus` of that machine's GPUs, no other job's meanwhile; the job sees only
    those, as cuda:0..gpus-1. Left out: what the device needs (`cuda`: world_size GPUs,
    `cuda:N`: N + world_size), none for `cpu` and `auto` (a worker lends an `auto` job
    world_size of its GPUs when that many are free, else it trains on the CPU)."""

    gpus: int | None = Field(None, ge=0, le=64, description="GPUs held; None: from the device")


# A metric's name as the trainer logs it: `eval/fid`, `loss/d`, `perf/steps_per_s`.
_METRIC_NAME = re.compile(r"^[A-Za-z0-9_.:-]+(/[A-Za-z0-9_.:-]+)*$")


class Retention(_Section):
    """Which checkpoints a service job keeps (app/retention.py); the trainer and `ganforge
    train` ignore it. None: the service's default (GANFORGE_KEEP_LAST, GANFORGE_KEEP_BEST).
    Both 0 (the defaults): every checkpoint is kept. Otherwise a checkpoint is kept when it is
    one of the last `keep_last`, one of the best `keep_best` by `best_metric` (`mode` min:
    lowest first), pinned, or the newest (always: the job resumes from it); the others are
    deleted as the job runs and when it ends."""

    keep_last: int | None = Field(
        None, ge=0, le=1_000_000, description="the newest N checkpoints; None: the default"
    )
    keep_best: int | None = Field(
        None, ge=0, le=1_000_000, description="the best M by best_metric; None: the default"
    )
    best_metric: str = Field(
        "eval/fid", min_length=1, max_length=100, description="the metric that ranks them"
    )
    mode: Literal["min", "max"] = Field("min", description="min: lower is better")

    @field_validator("best_metric")
    @classmethod
    def _metric_name(cls, name: str) -> str:
        if not _METRIC_NAME.match(name):
            raise ValueError(
                f"must be a metric name such as eval/fid or eval/hq (letters, digits, _ . : - "
                f"and / between parts), got {name!r}"
            )
        return name


_DEVICE = re.compile(r"^(auto|cpu|cuda|cuda:\d+)$")


class TrainSpec(_Section):
    """A whole job. `TrainSpec()` is the default recipe.

    The recipe (chosen with bench/quality.py, figures in docs/benchmarks.md): bce loss with a
    light R1 penalty (coverage), 4x128 MLPs, Adam at 4e-3 with betas (0.5, 0.9) decayed
    linearly to 0 (the large rate lets weights grow fast enough to resolve modes of std
    0.01-0.05; the decay settles them), generator EMA 0.99, 10,000 steps of batch 256.
    """

    name: str | None = Field(None, max_length=200)
    seed: int = Field(0, ge=0, le=2**63 - 1)
    steps: int = Field(10_000, ge=1, le=10_000_000, description="generator optimizer steps")
    batch_size: int = Field(256, ge=1, le=1_000_000, description="effective batch per step")
    accumulation: Accumulation = Accumulation()
    schedule: Schedule = Schedule()
    data: Data = Data()
    model: Model = Model()
    augment: Augment = Augment()
    loss: Loss = Loss()
    optim: Optim = Optim()
    precision: Precision = "fp32"
    ema: float = Field(0.99, ge=0, lt=1, description="generator EMA decay; 0 = off")
    every: Every = Every()
    eval: Eval = Eval()
    device: str = "auto"
    distributed: Distributed = Distributed()
    resources: Resources = Resources()
    retention: Retention = Retention()

    @field_validator("device")
    @classmethod
    def _device_name(cls, device: str) -> str:
        if not _DEVICE.match(device):
            raise ValueError(f"must be auto, cpu, cuda or cuda:N, got {device!r}")
        return device

    @model_validator(mode="after")
    def _cross_field(self) -> TrainSpec:
        k = self.accumulation.steps
        world = self.distributed.world_size
        if self.batch_size % k:
            raise ValueError(f"accumulation.steps: must divide batch_size={self.batch_size}")
        if self.batch_size % (k * world):
            raise ValueError(
                f"distributed.world_size: world_size x accumulation.steps = {k * world} must "
                f"divide batch_size={self.batch_size} (each rank takes an equal share)"
            )
        micro = self.batch_size // (k * world)
        if micro < 2 and "batch" in (self.model.d_norm, self.model.g_norm):
            field = "d_norm" if self.model.d_norm == "batch" else "g_norm"
            per = "accumulation.steps" + (" x distributed.world_size" if world > 1 else "")
            raise ValueError(
                f"model.{field}: batch norm needs micro-batches of at least 2, "
                f"got batch_size/{per}={micro}"
            )
        if self.distributed.backend == "nccl" and self.device == "cpu":
            raise ValueError("distributed.backend: nccl needs CUDA devices, and device is cpu")
        self._check_gpus()
        if self.model.kind != "mlp" and self.data.kind in ("ring", "grid"):
            raise ValueError(
                f"model.kind: {self.model.kind} needs image data, data.kind={self.data.kind} is 2-D"
            )
        if self.augment.policy and self.data.kind in ("ring", "grid"):
            raise ValueError(f"augment.policy: augments images, data.kind={self.data.kind} is 2-D")
        if self.model.kind == "resnet" and self.data.kind == "digits":
            raise ValueError("model.kind: resnet needs images of 16 to 128 px; digits are 8x8")
        if self.model.kind == "resnet" and self.data.resolution is not None:
            side = self.data.resolution
            if side not in (16, 32, 64, 128):
                raise ValueError(
                    f"data.resolution: model.kind resnet takes 16, 32, 64 or 128 px, got {side}"
                )
        return self

    def _check_gpus(self) -> None:
        gpus, world = self.resources.gpus, self.distributed.world_size
        if gpus is None:
            return
        if self.device == "cpu" and gpus:
            raise ValueError(f"resources.gpus: device cpu uses no GPU, got {gpus}")
        need = self._cuda_gpus() if self.device.startswith("cuda") else (world if gpus else 0)
        if gpus < need:
            raise ValueError(
                f"resources.gpus: device {self.device} with distributed.world_size={world} "
                f"needs at least {need} GPU{'s' if need > 1 else ''}, got {gpus}"
            )
        if gpus == 0 and self.distributed.backend == "nccl":
            raise ValueError("distributed.backend: nccl needs CUDA devices; resources.gpus is 0")

    def _cuda_gpus(self) -> int:
        index = int(self.device.partition(":")[2] or 0)
        return index + self.distributed.world_size

    @property
    def gpus(self) -> int:
        """GPUs the job must hold to run: resources.gpus, else what its device needs (0 for
        cpu and auto). The service routes the job to a worker with at least that many."""
        if self.resources.gpus is not None:
            return self.resources.gpus
        return self._cuda_gpus() if self.device.startswith("cuda") else 0

    @property
    def micro_batch_size(self) -> int:
        """Examples in one micro-batch of one rank."""
        return self.batch_size // (self.accumulation.steps * self.distributed.world_size)

    def warnings(self) -> list[str]:
        """Settings that are legal but known to be harmful, one sentence each."""
        out: list[str] = []
        s = self.schedule
        leaks = leaking_networks(order=s.order, isolation=s.isolation, zero_grad=s.zero_grad)
        if leaks:
            nets = " and ".join({"d": "D", "g": "G"}[n] for n in leaks)
            out.append(
                f"schedule: order={s.order}, isolation={s.isolation}, zero_grad={s.zero_grad} "
                f"leaks gradient: {nets}'s optimizer steps on gradient from the other network's "
                "loss (the audit reports it as audit/leak_d, audit/leak_g)"
            )
        if self.accumulation.steps > 1 and "batch" in (self.model.d_norm, self.model.g_norm):
            out.append(
                "model: batch norm sees micro-batches, not the effective batch, so "
                f"accumulation.steps={self.accumulation.steps} is not equivalent to one big batch"
            )
        if self.accumulation.steps > 1 and self.accumulation.normalize == "none":
            out.append(
                "accumulation.normalize: none sums the micro-batch gradients, so each step is "
                f"{self.accumulation.steps}x larger than with one batch of the same size"
            )
        if (
            self.loss.kind == "wasserstein"
            and self.loss.penalty != "wgan_gp"
            and self.model.d_norm != "spectral"
        ):
            out.append(
                "loss: wasserstein without wgan_gp or spectral norm leaves the critic "
                "unbounded (Lipschitz); use loss.penalty: wgan_gp or model.d_norm: spectral"
            )
        return out


def describe_error(err: Mapping[str, Any]) -> tuple[str, str]:
    """(field path, reason) of one pydantic error of a TrainSpec, the path relative to the spec.

    Cross-field checks raise "accumulation.steps: must divide ..." from wherever they run
    (the whole spec, or a section such as `data`); that spec-relative path is the field.
    """
    path = ".".join(str(part) for part in err["loc"])
    reason = str(err["msg"]).removeprefix("Value error, ")
    if err["type"] == "extra_forbidden":
        reason = "unknown field"
    head, sep, rest = reason.partition(": ")
    if sep and "." in head and " " not in head:
        return head, rest
    return path, reason


def spec_errors(exc: ValidationError) -> list[str]:
    """One line per problem, each naming the field path: `accumulation.steps: must divide ...`."""
    lines = []
    for err in exc.errors():
        field, reason = describe_error(err)
        lines.append(f"{field}: {reason}" if field else reason)
    return lines


class SpecError(ValueError):
    """An invalid spec; `str()` is one line naming the field(s) and the reason."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("; ".join(problems))


def parse_spec(raw: Any) -> TrainSpec:
    """Validate a decoded spec (a dict); raise SpecError with one-line messages."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise SpecError([f"spec: must be a mapping of fields, got {type(raw).__name__}"])
    try:
        return TrainSpec.model_validate(raw)
    except ValidationError as exc:
        raise SpecError(spec_errors(exc)) from None


def load_spec(path: str | Path) -> TrainSpec:
    """Read a YAML or JSON spec file."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise SpecError([f"spec: cannot read {path}: {exc.strerror}"]) from None
    try:
        raw = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        raise SpecError([f"spec: {path} is not valid YAML/JSON: {first_line(exc)}"]) from None
    return parse_spec(raw)

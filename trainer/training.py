"""The training loop: builds a run from a spec, steps it, and hands outputs to the sinks."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from trainer import checkpoint as ckpt_io
from trainer.checkpoint import Checkpoint, CheckpointError, CheckpointRecord
from trainer.data import Dataset, check_model_fits, load_dataset
from trainer.ddp import AllReduceCounter, Rank, any_rank, rank_device, wrap
from trainer.engine import StepEngine
from trainer.models import build_models
from trainer.sinks import Sinks
from trainer.spec import Optimizer, TrainSpec

# The data/noise RNG is seeded apart from model initialisation so the two never share draws.
DATA_SEED_OFFSET = 0x5EED
SAMPLE_SEED_OFFSET = 1
EVAL_SEED_OFFSET = 2
GRID_IMAGES = 64
SCATTER_POINTS = 1000

Progress = Callable[[int, dict[str, float] | None], None]


class TrainingDiverged(RuntimeError):
    def __init__(self, step: int, metric: str, value: float):
        self.step, self.metric, self.value = step, metric, value
        super().__init__(f"training diverged at step {step}: {metric} = {value}")


@dataclass
class TrainResult:
    status: str  # "succeeded" | "stopped"
    step: int
    last_metrics: dict[str, float] = field(default_factory=dict)
    checkpoints: list[CheckpointRecord] = field(default_factory=list)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device: {name} asked for, but this machine has no CUDA device")
    return device


def build_optimizer(cfg: Optimizer, params: list[nn.Parameter]) -> torch.optim.Optimizer:
    if cfg.name == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)
    if cfg.name == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)
    if cfg.name == "sgd":
        return torch.optim.SGD(
            params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay
        )
    return torch.optim.RMSprop(
        params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay
    )


def decayed_lr(cfg: Optimizer, step: int, steps: int) -> float:
    """The learning rate of generator step `step` (1-based) of `steps` under `cfg.decay`."""
    done = (step - 1) / steps  # 0 on the first step, just under 1 on the last
    if cfg.decay == "linear":
        return cfg.lr * (1.0 - done)
    if cfg.decay == "cosine":
        return cfg.lr * 0.5 * (1.0 + math.cos(math.pi * done))
    return cfg.lr


class Trainer:
    """One run: networks, optimizers, EMA, RNG and the step engine, built from a spec."""

    def __init__(
        self,
        spec: TrainSpec,
        *,
        resolve_dataset: Callable[[str], Path] | None = None,
        evaluate: bool = True,
        rank: Rank | None = None,
        sync_once: bool = True,
    ):
        """`rank`: this process's place in a distributed job (`trainer.distributed.ranks`
        starts the processes and the group); only rank 0 writes to the sinks."""
        self.spec = spec
        self.rank = rank or Rank()
        if spec.distributed.world_size != self.rank.world:
            raise ValueError(
                f"distributed.world_size: {spec.distributed.world_size}, but this process is "
                f"rank {self.rank.rank} of {self.rank.world} (start the ranks with "
                "trainer.distributed.ranks)"
            )
        self.device = rank_device(resolve_device(spec.device), self.rank)
        self.dtype = torch.float64 if spec.precision == "fp64" else torch.float32
        dataset = load_dataset(spec.data, resolve_dataset=resolve_dataset)
        check_model_fits(spec.model, dataset)
        self.dataset: Dataset = dataset.to(self.device, self.dtype)
        generator, discriminator = build_models(spec.model, dataset.shape, seed=spec.seed)
        self.generator = generator.to(self.device, self.dtype)
        self.discriminator = discriminator.to(self.device, self.dtype)
        self.opt_g = build_optimizer(spec.optim.g, list(self.generator.parameters()))
        self.opt_d = build_optimizer(spec.optim.d, list(self.discriminator.parameters()))
        # The EMA copy is made before the audit hooks exist, so it carries none.
        self.ema: AveragedModel | None = None
        if spec.ema > 0:
            self.ema = AveragedModel(
                self.generator, multi_avg_fn=get_ema_multi_avg_fn(spec.ema), use_buffers=True
            )
        self.rng = torch.Generator().manual_seed(spec.seed + DATA_SEED_OFFSET)
        # Every rank: the networks wrapped in DDP, gradient all-reduces counted per network.
        self.ddp = None
        self.all_reduces: dict[str, AllReduceCounter] = {}
        if self.rank.distributed:
            self.ddp = {
                "g": wrap(self.generator, self.device),
                "d": wrap(self.discriminator, self.device),
            }
            self.all_reduces = {n: AllReduceCounter().attach(m) for n, m in self.ddp.items()}
        self.engine = StepEngine(
            spec,
            dataset=self.dataset,
            generator=self.generator,
            discriminator=self.discriminator,
            opt_g=self.opt_g,
            opt_d=self.opt_d,
            device=self.device,
            dtype=self.dtype,
            rng=self.rng,
            rank=self.rank,
            ddp=self.ddp,
            sync_once=sync_once,
        )
        self.step = 0
        self.leak_warned = False
        wanted = evaluate and self.rank.writes
        self._evaluator = _make_evaluator(spec, self.dataset) if wanted else None

    # ---- sampling -------------------------------------------------------------------

    @property
    def sampling_generator(self) -> nn.Module:
        """The EMA generator when EMA is on, else the trained one."""
        return self.ema.module if self.ema is not None else self.generator

    @torch.no_grad()
    def generate(self, n: int, seed: int) -> torch.Tensor:
        return generate_from(
            self.sampling_generator, n, seed=seed, latent=self.spec.model.latent_dim
        )

    def sample_png(self) -> bytes:
        from trainer.samples import render_png

        seed = self.spec.seed + SAMPLE_SEED_OFFSET
        if self.dataset.is_image:
            fake = self.generate(GRID_IMAGES, seed)
            return render_png(fake.float().cpu().numpy(), title=f"step {self.step}")
        fake = self.generate(SCATTER_POINTS, seed).flatten(1)
        real = self.dataset.reference(SCATTER_POINTS).flatten(1)
        return render_png(
            fake.float().cpu().numpy(), real=real.float().cpu().numpy(), title=f"step {self.step}"
        )

    # ---- checkpoints ----------------------------------------------------------------

    def checkpoint(self) -> Checkpoint:
        tensors = {
            **ckpt_io.module_tensors("generator.", self.generator),
            **ckpt_io.module_tensors("discriminator.", self.discriminator),
        }
        optim = {}
        for name, opt in (("opt_g", self.opt_g), ("opt_d", self.opt_d)):
            opt_tensors, optim[name] = ckpt_io.pack_optimizer(name + ".", opt)
            tensors.update(opt_tensors)
        meta: dict[str, Any] = {
            "spec": self.spec.model_dump(mode="json"),
            "data_shape": list(self.dataset.shape),
            "optimizers": optim,
            "rng": {
                "data": ckpt_io.encode_rng(self.rng.get_state()),
                "torch": ckpt_io.encode_rng(torch.get_rng_state()),
            },
            "scalers": {n: s.state_dict() for n, s in self.engine.scaler.items() if s is not None},
            "leak_warned": self.leak_warned,
        }
        if self.ema is not None:
            tensors.update(ckpt_io.module_tensors("generator_ema.", self.ema.module))
            meta["ema"] = {"decay": self.spec.ema, "n_averaged": int(self.ema.n_averaged)}
        return ckpt_io.make_checkpoint(self.step, tensors, meta)

    def load(self, ckpt: Checkpoint) -> None:
        """Continue from a checkpoint of a run of the same spec (steps may differ, and the
        world size: every rank holds the same state, and draws the same batches)."""
        saved = TrainSpec.model_validate(ckpt.meta["spec"])
        same = {"steps": self.spec.steps, "distributed": self.spec.distributed}
        if saved.model_copy(update=same) != self.spec:
            raise CheckpointError(
                "checkpoint: it was made by a different spec (only steps and distributed "
                "may differ)"
            )
        meta = ckpt.meta
        self.generator.load_state_dict(ckpt.tensors("generator."))
        self.discriminator.load_state_dict(ckpt.tensors("discriminator."))
        for name, opt in (("opt_g", self.opt_g), ("opt_d", self.opt_d)):
            opt.load_state_dict(
                ckpt_io.unpack_optimizer(name + ".", ckpt, meta["optimizers"][name])
            )
        for name, state in meta.get("scalers", {}).items():
            scaler = self.engine.scaler[name]
            assert scaler is not None
            scaler.load_state_dict(state)
        if self.ema is not None:
            self.ema.module.load_state_dict(ckpt.tensors("generator_ema."))
            self.ema.n_averaged.fill_(meta["ema"]["n_averaged"])
        self.rng.set_state(ckpt_io.decode_rng(meta["rng"]["data"]))
        torch.set_rng_state(ckpt_io.decode_rng(meta["rng"]["torch"]))
        self.leak_warned = bool(meta.get("leak_warned", False))
        self.step = ckpt.step

    # ---- the loop -------------------------------------------------------------------

    def _due(self, every: int, step: int) -> bool:
        return every > 0 and (step % every == 0 or step == self.spec.steps)

    def run(
        self,
        sinks: Sinks,
        *,
        should_stop: Callable[[], bool] | None = None,
        progress: Progress | None = None,
    ) -> TrainResult:
        """Train from the current step to `spec.steps`, or until `should_stop()` says so.

        `should_stop` is checked before every step; on a stop a checkpoint is written (when
        checkpoints are on) so the run can resume. Raises TrainingDiverged on NaN/inf.
        In a distributed job every rank runs this; rank 0's `should_stop` stops them all at
        the same step, and only rank 0 writes metrics, samples, checkpoints and warnings.
        """
        spec, every = self.spec, self.spec.every
        writer = self.rank.writes
        result = TrainResult("succeeded", self.step)
        tick, ticked_at, busy = time.perf_counter(), self.step, 0.0
        while self.step < spec.steps:
            stop = writer and should_stop is not None and should_stop()
            if self.rank.distributed:
                stop = any_rank(stop, self.device)
            if stop:
                result.status = "stopped"
                break
            step = self.step + 1
            record = step % every.metrics == 0 or step == spec.steps
            for opt, cfg in ((self.opt_g, spec.optim.g), (self.opt_d, spec.optim.d)):
                if cfg.decay != "none":
                    for group in opt.param_groups:
                        group["lr"] = decayed_lr(cfg, step, spec.steps)
            stats = self.engine.step(record=record)
            if self.ema is not None:
                self.ema.update_parameters(self.generator)
            self.step = step
            if writer:
                self._warn_on_leak(sinks, step)
            values: dict[str, float] | None = None
            if stats is not None:
                now = time.perf_counter()
                rate = (step - ticked_at) / max(now - tick - busy, 1e-9)
                tick, ticked_at, busy = now, step, 0.0
                values = stats.numbers()
                values["perf/steps_per_s"] = rate
                values["perf/samples_per_s"] = rate * spec.batch_size
            started = time.perf_counter()
            if self._evaluator is not None and self._due(every.eval, step):
                values = {**(values or {}), **self._evaluator(self)}
            if values:
                if writer:
                    sinks.metrics.write(step, values)
                result.last_metrics = values
                _raise_if_diverged(step, values)  # the same numbers on every rank
            if writer and self._due(every.samples, step):
                sinks.samples.write(step, self.sample_png())
            if writer and self._due(every.checkpoint, step):
                result.checkpoints.append(sinks.checkpoints.write(self.checkpoint()))
            busy += time.perf_counter() - started
            if progress is not None:
                progress(step, values)
        stopped = result.status == "stopped"
        if writer and stopped and every.checkpoint > 0 and self.step > result.step:
            if not result.checkpoints or result.checkpoints[-1].step != self.step:
                result.checkpoints.append(sinks.checkpoints.write(self.checkpoint()))
        result.step = self.step
        return result

    def _warn_on_leak(self, sinks: Sinks, step: int) -> None:
        if self.leak_warned:
            return
        leaks = {n: v for n, v in self.engine.step_leak.items() if v > 0}
        if not leaks:
            return
        self.leak_warned = True
        parts = ", ".join(f"audit/leak_{n}={v:.3g}" for n, v in leaks.items())
        sinks.warnings.write(
            step,
            f"audit: at step {step} an optimizer stepped on gradient from the other network's "
            f"loss ({parts})",
        )


def generate_from(generator: nn.Module, n: int, *, seed: int, latent: int) -> torch.Tensor:
    """n samples from `generator` in eval mode with noise from `seed`; leaves its mode as it was."""
    param = next(generator.parameters())
    noise = torch.randn(n, latent, generator=torch.Generator().manual_seed(seed), dtype=param.dtype)
    was_training = generator.training
    generator.eval()
    try:
        with torch.no_grad():
            return generator(noise.to(param.device))
    finally:
        generator.train(was_training)


def _raise_if_diverged(step: int, values: dict[str, float]) -> None:
    for name, value in values.items():
        if not math.isfinite(value):
            raise TrainingDiverged(step, name, value)


def _make_evaluator(
    spec: TrainSpec, dataset: Dataset
) -> Callable[[Trainer], dict[str, float]] | None:
    if spec.every.eval == 0:
        return None
    if dataset.centres is not None:
        from trainer.evaluation import EVAL_SAMPLES, mixture_quality

        centres, std = dataset.centres, dataset.std

        def mixture(trainer: Trainer) -> dict[str, float]:
            fake = trainer.generate(EVAL_SAMPLES, spec.seed + EVAL_SEED_OFFSET)
            return mixture_quality(fake.double().cpu(), centres.double().cpu(), std)

        return mixture
    if dataset.kind == "digits":
        from trainer.evaluation import EVAL_SAMPLES, DigitsEvaluator

        evaluator = DigitsEvaluator.load()

        def digits(trainer: Trainer) -> dict[str, float]:
            fake = trainer.generate(EVAL_SAMPLES, spec.seed + EVAL_SEED_OFFSET)
            return evaluator.evaluate(fake.float().cpu())

        return digits
    return None

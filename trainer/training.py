"""The training loop: builds a run from a spec, steps it, and hands outputs to the sinks."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from trainer import state
from trainer.batches import StepStats
from trainer.checkpoint import Checkpoint, CheckpointRecord
from trainer.data import Dataset, check_model_fits, load_dataset
from trainer.ddp import AllReduceCounter, Rank, any_rank, rank_device, wrap
from trainer.engine import StepEngine
from trainer.fid import EvaluationUnavailable
from trainer.models import build_models, eval_mode
from trainer.optim import build_optimizer, set_decayed_lr
from trainer.quality import Evaluator, evaluator_for
from trainer.sinks import Sinks
from trainer.spec import TrainSpec
from trainer.throughput import ThroughputClock

# The data/noise RNG is seeded apart from model initialisation so the two never share draws
# (and apart from the samples' noise; evaluation's is trainer.quality.EVAL_SEED_OFFSET).
DATA_SEED_OFFSET = 0x5EED
SAMPLE_SEED_OFFSET = 1
GRID_IMAGES = 64
SCATTER_POINTS = 1000

# A skipped fp16 step (inf/NaN gradients) halves the loss scale: skipping the first few while
# the scale comes down from 2**16 is normal, but this many in a row (scale 2**-16) means the
# gradients overflow at any scale. Checked at metric steps.
SKIPPED_STEPS_DIVERGED = 32

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
        self.rank = _checked_rank(spec, rank or Rank())
        self.device = rank_device(resolve_device(spec.device), self.rank)
        self.dtype = torch.float64 if spec.precision == "fp64" else torch.float32
        self.dataset = self._load_dataset(resolve_dataset)
        self.generator, self.discriminator = self._build_networks()
        self.opt_g = build_optimizer(spec.optim.g, list(self.generator.parameters()))
        self.opt_d = build_optimizer(spec.optim.d, list(self.discriminator.parameters()))
        # The EMA copy is made before the engine adds its audit hooks, so it carries none.
        self.ema = _ema_of(self.generator, spec.ema)
        self.rng = torch.Generator().manual_seed(spec.seed + DATA_SEED_OFFSET)
        self.ddp, self.all_reduces = self._wrap_for_ranks()
        self.engine = self._build_engine(sync_once=sync_once)
        self.step = 0
        self.leak_warned = False
        self._evaluator, self._eval_warning = self._build_evaluator(evaluate and self.rank.writes)

    def _load_dataset(self, resolve_dataset: Callable[[str], Path] | None) -> Dataset:
        dataset = load_dataset(self.spec.data, resolve_dataset=resolve_dataset)
        check_model_fits(self.spec.model, dataset)
        return dataset.to(self.device, self.dtype)

    def _build_networks(self) -> tuple[nn.Module, nn.Module]:
        """Generator and discriminator, initialised from the spec's seed, on the device."""
        spec = self.spec
        generator, discriminator = build_models(spec.model, self.dataset.shape, seed=spec.seed)
        return generator.to(self.device, self.dtype), discriminator.to(self.device, self.dtype)

    def _wrap_for_ranks(
        self,
    ) -> tuple[dict[str, DistributedDataParallel] | None, dict[str, AllReduceCounter]]:
        """Every rank: the networks wrapped in DDP, gradient all-reduces counted per network
        (what the tests and benchmarks read). A job of one rank wraps nothing."""
        if not self.rank.distributed:
            return None, {}
        ddp = {"g": wrap(self.generator, self.device), "d": wrap(self.discriminator, self.device)}
        return ddp, {n: AllReduceCounter().attach(m) for n, m in ddp.items()}

    def _build_evaluator(self, wanted: bool) -> tuple[Evaluator | None, str | None]:
        """The quality numbers' evaluator, or None and why this machine cannot compute them
        (FID without Inception weights): the run's one warning, never a made-up number."""
        if not wanted:
            return None, None
        try:
            return evaluator_for(self.spec, self.dataset), None
        except EvaluationUnavailable as exc:
            return None, str(exc)

    def _build_engine(self, *, sync_once: bool) -> StepEngine:
        return StepEngine(
            self.spec,
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
        """Everything a run needs to continue exactly: see `trainer.state`."""
        return state.checkpoint_of(self)

    def load(self, ckpt: Checkpoint) -> None:
        """Continue from a checkpoint of a run of the same spec (steps may differ, and the
        world size: every rank holds the same state, and draws the same batches)."""
        state.restore(self, ckpt)

    # ---- the loop -------------------------------------------------------------------

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
        result = TrainResult("succeeded", self.step)
        self._warn_unevaluated(sinks)
        clock = ThroughputClock(self.step)
        while self.step < self.spec.steps:
            if self._stop_voted(should_stop):
                result.status = "stopped"
                self._checkpoint_on_stop(sinks, result)
                break
            stats = self._train_step(sinks)
            values = self._numbers(stats, clock)
            with clock.paused():  # evaluating and writing are not training throughput
                values = self._evaluate(values)
                self._record(sinks, values, result)
                self._write_samples_and_checkpoint(sinks, result)
            if progress is not None:
                progress(self.step, values)
        result.step = self.step
        return result

    def _stop_voted(self, should_stop: Callable[[], bool] | None) -> bool:
        """Rank 0 asks `should_stop`; every rank learns its answer, to stop at the same step."""
        stop = self.rank.writes and should_stop is not None and should_stop()
        if self.rank.distributed:
            stop = any_rank(stop, self.device)
        return stop

    def _train_step(self, sinks: Sinks) -> StepStats | None:
        """One generator step (LR decay, the engine's step, EMA); its stats when recorded."""
        step = self.step + 1
        spec = self.spec
        set_decayed_lr(self.opt_g, spec.optim.g, step, spec.steps)
        set_decayed_lr(self.opt_d, spec.optim.d, step, spec.steps)
        stats = self.engine.step(record=step % spec.every.metrics == 0 or step == spec.steps)
        if self.ema is not None:
            self.ema.update_parameters(self.generator)
        self.step = step
        if self.rank.writes:
            self._warn_on_leak(sinks, step)
        return stats

    def _numbers(self, stats: StepStats | None, clock: ThroughputClock) -> dict[str, float] | None:
        """What a recorded step measured, with the throughput since the last recorded one."""
        if stats is None:
            return None
        rate = clock.steps_per_s(self.step)
        return {
            **stats.numbers(),
            "perf/steps_per_s": rate,
            "perf/samples_per_s": rate * self.spec.batch_size,
        }

    def _due(self, every: int) -> bool:
        return every > 0 and (self.step % every == 0 or self.step == self.spec.steps)

    def _evaluate(self, values: dict[str, float] | None) -> dict[str, float] | None:
        """The step's numbers with the quality metrics added, when an evaluation is due."""
        if self._evaluator is None or not self._due(self.spec.every.eval):
            return values
        return {**(values or {}), **self._evaluator(self)}

    def _warn_unevaluated(self, sinks: Sinks) -> None:
        """Say once, as the run starts, which quality numbers it cannot report, and why."""
        if self._eval_warning is not None and self.rank.writes:
            sinks.warnings.write(self.step, self._eval_warning)
            self._eval_warning = None

    def _record(self, sinks: Sinks, values: dict[str, float] | None, result: TrainResult) -> None:
        """Write the step's numbers and stop on a diverged one (the same numbers on every rank,
        so every rank raises at the same step)."""
        if not values:
            return
        if self.rank.writes:
            sinks.metrics.write(self.step, values)
        result.last_metrics = values
        _raise_if_diverged(self.step, values)

    def _write_samples_and_checkpoint(self, sinks: Sinks, result: TrainResult) -> None:
        if not self.rank.writes:
            return
        if self._due(self.spec.every.samples):
            sinks.samples.write(self.step, self.sample_png())
        if self._due(self.spec.every.checkpoint):
            result.checkpoints.append(sinks.checkpoints.write(self.checkpoint()))

    def _checkpoint_on_stop(self, sinks: Sinks, result: TrainResult) -> None:
        """A stopped run keeps a checkpoint of where it stopped, to resume from, unless it
        took no step this run or its last checkpoint is already of this step."""
        if not self.rank.writes or self.spec.every.checkpoint == 0 or self.step == result.step:
            return
        if not result.checkpoints or result.checkpoints[-1].step != self.step:
            result.checkpoints.append(sinks.checkpoints.write(self.checkpoint()))

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
    with eval_mode(generator), torch.no_grad():
        return generator(noise.to(param.device))


def _checked_rank(spec: TrainSpec, rank: Rank) -> Rank:
    if spec.distributed.world_size != rank.world:
        raise ValueError(
            f"distributed.world_size: {spec.distributed.world_size}, but this process is "
            f"rank {rank.rank} of {rank.world} (start the ranks with trainer.distributed.ranks)"
        )
    return rank


def _ema_of(generator: nn.Module, decay: float) -> AveragedModel | None:
    if decay <= 0:
        return None
    return AveragedModel(generator, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)


def _raise_if_diverged(step: int, values: dict[str, float]) -> None:
    """NaN/inf in any number, or fp16's scaler skipping every step of a network for
    SKIPPED_STEPS_DIVERGED steps in a row (`amp/skipped_d`, `amp/skipped_g`)."""
    for name, value in values.items():
        if not math.isfinite(value):
            raise TrainingDiverged(step, name, value)
        if name.startswith("amp/skipped_") and value >= SKIPPED_STEPS_DIVERGED:
            raise TrainingDiverged(step, name, value)

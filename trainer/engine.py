"""The step engine: one generator optimizer step and its discriminator steps (DESIGN.md s. 3).

One optimizer step of network N with accumulation k is a *cycle*:

    [zero_grad(N) if zero_grad == before]
    for i in 1..k: loss_i = loss_N(micro-batch i); backward(loss_i / k)
    [grad /= k if normalize == grad]
    opt_N.step()
    [zero_grad(N) if zero_grad == after]

`d_first` runs d_steps D cycles then one G cycle, `g_first` the reverse; `simultaneous`
runs d_steps - 1 D cycles and then one joint cycle in which one forward per micro-batch
feeds both losses and each network takes the gradient of its own loss only.
The effective batch of a cycle (real data, noise, penalty mixing weights, augmentation
parameters) is drawn once from the engine's generator and split into micro-batches, so
accumulation is exact. With `augment.policy` (DiffAugment, trainer.augment) every image D
sees, real or generated, in D's cycles and in G's, is augmented first; penalties are taken at
the augmented images, the ones D is trained on.

With `distributed.world_size: W` (DDP, trainer.ddp) every rank draws the same
effective batch, splits it into W*k micro-batches and takes its own k. A network's gradient
is averaged over the ranks once per optimizer step: its first k-1 micro-batches run under
DDP's `no_sync`, and in the last one the network's first forward goes through its DDP
wrapper, which arms the reducer for exactly that backward; every other forward (the other
network, the fake and penalty passes of D) uses the plain module, so the reducer sees each
parameter once per step, whatever the order and isolation (freezing D for G's backward
touches no armed reducer). Gradient that reaches a network outside its own synced backward
(a leak, on purpose) sits in `.grad` until that network's sync, which averages the whole
`.grad`. The one schedule in which a network's parameters receive two backward passes in one
micro-batch (`simultaneous` with isolation `none`) syncs after them with a zero-loss probe.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING

import torch
from torch import nn

from trainer import losses
from trainer.audit import LeakAudit, total_norm
from trainer.augment import AugmentParams, augment_for, augmented
from trainer.batches import CycleBatch, StepStats
from trainer.data import Dataset
from trainer.ddp import Rank, average_, no_sync
from trainer.models import eval_mode, has_spectral_norm, refresh_spectral_norm
from trainer.spec import TrainSpec

if TYPE_CHECKING:
    from torch.nn.parallel import DistributedDataParallel

NETWORKS = ("d", "g")


class StepEngine:
    """Owns the networks, optimizers, scalers and the RNG; `step()` runs one G step."""

    def __init__(
        self,
        spec: TrainSpec,
        *,
        dataset: Dataset,
        generator: nn.Module,
        discriminator: nn.Module,
        opt_g: torch.optim.Optimizer,
        opt_d: torch.optim.Optimizer,
        device: torch.device,
        dtype: torch.dtype,
        rng: torch.Generator,
        rank: Rank | None = None,
        ddp: dict[str, DistributedDataParallel] | None = None,
        sync_once: bool = True,
    ):
        """`rank` and `ddp` (the two networks' DDP wrappers) for a distributed job;
        `sync_once=False` averages every micro-batch's gradient instead (benchmarks only)."""
        self.spec = spec
        self.rank = rank or Rank()
        self.ddp = ddp if self.rank.distributed else None
        self.sync_once = sync_once
        self.dataset = dataset
        self.generator = generator
        self.discriminator = discriminator
        self.device = device
        self.dtype = dtype
        self.rng = rng
        self.opt = {"d": opt_d, "g": opt_g}
        self.modules: dict[str, nn.Module] = {"d": discriminator, "g": generator}
        self.params = {
            "d": [p for p in discriminator.parameters() if p.requires_grad],
            "g": [p for p in generator.parameters() if p.requires_grad],
        }
        self.scaler: dict[str, torch.amp.GradScaler | None] = {"d": None, "g": None}
        if spec.precision == "fp16":
            # One scaler per optimizer: each network's loss scale tracks its own overflows.
            self.scaler = {n: torch.amp.GradScaler(device.type) for n in NETWORKS}
        # Optimizer steps in a row each network's scaler skipped (inf/NaN gradients); fp16 only.
        self.skipped_in_a_row = dict.fromkeys(NETWORKS, 0)
        self.audit = LeakAudit(self.params, average=average_ if self.ddp is not None else None)
        s = spec.schedule
        self.k = spec.accumulation.steps
        self.isolation = s.isolation
        # In the joint cycle there is no separate G backward to freeze D for; "freeze" there
        # means the same as "autograd": each network asks for its own parameters' gradients.
        self._own_grads_only = s.isolation == "autograd" or (
            s.order == "simultaneous" and s.isolation == "freeze"
        )
        self._has_spectral = has_spectral_norm(discriminator)
        self.augment = augment_for(spec.augment, tuple(dataset.shape))
        # Largest leak per network over this step's cycles (d_steps D cycles may differ).
        self.step_leak = {"d": 0.0, "g": 0.0}

    # ---- pieces of a cycle -------------------------------------------------------------

    def _autocast(self) -> contextlib.AbstractContextManager[None]:
        if self.spec.precision == "bf16":
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        if self.spec.precision == "fp16":
            return torch.autocast(self.device.type, dtype=torch.float16)
        return contextlib.nullcontext()

    def _draw(self, *, real: bool) -> CycleBatch:
        n = self.spec.batch_size
        noise = torch.randn(n, self.spec.model.latent_dim, generator=self.rng, dtype=self.dtype)
        batch = CycleBatch(noise.to(self.device))
        if real:
            batch.real = self.dataset.sample(n, self.rng)
            if self.spec.loss.penalty == "wgan_gp":
                batch.mix = torch.rand(n, generator=self.rng, dtype=self.dtype).to(self.device)
        if self.augment is not None:
            # Drawn after the rest, so that with augmentation off the stream is as it was.
            if real:
                batch.augment_real = self._draw_augment(n)
            batch.augment_fake = self._draw_augment(n)
        return batch

    def _draw_augment(self, n: int) -> AugmentParams:
        assert self.augment is not None
        return self.augment.draw(n, self.rng, dtype=self.dtype).to(self.device)

    def _seen(self, images: torch.Tensor, params: AugmentParams | None) -> torch.Tensor:
        """What D sees of `images`: augmented with `params` when augmentation is on."""
        return augmented(self.augment, images, params)

    def _zero(self, net: str) -> None:
        self.opt[net].zero_grad(set_to_none=True)
        self.audit.reset(net)

    def _backward(self, loss: torch.Tensor, net: str, *, retain: bool = False) -> None:
        scaler = self.scaler[net]
        if scaler is not None:
            loss = scaler.scale(loss)
        normalize = self.spec.accumulation.normalize
        if self.k > 1 and normalize == "loss":
            loss = loss / self.k
        if normalize == "none" and self.rank.distributed:
            loss = loss * self.rank.world  # the ranks' average becomes the sum "none" means
        with self.audit.backward_of(net):
            if self._own_grads_only:
                # Accumulates into this network's `.grad` only (through AccumulateGrad, so
                # DDP's reducer hooks see it, as they would not see torch.autograd.grad).
                loss.backward(inputs=self.params[net], retain_graph=retain)
            else:
                loss.backward(retain_graph=retain)

    def _step(self, net: str, stats: StepStats | None) -> None:
        """The end of a cycle: audit, normalize, step, maybe zero."""
        self.step_leak[net] = max(self.step_leak[net], self.audit.leak(net))
        params = self.params[net]
        if self.k > 1 and self.spec.accumulation.normalize == "grad":
            grads = [p.grad for p in params if p.grad is not None]
            torch._foreach_div_(grads, float(self.k))
        scaler = self.scaler[net]
        norm: float | None = None
        if stats is not None:
            if scaler is not None:
                scaler.unscale_(self.opt[net])
            norm = total_norm(params)
        skipped = False
        if scaler is not None:
            scale = scaler.get_scale()
            scaler.step(self.opt[net])
            scaler.update()
            # The scaler lowers its scale only when it found inf/NaN gradients and skipped the
            # optimizer step (a loss scale too high, as at the start): not divergence, and the
            # inf/NaN norm of gradients no optimizer used is not reported. The count in a row
            # is what tells a scale being found from gradients that overflow at any scale.
            skipped = scaler.get_scale() < scale
            self.skipped_in_a_row[net] = self.skipped_in_a_row[net] + 1 if skipped else 0
        else:
            self.opt[net].step()
        if stats is not None:
            if norm is not None and not skipped:  # d_steps > 1: of the last D step taken
                stats.values[f"grad_norm/{net}"] = norm
            if scaler is not None:
                stats.values[f"amp/skipped_{net}"] = float(self.skipped_in_a_row[net])
        if self.spec.schedule.zero_grad == "after":
            self._zero(net)

    @contextlib.contextmanager
    def _d_frozen(self, enabled: bool) -> Iterator[None]:
        """D's parameters stop requiring grad: G's backward computes no D weight gradient."""
        if not enabled:
            yield
            return
        params = self.params["d"]
        for p in params:
            p.requires_grad_(False)
        try:
            yield
        finally:
            for p in params:
                p.requires_grad_(True)

    # ---- ranks --------------------------------------------------------------------------

    def _micro_batches(self, batch: CycleBatch) -> Iterator[tuple[CycleBatch, bool]]:
        """This rank's k micro-batches of the cycle, each with whether its backward is to
        average the gradient over the ranks: the last one (every one without sync_once)."""
        world, rank, k = self.rank.world, self.rank.rank, self.k
        mine = list(batch.split(k * world))[rank * k : (rank + 1) * k]
        for i, mb in enumerate(mine):
            yield mb, i == k - 1 or not self.sync_once

    def _synced(self, net: str) -> nn.Module:
        """The module for `net`'s first forward of a micro-batch: its DDP wrapper, which
        arms the reducer for the coming backward unless under `no_sync`; else itself."""
        return self.modules[net] if self.ddp is None else self.ddp[net]

    def _sync_probe(self, net: str) -> None:
        """Average `net`'s accumulated `.grad` over the ranks now: one DDP forward of a tiny
        zero batch in eval mode (no batch-norm or other state changes) whose loss, times 0,
        adds nothing to `.grad` but sets off the reducer."""
        assert self.ddp is not None
        module = self.modules[net]
        shape = (self.spec.model.latent_dim,) if net == "g" else tuple(self.dataset.shape)
        probe = torch.zeros((2, *shape), dtype=self.dtype, device=self.device)
        with eval_mode(module), self.audit.backward_of(net):
            (self.ddp[net](probe).sum() * 0.0).backward(inputs=self.params[net])

    # ---- losses ---------------------------------------------------------------------------

    def _d_loss(
        self,
        mb: CycleBatch,
        fake: torch.Tensor,
        stats: StepStats | None,
        first_d_module: nn.Module | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """D's loss (with penalty) and the fake logits of one micro-batch; `first_d_module`
        runs D's first forward (the real batch): the DDP wrapper when this pass is to sync D."""
        assert mb.real is not None
        real = self._seen(mb.real, mb.augment_real)
        fake = self._seen(fake, mb.augment_fake)
        real_logits = (first_d_module or self.discriminator)(real)
        fake_logits = self.discriminator(fake)
        adv = losses.d_loss(self.spec.loss.kind, real_logits, fake_logits)
        pen = None
        if self.spec.loss.penalty != "none":
            # Outside autocast: double backward in fp16 is fragile, and cheap in fp32.
            with torch.autocast(self.device.type, enabled=False):
                pen = losses.penalty(
                    self.spec.loss,
                    self.discriminator,
                    real=real,
                    fake=fake.to(self.dtype),
                    mix=mb.mix,
                )
        if stats is not None:
            self._add(stats, "loss/d", adv)
            self._add(stats, "d/real", real_logits.mean())
            self._add(stats, "d/fake", fake_logits.mean())
            if pen is not None:
                self._add(stats, "loss/penalty", pen)
        return (adv if pen is None else adv + pen), fake_logits

    def _add(self, stats: StepStats, name: str, value: torch.Tensor) -> None:
        # Mean over the cycle's micro-batches; the last cycle of each network wins.
        v = value.detach().float() / self.k
        stats.values[name] = stats.values[name] + v if name in stats.values else v

    def _forget_d_stats(self, stats: StepStats | None) -> None:
        # With d_steps > 1 the numbers of the step's last D cycle are the ones reported.
        if stats is not None:
            for name in ("loss/d", "d/real", "d/fake", "loss/penalty"):
                stats.values.pop(name, None)

    # ---- cycles ----------------------------------------------------------------------

    def _d_cycle(self, stats: StepStats | None) -> None:
        if self.spec.schedule.zero_grad == "before":
            self._zero("d")
        if self._has_spectral:
            refresh_spectral_norm(self.discriminator)
        batch = self._draw(real=True)
        self._forget_d_stats(stats)
        detach = self.isolation != "none"
        for mb, sync in self._micro_batches(batch):
            with no_sync(self.ddp, ("d",), sync):
                with self._autocast():
                    if detach:
                        with torch.no_grad():
                            fake = self.generator(mb.noise)
                    else:
                        fake = self.generator(mb.noise)  # G's gradient here is a leak
                    loss, _ = self._d_loss(mb, fake, stats, first_d_module=self._synced("d"))
                self._backward(loss, "d")
        self._step("d", stats)

    def _g_cycle(self, stats: StepStats | None) -> None:
        if self.spec.schedule.zero_grad == "before":
            self._zero("g")
        batch = self._draw(real=False)
        freeze = self.isolation == "freeze"
        for mb, sync in self._micro_batches(batch):
            with no_sync(self.ddp, ("g",), sync), self._d_frozen(freeze):
                with self._autocast():
                    fake = self._synced("g")(mb.noise)
                    # D's reducer stays out of it
                    fake_logits = self.discriminator(self._seen(fake, mb.augment_fake))
                    loss = losses.g_loss(self.spec.loss.kind, fake_logits)
                self._backward(loss, "g")
            if stats is not None:
                self._add(stats, "loss/g", loss)
        self._step("g", stats)

    def _joint_cycle(self, stats: StepStats | None) -> None:
        if self.spec.schedule.zero_grad == "before":
            self._zero("d")
            self._zero("g")
        if self._has_spectral:
            refresh_spectral_norm(self.discriminator)
        batch = self._draw(real=True)
        self._forget_d_stats(stats)
        # Own gradients only: each backward reaches one network, so the last micro-batch's
        # backwards sync each network once. Isolation none: both backwards reach both
        # networks, so every micro-batch accumulates locally and a probe syncs afterwards.
        probe = self.ddp is not None and not self._own_grads_only
        for mb, sync in self._micro_batches(batch):
            with no_sync(self.ddp, ("d", "g"), sync and not probe):
                with self._autocast():
                    fake = self._synced("g")(mb.noise)  # one G forward feeds both losses
                    loss_d, fake_logits = self._d_loss(
                        mb, fake, stats, first_d_module=self._synced("d")
                    )
                    loss_g = losses.g_loss(self.spec.loss.kind, fake_logits)
                self._backward(loss_d, "d", retain=True)
                self._backward(loss_g, "g")
            if probe and sync:
                self._sync_probe("d")
                self._sync_probe("g")
            if stats is not None:
                self._add(stats, "loss/g", loss_g)
        self._step("d", stats)
        self._step("g", stats)

    def step(self, *, record: bool = False) -> StepStats | None:
        """One generator optimizer step with its discriminator steps; stats when `record`."""
        stats = StepStats() if record else None
        s = self.spec.schedule
        self.step_leak = {"d": 0.0, "g": 0.0}
        if s.order == "d_first":
            for _ in range(s.d_steps):
                self._d_cycle(stats)
            self._g_cycle(stats)
        elif s.order == "g_first":
            self._g_cycle(stats)
            for _ in range(s.d_steps):
                self._d_cycle(stats)
        else:
            for _ in range(s.d_steps - 1):
                self._d_cycle(stats)
            self._joint_cycle(stats)
        if stats is not None:
            if self.ddp is not None:
                stats.average_over_ranks()
            stats.leak = dict(self.step_leak)
        return stats

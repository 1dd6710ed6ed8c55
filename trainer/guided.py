"""Discriminator-guided sampling: the discriminator a generator was trained against rejects
(`drs`) or refines (`refine`) the generator's samples; `plain` is G(z) as always.

- drs, Discriminator Rejection Sampling (Azadi et al. 2019). A BCE discriminator's logit
  D(x) estimates log p_data(x)/p_g(x), so accepting x with probability
  exp(D(x) - D_M) (D_M the largest logit) turns p_g into p_data where the estimate holds.
  The paper's smoothed form is used: accept with probability sigmoid(F(x)),
  F(x) = D(x) - D_M - log(1 - exp(D(x) - D_M - eps)) - gamma, where D_M is the largest
  logit of a burn-in (raised when a proposal beats it) and gamma the `percentile`-th
  percentile of F over the burn-in (higher: stricter, fewer accepted), or a fixed `gamma`
  (0 gives plain rejection sampling: sigmoid(F) = exp(D(x) - D_M) up to eps).
- refine, latent Langevin dynamics (DDLS, Che et al. 2020): the energy
  E(z) = |z|^2 / 2 - D(G(z)) is the log-density of p_data pulled back to the latent space,
  and each of `steps` steps moves z by -step_size/2 * grad E(z) (+ sqrt(step_size) * noise
  * N(0, I)). With noise 0 this is plain gradient descent on E, as DOT (Tanaka 2019) does
  with a critic. Refined samples stay on the generator's manifold, one per plain sample.

Every sampler is deterministic for a seed, and bounded: `n` is capped by the caller, drs
stops after `max_proposals`, refine runs a fixed number of steps. A sampler that cannot
help raises SamplerError with the reason (a discriminator that scores every sample alike,
one whose logit is not a density ratio, too low an acceptance), never a silent plain draw.
Gradients are taken with torch.autograd.grad with respect to the latents only, so no
parameter's `.grad` is touched (the leak audit's hooks never fire).
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator
from torch import nn

from trainer.models import eval_mode

SamplerName = Literal["plain", "drs", "refine"]
SAMPLERS: tuple[SamplerName, ...] = ("plain", "drs", "refine")
# The most generator forwards one guided call may make, whatever it asks for; a checkpoint's
# own bound (Networks.max_forwards) may be lower.
MAX_PROPOSALS = 5_000_000
# ... which is at most this many times the samples one plain request may make.
FORWARDS_PER_SAMPLE = 50
DEFAULT_BURN_IN = 10_000
DRS_EPS = 1e-6  # the paper's epsilon: keeps log(1 - exp(.)) finite at D(x) = D_M
# Below this spread of burn-in logits the discriminator prefers no sample to another.
FLAT_LOGITS = 1e-6
MAX_CHUNK = 65_536  # the most samples one guided forward takes


class SamplerError(ValueError):
    """A sampler that cannot run, or cannot help, on this checkpoint; says why. `field` is
    the request field to change (dotted: `drs.min_acceptance`)."""

    def __init__(self, message: str, *, field: str = "sampler") -> None:
        super().__init__(message)
        self.field = field


class DRSOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    burn_in: int | None = Field(
        None,
        ge=100,
        le=1_000_000,
        description="samples scored to find D_M and gamma; default 10,000, or a fifth of "
        "the generator's bound on forwards a request when that is less",
    )
    percentile: float = Field(
        95.0, ge=0, le=99.9, description="gamma: this percentile of F over the burn-in"
    )
    gamma: float | None = Field(
        None,
        ge=-1000,
        le=1000,
        description="a fixed gamma instead of the percentile's (0: plain rejection sampling, "
        "exact when the logit is exactly log p_data/p_g)",
    )
    min_acceptance: float = Field(
        0.02,
        ge=0.0001,
        le=1,
        description="give up (an error) once n / min_acceptance proposals did not yield n",
    )


class RefineOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    steps: int = Field(20, ge=1, le=1000, description="gradient steps on each latent")
    step_size: float = Field(0.01, gt=0, le=10, description="eta: z -= eta/2 * grad E(z)")
    noise: float = Field(
        0.0, ge=0, le=1, description="Langevin noise scale (0: deterministic ascent)"
    )


class Sampler(BaseModel):
    """How to draw samples: the sampler and its options (those of another are refused)."""

    model_config = ConfigDict(extra="forbid")

    sampler: SamplerName = Field("plain", description="plain: G(z); drs; refine")
    drs: DRSOptions = Field(default_factory=DRSOptions)
    refine: RefineOptions = Field(default_factory=RefineOptions)

    @field_validator("drs", "refine")
    @classmethod
    def _options_of_the_sampler(cls, value: BaseModel, info: ValidationInfo) -> BaseModel:
        # Runs only for options given (defaults are not validated), after `sampler`.
        chosen = info.data.get("sampler")
        if chosen is not None and chosen != info.field_name:
            raise ValueError(f"only used with sampler {info.field_name}, not {chosen}")
        return value


@dataclass
class SamplerReport:
    """What a guided draw did: how many proposals, how many kept, and the discriminator's
    mean logit of plain samples against that of the returned ones (higher: more real)."""

    sampler: SamplerName
    n: int
    proposals: int
    accepted: int  # drs: proposals accepted (the last draw's surplus included); else n
    logit_plain: float
    logit_returned: float
    seconds: float

    @property
    def acceptance(self) -> float:
        return self.accepted / self.proposals if self.proposals else 1.0

    def headers(self) -> dict[str, str]:
        return {
            "X-Sampler": self.sampler,
            "X-Sampler-Proposals": str(self.proposals),
            "X-Sampler-Acceptance": f"{self.acceptance:.6g}",
            "X-Sampler-Logit-Plain": f"{self.logit_plain:.6g}",
            "X-Sampler-Logit-Returned": f"{self.logit_returned:.6g}",
        }

    def line(self) -> str:
        kept = (
            f"accepted {self.accepted} of {self.proposals} proposals "
            f"({100 * self.acceptance:.1f} %), kept {self.n}; "
            if self.sampler == "drs"
            else ""
        )
        return (
            f"{self.sampler}: {kept}mean discriminator logit {self.logit_plain:.3g} (plain) -> "
            f"{self.logit_returned:.3g}, {self.seconds:.2f} s"
        )


@dataclass
class Networks:
    """A generator and the discriminator it was trained against, both in eval mode while
    used; `loss` is the loss the discriminator was trained with."""

    generator: nn.Module
    discriminator: nn.Module
    latent: int
    loss: str
    chunk: int  # the most samples one forward takes; fixes the order of drs's D_M updates
    # The most generator forwards one call may make (drs's burn-in and proposals, refine's
    # steps x n): what bounds a request's time.
    max_forwards: int = MAX_PROPOSALS


def guided(
    nets: Networks, n: int, *, seed: int, sampler: Sampler
) -> tuple[torch.Tensor, SamplerReport]:
    """n samples by `sampler.sampler` ("drs" or "refine"), deterministic for `seed`."""
    if sampler.sampler == "drs":
        return _drs(nets, n, seed=seed, options=sampler.drs)
    if sampler.sampler == "refine":
        return _refine(nets, n, seed=seed, options=sampler.refine)
    raise SamplerError(f"sampler: {sampler.sampler!r} is not a guided sampler")


def _dtype_device(module: nn.Module) -> tuple[torch.dtype, torch.device]:
    param = next(module.parameters())
    return param.dtype, param.device


@torch.no_grad()
def _chunks(nets: Networks, z: torch.Tensor) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(samples, float64 logits on the CPU) of latents z, a chunk at a time."""
    _, device = _dtype_device(nets.generator)
    for part in z.split(nets.chunk):
        x = nets.generator(part.to(device))
        yield x, nets.discriminator(x).double().cpu()


def _scored(nets: Networks, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(samples, logits) of latents z."""
    samples, logits = zip(*_chunks(nets, z), strict=True)
    return torch.cat(samples), torch.cat(logits)


def _drs_f(logits: torch.Tensor, d_max: float) -> torch.Tensor:
    """F(x) without gamma: D(x) - D_M - log(1 - exp(D(x) - D_M - eps))."""
    shifted = logits - d_max
    return shifted - torch.log1p(-torch.exp(shifted - DRS_EPS))


def _drs(
    nets: Networks, n: int, *, seed: int, options: DRSOptions
) -> tuple[torch.Tensor, SamplerReport]:
    if nets.loss != "bce":
        raise SamplerError(
            f"sampler: drs needs a discriminator trained with loss bce (its logit estimates "
            f"log p_data/p_g); this one was trained with {nets.loss}, whose logit is not a "
            f"density ratio: use refine or plain"
        )
    burn_in = options.burn_in or max(1, min(DEFAULT_BURN_IN, nets.max_forwards // 5))
    if burn_in >= nets.max_forwards:
        raise SamplerError(
            f"sampler: drs.burn_in {burn_in} is not less than the {nets.max_forwards} "
            "generator forwards this checkpoint allows a request",
            field="drs.burn_in",
        )
    started = time.perf_counter()
    rng = torch.Generator().manual_seed(seed)
    budget = min(nets.max_forwards - burn_in, math.ceil(n / options.min_acceptance))
    with eval_mode(nets.generator, nets.discriminator):
        d_max, gamma = _calibrate(nets, rng, burn_in, options)
        draw = _Draw()
        while draw.accepted < n and draw.proposals < budget:
            # Twice what is still missing at a 50 % acceptance, at least 1,024: fewer wasted
            # proposals than whole chunks, and a function of n and the draws alone.
            size = min(nets.chunk, budget - draw.proposals, max(1024, 4 * (n - draw.accepted)))
            d_max = draw.propose(nets, rng, size, d_max, gamma)
    if draw.accepted < n:
        raise SamplerError(
            f"sampler: drs accepted {draw.accepted} of {draw.proposals} proposals "
            f"({100 * draw.accepted / draw.proposals:.2f} %), short of n={n} within the "
            f"{budget} proposals this request allows (drs.min_acceptance "
            f"{options.min_acceptance:g}): lower drs.percentile or drs.min_acceptance, or ask "
            "for fewer samples",
            field="drs.min_acceptance",
        )
    logits = torch.cat(draw.logits)[:n]
    report = SamplerReport(
        "drs",
        n,
        draw.proposals,
        draw.accepted,
        draw.plain_sum / draw.proposals,
        float(logits.mean()),
        time.perf_counter() - started,
    )
    return torch.cat(draw.kept)[:n], report


def _calibrate(
    nets: Networks, rng: torch.Generator, burn_in: int, options: DRSOptions
) -> tuple[float, float]:
    """D_M and gamma from `burn_in` samples."""
    dtype, _ = _dtype_device(nets.generator)
    z = torch.randn(burn_in, nets.latent, generator=rng, dtype=dtype)
    # Logits alone: a burn-in's samples, of images, would not fit in memory.
    burn = torch.cat([logits for _, logits in _chunks(nets, z)])
    if not bool(torch.isfinite(burn).all()):
        raise SamplerError("sampler: drs cannot run: the discriminator's logits are not finite")
    if float(burn.max() - burn.min()) < FLAT_LOGITS:
        raise SamplerError(
            "sampler: drs cannot help: the discriminator gives every burn-in sample the "
            f"same logit ({float(burn.mean()):.4g}), so rejection would keep a random "
            "subset of plain samples"
        )
    d_max = float(burn.max())
    if options.gamma is not None:
        return d_max, options.gamma
    return d_max, float(np.percentile(_drs_f(burn, d_max).numpy(), options.percentile))


@dataclass
class _Draw:
    """Accepted samples and their logits so far; proposals drawn; the sum of all logits."""

    kept: list[torch.Tensor] = field(default_factory=list)
    logits: list[torch.Tensor] = field(default_factory=list)
    proposals: int = 0
    accepted: int = 0
    plain_sum: float = 0.0

    def propose(
        self, nets: Networks, rng: torch.Generator, size: int, d_max: float, gamma: float
    ) -> float:
        """Draw `size` proposals, keep the accepted; returns D_M raised by any higher logit."""
        dtype, _ = _dtype_device(nets.generator)
        z = torch.randn(size, nets.latent, generator=rng, dtype=dtype)
        u = torch.rand(size, generator=rng, dtype=torch.float64)
        x, logits = _scored(nets, z)
        d_max = max(d_max, float(logits.max()))
        accept = u < torch.sigmoid(_drs_f(logits, d_max) - gamma)
        self.kept.append(x[accept.to(x.device)])
        self.logits.append(logits[accept])
        self.proposals += size
        self.accepted += int(accept.sum())
        self.plain_sum += float(logits.sum())
        return d_max


def _refine(
    nets: Networks, n: int, *, seed: int, options: RefineOptions
) -> tuple[torch.Tensor, SamplerReport]:
    if options.steps * n > nets.max_forwards:
        raise SamplerError(
            f"sampler: refine.steps x n = {options.steps * n} is more than this generator's "
            f"{nets.max_forwards} samples a request: fewer steps or samples",
            field="refine.steps",
        )
    started = time.perf_counter()
    dtype, device = _dtype_device(nets.generator)
    rng = torch.Generator().manual_seed(seed)
    # The same noise as plain's for this seed: refine moves plain's samples, one for one.
    z_all = torch.randn(n, nets.latent, generator=rng, dtype=dtype)
    out, before, after = [], [], []
    moved = False
    with eval_mode(nets.generator, nets.discriminator):
        for part in z_all.split(nets.chunk):
            z = part.to(device)
            for step in range(options.steps):
                grad_d, logits = _logit_grad(nets, z)
                if step == 0:
                    before.append(logits)
                    moved = moved or bool(grad_d.abs().max() > 0)
                z = z - options.step_size / 2 * (z - grad_d)  # grad E(z) = z - grad D(G(z))
                if options.noise > 0:
                    noise = torch.randn(z.shape, generator=rng, dtype=dtype).to(device)
                    z = z + math.sqrt(options.step_size) * options.noise * noise
            x, logits = _scored(nets, z.detach())
            out.append(x)
            after.append(logits)
    if not moved:
        raise SamplerError(
            "sampler: refine cannot help: the discriminator's gradient is zero at every "
            "sample, so refining would return plain's samples"
        )
    report = SamplerReport(
        "refine",
        n,
        n,
        n,
        float(torch.cat(before).mean()),
        float(torch.cat(after).mean()),
        time.perf_counter() - started,
    )
    return torch.cat(out), report


def _logit_grad(nets: Networks, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """grad of D(G(z)) at z (parameters' .grad untouched), and D's logits there."""
    with torch.enable_grad():
        z = z.detach().requires_grad_(True)
        logits = nets.discriminator(nets.generator(z))
        (grad_d,) = torch.autograd.grad(logits.sum(), [z])
    return grad_d, logits.detach().double().cpu()


def chunk_for(max_n: int) -> int:
    """The samples one guided forward takes: a sixteenth of what plain generation allows
    at once (refine keeps every layer's activations for its backward), at most MAX_CHUNK."""
    return max(1, min(max_n // 16, MAX_CHUNK))

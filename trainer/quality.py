"""Which quality numbers a run reports as it trains: mode coverage for a Gaussian mixture,
classifier metrics for digits, FID and KID for other images (trainer.fid), none for vectors.

`trainer.evaluation` computes them. It is imported only when a run evaluates: it loads
scipy, and the digits classifier may have to be trained first.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import torch

from trainer.data import Dataset
from trainer.spec import TrainSpec

if TYPE_CHECKING:
    from trainer.guided import Networks
    from trainer.training import Trainer

# Evaluation draws its own noise, apart from the data RNG and the samples' seed.
EVAL_SEED_OFFSET = 2

Evaluator = Callable[["Trainer"], dict[str, float]]


def trainer_networks(trainer: Trainer) -> Networks:
    """The run's sampling generator (EMA when on) and its current discriminator, for the
    guided samplers."""
    from trainer.guided import MAX_CHUNK, Networks

    return Networks(
        trainer.sampling_generator,
        trainer.discriminator,
        trainer.spec.model.latent_dim,
        trainer.spec.loss.kind,
        MAX_CHUNK,
    )


def guided_quality(
    trainer: Trainer, seed: int, centres: torch.Tensor, std: float
) -> dict[str, float]:
    """`eval/modes_drs`, `eval/hq_drs` (and `eval/drs_acceptance`), `eval/modes_refine`,
    `eval/hq_refine`: the same numbers for the guided samplers' default settings, with the
    run's current discriminator. A sampler that cannot run here (drs on a hinge or
    Wasserstein critic, a flat discriminator, too low an acceptance) adds nothing."""
    from trainer.evaluation import EVAL_SAMPLES, mixture_quality
    from trainer.guided import SAMPLERS, Sampler, SamplerError, guided

    nets = trainer_networks(trainer)
    values: dict[str, float] = {}
    for name in SAMPLERS[1:]:
        try:
            fake, report = guided(nets, EVAL_SAMPLES, seed=seed, sampler=Sampler(sampler=name))
        except SamplerError:
            continue
        quality = mixture_quality(fake.double().cpu(), centres, std)
        values |= {f"{k}_{name}": v for k, v in quality.items()}
        if name == "drs":
            values["eval/drs_acceptance"] = report.acceptance
    return values


def evaluator_for(spec: TrainSpec, dataset: Dataset) -> Evaluator | None:
    """The quality numbers this dataset has, as a function of the trainer; None when the
    spec evaluates nothing (`every.eval: 0`) or the data has no metric."""
    if spec.every.eval == 0:
        return None
    if dataset.centres is not None:
        from trainer.evaluation import EVAL_SAMPLES, mixture_quality

        centres, std = dataset.centres.double().cpu(), dataset.std

        def mixture(trainer: Trainer) -> dict[str, float]:
            seed = spec.seed + EVAL_SEED_OFFSET
            fake = trainer.generate(EVAL_SAMPLES, seed)
            values = mixture_quality(fake.double().cpu(), centres, std)
            return values | guided_quality(trainer, seed, centres, std)

        return mixture
    if dataset.kind == "digits":
        from trainer.evaluation import EVAL_SAMPLES, DigitsEvaluator

        evaluator = DigitsEvaluator.load()

        def digits(trainer: Trainer) -> dict[str, float]:
            fake = trainer.generate(EVAL_SAMPLES, spec.seed + EVAL_SEED_OFFSET)
            return evaluator.evaluate(fake.float().cpu())

        return digits
    from trainer.fid import applies_to, image_evaluator

    if applies_to(dataset):  # raises EvaluationUnavailable when this machine has no weights
        return image_evaluator(spec, dataset, seed=spec.seed + EVAL_SEED_OFFSET)
    return None

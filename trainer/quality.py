"""Which quality numbers a run reports as it trains: mode coverage for a Gaussian mixture,
classifier metrics for digits, FID and KID for other images (trainer.fid), none for vectors.

`trainer.evaluation` computes them. It is imported only when a run evaluates: it loads
scipy, and the digits classifier may have to be trained first.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from trainer.data import Dataset
from trainer.spec import TrainSpec

if TYPE_CHECKING:
    from trainer.training import Trainer

# Evaluation draws its own noise, apart from the data RNG and the samples' seed.
EVAL_SEED_OFFSET = 2

Evaluator = Callable[["Trainer"], dict[str, float]]


def evaluator_for(spec: TrainSpec, dataset: Dataset) -> Evaluator | None:
    """The quality numbers this dataset has, as a function of the trainer; None when the
    spec evaluates nothing (`every.eval: 0`) or the data has no metric."""
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
    from trainer.fid import applies_to, image_evaluator

    if applies_to(dataset):  # raises EvaluationUnavailable when this machine has no weights
        return image_evaluator(spec, dataset, seed=spec.seed + EVAL_SEED_OFFSET)
    return None

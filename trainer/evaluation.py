"""GAN quality numbers: mode coverage for Gaussian mixtures, classifier metrics for digits.

Mixtures use the PacGAN definitions. Digits use an Inception-score analogue and a Frechet
distance computed with a small classifier trained here on scikit-learn's bundled digits,
because no pretrained network can be fetched. The classifier is trained once and cached on
disk (safetensors + a JSON sidecar holding its SHA-256) and in the process.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import warnings
from pathlib import Path
from typing import Literal

import numpy as np
import scipy.linalg
import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_tensors
from safetensors.torch import save as save_tensors
from torch import nn

from trainer.checkpoint import atomic_write

EVAL_SAMPLES = 2500  # generated samples per evaluation (PacGAN uses 2,500)

# Bump when the architecture, the training recipe or the file layout changes: the cache
# file name and its sidecar carry it, so an old cache is never loaded by new code.
CLASSIFIER_VERSION = "digits-mlp-v1"
CLASSIFIER_SEED = 0
CLASSIFIER_EPOCHS = 30
_BATCH = 64

ArrayLike = np.ndarray | torch.Tensor


def _as_tensor(array: ArrayLike) -> torch.Tensor:
    if isinstance(array, torch.Tensor):
        return array.detach().to("cpu", torch.float64)
    return torch.as_tensor(np.asarray(array), dtype=torch.float64)


def mixture_quality(samples: ArrayLike, centres: ArrayLike, std: float) -> dict[str, float]:
    """PacGAN mode coverage of `samples` (N, D) against a mixture's `centres` (M, D).

    A sample is high quality when it lies within 3 * std of its nearest centre; a mode is
    covered when it is the nearest centre of at least one high-quality sample. Returns
    `eval/modes` (covered modes, as a float) and `eval/hq` (fraction of high-quality
    samples). Non-finite samples count as low quality.
    """
    points, modes = _as_tensor(samples), _as_tensor(centres)
    if points.ndim != 2 or modes.ndim != 2 or points.shape[1] != modes.shape[1]:
        raise ValueError(
            f"samples (N, D) and centres (M, D) must agree on D, got {tuple(points.shape)} "
            f"and {tuple(modes.shape)}"
        )
    if len(points) == 0 or len(modes) == 0:
        raise ValueError("mixture_quality needs at least one sample and one centre")
    distance, nearest = torch.cdist(points, modes).min(dim=1)
    # NaN distances compare False, so diverged samples are simply not high quality.
    high_quality = distance <= 3 * std
    covered = torch.unique(nearest[high_quality])
    return {
        "eval/modes": float(len(covered)),
        "eval/hq": float(high_quality.double().mean()),
    }


class DigitsClassifier(nn.Module):
    """64-128-128-10 MLP; the 128-d second hidden layer is the feature space for the FCD."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Linear(64, 128),  # (N, 64) pixels -> (N, 128)
            nn.ReLU(),
            nn.Linear(128, 128),  # -> (N, 128) features
            nn.ReLU(),
        )
        self.head = nn.Linear(128, 10)  # -> (N, 10) logits

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def load_digits_data() -> tuple[torch.Tensor, torch.Tensor]:
    """scikit-learn's bundled digits as (1797, 64) floats in [-1, 1] and (1797,) labels."""
    from sklearn.datasets import load_digits  # bundled with scikit-learn: no download

    digits = load_digits()
    x = torch.from_numpy(digits.data.astype(np.float32) / 8.0 - 1.0)
    return x, torch.from_numpy(digits.target.astype(np.int64))


def train_classifier(
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    seed: int = CLASSIFIER_SEED,
    epochs: int = CLASSIFIER_EPOCHS,
) -> DigitsClassifier:
    """Train a DigitsClassifier on (x, y) deterministically: same inputs, same weights.

    The global torch RNG is left as it was, so training the evaluator mid-run does not
    change the run's own random draws.
    """
    threads = torch.get_num_threads()
    # One thread: batches of 64 x 128 gain nothing from more, and on a busy machine the
    # OpenMP workers spin-wait for a core (measured: 2 s on one thread, over 60 s on two).
    # It also removes the core count as a source of rounding differences between machines.
    torch.set_num_threads(1)
    try:
        return _train(x, y, seed=seed, epochs=epochs)
    finally:
        torch.set_num_threads(threads)


def _train(x: torch.Tensor, y: torch.Tensor, *, seed: int, epochs: int) -> DigitsClassifier:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = DigitsClassifier()
        shuffle = torch.Generator().manual_seed(seed)
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, weight_decay=1e-4)
        model.train()
        for _ in range(epochs):
            for index in torch.randperm(len(x), generator=shuffle).split(_BATCH):
                loss = nn.functional.cross_entropy(model(x[index]), y[index])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
    return model.eval().requires_grad_(False)


def default_cache_dir() -> Path:
    """`$GANFORGE_CACHE_DIR`, else `~/.cache/ganforge`."""
    configured = os.environ.get("GANFORGE_CACHE_DIR")
    return Path(configured) if configured else Path.home() / ".cache" / "ganforge"


def _frechet_distance(
    mu1: np.ndarray, cov1: np.ndarray, mu2: np.ndarray, cov2: np.ndarray
) -> float:
    diff = mu1 - mu2
    with warnings.catch_warnings():
        # A collapsed generator gives a singular covariance and sqrtm warns on every call;
        # the non-finite case is handled below and tiny errors do not matter at FCD scale.
        warnings.simplefilter("ignore", scipy.linalg.LinAlgWarning)
        covmean = scipy.linalg.sqrtm(cov1 @ cov2)
        if not np.isfinite(covmean).all():
            # Nudge both diagonals, as pytorch-fid does, and try again.
            offset = np.eye(len(cov1)) * 1e-6
            covmean = scipy.linalg.sqrtm((cov1 + offset) @ (cov2 + offset))
    # Rounding leaves small imaginary parts and can push the sum a hair below zero.
    covmean = np.real(covmean)
    distance = diff @ diff + np.trace(cov1) + np.trace(cov2) - 2 * np.trace(covmean)
    return max(float(distance), 0.0)


_MEMORY_CACHE: dict[Path, DigitsEvaluator] = {}
_MEMORY_LOCK = threading.Lock()


def clear_memory_cache() -> None:
    """Forget the evaluators this process has loaded (the disk cache stays)."""
    with _MEMORY_LOCK:
        _MEMORY_CACHE.clear()


class DigitsEvaluator:
    """Classifier score and FCD of generated 8x8 digits, against the real digits."""

    def __init__(
        self,
        classifier: DigitsClassifier,
        real_mean: torch.Tensor,
        real_cov: torch.Tensor,
        *,
        origin: Literal["trained", "disk"] = "trained",
    ) -> None:
        self.classifier = classifier
        self.real_mean = real_mean.double()
        self.real_cov = real_cov.double()
        # Where this instance came from: lets callers and tests tell a load from a retrain.
        self.origin = origin

    @staticmethod
    def cache_files(cache_dir: Path) -> tuple[Path, Path]:
        """The weights file and its JSON sidecar for the current classifier version."""
        return (
            cache_dir / f"{CLASSIFIER_VERSION}.safetensors",
            cache_dir / f"{CLASSIFIER_VERSION}.json",
        )

    @classmethod
    def load(cls, cache_dir: Path | None = None) -> DigitsEvaluator:
        """The evaluator, from this process's cache, else the disk cache, else trained now.

        A disk cache whose version or SHA-256 does not match, or that cannot be read, is
        replaced by a freshly trained one. An unwritable cache dir only costs the caching.
        """
        key = (cache_dir or default_cache_dir()).expanduser().absolute()
        with _MEMORY_LOCK:
            evaluator = _MEMORY_CACHE.get(key)
            if evaluator is None:
                evaluator = cls._from_disk(key) or cls._train_and_store(key)
                _MEMORY_CACHE[key] = evaluator
        return evaluator

    @classmethod
    def _from_disk(cls, cache_dir: Path) -> DigitsEvaluator | None:
        weights_path, sidecar_path = cls.cache_files(cache_dir)
        try:
            sidecar = json.loads(sidecar_path.read_text())
            data = weights_path.read_bytes()  # hash and parse the same bytes
            if sidecar.get("version") != CLASSIFIER_VERSION:
                return None
            if hashlib.sha256(data).hexdigest() != sidecar.get("sha256"):
                return None
            tensors = load_tensors(data)
            classifier = DigitsClassifier()
            classifier.load_state_dict(
                {
                    k.removeprefix("classifier."): v
                    for k, v in tensors.items()
                    if k.startswith("classifier.")
                }
            )
            mean, cov = tensors["real_mean"], tensors["real_cov"]
        except (OSError, ValueError, KeyError, RuntimeError, AttributeError, SafetensorError):
            return None
        if mean.shape != (128,) or cov.shape != (128, 128):
            return None
        return cls(classifier.eval().requires_grad_(False), mean, cov, origin="disk")

    @classmethod
    def _train_and_store(cls, cache_dir: Path) -> DigitsEvaluator:
        x, y = load_digits_data()
        classifier = train_classifier(x, y)
        with torch.no_grad():
            features = classifier.features(x).double()
        evaluator = cls(classifier, features.mean(dim=0), torch.cov(features.T))
        tensors = {f"classifier.{k}": v.contiguous() for k, v in classifier.state_dict().items()}
        tensors |= {"real_mean": evaluator.real_mean, "real_cov": evaluator.real_cov}
        data = save_tensors(tensors, metadata={"version": CLASSIFIER_VERSION})
        sidecar = {"version": CLASSIFIER_VERSION, "sha256": hashlib.sha256(data).hexdigest()}
        weights_path, sidecar_path = cls.cache_files(cache_dir)
        try:
            cache_dir.mkdir(parents=True, exist_ok=True)
            # Weights first, sidecar last: a reader never sees a sidecar whose file is missing.
            atomic_write(weights_path, data)
            atomic_write(sidecar_path, json.dumps(sidecar, indent=2).encode())
        except OSError:
            pass  # read-only or full disk: evaluate anyway, retrain next process
        return evaluator

    def evaluate(self, samples: ArrayLike) -> dict[str, float]:
        """Score generated digits, (N, 64) or (N, 1, 8, 8) in [-1, 1], N >= 2.

        `eval/classifier_score` is exp(E_x KL(p(y|x) || p(y))): between 1 and 10, higher
        when digits are confidently recognisable and all classes appear. `eval/fcd` is the
        Frechet distance between Gaussians fitted to the classifier features of the samples
        and of the real digits: 0 for the real data, lower is better. Both are NaN when a
        sample is NaN or infinite.
        """
        x = _as_tensor(samples)
        if x.ndim == 4 and tuple(x.shape[1:]) == (1, 8, 8):
            x = x.reshape(len(x), 64)
        if x.ndim != 2 or x.shape[1] != 64:
            raise ValueError(
                f"digits samples must have shape (N, 64) or (N, 1, 8, 8), got {tuple(x.shape)}"
            )
        if len(x) < 2:
            raise ValueError("digits evaluation needs at least 2 samples for a covariance")
        if not torch.isfinite(x).all():
            return {"eval/classifier_score": float("nan"), "eval/fcd": float("nan")}

        with torch.no_grad():
            hidden = torch.cat([self.classifier.features(chunk.float()) for chunk in x.split(4096)])
            log_p_yx = torch.log_softmax(self.classifier.head(hidden).double(), dim=1)
        features = hidden.double()
        log_p_y = torch.logsumexp(log_p_yx, dim=0) - np.log(len(x))  # log of the mean p(y|x)
        kl = (log_p_yx.exp() * (log_p_yx - log_p_y)).sum(dim=1)
        score = float(torch.exp(kl.mean()))

        fcd = _frechet_distance(
            features.mean(dim=0).numpy(),
            torch.cov(features.T).numpy(),
            self.real_mean.numpy(),
            self.real_cov.numpy(),
        )
        return {"eval/classifier_score": score, "eval/fcd": fcd}

"""FID and KID of generated images (`eval/fid`, `eval/kid`) with Inception-v3 features.

The features come from torch-fidelity's `FeatureExtractorInceptionV3`, the reference PyTorch
port of the TensorFlow FID Inception (torchmetrics uses it for its FID too): uint8 RGB in,
resized to 299 px the way TensorFlow 1 did, the 2048-d pool features out. Its weights are a
local file named by GANFORGE_INCEPTION_WEIGHTS, else torch-fidelity's own file in torch hub's
checkpoint cache, which is downloaded only when GANFORGE_INCEPTION_DOWNLOAD=1. Without
weights nothing is computed: `image_evaluator` raises EvaluationUnavailable, whose message is
the run's one warning.

The real images' features are computed once per dataset, resolution and weights file and
cached on disk under `default_cache_dir()/inception`, keyed by the SHA-256 of the data.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import os
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Literal
from urllib.parse import urlparse

import numpy as np
import torch
from torch import nn

from trainer.checkpoint import atomic_write
from trainer.data import Dataset
from trainer.spec import TrainSpec

if TYPE_CHECKING:
    from trainer.training import Trainer

WEIGHTS_ENV = "GANFORGE_INCEPTION_WEIGHTS"
DOWNLOAD_ENV = "GANFORGE_INCEPTION_DOWNLOAD"
FEATURES = "2048"  # the pool features FID and KID are defined on
BATCH = 64  # images per Inception forward (torch-fidelity's default batch)
CHUNK = 256  # generated images per generator forward
# Bump when the preprocessing or the cache layout changes: the cache files carry it.
STATS_VERSION = "inception-2048-v1"
# KID as torch-fidelity computes it: 100 subsets of up to 1,000, cubic polynomial kernel.
KID_SUBSETS = 100
KID_SUBSET_SIZE = 1000
KID_SEED = 2020
# Real images are picked from a larger dataset with this seed, the same every run.
REFERENCE_SEED = 0


class EvaluationUnavailable(RuntimeError):
    """FID/KID cannot be computed here; `str()` is the warning the job carries."""


def _unavailable(reason: str) -> EvaluationUnavailable:
    return EvaluationUnavailable(f"eval/fid, eval/kid: not computed: {reason}")


# ---- torch-fidelity's extractor ---------------------------------------------------------

_IMPORT_LOCK = threading.Lock()


def inception_module() -> ModuleType:
    """torch-fidelity's `feature_extractor_inceptionv3`, imported without the package's
    `__init__`: that imports every extractor it has, and the CLIP, DINOv2 and VGG ones import
    torchvision, which fails to import where its wheel was built for another torch (PyPI's
    CUDA build beside a CPU torch). The Inception extractor needs no torchvision."""
    name = "torch_fidelity.feature_extractor_inceptionv3"
    with _IMPORT_LOCK:
        if name in sys.modules or "torch_fidelity" in sys.modules:
            return importlib.import_module(name)
        spec = importlib.util.find_spec("torch_fidelity")
        if spec is None:
            raise _unavailable("torch-fidelity is not installed (pip install torch-fidelity)")
        # The package module, its __init__ not run, only while its submodules are imported;
        # a later `import torch_fidelity` runs the real __init__ and reuses them.
        sys.modules["torch_fidelity"] = importlib.util.module_from_spec(spec)
        try:
            return importlib.import_module(name)
        finally:
            del sys.modules["torch_fidelity"]


def hub_weights_path() -> Path:
    """Where torch-fidelity's own download of the weights lands (torch hub's checkpoints)."""
    url = inception_module().URL_INCEPTION_V3
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(url).path).name


def _download(path: Path) -> None:
    url = inception_module().URL_INCEPTION_V3
    match = torch.hub.HASH_REGEX.search(path.name)  # the file name carries its hash prefix
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.hub.download_url_to_file(url, str(path), match.group(1) if match else None, False)


def find_weights() -> Path:
    """The Inception weights file to use, or EvaluationUnavailable saying how to get one.

    GANFORGE_INCEPTION_WEIGHTS wins; else the file torch-fidelity downloads, when torch hub's
    cache has it; else that download, only when GANFORGE_INCEPTION_DOWNLOAD=1. Nothing here
    touches the network otherwise.
    """
    configured = os.environ.get(WEIGHTS_ENV)
    if configured:
        path = Path(configured).expanduser()
        if not path.is_file():
            raise _unavailable(f"{WEIGHTS_ENV}={configured} is not a file")
        return path
    cached = hub_weights_path()
    if cached.is_file():
        return cached
    if os.environ.get(DOWNLOAD_ENV, "").strip().lower() in ("1", "true", "yes"):
        try:
            _download(cached)
        except (OSError, RuntimeError, ValueError) as exc:
            raise _unavailable(f"downloading the Inception-v3 weights failed ({exc})") from None
        return cached
    raise _unavailable(
        f"no Inception-v3 weights on this machine. Set {WEIGHTS_ENV} to a local copy of "
        f"torch-fidelity's {cached.name}, or {DOWNLOAD_ENV}=1 to let the trainer download it "
        f"once into torch hub's cache ({cached.parent})"
    )


_EXTRACTORS: dict[tuple[str, int, int, str], tuple[nn.Module, str]] = {}
_EXTRACTOR_LOCK = threading.Lock()


def load_extractor(path: Path, device: torch.device) -> tuple[nn.Module, str]:
    """torch-fidelity's Inception-v3 with the weights at `path`, in eval mode on `device`, and
    the SHA-256 of the weights file (part of the feature cache's key). Kept per process."""
    stat = path.stat()
    key = (str(path.absolute()), stat.st_size, stat.st_mtime_ns, str(device))
    with _EXTRACTOR_LOCK:
        if key not in _EXTRACTORS:
            _EXTRACTORS[key] = (_build_extractor(path).to(device), _file_sha256(path))
        return _EXTRACTORS[key]


def _build_extractor(path: Path) -> nn.Module:
    # torch-fidelity loads the file with weights_only=False (a pickle can run code): read it
    # safely first, so a file that is more than tensors is refused before the library sees it.
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # unpickling, I/O, format errors alike: no weights here
        raise _unavailable(f"{path} is not a weights file torch can load safely ({exc})") from None
    if not isinstance(state, dict):
        raise _unavailable(f"{path} holds a {type(state).__name__}, not a state dict")
    extractor_class = inception_module().FeatureExtractorInceptionV3
    try:
        return extractor_class(
            "inception-v3-compat", [FEATURES], feature_extractor_weights_path=str(path)
        )
    except RuntimeError as exc:  # load_state_dict: missing or unexpected keys, wrong shapes
        first = str(exc).strip().splitlines()[0]
        raise _unavailable(
            f"{path} does not hold torch-fidelity's Inception-v3 ({first})"
        ) from None


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# ---- images to features -----------------------------------------------------------------


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """Images in [-1, 1] (what the data and the generator's tanh hold) as uint8 0..255."""
    return ((images.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


@torch.no_grad()
def inception_features(extractor: nn.Module, images: torch.Tensor) -> np.ndarray:
    """(N, 2048) float64 features of uint8 images (N, 1 or 3, H, W); gray becomes RGB and
    torch-fidelity resizes to 299 px."""
    if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] not in (1, 3):
        raise ValueError(
            f"expected uint8 images (N, 1 or 3, H, W), got {images.dtype} {tuple(images.shape)}"
        )
    device = next(extractor.parameters()).device
    out = []
    for batch in images.split(BATCH):
        batch = batch.to(device)
        if batch.shape[1] == 1:
            batch = batch.expand(-1, 3, -1, -1)
        (features,) = extractor(batch)
        out.append(features.double().cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, 2048))


# ---- the metrics ------------------------------------------------------------------------


def frechet_distance(features_1: np.ndarray, features_2: np.ndarray) -> float:
    """The Frechet distance between Gaussians fitted to two feature sets (N1, D), (N2, D):
    |mu1 - mu2|^2 + tr S1 + tr S2 - 2 tr (S1 S2)^(1/2), with sample covariances S.

    The trace of the root is taken without a D x D matrix root: with centred features C1,
    C2, the eigenvalues of S1 S2 are the squared singular values of C1 C2^T divided by
    (N1 - 1)(N2 - 1), so tr (S1 S2)^(1/2) is their sum over sqrt((N1 - 1)(N2 - 1)). A set of
    more than D rows is first replaced by the R of its QR decomposition (D rows, the same
    singular values). Exact, and at N < D far cheaper and steadier than sqrtm of S1 S2.
    """
    n1, n2 = len(features_1), len(features_2)
    if n1 < 2 or n2 < 2 or features_1.shape[1] != features_2.shape[1]:
        raise ValueError("frechet_distance needs two sets of at least 2 features of one size")
    c1 = features_1 - features_1.mean(axis=0)
    c2 = features_2 - features_2.mean(axis=0)
    diff = features_1.mean(axis=0) - features_2.mean(axis=0)
    singular = np.linalg.svd(_rows_at_most_dim(c1) @ _rows_at_most_dim(c2).T, compute_uv=False)
    trace_root = singular.sum() / np.sqrt((n1 - 1) * (n2 - 1))
    trace_1 = np.einsum("ij,ij->", c1, c1) / (n1 - 1)
    trace_2 = np.einsum("ij,ij->", c2, c2) / (n2 - 1)
    return float(diff @ diff + trace_1 + trace_2 - 2 * trace_root)


def _rows_at_most_dim(centred: np.ndarray) -> np.ndarray:
    # C = QR with orthonormal Q: C1 C2^T and R1 R2^T have the same singular values.
    if len(centred) <= centred.shape[1]:
        return centred
    return np.linalg.qr(centred, mode="r")


def kernel_inception_distance(
    features_1: np.ndarray,
    features_2: np.ndarray,
    *,
    subsets: int = KID_SUBSETS,
    subset_size: int = KID_SUBSET_SIZE,
    seed: int = KID_SEED,
) -> float:
    """KID (Binkowski et al. 2018) as torch-fidelity computes it: the unbiased MMD^2 with the
    kernel (x.y / D + 1)^3, averaged over `subsets` random subsets of `subset_size` (capped
    at the smaller set). Can be slightly below 0 for sets from one distribution."""
    n1, n2 = len(features_1), len(features_2)
    m = min(subset_size, n1, n2)
    if m < 2:
        raise ValueError("kernel_inception_distance needs at least 2 features in each set")
    if m == n1 == n2:
        subsets = 1  # every subset is the whole of both sets: one value, computed once
    rng = np.random.RandomState(seed)
    values = []
    for _ in range(subsets):
        x = features_1[rng.choice(n1, m, replace=False)]
        y = features_2[rng.choice(n2, m, replace=False)]
        values.append(_mmd2_unbiased(x, y))
    return float(np.mean(values))


def _mmd2_unbiased(x: np.ndarray, y: np.ndarray) -> float:
    m, dim = x.shape

    def kernel(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return (a @ b.T / dim + 1) ** 3

    k_xx, k_yy = kernel(x, x), kernel(y, y)
    within = (k_xx.sum() - np.trace(k_xx) + k_yy.sum() - np.trace(k_yy)) / (m * (m - 1))
    return float(within - 2 * kernel(x, y).sum() / (m * m))


# ---- the real images' features, cached --------------------------------------------------


def data_sha256(dataset: Dataset) -> str:
    """SHA-256 of a dataset's images as uint8 (N, C, H, W) bytes, with the shape: the cache
    key of their features. Read in chunks, so a large dataset is never copied whole."""
    digest = hashlib.sha256(repr((dataset.count, *dataset.shape)).encode())
    for index in torch.arange(dataset.count).split(1024):
        digest.update(_uint8_rows(dataset, index).numpy().tobytes())
    return digest.hexdigest()


def _uint8_rows(dataset: Dataset, index: torch.Tensor) -> torch.Tensor:
    # uint8 data comes back exactly: u / 127.5 - 1 rounds back to u.
    return to_uint8(dataset.rows(index)).cpu().contiguous()


@dataclass
class RealFeatures:
    """Inception features of the real images evaluation compares against."""

    features: np.ndarray  # (N, 2048) float64
    key: str
    origin: Literal["computed", "disk", "memory"]


_REAL: dict[Path, RealFeatures] = {}
_REAL_LOCK = threading.Lock()


def clear_memory_cache() -> None:
    """Forget the real features and extractors this process holds (the disk cache stays)."""
    with _REAL_LOCK, _EXTRACTOR_LOCK:
        _REAL.clear()
        _EXTRACTORS.clear()


def real_features(
    dataset: Dataset,
    count: int,
    *,
    extractor: nn.Module,
    weights_sha256: str,
    cache_dir: Path | None = None,
) -> RealFeatures:
    """Features of `count` real images (all when there are fewer; else a fixed subset),
    from this process, else the disk cache, else computed now and stored."""
    from trainer.evaluation import default_cache_dir  # scipy and the digits code: lazily

    data_key = data_sha256(dataset)
    count = min(count, dataset.count)
    path = (
        (cache_dir or default_cache_dir())
        / "inception"
        / (f"{data_key}-n{count}-w{weights_sha256[:16]}.safetensors")
    )
    metadata = {
        "version": STATS_VERSION,
        "data_sha256": data_key,
        "weights_sha256": weights_sha256,
        "count": str(count),
    }
    with _REAL_LOCK:
        held = _REAL.get(path)
        if held is not None:
            return RealFeatures(held.features, data_key, "memory")
        features = _read_features(path, metadata)
        origin: Literal["computed", "disk"] = "disk"
        if features is None:
            origin = "computed"
            features = _reference_features(dataset, count, extractor)
            _write_features(path, features, metadata)
        if len(_REAL) >= 4:  # a worker runs many jobs: keep a few datasets, not all
            _REAL.pop(next(iter(_REAL)))
        _REAL[path] = RealFeatures(features, data_key, origin)
        return _REAL[path]


def _reference_features(dataset: Dataset, count: int, extractor: nn.Module) -> np.ndarray:
    """Features of all the images, or of a fixed random `count` of them, a chunk at a time."""
    index = torch.arange(dataset.count)
    if count < dataset.count:
        pick = torch.Generator().manual_seed(REFERENCE_SEED)
        index = torch.randperm(dataset.count, generator=pick)[:count].sort().values
    chunks = [
        inception_features(extractor, _uint8_rows(dataset, part)) for part in index.split(1024)
    ]
    return np.concatenate(chunks)


def _read_features(path: Path, metadata: dict[str, str]) -> np.ndarray | None:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as fh:
            if fh.metadata() != metadata:
                return None
            features = fh.get_tensor("features").numpy()
    except (OSError, SafetensorError, KeyError, ValueError):
        return None  # missing, partial or foreign: compute again
    if features.shape != (int(metadata["count"]), 2048) or not np.isfinite(features).all():
        return None
    return features


def _write_features(path: Path, features: np.ndarray, metadata: dict[str, str]) -> None:
    from safetensors.torch import save

    try:
        atomic_write(path, save({"features": torch.from_numpy(features)}, metadata=metadata))
    except OSError:
        pass  # read-only or full disk: evaluate anyway, compute again next process


# ---- the evaluator the trainer calls ----------------------------------------------------


def applies_to(dataset: Dataset) -> bool:
    """Whether eval/fid and eval/kid are this data's metrics: images other than digits."""
    return dataset.is_image and dataset.kind != "digits" and dataset.count > 0


def image_evaluator(
    spec: TrainSpec, dataset: Dataset, *, seed: int
) -> Callable[[Trainer], dict[str, float]]:
    """`trainer -> {"eval/fid", "eval/kid"}` over `spec.eval.samples` generated images (noise
    from `seed`) against the real ones; raises EvaluationUnavailable (the warning to carry)
    when this machine has no weights or the images cannot go through Inception-v3."""
    channels = dataset.shape[0]
    if channels not in (1, 3):
        raise _unavailable(f"Inception-v3 takes 1- or 3-channel images, the data has {channels}")
    count = spec.eval.samples
    # Inception runs where the data lives: the training device.
    extractor, weights_sha256 = load_extractor(find_weights(), dataset.device)
    reference: list[RealFeatures] = []  # computed at the first evaluation, not at start-up

    def evaluate(trainer: Trainer) -> dict[str, float]:
        if not reference:
            reference.append(
                real_features(dataset, count, extractor=extractor, weights_sha256=weights_sha256)
            )
        fake = generated_uint8(trainer, count, seed=seed)
        if fake is None:  # a diverged generator: NaN, which the trainer reports as such
            return {"eval/fid": float("nan"), "eval/kid": float("nan")}
        features = inception_features(extractor, fake)
        real = reference[0].features
        return {
            "eval/fid": frechet_distance(features, real),
            "eval/kid": kernel_inception_distance(features, real),
        }

    return evaluate


def generated_uint8(trainer: Trainer, n: int, *, seed: int) -> torch.Tensor | None:
    """n generated images as uint8 on the CPU, made CHUNK at a time (a large n in one forward
    would not fit); None when any value is NaN or infinite."""
    chunks = []
    for start in range(0, n, CHUNK):
        fake = trainer.generate(min(CHUNK, n - start), seed + start)
        if not torch.isfinite(fake).all():
            return None
        chunks.append(to_uint8(fake).cpu())
    return torch.cat(chunks)

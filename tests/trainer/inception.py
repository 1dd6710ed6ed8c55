"""A stand-in for torch-fidelity's Inception-v3 weights, for tests and benchmarks.

No Inception weights can be fetched offline, so this is torch-fidelity's own
FeatureExtractorInceptionV3 with random values (He init, so activations keep their scale
through the 94 convolutions), its state dict saved with torch.save in the format the library
loads: same keys, same shapes, same compute; only the numbers are random.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from trainer import fid


def write_stand_in_weights(folder: Path, *, seed: int = 0) -> Path:
    """Write the stand-in weights into `folder`; returns the file."""
    inception = fid.inception_module().FeatureExtractorInceptionV3

    class RandomInception(inception):
        def load_state_dict(self, state_dict, *args, **kwargs):
            return None  # keep the random initialisation

    empty = folder / "empty.pth"
    torch.save({}, empty)  # the constructor loads a file: give it one with nothing in it
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = RandomInception(
            "inception-v3-compat", [fid.FEATURES], feature_extractor_weights_path=str(empty)
        )
        for module in model.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
    path = folder / "weights-inception-stand-in.pth"
    torch.save(model.state_dict(), path)
    return path

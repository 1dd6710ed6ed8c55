from __future__ import annotations

import torch

# The networks in tests are tiny: one intra-op thread is several times faster than two
# (and does not fight other processes on a 2-core machine).
torch.set_num_threads(1)

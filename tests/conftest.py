"""Shared test set-up. Importing hqtd first installs the torchvision import guard.

The test process pins torch's CPU kernels as ``train.determinism=portable`` does (before torch
loads), so that in-process runs of the mini benchmarks, which ask for it, run as the ``hqtd``
command runs them instead of being refused.
"""

import hqtd  # noqa: F401  (before any torchvision / torchmetrics import)
from hqtd.config import Determinism
from hqtd.determinism import pin_cpu_kernels

pin_cpu_kernels(Determinism.portable)

import torch  # noqa: E402  (after the pinning)

# pytest-xdist runs one worker per core: more intra-op threads per worker only oversubscribe.
torch.set_num_threads(1)

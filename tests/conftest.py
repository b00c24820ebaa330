"""Shared test set-up. Importing hqtd first installs the torchvision import guard."""

import torch

import hqtd  # noqa: F401  (before any torchvision / torchmetrics import)

# pytest-xdist runs one worker per core: more intra-op threads per worker only oversubscribe.
torch.set_num_threads(1)

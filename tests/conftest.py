"""Shared test set-up. Importing hqtd first installs the torchvision import guard."""

import hqtd  # noqa: F401  (before any torchvision / torchmetrics import)

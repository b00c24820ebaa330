"""Training and evaluation datasets over a prepared folder (``hqtd prepare`` or ``hqtd synth``)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageFilter
from torch.utils.data import Dataset

from hqtd.config import Augmentation
from hqtd.data.formats import MANIFEST_NAME
from hqtd.data.formats.png import read_image, read_label_png, resize_image, resize_label
from hqtd.data.labels import TRAINID_TO_16_LUT, apply_lut
from hqtd.errors import HqtdError


def read_manifest(root: Path) -> dict[str, Any]:
    """Load ``root/manifest.json``.

    Raises:
        HqtdError: missing, not JSON, or without the ``splits`` key.
    """
    path = root / MANIFEST_NAME
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise HqtdError(f"{path}: not found; run `hqtd prepare` for this dataset first") from None
    except (OSError, ValueError) as error:
        raise HqtdError(f"{path}: not a readable manifest ({error})") from None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("splits"), dict):
        raise HqtdError(f"{path}: expected a JSON object with a 'splits' mapping")
    return manifest


def check_entries(entries: Any, path: Path, split: str) -> list[dict[str, str]]:
    """A split's manifest entries, checked before training starts rather than when a sample is
    first read: a non-empty list of objects, each with ``id``, ``image`` and ``label`` strings.

    Raises:
        HqtdError: an empty split, or the first bad entry and the key it lacks.
    """
    if not isinstance(entries, list) or not entries:
        raise HqtdError(f"{path}: split {split!r} lists no samples; expected at least one")
    for number, entry in enumerate(entries):
        missing = [
            key
            for key in ("id", "image", "label")
            if not isinstance(entry, dict) or not isinstance(entry.get(key), str)
        ]
        if missing:
            raise HqtdError(
                f"{path}: split {split!r} entry {number} has no {', '.join(missing)} "
                "(expected strings id, image, label)"
            )
    return entries


class SegmentationDataset(Dataset):
    """Images and trainId labels of one split of a prepared dataset.

    An item is ``dict(image=uint8 (3, H, W) RGB, label=int64 (H, W) with 255 = ignore, id=str)``.

    Args:
        root: prepared dataset folder holding ``manifest.json``.
        split: ``train`` or ``val``.
        size: (W, H) to resize to (image with ``image_resample``, label nearest); None keeps the
            stored size.
        num_classes: 19, or 16 to remap labels to the SYNTHIA 16-class space (METHOD.md §1).
        train: add METHOD.md §4's input augmentation (see :func:`flip_and_blur`).
        image_resample: the image's resize filter; :func:`image_resample` of the augmentation
            mode (bicubic in the authors' mode, METHOD.md §8.6).
    """

    def __init__(
        self,
        root: str | os.PathLike,
        split: str,
        size: tuple[int, int] | None,
        num_classes: int,
        train: bool,
        image_resample: Image.Resampling = Image.Resampling.BILINEAR,
    ) -> None:
        self.root = Path(root)
        splits = read_manifest(self.root)["splits"]
        if split not in splits:
            raise HqtdError(
                f"{self.root / MANIFEST_NAME}: no split {split!r}; it has {', '.join(splits)}"
            )
        if num_classes not in (19, 16):
            raise HqtdError(f"num_classes must be 19 or 16, got {num_classes}")
        self.samples: list[dict[str, str]] = check_entries(
            splits[split], self.root / MANIFEST_NAME, split
        )
        self.size = tuple(size) if size is not None else None
        self.num_classes = num_classes
        self.train = train
        self.image_resample = image_resample

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict[str, Any]:
        entry = self.samples[index]
        image = read_image(self.root / entry["image"])
        label = read_label_png(self.root / entry["label"])
        if self.size is not None:
            image = resize_image(image, self.size, self.image_resample)
            label = resize_label(label, self.size)
        if self.train:
            image, label = flip_and_blur(image, label)
        if self.num_classes == 16:
            label = apply_lut(TRAINID_TO_16_LUT, label)
        return {
            "image": torch.from_numpy(np.array(image)).permute(2, 0, 1).contiguous(),
            "label": torch.from_numpy(label.astype(np.int64)),
            "id": entry["id"],
        }


def image_resample(augmentation: Augmentation) -> Image.Resampling:
    """The datasets' image resize filter of an augmentation mode (labels are always nearest):
    PIL bicubic in the authors' mode (their ``_train_sync_transform`` / ``_val_sync_transform``,
    METHOD.md §8.6), bilinear in hqtd's."""
    if augmentation is Augmentation.authors:
        return Image.Resampling.BICUBIC
    return Image.Resampling.BILINEAR


def flip_and_blur(image: Image.Image, label: np.ndarray) -> tuple[Image.Image, np.ndarray]:
    """METHOD.md §4 inputs: horizontal flip p=0.5 (image and label), then with p=0.5 a PIL
    Gaussian blur of radius U(0, 1) (image only).

    Draws from torch's global generator, which DataLoader seeds per worker, so a seeded run
    repeats. Image (W, H) RGB; label (H, W) uint8.
    """
    flip, blur, radius = torch.rand(3).tolist()
    if flip < 0.5:
        image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        label = np.ascontiguousarray(label[:, ::-1])
    if blur < 0.5:
        image = image.filter(ImageFilter.GaussianBlur(radius=radius))
    return image, label

"""SYNTHIA-RAND-CITYSCAPES' layout: ``RGB/NNNNNNN.png`` (RGB) and ``GT/LABELS/NNNNNNN.png``
(16-bit 3-channel PNG, class id in the first channel, instance id in the second; PIL cannot read
these, cv2 can), numbered from 0000000; one split, ``train``."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from hqtd.data.formats.png import PngFormat, encode_png
from hqtd.data.labels import SYNTHIA_LUT, apply_lut
from hqtd.errors import HqtdError

LAYOUT = "RGB/NNNNNNN.png + GT/LABELS/NNNNNNN.png"
SPLITS = ("train",)
#: Raw class id -> trainId.
LABEL_TABLE = SYNTHIA_LUT
LABEL_PNG = PngFormat(16, (2, 6), "a 16-bit 3-channel SYNTHIA label PNG")


def sample_id(number: int) -> str:
    """The id of frame ``number`` (0, 1, ...): ``0000000``."""
    return f"{number:07d}"


def sample_paths(split: str, sample_id: str) -> tuple[str, str]:
    """(image, label) path of a sample relative to the dataset root; ``sample_id="*"`` gives the
    glob patterns of a split's files."""
    return f"RGB/{sample_id}.png", f"GT/LABELS/{sample_id}.png"


def decode_label(path: Path) -> np.ndarray:
    """Read a label file and map its class ids to trainIds in one lookup-table pass.

    Returns:
        (H, W) uint8 trainIds, 255 = ignore.

    Raises:
        HqtdError: the file cannot be decoded or is not a 16-bit 3-channel PNG.
    """
    # IMREAD_UNCHANGED keeps 16 bits; cv2 returns BGR(A), so the class (first PNG channel) is 2.
    raw = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if raw is None:
        raise HqtdError(f"{path}: cannot decode PNG")
    if raw.dtype != np.uint16 or raw.ndim != 3 or raw.shape[2] < 3:
        raise HqtdError(f"{path}: expected a 16-bit 3-channel SYNTHIA label PNG")
    return apply_lut(LABEL_TABLE, raw[:, :, 2])


def encode_label(class_ids: np.ndarray, instances: np.ndarray) -> bytes:
    """A label file of (H, W) uint16 class ids and instance ids (0 on stuff)."""
    # cv2 writes BGR: the first PNG channel (class) is the last array channel.
    return encode_png(np.stack([np.zeros_like(instances), instances, class_ids], axis=-1))

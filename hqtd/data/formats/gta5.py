"""GTA5's layout: ``images/NNNNN.png`` (RGB) and ``labels/NNNNN.png`` (8-bit palette PNG whose
indices are Cityscapes labelIds, coloured with the Cityscapes palette), numbered from 00001; one
split, ``train``. The label files are checked and decoded as Cityscapes' are
(:func:`hqtd.data.formats.raw.label_format`)."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from hqtd.data.labels import CITYSCAPES_ID_TO_TRAINID, PALETTE

LAYOUT = "images/NNNNN.png + labels/NNNNN.png"
SPLITS = ("train",)

#: The label files' palette: each labelId in its trainId's Cityscapes colour (others black).
_LABEL_PALETTE = np.zeros((256, 3), np.uint8)
_LABEL_PALETTE[list(CITYSCAPES_ID_TO_TRAINID)] = PALETTE[list(CITYSCAPES_ID_TO_TRAINID.values())]


def sample_id(number: int) -> str:
    """The id of frame ``number`` (1, 2, ...): ``00001``."""
    return f"{number:05d}"


def sample_paths(split: str, sample_id: str) -> tuple[str, str]:
    """(image, label) path of a sample relative to the dataset root; ``sample_id="*"`` gives the
    glob patterns of a split's files."""
    return f"images/{sample_id}.png", f"labels/{sample_id}.png"


def encode_label(label_ids: np.ndarray) -> bytes:
    """A label file (8-bit palette PNG) of (H, W) uint8 labelIds."""
    image = Image.frombytes("P", label_ids.shape[::-1], np.ascontiguousarray(label_ids).tobytes())
    image.putpalette(_LABEL_PALETTE.ravel().tolist())
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()

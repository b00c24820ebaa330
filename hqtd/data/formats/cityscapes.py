"""Cityscapes' layout: ``leftImg8bit/<split>/<city>/<id>_leftImg8bit.png`` (RGB) and
``gtFine/<split>/<city>/<id>_gtFine_labelIds.png`` (8-bit grayscale PNG of labelIds) with
``id = <city>_<seq>_<frame>``; splits ``train`` and ``val``.

GTA5's label files hold the same labelIds: :mod:`hqtd.data.formats.gta5` reads them with this
module's functions.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from hqtd.data.formats.png import PngFormat, encode_png, read_label_png
from hqtd.data.labels import CITYSCAPES_LUT, apply_lut

LAYOUT = (
    "leftImg8bit/{train,val}/CITY/ID_leftImg8bit.png + "
    "gtFine/{train,val}/CITY/ID_gtFine_labelIds.png"
)
SPLITS = ("train", "val")
#: Raw labelId -> trainId.
LABEL_TABLE = CITYSCAPES_LUT
LABEL_PNG = PngFormat(8, (0, 3), "an 8-bit palette or grayscale PNG of labelIds")


def sample_id(city: str, sequence: int, frame: int) -> str:
    """E.g. ``aachen_000000_000019``."""
    return f"{city}_{sequence:06d}_{frame:06d}"


def sample_paths(split: str, sample_id: str) -> tuple[str, str]:
    """(image, label) path of a sample relative to the dataset root; ``sample_id="*"`` gives the
    glob patterns of a split's files."""
    city = sample_id.split("_")[0]
    return (
        f"leftImg8bit/{split}/{city}/{sample_id}_leftImg8bit.png",
        f"gtFine/{split}/{city}/{sample_id}_gtFine_labelIds.png",
    )


def decode_label(path: Path) -> np.ndarray:
    """Read a label file and map its labelIds to trainIds in one lookup-table pass.

    Returns:
        (H, W) uint8 trainIds, 255 = ignore.

    Raises:
        HqtdError: the file cannot be decoded or is not single-channel 8-bit.
    """
    return apply_lut(LABEL_TABLE, read_label_png(path))


def encode_label(label_ids: np.ndarray) -> bytes:
    """A label file (8-bit grayscale PNG) of (H, W) uint8 labelIds."""
    return encode_png(label_ids)

"""Label spaces of METHOD.md §1 as lookup tables, each applied to a whole label map in one step.

Every table maps a raw id to a trainId (uint8) with ``IGNORE`` (255) for unmapped ids. Tables work
on numpy arrays and on torch tensors alike via :func:`apply_lut`.
"""

from __future__ import annotations

import numpy as np
import torch

IGNORE = 255

CLASS_NAMES: tuple[str, ...] = (
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign",
    "vegetation", "terrain", "sky", "person", "rider", "car", "truck", "bus", "train",
    "motorcycle", "bicycle",
)  # fmt: skip

#: Cityscapes colours, indexed by trainId (RGB).
PALETTE = np.array(
    [
        (128, 64, 128), (244, 35, 232), (70, 70, 70), (102, 102, 156), (190, 153, 153),
        (153, 153, 153), (250, 170, 30), (220, 220, 0), (107, 142, 35), (152, 251, 152),
        (70, 130, 180), (220, 20, 60), (255, 0, 0), (0, 0, 142), (0, 0, 70), (0, 60, 100),
        (0, 80, 100), (0, 0, 230), (119, 11, 32),
    ],
    dtype=np.uint8,
)  # fmt: skip

#: Cityscapes labelId -> trainId; GTA5 label PNGs use the same labelIds.
CITYSCAPES_ID_TO_TRAINID: dict[int, int] = {
    7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10, 24: 11, 25: 12,
    26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18,
}  # fmt: skip

#: SYNTHIA-RAND-CITYSCAPES class id (first channel of GT/LABELS) -> trainId.
SYNTHIA_ID_TO_TRAINID: dict[int, int] = {
    1: 10, 2: 2, 3: 0, 4: 1, 5: 4, 6: 8, 7: 5, 8: 13, 9: 7, 10: 11, 11: 18, 12: 17, 15: 6, 16: 9,
    17: 12, 18: 14, 19: 15, 20: 16, 21: 3,
}  # fmt: skip

#: The 16-class setting keeps these trainIds, renumbered 0..15 in this order.
TRAINIDS_16: tuple[int, ...] = (0, 1, 2, 3, 4, 5, 6, 7, 8, 10, 11, 12, 13, 15, 17, 18)
#: mIoU13: indices into the 16-class space (the 16 minus wall, fence, pole).
SUBSET_13_OF_16: tuple[int, ...] = (0, 1, 2, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15)


def lookup_table(mapping: dict[int, int], size: int = 256) -> np.ndarray:
    """Dense uint8 table of ``size`` entries: ``table[raw] = mapping.get(raw, IGNORE)``."""
    table = np.full(size, IGNORE, dtype=np.uint8)
    for raw, train_id in mapping.items():
        table[raw] = train_id
    return table


def apply_lut(table: np.ndarray, ids: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
    """Map every element of ``ids`` (any integer dtype, any shape) through ``table`` in one gather.

    Ids outside the table raise ``IndexError`` rather than being silently wrapped.
    """
    if isinstance(ids, torch.Tensor):
        lut = torch.as_tensor(table, device=ids.device)
        return lut[ids.long()]
    return table[np.asarray(ids).astype(np.intp, copy=False)]


CITYSCAPES_LUT = lookup_table(CITYSCAPES_ID_TO_TRAINID)
# SYNTHIA labels are 16-bit: the table covers the whole uint16 range.
SYNTHIA_LUT = lookup_table(SYNTHIA_ID_TO_TRAINID, size=1 << 16)
#: trainId (19-space, 255 kept) -> 16-class index; terrain, truck and train become ignore.
TRAINID_TO_16_LUT = lookup_table({t: i for i, t in enumerate(TRAINIDS_16)})


def class_names(num_classes: int) -> tuple[str, ...]:
    """Names of the 19- or 16-class label space."""
    if num_classes == 19:
        return CLASS_NAMES
    if num_classes == 16:
        return tuple(CLASS_NAMES[t] for t in TRAINIDS_16)
    raise ValueError(f"num_classes must be 19 or 16, got {num_classes}")


def palette(num_classes: int) -> np.ndarray:
    """RGB colours (``num_classes`` x 3, uint8) of the 19- or 16-class label space."""
    return PALETTE if num_classes == 19 else PALETTE[list(TRAINIDS_16)]


def colorize(label: np.ndarray, num_classes: int = 19) -> np.ndarray:
    """Render an HxW label map as HxWx3 RGB in the Cityscapes palette (ignore = black)."""
    colours = np.zeros((256, 3), dtype=np.uint8)
    colours[:num_classes] = palette(num_classes)
    return colours[label]

"""Boundary bands for edge enhancement (METHOD.md §5): dilate(mask) − erode(mask), 2×2 kernel.

The authors use OpenCV with a 2×2 kernel of ones and the default anchor, which for an even kernel is
element (1, 1): each output pixel looks at itself and its neighbours one row up and one column left.
OpenCV's default border leaves image edges alone (outside pixels never dilate nor erode). Here both
operations are max-pools over the same window, padding the top and left by one with 0, and
erode(mask) = 1 − dilate(1 − mask) (outside counts as inside for the erosion).
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor


def _dilate(mask: Tensor) -> Tensor:
    """2×2 max over each pixel and its up/left neighbours, outside = 0; (B, 1, H, W) float."""
    return F.max_pool2d(F.pad(mask, (1, 0, 1, 0), value=0.0), kernel_size=2, stride=1)


def boundary_band(mask: Tensor) -> Tensor:
    """§5: pixels of ``dilate(mask) − erode(mask)`` (2×2 kernel), i.e. where the window is mixed.

    Args:
        mask: (B, H, W) bool.

    Returns:
        (B, H, W) bool band around the mask's boundaries (empty for an empty or a full mask).
    """
    m = mask[:, None].float()
    dilated = _dilate(m)
    eroded = 1.0 - _dilate(1.0 - m)
    return (dilated - eroded)[:, 0] > 0

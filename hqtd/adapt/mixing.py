"""Mixing of METHOD.md §4: ClassMix source→target (step 4), target→source (step 6), y^c (step 8).

ClassMix candidates and the authors' off-by-one (``quirk_offset``)
-------------------------------------------------------------------
The candidates are the classes present in the source crop with trainId > 4 (road, sidewalk,
building, wall and fence are never pasted). The authors' code takes the sorted unique labels
``U`` (length ``n``) of the crop — their ignore value is −1, so ignore sorts *first* — counts
the ``K`` classes > 4, and indexes ``U[j + n − K − 1]`` for ``j`` in ``0..K−1``. The correct indices
are ``n − K .. n − 1`` (the last ``K`` entries); theirs are one lower, ``n − K − 1 .. n − 2``, and
index −1 wraps around to the last entry as Python indexing does. So the quirk's candidate set is

* the largest value below the first class > 4 — the largest present class among 0–4, or ignore when
  no class 0–4 is present but ignore is — plus every class > 4 except the largest;
* exactly the correct set when neither ignore nor a class 0–4 is present (the −1 wraps to the
  largest class, which the shift had dropped).

When ignore is "selected" its pixels are pasted with the ignore label, as in the authors' code.
hqtd stores ignore as 255, which sorts last; :func:`classmix_candidates` therefore orders ignore
first before shifting, reproducing the authors' set exactly. The number of classes drawn (half of
``K``, floor; 1 if ``K`` = 1; none if ``K`` = 0) and the random draw are the same in both modes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from hqtd.data.labels import IGNORE

#: Classes with a trainId above this are ClassMix candidates (road..fence are never pasted).
CLASSMIX_MIN_EXCLUSIVE = 4


def classmix_candidates(label: Tensor, quirk_offset: bool = False) -> Tensor:
    """Step 4: the classes of one source crop from which ClassMix draws.

    Args:
        label: source crop label (H, W) int64 with ``IGNORE`` = 255.
        quirk_offset: reproduce the authors' off-by-one (see the module docstring).

    Returns:
        (K,) int64 candidate class values, K = number of present classes > 4. With the quirk the
        values may include a class ≤ 4 or ``IGNORE``.
    """
    present = torch.unique(label)  # sorted ascending; IGNORE (255) sorts last
    real = present[present != IGNORE]
    num_candidates = int((real > CLASSMIX_MIN_EXCLUSIVE).sum())
    # The authors' order: ignore (their −1) first, then the classes ascending.
    ordered = torch.cat([present[present == IGNORE], real])
    first = ordered.numel() - num_candidates
    index = torch.arange(first, ordered.numel(), device=label.device)
    if quirk_offset:
        index = (index - 1) % ordered.numel()  # one too low; −1 wraps to the last entry
    return ordered[index]


def num_classes_to_paste(num_candidates: int) -> int:
    """Step 4: half (floor) of the candidates, 1 if there is exactly one, none if none."""
    return 1 if num_candidates == 1 else num_candidates // 2


def classmix_masks(
    labels: Tensor, generator: torch.Generator, quirk_offset: bool = False
) -> Tensor:
    """Step 4: ``M^s``, the pixels of the classes drawn from each source crop.

    Args:
        labels: source crop labels (B, H, W) int64.
        generator: draws which candidates are pasted (uniform, without replacement).
        quirk_offset: the authors' off-by-one candidate set (module docstring).

    Returns:
        (B, H, W) bool mask of the pasted pixels.
    """
    masks = []
    for label in labels:
        candidates = classmix_candidates(label, quirk_offset)
        order = torch.randperm(candidates.numel(), generator=generator, device=generator.device)
        chosen = candidates[order[: num_classes_to_paste(candidates.numel())].to(label.device)]
        masks.append(torch.isin(label, chosen))
    return torch.stack(masks)


def mix(mask: Tensor, inside: Tensor, outside: Tensor) -> Tensor:
    """``mask·inside + (1 − mask)·outside``, exact for images and labels alike.

    Args:
        mask: (B, H, W) bool.
        inside: (B, C, H, W) images or (B, H, W) labels taken where the mask is set.
        outside: same shape as ``inside``, taken elsewhere.
    """
    if inside.dim() == 4:
        mask = mask.unsqueeze(1)
    return torch.where(mask, inside, outside)


def target_to_source(
    mask: Tensor,
    target_image: Tensor,
    target_label: Tensor,
    source_image: Tensor,
    source_label: Tensor,
) -> tuple[Tensor, Tensor]:
    """Step 6: paste confident target pixels onto the strong source crop.

    ``x^{ts} = M^t·x̃^{t,s} + (1−M^t)·x^{s,s}``, ``y^{ts} = M^t·y^w + (1−M^t)·y^s``. With edge
    enhancement (§5) the caller passes ``M^t ∪ M^s`` and a target label carrying y^s on ``M^s``.

    Args:
        mask: (B, H, W) bool, the pixels taken from the target view.
        target_image: mixed strong target view x̃^{t,s} (B, 3, H, W).
        target_label: labels of those pixels (B, H, W), e.g. y^w.
        source_image: strong source crop x^{s,s} (B, 3, H, W).
        source_label: source crop label y^s (B, H, W).

    Returns:
        ``(x_ts, y_ts)``: (B, 3, H, W) image and (B, H, W) int64 label.
    """
    return mix(mask, target_image, source_image), mix(mask, target_label, source_label)


def contrastive_labels(
    source_mask: Tensor, source_label: Tensor, weak_label: Tensor, size: tuple[int, int]
) -> Tensor:
    """Step 8: ``y^c = M^s·y^s + (1−M^s)·y^w`` resized to the stride-8 grid (nearest).

    Args:
        source_mask: pasted-source mask M^s (B, H, W) bool.
        source_label: source crop label y^s (B, H, W).
        weak_label: confident weak-view label y^w (B, H, W), ``IGNORE`` off M^t.
        size: (h, w) of the stride-8 logits ẑ.

    Returns:
        (B, h, w) int64 labels, ``IGNORE`` where neither source nor a confident target label lies.

    The resize matches the authors' (``main.py``, the labels of the pixel loss): torch's
    ``F.interpolate(mode="nearest")`` of the crop-size labels to the stride-8 grid.
    """
    labels = mix(source_mask, source_label, weak_label)
    # Nearest interpolation as torch does it (source index floor(i·H/h)), the authors' choice.
    resized = F.interpolate(labels[:, None].float(), size=size, mode="nearest")
    return resized[:, 0].long()

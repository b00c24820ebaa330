"""Pseudo-label diagnostics during adaptation (issue 14): how good are ŷ^t, M^t and the paste?

At each validation, with ``train.diagnostics=N``, the training loop scores the method's own target
pseudo-labels on a fixed subset of N *labelled* target-train images (every N-th image of the split,
no randomness). Those labels are used for scoring only, never in a loss. What is measured, on the
full target image at ``benchmark.target_size`` (no crop, no ClassMix, no augmentation, so the same
images give comparable numbers at every validation):

- ``pseudo_label_accuracy``: the share of labelled pixels where ŷ^t (step 3, every pixel labelled)
  equals the true label;
- ``coverage`` and ``mask_coverage`` (per class c): the share of the labelled pixels (of class c)
  inside the confident mask M^t = [max_c p^w > T_max] (step 5);
- ``paste_precision`` and ``mask_precision`` (per class c): the share of the labelled pixels of M^t
  (with y^w = c) whose y^w is the true label. M^t is exactly what step 6 pastes onto the source
  crop, with the labels y^w (with §5 the paste adds source pixels M^s, which carry ground truth),
  so this is the precision of the pasted labels;
- ``paste_precision_boundary``: the same within :data:`BOUNDARY_PX` pixels of the pasted regions'
  boundaries, i.e. on the pasted pixels that have an unpasted pixel within a (2k+1)² window — the
  target-domain edges the paper credits step 6 with;
- ``paste_share``: per class c, the share of the pasted pixels labelled c (sums to 1; every pasted
  pixel counts, whatever its true label).

Which network: ŷ^t comes from the model step 3 uses (``method.pseudo_label_model``: the student by
default, the EMA copy with ``ema``) and M^t, y^w from the student, as step 5 — each in eval mode
(BatchNorm with its running statistics; in training the student normalises with the batch's).
Every fraction is in [0, 1] (not percent) and ``None`` (JSON null) where undefined, e.g. a class
absent from the subset.

Training is unchanged by the diagnostics (``tests/test_train.py`` checks byte-identical logs and
checkpoints): they run without gradient, restore every module's train/eval flag, never touch the
training data streams and draw no random numbers at all.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hqtd.adapt.pseudo import confident_labels, pseudo_labels
from hqtd.data.labels import IGNORE

#: Width k (pixels, Chebyshev distance) of the band inside the pasted regions' boundaries whose
#: label precision ``paste_precision_boundary`` reports. The logits are predicted at stride 8 and
#: upsampled bilinearly, so a predicted boundary is only placed to within about half a cell (4 px);
#: 3 px stays inside that zone and, at the mini benchmark's 192x96, away from most region interiors.
BOUNDARY_PX = 3
#: Count names of :func:`diagnostic_counts`; the per-class ones are (C,) vectors.
SCALAR_COUNTS = ("labelled", "correct", "boundary_scored", "boundary_correct")
CLASS_COUNTS = ("class_pixels", "covered", "pasted", "pasted_scored", "pasted_correct")


def near_paste_boundary(mask: Tensor, width: int = BOUNDARY_PX) -> Tensor:
    """The pasted pixels within ``width`` px of an unpasted one (the image border is no boundary).

    Args:
        mask: pasted pixels (B, H, W) bool (M^t).
        width: k, the half side of the (2k+1)² window (max-pool dilation of the unpasted pixels).

    Returns:
        (B, H, W) bool, a subset of ``mask``.
    """
    # max_pool2d pads with -inf: outside the image is neither pasted nor unpasted.
    unpasted = (~mask)[:, None].float()
    near = F.max_pool2d(unpasted, 2 * width + 1, stride=1, padding=width)[:, 0] > 0
    return mask & near


def diagnostic_counts(
    pseudo: Tensor,
    mask: Tensor,
    mask_label: Tensor,
    label: Tensor,
    num_classes: int,
    width: int = BOUNDARY_PX,
) -> dict[str, Tensor]:
    """Pixel counts of one batch, summed over its images (ratios come from summed counts).

    Args:
        pseudo: ŷ^t (B, H, W) int64, step 3.
        mask: M^t (B, H, W) bool, step 5 (the pixels step 6 pastes).
        mask_label: y^w (B, H, W) int64 on M^t (``IGNORE`` elsewhere).
        label: true target labels (B, H, W) int64, ``IGNORE`` = 255 (scoring only).
        num_classes: C.
        width: k of :func:`near_paste_boundary`.

    Returns:
        int64 counts: ``labelled``, ``correct`` (ŷ^t = y), ``boundary_scored`` and
        ``boundary_correct`` (labelled pasted pixels near the boundary, and those with y^w = y)
        as scalars; (C,) per class c: ``class_pixels`` (y = c), ``covered`` (y = c on M^t),
        ``pasted`` (y^w = c), ``pasted_scored`` (y^w = c, y labelled), ``pasted_correct``
        (y^w = c = y).
    """
    labelled = label != IGNORE
    scored = mask & labelled  # pasted pixels with a true label
    correct_paste = scored & (mask_label == label)
    boundary = near_paste_boundary(mask, width) & labelled

    def per_class(values: Tensor, where: Tensor) -> Tensor:
        return torch.bincount(values[where], minlength=num_classes)[:num_classes]

    return {
        "labelled": labelled.sum(),
        "correct": (labelled & (pseudo == label)).sum(),
        "boundary_scored": boundary.sum(),
        "boundary_correct": (boundary & correct_paste).sum(),
        "class_pixels": per_class(label, labelled),
        "covered": per_class(label, scored),
        "pasted": per_class(mask_label, mask),
        "pasted_scored": per_class(mask_label, scored),
        "pasted_correct": per_class(mask_label, correct_paste),
    }


def _ratio(numerator: Tensor, denominator: Tensor) -> float | list[float | None] | None:
    """numerator / denominator as floats, None where the denominator is 0 (elementwise)."""
    pairs = zip(numerator.reshape(-1).tolist(), denominator.reshape(-1).tolist(), strict=True)
    values = [None if d == 0 else n / d for n, d in pairs]
    return values if numerator.dim() else values[0]


def diagnostic_summary(counts: dict[str, Tensor]) -> dict[str, float | list[float | None] | None]:
    """The fractions the validation logs, from :func:`diagnostic_counts` (module docstring).

    Returns:
        ``pseudo_label_accuracy``, ``coverage``, ``paste_precision``,
        ``paste_precision_boundary`` (floats); ``mask_precision``, ``mask_coverage``,
        ``paste_share`` (per-class lists); None where undefined.
    """
    c = {name: value.cpu() for name, value in counts.items()}
    return {
        "pseudo_label_accuracy": _ratio(c["correct"], c["labelled"]),
        "coverage": _ratio(c["covered"].sum(), c["labelled"]),
        "paste_precision": _ratio(c["pasted_correct"].sum(), c["pasted_scored"].sum()),
        "paste_precision_boundary": _ratio(c["boundary_correct"], c["boundary_scored"]),
        "mask_precision": _ratio(c["pasted_correct"], c["pasted_scored"]),
        "mask_coverage": _ratio(c["covered"], c["class_pixels"]),
        "paste_share": _ratio(c["pasted"], c["pasted"].sum().expand(len(c["pasted"]))),
    }


@contextlib.contextmanager
def eval_modes(*models: nn.Module) -> Iterator[None]:
    """Every module of ``models`` in eval mode for the block, then each module's own
    ``training`` flag back (BatchNorm then uses, and does not update, its running statistics)."""
    flags = [(module, module.training) for model in models for module in model.modules()]
    for model in models:
        model.eval()
    try:
        yield
    finally:
        for module, training in flags:
            module.training = training


@torch.no_grad()
def pseudo_label_diagnostics(
    student: nn.Module,
    teacher: nn.Module,
    images: Tensor,
    labels: Tensor,
    t_max: float,
    num_classes: int,
) -> dict[str, float | list[float | None] | None]:
    """ŷ^t, M^t and the step-6 paste scored against the true labels of fixed target images.

    Args:
        student: the model being trained: M^t, y^w (step 5).
        teacher: the model step 3 pseudo-labels with (``student`` itself by default): ŷ^t.
        images: (N, 3, H, W) float in [0, 1] on the models' device.
        labels: (N, H, W) int64 true labels (``IGNORE`` = 255), same device.
        t_max: T_max of step 5.
        num_classes: C.

    Run it under the training's autocast to score the networks as they train (bf16).

    Returns:
        :func:`diagnostic_summary` of the counts summed over the N images.
    """
    total: dict[str, Tensor] = {}
    with eval_modes(student, teacher):
        for image, label in zip(images.split(1), labels.split(1), strict=True):
            logits = student(image, aux=False).main  # (1, C, H, W)
            teacher_logits = logits if teacher is student else teacher(image, aux=False).main
            mask, mask_label = confident_labels(logits.float().softmax(dim=1), t_max)
            counts = diagnostic_counts(
                pseudo_labels(teacher_logits), mask, mask_label, label, num_classes
            )
            total = {k: total[k] + v if k in total else v for k, v in counts.items()}
    return diagnostic_summary(total)

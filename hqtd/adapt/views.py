"""METHOD.md §4 step 2: the batched weak/strong views (:func:`make_views`), on any device.

The weak view of an image is a random resized crop; the strong view is the same crop plus colour
perturbation, so the two correspond pixel for pixel and the label takes the crop only::

    boxes = sample_crop_boxes(B, H, W, generator)                 # (B, 4) [top, left, h, w]
    weak = crop_resize(images, boxes, 512, "bilinear")            # (B, 3, 512, 512)
    strong = strong_augment(weak, generator)                      # (B, 3, 512, 512)
    labels = crop_resize(labels, boxes, 512, "nearest")           # (B, 512, 512)

All randomness comes from the ``torch.Generator`` passed in, so a seeded run repeats exactly.

This float version is hqtd's default (``method.augmentation: torchvision``): it keeps the image in
float, antialiases the shrinking crops and does not truncate to whole uint8 levels after each op;
:mod:`hqtd.adapt.authors_views` reproduces the authors' uint8 albumentations ops (§8.6).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as F

# The per-image kernels behind F.adjust_hue (pinned torchvision): batched, they take one hue
# shift per sample, which the public function (one factor per call) cannot.
from torchvision.transforms.v2.functional._color import _hsv_to_rgb, _rgb_to_hsv

from hqtd.adapt.authors_views import authors_views
from hqtd.config import Augmentation

# Jitter strengths: the magnitudes of albumentations' RandomBrightnessContrast and
# HueSaturationValue defaults that the authors use (±0.2 brightness and contrast, hue ±20 of
# OpenCV's 180 steps = ±1/9 turn, saturation ±30/255 ~ ±0.3 as a factor), in torchvision's
# factor form (brightness/contrast/saturation blend towards black/mean gray/gray).
BRIGHTNESS = 0.2
CONTRAST = 0.2
SATURATION = 0.3
HUE = 1.0 / 9.0
# Kernel 5 with OpenCV's default sigma for that kernel: 0.3 * ((5 - 1) / 2 - 1) + 0.8.
BLUR_KERNEL = 5
BLUR_SIGMA = 1.1

_INTERPOLATION = {
    "bilinear": InterpolationMode.BILINEAR,
    "nearest": InterpolationMode.NEAREST_EXACT,
}


class Views(NamedTuple):
    """Step 2: the weak and strong crops of a batch and the crop of its labels."""

    weak: Tensor  # (B, 3, S, S) float in [0, 1]
    strong: Tensor  # (B, 3, S, S), the weak crop plus photometric augmentation
    label: Tensor  # (B, S, S) int64 (or (B, C, S, S): the crop of a per-pixel map, see make_views)


def make_views(
    image: Tensor,
    label: Tensor,
    size: int,
    generator: torch.Generator,
    augmentation: Augmentation = Augmentation.torchvision,
) -> Views:
    """Step 2: one random resized crop per image (weak view) and its strong augmentation.

    Args:
        image: (B, 3, H, W) float in [0, 1].
        label: (B, H, W) int64 labels, or any (B, C, H, W) per-pixel map (e.g. logits), cropped
            with the same nearest sampling.
        size: crop side S (512 in the paper).
        generator: draws the boxes and the augmentation.
        augmentation: ``torchvision`` (hqtd's float ops of this module) or ``authors``
            (their uint8 albumentations ops, §8.6, :mod:`hqtd.adapt.authors_views`).

    Against the authors (``perturbations/augmentations.py``, METHOD.md §8.6): they crop the
    pseudo-label, the argmax of the full-image prediction (upsampled with ``align_corners=True``,
    §8.1, here ``model.align_corners``), with albumentations' RandomResizedCrop, OpenCV bilinear
    without antialiasing for the image and ``INTER_NEAREST`` (source index floor(i·scale), not
    pixel-centred) for the label; :func:`crop_resize` differs in both (antialiased bilinear,
    pixel-centre nearest). The authors' resize is ``method.augmentation=authors``'s.
    """
    batch, _, height, width = image.shape
    boxes = sample_crop_boxes(batch, height, width, generator)
    if augmentation is Augmentation.authors:
        return Views(*authors_views(image, label, boxes, size, generator))
    weak = crop_resize(image, boxes, size, "bilinear")
    return Views(weak, strong_augment(weak, generator), crop_resize(label, boxes, size, "nearest"))


def sample_crop_boxes(
    batch: int,
    height: int,
    width: int,
    generator: torch.Generator,
    scale: tuple[float, float] = (0.2, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    attempts: int = 10,
) -> torch.Tensor:
    """Random resized crop boxes, one per sample (METHOD.md §4 step 2).

    torchvision's RandomResizedCrop rule, vectorised: each sample tries ``attempts`` (area
    fraction, log-uniform aspect ratio) draws and keeps the first that fits in the image; if none
    fits, the centre crop with the ratio clamped to ``ratio``. A fixed number of draws per call
    keeps the generator's stream independent of which attempt succeeded.

    Returns:
        (B, 4) int64 ``[top, left, h, w]`` on the generator's device.
    """
    draws = torch.rand(batch, attempts, 4, generator=generator, device=generator.device,
                       dtype=torch.float64)  # fmt: skip
    area = height * width * (scale[0] + (scale[1] - scale[0]) * draws[..., 0])
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    aspect = torch.exp(log_lo + (log_hi - log_lo) * draws[..., 1])
    w = torch.round(torch.sqrt(area * aspect))
    h = torch.round(torch.sqrt(area / aspect))
    fits = (w >= 1) & (w <= width) & (h >= 1) & (h <= height)  # (B, attempts)
    first = fits.to(torch.uint8).argmax(dim=1, keepdim=True)  # first fitting attempt (0 if none)
    w, h = w.gather(1, first)[:, 0], h.gather(1, first)[:, 0]
    u_top = draws[..., 2].gather(1, first)[:, 0]
    u_left = draws[..., 3].gather(1, first)[:, 0]
    top = torch.floor(u_top * (height - h + 1))
    left = torch.floor(u_left * (width - w + 1))
    boxes = torch.stack([top, left, h, w], dim=1).long()
    return torch.where(
        fits.any(dim=1, keepdim=True), boxes, _centre_box(height, width, ratio, boxes)
    )


def _centre_box(
    height: int, width: int, ratio: tuple[float, float], like: torch.Tensor
) -> torch.Tensor:
    """torchvision's fallback: the largest centred crop whose ratio lies within ``ratio``."""
    in_ratio = width / height
    h, w = height, width
    if in_ratio < min(ratio):
        h = int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        w = int(round(height * max(ratio)))
    box = [(height - h) // 2, (width - w) // 2, h, w]
    return torch.tensor(box, dtype=torch.long, device=like.device).expand_as(like)


def crop_resize(x: torch.Tensor, boxes: torch.Tensor, size: int, mode: str) -> torch.Tensor:
    """Crop each sample's box and resize it to ``size`` x ``size`` (METHOD.md §4 step 2).

    Args:
        x: (B, C, H, W) float images with ``mode="bilinear"`` (antialiased when shrinking), or
            (B, H, W) integer labels with ``mode="nearest"`` (pixel-centre nearest, so a label
            stays aligned with the bilinear image crop).
        boxes: (B, 4) ``[top, left, h, w]`` from :func:`sample_crop_boxes`.

    Returns:
        (B, C, size, size) or (B, size, size), dtype of ``x``.

    The authors (albumentations RandomResizedCrop, METHOD.md §8.6) resize the crop with OpenCV:
    bilinear without antialiasing, and ``INTER_NEAREST`` for labels, whose source index is
    floor(i·scale) rather than the pixel centre; hqtd differs in both (torchvision convention).
    """
    if mode not in _INTERPOLATION:
        raise ValueError(f"mode must be 'bilinear' or 'nearest', got {mode!r}")
    labels = x.dim() == 3
    samples = x.unsqueeze(1) if labels else x
    crops = [
        F.resized_crop(sample, top, left, h, w, [size, size], interpolation=_INTERPOLATION[mode])
        for sample, (top, left, h, w) in zip(samples, boxes.tolist(), strict=True)
    ]
    out = torch.stack(crops)
    return out.squeeze(1) if labels else out


def strong_augment(
    x: torch.Tensor,
    generator: torch.Generator,
    p_jitter: float = 0.8,
    p_gray: float = 0.2,
    p_blur: float = 0.5,
) -> torch.Tensor:
    """The strong view's photometric perturbation, per sample (METHOD.md §4 step 2).

    With probability ``p_jitter`` brightness, contrast, saturation and hue jitter (in that order),
    then grayscale with ``p_gray``, then a Gaussian blur (kernel 5) with ``p_blur``. Geometry is
    untouched, so pixels keep their correspondence with the weak view. Each call draws the same
    number of values from ``generator`` whatever the outcomes.

    Args:
        x: (B, 3, h, w) float RGB in [0, 1].

    Returns:
        (B, 3, h, w) float in [0, 1].
    """
    draws = torch.rand(x.shape[0], 7, generator=generator, device=generator.device).to(x.device)

    def factor(column: int, strength: float) -> torch.Tensor:
        # Jitter factor in [1 - s, 1 + s] where the jitter applies, exactly 1 elsewhere.
        value = 1 + strength * (2 * draws[:, column] - 1)
        return torch.where(jitter, value, torch.ones_like(value)).view(-1, 1, 1, 1)

    jitter = draws[:, 0] < p_jitter
    x = (factor(1, BRIGHTNESS) * x).clamp(0, 1)  # torchvision's blend with black
    mean_gray = F.rgb_to_grayscale(x).mean(dim=(-3, -2, -1), keepdim=True)
    x = _blend(x, mean_gray, factor(2, CONTRAST))
    x = _blend(x, F.rgb_to_grayscale(x), factor(3, SATURATION))
    # Unjittered samples keep their exact values (an HSV round trip would move them by rounding).
    x = torch.where(jitter.view(-1, 1, 1, 1), _shift_hue(x, HUE * (2 * draws[:, 4] - 1)), x)
    gray = (draws[:, 5] < p_gray).view(-1, 1, 1, 1)
    x = torch.where(gray, F.rgb_to_grayscale(x, num_output_channels=3), x)
    blur = (draws[:, 6] < p_blur).view(-1, 1, 1, 1)
    blurred = F.gaussian_blur(x, [BLUR_KERNEL, BLUR_KERNEL], [BLUR_SIGMA, BLUR_SIGMA])
    return torch.where(blur, blurred, x)


def _shift_hue(x: torch.Tensor, hue: torch.Tensor) -> torch.Tensor:
    """torchvision's ``adjust_hue`` for the whole batch at once, with a hue shift per sample.

    Args:
        x: (B, 3, h, w) float RGB in [0, 1].
        hue: (B,) shifts in turns, in [-0.5, 0.5].
    """
    h, s, v = _rgb_to_hsv(x).unbind(dim=-3)
    h = (h + hue.view(-1, 1, 1)).remainder(1.0)
    return _hsv_to_rgb(torch.stack((h, s, v), dim=-3))


def _blend(x: torch.Tensor, other: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """torchvision's colour blend ``factor * x + (1 - factor) * other`` clamped to [0, 1], with a
    per-sample (B, 1, 1, 1) factor."""
    return (factor * x + (1 - factor) * other).clamp(0, 1)

"""The authors' weak/strong views, ``method.augmentation: authors`` (METHOD.md §4 step 2, §8.6).

The authors run albumentations 1.1.0 image by image on uint8 RGB arrays: the weak view is
``RandomResizedCrop(512, 512, scale=(0.2, 1))`` (OpenCV ``INTER_LINEAR`` for the image,
``INTER_NEAREST`` for the label), the strong view is that crop through
``Compose([RandomBrightnessContrast, HueSaturationValue], p=0.8)``, ``ToGray(p=0.2)`` and
``GaussianBlur(5, p=0.5)``. This module computes the same uint8 results for a whole batch with
tensor ops on the tensors' device: each op follows OpenCV's integer arithmetic or float32 formula
(tests/test_authors_augment.py checks each against OpenCV itself, to within one level)::

    boxes = albumentations_offsets(sample_crop_boxes(B, H, W, generator))  # [top, left, h, w]
    weak = crop_resize_linear(to_uint8(images), boxes, 512)      # (B, 3, 512, 512) uint8
    params = sample_strong_params(B, generator)                   # 9 draws per sample
    strong = apply_strong(weak, params)                           # (B, 3, 512, 512) uint8
    labels = crop_resize_nearest(labels, boxes, 512)              # (B, 512, 512)

hqtd's default (:mod:`hqtd.adapt.views`, ``torchvision``) stays the float version (see
there). All randomness comes from the ``torch.Generator`` passed in, a fixed number of draws per
call.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

#: RandomBrightnessContrast's defaults: alpha = 1 + U(-0.2, 0.2), beta = U(-0.2, 0.2).
CONTRAST_LIMIT = 0.2
BRIGHTNESS_LIMIT = 0.2
#: HueSaturationValue's defaults, in OpenCV's uint8 HSV levels (hue: 180 steps per turn).
HUE_SHIFT_LIMIT = 20.0
SAT_SHIFT_LIMIT = 30.0
VAL_SHIFT_LIMIT = 20.0
HUE_RANGE = 180
#: OpenCV's fixed-point RGB -> gray weights (0.299, 0.587, 0.114 in units of 2^-15).
GRAY_WEIGHTS = (9798, 19235, 3735)
GRAY_SHIFT = 15
#: GaussianBlur(5) passes sigma 0 to cv2.GaussianBlur, and OpenCV then takes its fixed binomial
#: kernels for sizes up to 7 (not the Gaussian of sigma 0.3·((k−1)/2 − 1) + 0.8): in 16ths,
#: padded to 5 taps.
BLUR_TAPS = {3: (0, 4, 8, 4, 0), 5: (1, 4, 6, 4, 1)}
#: albumentations draws the kernel size from {3, 4, 5} and turns 4 into 5.
BLUR_P_KERNEL_3 = 1 / 3
#: OpenCV's INTER_LINEAR coefficients for uint8 have 11 fractional bits.
_COEF_SCALE = 2048
#: OpenCV's RGB <-> HSV integer tables use 12 fractional bits.
_HSV_SHIFT = 12
#: Per HSV sector, the (r, g, b) entries of the table [v, v(1-s), v(1-sf), v(1-s(1-f))].
_SECTOR_RGB = ((0, 3, 1), (2, 0, 1), (1, 0, 3), (1, 2, 0), (3, 1, 0), (0, 1, 2))


def to_uint8(x: Tensor) -> Tensor:
    """§8.6: the authors' ``astype(np.uint8)`` of the de-normalised image, on hqtd's input.

    hqtd's float image is the dataset's uint8 level v divided by 255 (``images_to_float``); the
    authors' is v − mean in float32, de-normalised by adding the mean back. Both round trips give
    v back exactly for every level 0-255, so the truncation (kept as such) recovers the dataset's
    uint8 image.

    Args:
        x: (B, 3, H, W) float RGB in [0, 1].

    Returns:
        (B, 3, H, W) uint8.
    """
    return (x * 255).clamp(0, 255).to(torch.uint8)


def to_float(x: Tensor, dtype: torch.dtype = torch.float32) -> Tensor:
    """uint8 levels back to hqtd's float [0, 1] input (the authors subtract the mean instead)."""
    return x.to(dtype) / 255


def _per_sample(x: Tensor, dim: int, index: Tensor) -> Tensor:
    """``x`` (B, C, H, W) indexed along ``dim`` (2 or 3) by a (B, S) index of each sample."""
    view = [index.shape[0], 1, 1, 1]
    view[dim] = index.shape[1]
    shape = list(x.shape)
    shape[dim] = index.shape[1]
    return x.gather(dim, index.view(view).expand(shape))


def _source_step(length: Tensor, size: int) -> Tensor:
    """OpenCV's source pixels per output pixel, ``1 / (size / length)`` in float64, (B, 1).

    Tensor-by-tensor divisions: torch computes ``number / tensor`` as a reciprocal times the
    number, which rounds differently and moves the nearest sample at exact multiples."""
    length = length.double().unsqueeze(1)
    return torch.ones_like(length) / (torch.full_like(length, size) / length)


def _linear_taps(
    start: Tensor, length: Tensor, size: int, clamp_weight: bool
) -> tuple[Tensor, Tensor, Tensor]:
    """OpenCV INTER_LINEAR along one axis, crops ``[start, start + length)`` to ``size`` pixels.

    Output i samples ``f = (i + 0.5)·step − 0.5`` (rounded to float32, as OpenCV) between source
    pixels ``floor(f)`` and ``floor(f) + 1``, both clamped to the crop. Along x OpenCV also sets
    the weight to 0 where ``floor(f)`` is outside ``[0, length − 2]`` (``clamp_weight``); along y it
    keeps the weights and only clamps the rows.

    Returns:
        (B, size) low and high source indices into the full axis, and (B, size, 2) int64 weights
        of the two in 1/2048 (OpenCV's 11-bit coefficients, rounded half to even).
    """
    i = torch.arange(size, device=start.device, dtype=torch.float64)
    coord = ((i + 0.5) * _source_step(length, size) - 0.5).float()
    low = coord.floor()
    frac = coord - low
    low, last = low.long(), (length - 1).unsqueeze(1)
    if clamp_weight:
        frac = torch.where((low < 0) | (low >= last), torch.zeros_like(frac), frac)
    weights = torch.stack(((1 - frac) * _COEF_SCALE, frac * _COEF_SCALE), dim=-1).round().long()
    first = start.unsqueeze(1)
    return first + low.clamp(0).minimum(last), first + (low + 1).clamp(0).minimum(last), weights


def albumentations_offsets(boxes: Tensor) -> Tensor:
    """§8.6: where albumentations 1.1.0 actually puts a crop drawn at offset i (per axis).

    ``RandomResizedCrop`` stores ``i / (n + 1e-10)`` for the ``n + 1`` possible offsets and crops at
    ``int(n · that)``, which is i − 1 for every i ≥ 1: offset 0 is twice as likely and the last one
    never used. hqtd's sampler draws i as uniformly as ``random.randint(0, n)``; this maps it.

    Args:
        boxes: (B, 4) ``[top, left, h, w]``.

    Returns:
        (B, 4), top and left moved to ``max(i − 1, 0)``.
    """
    offsets = (boxes[:, :2] - 1).clamp_min(0)
    return torch.cat((offsets, boxes[:, 2:]), dim=1)


def crop_resize_linear(x: Tensor, boxes: Tensor, size: int) -> Tensor:
    """Step 2, §8.6: the weak view, each box cropped and resized like ``cv2.resize(crop, (size,
    size), interpolation=cv2.INTER_LINEAR)``: half-pixel centres, no antialias, uint8 out.

    OpenCV's fixed-point uint8 path: source rows are resized along x with 11-bit coefficients
    into integers ``D`` (scale 2048); two rows are combined as its vectorised loop does,
    ``((D0 >> 4)·b0 >> 16) + ((D1 >> 4)·b1 >> 16) + 2 >> 2``. Integer arithmetic, so every device
    gives the same levels.

    Args:
        x: (B, C, H, W) uint8.
        boxes: (B, 4) ``[top, left, h, w]`` (:func:`hqtd.adapt.views.sample_crop_boxes`).

    Returns:
        (B, C, size, size) uint8.
    """
    top, left, h, w = boxes.to(x.device).unbind(dim=1)
    row_low, row_high, row_weights = _linear_taps(top, h, size, clamp_weight=False)
    col_low, col_high, col_weights = _linear_taps(left, w, size, clamp_weight=True)
    image = x.int()
    col_weights = col_weights.int().unsqueeze(1).unsqueeze(1)  # (B, 1, 1, size, 2)
    # Each source row along x once (H rows; the paper's 2·size row taps are more), scale 2048.
    rows = _per_sample(image, 3, col_low) * col_weights[..., 0]
    rows += _per_sample(image, 3, col_high) * col_weights[..., 1]  # (B, C, H, size)
    upper, lower = _per_sample(rows, 2, row_low), _per_sample(rows, 2, row_high)
    row_weights = row_weights.int().view(-1, 1, size, 1, 2)
    total = ((upper >> 4) * row_weights[..., 0] >> 16) + ((lower >> 4) * row_weights[..., 1] >> 16)
    return ((total + 2) >> 2).clamp(0, 255).to(torch.uint8)


def crop_resize_nearest(x: Tensor, boxes: Tensor, size: int) -> Tensor:
    """Step 2, §8.6: the label of the weak view, like ``cv2.resize(crop, (size, size),
    interpolation=cv2.INTER_NEAREST)``: output i takes crop pixel ``floor(i·step)``
    (OpenCV's nearest, not pixel-centre).

    Args:
        x: (B, H, W) labels or any (B, C, H, W) per-pixel map (e.g. logits), any dtype.
        boxes: (B, 4) ``[top, left, h, w]``.

    Returns:
        (B, size, size) or (B, C, size, size), dtype of ``x``.
    """
    labels = x.dim() == 3
    maps = x.unsqueeze(1) if labels else x
    top, left, h, w = boxes.to(x.device).unbind(dim=1)
    i = torch.arange(size, device=x.device, dtype=torch.float64)

    def taps(start: Tensor, length: Tensor) -> Tensor:
        index = (i * _source_step(length, size)).floor().long()
        return start.unsqueeze(1) + index.minimum((length - 1).unsqueeze(1))

    out = _per_sample(_per_sample(maps, 2, taps(top, h)), 3, taps(left, w))
    return out.squeeze(1) if labels else out


def _apply_lut(x: Tensor, lut: Tensor) -> Tensor:
    """Per-sample look-up table: (B, ...) uint8 levels through (B, 256) tables."""
    return lut.gather(1, x.reshape(x.shape[0], -1).long()).view_as(x)


def brightness_contrast(x: Tensor, alpha: Tensor, beta: Tensor) -> Tensor:
    """§8.6 RandomBrightnessContrast on uint8: ``trunc(clip(v·α + β·255, 0, 255))``.

    The look-up table of albumentations 1.1.0: float32 levels times float32 α plus float32 β·255
    (brightness added, not a blend; contrast scales around 0), clipped, truncated.

    Args:
        x: (B, 3, h, w) uint8.
        alpha, beta: (B,) float.

    Returns:
        (B, 3, h, w) uint8.
    """
    levels = torch.arange(256, device=x.device, dtype=torch.float32)
    lut = levels * alpha.float().unsqueeze(1) + (beta.double() * 255).float().unsqueeze(1)
    return _apply_lut(x, lut.clamp(0, 255).to(torch.uint8))


def rgb_to_hsv(x: Tensor) -> Tensor:
    """``cv2.cvtColor(x, cv2.COLOR_RGB2HSV)`` for uint8 (§8.6): OpenCV's integer arithmetic.

    V = max, S = round(255·(V − min)/V), H in 0..179 (2° steps), via OpenCV's 12-bit tables.

    Args:
        x: (B, 3, h, w) uint8 RGB.

    Returns:
        (B, 3, h, w) uint8 HSV.
    """
    r, g, b = x.int().unbind(dim=1)
    value = torch.maximum(torch.maximum(r, g), b)
    diff = value - torch.minimum(torch.minimum(r, g), b)
    half = 1 << (_HSV_SHIFT - 1)
    sat_table = _division_table(255 << _HSV_SHIFT, x.device)
    sat = (diff * sat_table[value.long()] + half) >> _HSV_SHIFT
    sextant = torch.where(
        value == r, g - b, torch.where(value == g, b - r + 2 * diff, r - g + 4 * diff)
    )
    hue_table = _division_table((HUE_RANGE << _HSV_SHIFT) / 6, x.device)
    hue = (sextant * hue_table[diff.long()] + half) >> _HSV_SHIFT  # arithmetic: floor
    hue = torch.where(hue < 0, hue + HUE_RANGE, hue)
    return torch.stack((hue, sat, value), dim=1).to(torch.uint8)


def _division_table(numerator: float, device: torch.device) -> Tensor:
    """OpenCV's table ``round(numerator / i)`` for i = 0..255 (0 at i = 0), int32."""
    divisor = torch.arange(256, device=device, dtype=torch.float64).clamp_min(1)
    table = (torch.full_like(divisor, numerator) / divisor).round().int()  # a true division
    table[0] = 0
    return table


def hsv_to_rgb(hsv: Tensor) -> Tensor:
    """``cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)`` for uint8 (§8.6): OpenCV's float32 formula.

    OpenCV's vectorised uint8 path (every pixel but a short tail of the image) truncates the
    float result to a level; so does this.

    Args:
        hsv: (B, 3, h, w) uint8, H in 0..179.

    Returns:
        (B, 3, h, w) uint8 RGB.
    """
    hue, sat, value = hsv.float().unbind(dim=1)
    inv255 = torch.tensor(1 / 255, dtype=torch.float32)
    sat, value = sat * inv255, value * inv255
    hue = hue * torch.tensor(6 / HUE_RANGE, dtype=torch.float32)  # sextants, [0, 6)
    sector = hue.floor()
    frac = hue - sector
    table = torch.stack(
        (
            value,
            value * (1 - sat),
            value * _fused_one_minus(sat, frac),
            value * _fused_one_minus(sat, 1 - frac),
        ),
        dim=1,
    )  # (B, 4, h, w)
    picks = torch.tensor(_SECTOR_RGB, device=hsv.device)[sector.long() % 6]  # (B, h, w, 3)
    rgb = table.gather(1, picks.permute(0, 3, 1, 2))
    return (rgb * 255).clamp(0, 255).to(torch.uint8)


def _fused_one_minus(a: Tensor, b: Tensor) -> Tensor:
    """``1 − a·b`` rounded once to float32: OpenCV's x86 build fuses this multiply-add."""
    return (1 - a.double() * b.double()).float()


def shift_hsv(x: Tensor, hue: Tensor, sat: Tensor, val: Tensor) -> Tensor:
    """§8.6 HueSaturationValue on uint8: additive shifts in OpenCV's HSV, by look-up table.

    As albumentations 1.1.0: ``H' = trunc((H + hue) mod 180)``, ``S' = trunc(clip(S + sat, 0,
    255))``, ``V' = trunc(clip(V + val, 0, 255))`` with float shifts, then back to RGB.

    Args:
        x: (B, 3, h, w) uint8 RGB.
        hue, sat, val: (B,) float shifts in levels.

    Returns:
        (B, 3, h, w) uint8 RGB.
    """
    levels = torch.arange(256, device=x.device, dtype=torch.float64)
    hsv = rgb_to_hsv(x)
    luts = (
        torch.remainder(levels + hue.double().unsqueeze(1), HUE_RANGE),
        (levels + sat.double().unsqueeze(1)).clamp(0, 255),
        (levels + val.double().unsqueeze(1)).clamp(0, 255),
    )
    channels = hsv.unbind(dim=1)
    shifted = [_apply_lut(c, lut.to(torch.uint8)) for c, lut in zip(channels, luts, strict=True)]
    return hsv_to_rgb(torch.stack(shifted, dim=1))


def to_gray(x: Tensor) -> Tensor:
    """§8.6 ToGray: ``cv2.cvtColor(RGB2GRAY)`` (OpenCV's 15-bit weights, rounded) on 3 channels.

    Args:
        x: (B, 3, h, w) uint8 RGB.

    Returns:
        (B, 3, h, w) uint8, the three channels equal.
    """
    weights = torch.tensor(GRAY_WEIGHTS, device=x.device).view(1, 3, 1, 1)
    gray = ((x.long() * weights).sum(dim=1, keepdim=True) + (1 << (GRAY_SHIFT - 1))) >> GRAY_SHIFT
    return gray.to(torch.uint8).expand_as(x).contiguous()


def gaussian_blur(x: Tensor, kernel: Tensor) -> Tensor:
    """§8.6 GaussianBlur: ``cv2.GaussianBlur(x, (k, k), 0)`` per sample, k ∈ {3, 5}.

    OpenCV's binomial kernels ([1 2 1]/4, [1 4 6 4 1]/16), separable, reflect-101 border, the
    sum rounded half up as OpenCV's fixed point does. All sums are integers below 2^24, so float32
    computes them exactly.

    Args:
        x: (B, C, h, w) uint8.
        kernel: (B,) int64, 3 or 5.

    Returns:
        (B, C, h, w) uint8.
    """
    taps = torch.tensor([BLUR_TAPS[3], BLUR_TAPS[5]], device=x.device, dtype=torch.float32)
    taps = taps[(kernel.to(x.device) == 5).long()]  # (B, 5)
    padded = torch.nn.functional.pad(x.float(), (2, 2, 2, 2), mode="reflect")
    height, width = x.shape[-2:]
    rows = sum(
        taps[:, k].view(-1, 1, 1, 1) * padded[..., k : k + width] for k in range(5)
    )  # (B, C, h + 4, w)
    total = sum(taps[:, k].view(-1, 1, 1, 1) * rows[..., k : k + height, :] for k in range(5))
    return torch.floor(total / 256 + 0.5).to(torch.uint8)


class StrongParams(NamedTuple):
    """One sample's draws for :func:`apply_strong`, each (B,)."""

    jitter: Tensor  # bool: brightness/contrast and HSV shift applied (p = 0.8)
    alpha: Tensor  # contrast factor, 1 + U(-0.2, 0.2)
    beta: Tensor  # brightness, U(-0.2, 0.2) of 255
    hue: Tensor  # hue shift, U(-20, 20) of 180 levels
    sat: Tensor  # saturation shift, U(-30, 30) levels
    val: Tensor  # value shift, U(-20, 20) levels
    gray: Tensor  # bool: ToGray applied (p = 0.2)
    blur: Tensor  # bool: GaussianBlur applied (p = 0.5)
    kernel: Tensor  # int64 blur kernel size: 3 (p = 1/3) or 5


def sample_strong_params(
    batch: int,
    generator: torch.Generator,
    p_jitter: float = 0.8,
    p_gray: float = 0.2,
    p_blur: float = 0.5,
) -> StrongParams:
    """Step 2, §8.6: the strong view's random parameters, 9 float64 draws per sample whatever the
    outcomes. Magnitudes are floats as albumentations' ``random.uniform``; the blur kernel is
    ``GaussianBlur.get_params``'s pick from {3, 4, 5} with 4 turned into 5.

    Returns:
        (B,) tensors on the generator's device.
    """
    draws = torch.rand(batch, 9, generator=generator, device=generator.device,
                       dtype=torch.float64).unbind(dim=1)  # fmt: skip

    def uniform(column: int, limit: float) -> Tensor:
        return limit * (2 * draws[column] - 1)

    return StrongParams(
        jitter=draws[0] < p_jitter,
        alpha=1 + uniform(1, CONTRAST_LIMIT),
        beta=uniform(2, BRIGHTNESS_LIMIT),
        hue=uniform(3, HUE_SHIFT_LIMIT),
        sat=uniform(4, SAT_SHIFT_LIMIT),
        val=uniform(5, VAL_SHIFT_LIMIT),
        gray=draws[6] < p_gray,
        blur=draws[7] < p_blur,
        kernel=torch.where(draws[8] < BLUR_P_KERNEL_3, 3, 5),
    )


def apply_strong(x: Tensor, params: StrongParams) -> Tensor:
    """Step 2, §8.6: the strong view of the authors' weak crop, for given parameters.

    Where ``jitter``: :func:`brightness_contrast` then :func:`shift_hsv`; then :func:`to_gray`
    where ``gray``; then :func:`gaussian_blur` where ``blur``. Other samples pass unchanged.

    Args:
        x: (B, 3, h, w) uint8 RGB.
        params: from :func:`sample_strong_params`.

    Returns:
        (B, 3, h, w) uint8.
    """
    params = StrongParams(*(value.to(x.device) for value in params))

    def where(mask: Tensor, changed: Tensor, unchanged: Tensor) -> Tensor:
        return torch.where(mask.view(-1, 1, 1, 1), changed, unchanged)

    jittered = shift_hsv(
        brightness_contrast(x, params.alpha, params.beta), params.hue, params.sat, params.val
    )
    x = where(params.jitter, jittered, x)
    x = where(params.gray, to_gray(x), x)
    return where(params.blur, gaussian_blur(x, params.kernel), x)


def authors_views(
    image: Tensor, label: Tensor, boxes: Tensor, size: int, generator: torch.Generator
) -> tuple[Tensor, Tensor, Tensor]:
    """Step 2 in the authors' mode: weak crop, strong view and label crop (§8.6).

    Args:
        image: (B, 3, H, W) float in [0, 1].
        label: (B, H, W) labels or (B, C, H, W) per-pixel map.
        boxes: (B, 4) ``[top, left, h, w]`` as drawn (moved by :func:`albumentations_offsets`).

    Returns:
        weak (B, 3, S, S) and strong (B, 3, S, S) float in [0, 1] (whole levels / 255), and the
        label crop.
    """
    boxes = albumentations_offsets(boxes)
    weak = crop_resize_linear(to_uint8(image), boxes, size)
    strong = apply_strong(weak, sample_strong_params(len(weak), generator))
    label = crop_resize_nearest(label, boxes, size)
    return to_float(weak, image.dtype), to_float(strong, image.dtype), label

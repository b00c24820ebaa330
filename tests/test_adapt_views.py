"""Batched weak/strong views: crop boxes, crop-resize of images and labels, strong augmentation."""

from __future__ import annotations

import math

import pytest
import torch

from hqtd.adapt.views import crop_resize, sample_crop_boxes, strong_augment

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def generator(seed: int, device: str = "cpu") -> torch.Generator:
    return torch.Generator(device=device).manual_seed(seed)


def test_crop_boxes_inside_image_with_scale_and_ratio() -> None:
    height, width = 64, 64  # square: crops of every area fraction and ratio fit
    boxes = sample_crop_boxes(2000, height, width, generator(0))
    assert boxes.shape == (2000, 4) and boxes.dtype == torch.int64
    top, left, h, w = boxes.T
    assert (top >= 0).all() and (left >= 0).all() and (h >= 1).all() and (w >= 1).all()
    assert (top + h <= height).all() and (left + w <= width).all()
    fraction = (h * w).double() / (height * width)
    ratio = w.double() / h
    # rounding w and h to whole pixels moves area and ratio by a few percent at most
    assert fraction.min() > 0.2 * 0.93 and fraction.max() <= 1.0
    assert ratio.min() > 0.75 * 0.95 and ratio.max() < 4 / 3 * 1.05
    assert fraction.min() < 0.25 and fraction.max() > 0.95  # the whole range is used
    assert top.unique().numel() > 20 and left.unique().numel() > 20


def test_crop_boxes_fall_back_to_centre_crop() -> None:
    # 1 x 100: no box with ratio in [3/4, 4/3] and 20-100% of the area fits; torchvision's
    # fallback keeps h = 1 and w = round(1 * 4/3) = 1, centred: left = (100 - 1) // 2
    boxes = sample_crop_boxes(3, 1, 100, generator(0))
    assert boxes.tolist() == [[0, 49, 1, 1]] * 3


def test_crop_boxes_deterministic_for_a_seed() -> None:
    first = sample_crop_boxes(8, 640, 1280, generator(5))
    assert torch.equal(first, sample_crop_boxes(8, 640, 1280, generator(5)))
    assert not torch.equal(first, sample_crop_boxes(8, 640, 1280, generator(6)))


@pytest.mark.parametrize("device", DEVICES)
def test_label_and_image_cropped_identically(device: str) -> None:
    height, width, size = 40, 60, 16
    ys, xs = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    labels = (ys * width + xs).expand(3, -1, -1).to(device)  # each pixel encodes its position
    images = torch.stack([ys, xs, torch.zeros_like(ys)]).float().expand(3, -1, -1, -1).to(device)
    boxes = torch.tensor([[5, 10, 20, 30], [0, 0, 40, 60], [13, 7, 9, 50]], device=device)

    cropped = crop_resize(labels, boxes, size, "nearest")
    views = crop_resize(images, boxes, size, "bilinear")

    assert cropped.shape == (3, size, size) and cropped.dtype == torch.int64
    assert views.shape == (3, 3, size, size)
    centres = torch.arange(size, device=device) + 0.5
    for label, view, (top, left, h, w) in zip(cropped, views, boxes.tolist(), strict=True):
        # nearest at pixel centres: output pixel i samples crop row floor((i + 0.5) * h / size)
        row = top + torch.floor(centres * h / size).long()
        col = left + torch.floor(centres * w / size).long()
        assert torch.equal(label // width, row[:, None].expand(size, size))
        assert torch.equal(label % width, col[None, :].expand(size, size))
        # the bilinear image crop sees the same place, within a source pixel step
        step = max(1.0, h / size, w / size)
        assert (view[0] - label // width).abs().max() <= step
        assert (view[1] - label % width).abs().max() <= step


def test_crop_resize_rejects_unknown_mode() -> None:
    with pytest.raises(ValueError, match="mode"):
        crop_resize(torch.zeros(1, 4, 4), torch.tensor([[0, 0, 4, 4]]), 2, "bicubic")


@pytest.mark.parametrize("device", DEVICES)
def test_strong_view_equals_weak_view_with_probabilities_zero(device: str) -> None:
    images = torch.rand(2, 3, 50, 70, generator=generator(1)).to(device)
    boxes = sample_crop_boxes(2, 50, 70, generator(2, device))
    weak = crop_resize(images, boxes, 32, "bilinear")
    strong = strong_augment(weak, generator(3, device), p_jitter=0, p_gray=0, p_blur=0)
    assert torch.equal(strong, weak)


def test_jitter_on_gray_images_is_a_per_sample_brightness_factor() -> None:
    # On a uniform gray image contrast, saturation and hue change nothing: only brightness acts.
    gray = torch.full((16, 3, 8, 8), 0.5)
    out = strong_augment(gray, generator(0), p_jitter=1, p_gray=0, p_blur=0)
    factors = out[:, 0, 0, 0] / 0.5
    assert torch.allclose(out, factors.view(-1, 1, 1, 1) * 0.5 * torch.ones_like(out), atol=1e-6)
    assert factors.min() >= 0.8 - 1e-6 and factors.max() <= 1.2 + 1e-6
    assert factors.unique().numel() == 16  # one factor per sample


def test_grayscale_uses_luma_weights() -> None:
    images = torch.rand(4, 3, 6, 6, generator=generator(0))
    out = strong_augment(images, generator(1), p_jitter=0, p_gray=1, p_blur=0)
    luma = 0.2989 * images[:, 0] + 0.587 * images[:, 1] + 0.114 * images[:, 2]
    for channel in range(3):
        torch.testing.assert_close(out[:, channel], luma, atol=1e-3, rtol=0)


def test_blur_is_a_5x5_gaussian_with_reflect_padding() -> None:
    images = torch.rand(2, 3, 12, 12, generator=generator(0))
    out = strong_augment(images, generator(1), p_jitter=0, p_gray=0, p_blur=1)
    taps = torch.tensor([math.exp(-(d**2) / (2 * 1.1**2)) for d in range(-2, 3)])
    taps /= taps.sum()
    padded = torch.nn.functional.pad(images, (2, 2, 2, 2), mode="reflect")
    expected = sum(
        taps[dy] * taps[dx] * padded[..., dy : dy + 12, dx : dx + 12]
        for dy in range(5)
        for dx in range(5)
    )
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("device", DEVICES)
def test_strong_augment_deterministic_per_generator_and_in_range(device: str) -> None:
    images = torch.rand(6, 3, 20, 20, generator=generator(0)).to(device)
    first = strong_augment(images, generator(7, device))
    assert torch.equal(first, strong_augment(images, generator(7, device)))
    assert not torch.equal(first, strong_augment(images, generator(8, device)))
    assert first.shape == images.shape and first.min() >= 0 and first.max() <= 1
    assert not torch.equal(first, images)

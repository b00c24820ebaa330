"""The authors' augmentation mode (METHOD.md §8.6): each op against OpenCV's own functions on fixed
parameters, the draws' frequencies, determinism, the make_views dispatch and the bicubic dataset
resize against PIL.

The references are what albumentations 1.1.0 calls, written out here with NumPy and OpenCV:
``cv2.resize`` on the crop, ``cv2.LUT`` tables, ``cv2.cvtColor`` and ``cv2.GaussianBlur``.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image
from raw_datasets import make_cityscapes

from hqtd.adapt.authors_views import (
    StrongParams,
    albumentations_offsets,
    apply_strong,
    brightness_contrast,
    crop_resize_linear,
    crop_resize_nearest,
    gaussian_blur,
    rgb_to_hsv,
    sample_strong_params,
    shift_hsv,
    to_gray,
    to_uint8,
)
from hqtd.adapt.step import mixed_target_views
from hqtd.adapt.views import crop_resize, make_views, sample_crop_boxes, strong_augment
from hqtd.cli import main
from hqtd.config import Augmentation, MethodConfig
from hqtd.data.datasets import SegmentationDataset, image_resample
from hqtd.models.deeplabv2 import SegOutput

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
# [top, left, h, w] in a 50 x 60 image, resized to 24: a shrink, an enlargement, exactly half
# (OpenCV then switches to its area filter), the whole image, a one-pixel-wide strip, and
# w = 18 where i·w/24 hits whole pixels (where nearest rounding could go either way).
HEIGHT, WIDTH = 50, 60
BOXES = [[3, 5, 31, 37], [10, 20, 9, 13], [1, 4, 48, 48], [0, 0, 50, 60], [7, 30, 30, 1],
         [11, 2, 20, 18]]  # fmt: skip
SIZE = 24


def generator(seed: int, device: str = "cpu") -> torch.Generator:
    return torch.Generator(device=device).manual_seed(seed)


def random_images(batch: int, height: int, width: int, seed: int = 0) -> np.ndarray:
    """(B, H, W, 3) uint8: noise, and half of them smoothed (interpolation of real gradients)."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (batch, height, width, 3), dtype=np.uint8)
    for image in images[::2]:
        image[...] = cv2.GaussianBlur(image, (7, 7), 2.0)
    return images


def to_tensor(images: np.ndarray, device: str = "cpu") -> torch.Tensor:
    return torch.from_numpy(images).permute(0, 3, 1, 2).contiguous().to(device)


def to_numpy(images: torch.Tensor) -> np.ndarray:
    return images.permute(0, 2, 3, 1).cpu().numpy()


def level_difference(got: np.ndarray, expected: np.ndarray) -> int:
    return int(np.abs(got.astype(np.int64) - expected.astype(np.int64)).max())


def test_to_uint8_gives_back_every_dataset_level() -> None:
    levels = torch.arange(256, dtype=torch.uint8)
    as_input = levels.float().div(255.0).view(1, 1, 1, 256)  # hqtd.runtime.images_to_float
    assert torch.equal(to_uint8(as_input).flatten(), levels)
    # between levels it truncates as numpy's astype(np.uint8): 7.7 -> 7; out of range clips
    between = torch.tensor([7.7, 254.99, -3.0, 300.0]).div(255).view(1, 1, 1, 4)
    assert to_uint8(between).flatten().tolist() == [7, 254, 0, 255]


def test_albumentations_offsets_follow_its_start_fraction() -> None:
    # albumentations 1.1.0 keeps offset i of n + 1 as i / (n + 1e-10) and crops at int(n · that)
    for n in (0, 1, 7, 128, 767):
        drawn = torch.arange(n + 1)
        boxes = torch.stack([drawn, drawn.flip(0), torch.ones_like(drawn), drawn + 5], dim=1)
        expected = [int(n * (i / (n + 1e-10))) for i in range(n + 1)]
        moved = albumentations_offsets(boxes)
        assert moved[:, 0].tolist() == expected and moved[:, 1].tolist() == expected[::-1]
        assert torch.equal(moved[:, 2:], boxes[:, 2:])


@pytest.mark.parametrize("device", DEVICES)
def test_crop_resize_linear_matches_opencv(device: str) -> None:
    images = random_images(len(BOXES), HEIGHT, WIDTH)
    got = to_numpy(crop_resize_linear(to_tensor(images, device), torch.tensor(BOXES), SIZE))
    for image, out, (top, left, h, w) in zip(images, got, BOXES, strict=True):
        crop = image[top : top + h, left : left + w]
        expected = cv2.resize(crop, (SIZE, SIZE), interpolation=cv2.INTER_LINEAR)
        assert level_difference(out, expected) <= 1


def test_crop_resize_linear_paper_sizes_match_opencv() -> None:
    # a 1280 x 640 target image to 512 (the paper's crop), boxes drawn by hqtd's sampler
    images = random_images(2, 640, 1280, seed=1)
    boxes = sample_crop_boxes(2, 640, 1280, generator(3))
    got = to_numpy(crop_resize_linear(to_tensor(images), boxes, 512))
    for image, out, (top, left, h, w) in zip(images, got, boxes.tolist(), strict=True):
        crop = image[top : top + h, left : left + w]
        expected = cv2.resize(crop, (512, 512), interpolation=cv2.INTER_LINEAR)
        assert level_difference(out, expected) <= 1


@pytest.mark.parametrize("device", DEVICES)
def test_crop_resize_nearest_matches_opencv_labels_and_maps(device: str) -> None:
    rng = np.random.default_rng(2)
    labels = rng.integers(0, 19, (len(BOXES), HEIGHT, WIDTH)).astype(np.uint8)
    boxes = torch.tensor(BOXES)
    got = crop_resize_nearest(torch.from_numpy(labels).long().to(device), boxes, SIZE).cpu()
    for label, out, (top, left, h, w) in zip(labels, got.numpy(), BOXES, strict=True):
        crop = label[top : top + h, left : left + w]
        expected = cv2.resize(crop, (SIZE, SIZE), interpolation=cv2.INTER_NEAREST)
        np.testing.assert_array_equal(out, expected)  # labels: exact
    # a (B, C, H, W) map (logits) takes the same pixels in every channel
    maps = torch.from_numpy(labels).float().to(device).unsqueeze(1).repeat(1, 3, 1, 1)
    maps[:, 1] += 100
    cropped = crop_resize_nearest(maps, boxes, SIZE).cpu()
    assert cropped.shape == (len(BOXES), 3, SIZE, SIZE)
    torch.testing.assert_close(cropped[:, 0], got.float(), rtol=0, atol=0)
    torch.testing.assert_close(cropped[:, 1], got.float() + 100, rtol=0, atol=0)


def test_brightness_contrast_matches_the_lut_formula() -> None:
    images = random_images(2, 16, 16)
    alpha, beta = [1.13, 0.85], [-0.07, 0.19]  # the second clips at 255
    got = to_numpy(brightness_contrast(to_tensor(images), torch.tensor(alpha), torch.tensor(beta)))
    for image, out, a, b in zip(images, got, alpha, beta, strict=True):
        lut = np.arange(256, dtype=np.float32)
        lut *= a  # float32 table, contrast scales around 0
        lut += b * 255  # brightness added in levels
        expected = cv2.LUT(image, np.clip(lut, 0, 255).astype(np.uint8))
        np.testing.assert_array_equal(out, expected)


def test_rgb_to_hsv_matches_opencv() -> None:
    grays = np.repeat(np.arange(0, 256, 5, dtype=np.uint8)[:, None], 3, axis=1)
    corners = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 0], [1, 0, 0]])
    rng = np.random.default_rng(3)
    pixels = np.concatenate([grays, corners, rng.integers(0, 256, (4000, 3))]).astype(np.uint8)
    image = pixels[None]  # (1, N, 3)
    got = to_numpy(rgb_to_hsv(to_tensor(image[None])))[0]
    np.testing.assert_array_equal(got, cv2.cvtColor(image, cv2.COLOR_RGB2HSV))


@pytest.mark.parametrize("device", DEVICES)
def test_shift_hsv_matches_opencv(device: str) -> None:
    images = random_images(2, 32, 32, seed=4)
    shifts = [(-13.6, 21.4, -8.2), (17.9, -29.5, 19.3)]
    hue, sat, val = (torch.tensor(column, device=device) for column in zip(*shifts, strict=True))
    got = to_numpy(shift_hsv(to_tensor(images, device), hue, sat, val))
    for image, out, (dh, ds, dv) in zip(images, got, shifts, strict=True):
        h, s, v = cv2.split(cv2.cvtColor(image, cv2.COLOR_RGB2HSV))
        h = np.mod(h.astype(np.float64) + dh, 180).astype(np.uint8)  # additive, wraps at 180
        s = np.clip(s.astype(np.float64) + ds, 0, 255).astype(np.uint8)
        v = np.clip(v.astype(np.float64) + dv, 0, 255).astype(np.uint8)
        expected = cv2.cvtColor(cv2.merge((h, s, v)), cv2.COLOR_HSV2RGB)
        assert level_difference(out, expected) <= 1


def test_to_gray_matches_opencv() -> None:
    images = random_images(2, 16, 16, seed=5)
    got = to_numpy(to_gray(to_tensor(images)))
    for image, out in zip(images, got, strict=True):
        expected = cv2.cvtColor(cv2.cvtColor(image, cv2.COLOR_RGB2GRAY), cv2.COLOR_GRAY2RGB)
        assert level_difference(out, expected) <= 1


@pytest.mark.parametrize("device", DEVICES)
def test_gaussian_blur_matches_opencv(device: str) -> None:
    images = np.random.default_rng(6).integers(0, 256, (2, 20, 17, 3), dtype=np.uint8)  # noise
    kernels = [3, 5]
    got = to_numpy(gaussian_blur(to_tensor(images, device), torch.tensor(kernels)))
    for image, out, k in zip(images, got, kernels, strict=True):
        # albumentations passes sigma 0: OpenCV then uses its fixed kernels for k <= 7
        assert level_difference(out, cv2.GaussianBlur(image, (k, k), 0)) <= 1
        # ... which are not the Gaussian of OpenCV's sigma rule for that k
        sigma = 0.3 * ((k - 1) / 2 - 1) + 0.8
        assert level_difference(out, cv2.GaussianBlur(image, (k, k), sigma)) > 1


def test_apply_strong_matches_the_opencv_chain() -> None:
    images = random_images(4, 24, 24, seed=7)
    yes, no = torch.tensor(True), torch.tensor(False)
    # (jitter, alpha, beta, hue, sat, val, gray, blur, kernel) per sample
    rows = [
        (yes, 1.1, 0.05, 12.5, -20.3, 7.9, no, yes, 5),
        (yes, 0.9, -0.1, -18.2, 25.0, -15.5, yes, yes, 3),
        (no, 1.2, 0.2, 20.0, 30.0, 20.0, yes, no, 5),
        (no, 1.0, 0.0, 0.0, 0.0, 0.0, no, no, 3),
    ]
    params = StrongParams(*(torch.tensor(column) for column in zip(*rows, strict=True)))
    got = to_numpy(apply_strong(to_tensor(images), params))
    for image, out, (jitter, alpha, beta, dh, ds, dv, gray, blur, k) in zip(
        images, got, rows, strict=True
    ):
        expected = image
        if jitter:
            lut = np.clip(np.arange(256, dtype=np.float32) * alpha + beta * 255, 0, 255)
            expected = cv2.LUT(expected, lut.astype(np.uint8))
            h, s, v = cv2.split(cv2.cvtColor(expected, cv2.COLOR_RGB2HSV))
            h = np.mod(h + dh, 180).astype(np.uint8)
            s = np.clip(s + ds, 0, 255).astype(np.uint8)
            v = np.clip(v + dv, 0, 255).astype(np.uint8)
            expected = cv2.cvtColor(cv2.merge((h, s, v)), cv2.COLOR_HSV2RGB)
        if gray:
            expected = cv2.cvtColor(cv2.cvtColor(expected, cv2.COLOR_RGB2GRAY), cv2.COLOR_GRAY2RGB)
        if blur:
            expected = cv2.GaussianBlur(expected, (k, k), 0)
        assert level_difference(out, expected) <= 1
    np.testing.assert_array_equal(got[3], images[3])  # nothing applied: unchanged


def test_strong_params_frequencies_and_ranges() -> None:
    n = 20_000
    params = sample_strong_params(n, generator(0))
    assert abs(params.jitter.double().mean().item() - 0.8) < 0.015
    assert abs(params.gray.double().mean().item() - 0.2) < 0.015
    assert abs(params.blur.double().mean().item() - 0.5) < 0.015
    assert set(params.kernel.unique().tolist()) == {3, 5}
    assert abs((params.kernel == 3).double().mean().item() - 1 / 3) < 0.015
    # the three decisions are independent draws
    both = (params.gray & params.blur).double().mean().item()
    assert abs(both - 0.2 * 0.5) < 0.015
    ranges = [(params.alpha, 0.8, 1.2), (params.beta, -0.2, 0.2), (params.hue, -20, 20),
              (params.sat, -30, 30), (params.val, -20, 20)]  # fmt: skip
    for value, low, high in ranges:
        assert low <= value.min().item() < low + 0.01 and high - 0.01 < value.max().item() <= high
        assert value.unique().numel() > n // 2  # floats, not whole levels


def test_strong_params_draw_the_same_count_whatever_the_outcomes() -> None:
    never, always = generator(1), generator(1)
    sample_strong_params(5, never, p_jitter=0.0, p_gray=0.0, p_blur=0.0)
    sample_strong_params(5, always, p_jitter=1.0, p_gray=1.0, p_blur=1.0)
    assert torch.equal(never.get_state(), always.get_state())


def authors_views_of(seed: int) -> tuple[torch.Tensor, ...]:
    images = to_tensor(random_images(2, 40, 60)).float().div(255.0)
    labels = torch.from_numpy(np.random.default_rng(8).integers(0, 19, (2, 40, 60)))
    return make_views(images, labels, SIZE, generator(seed), Augmentation.authors)


def test_make_views_authors_mode_is_deterministic_and_whole_levels() -> None:
    first, again, other = authors_views_of(0), authors_views_of(0), authors_views_of(1)
    for a, b in zip(first, again, strict=True):
        assert torch.equal(a, b)
    assert not torch.equal(first.strong, other.strong)
    for view in (first.weak, first.strong):
        levels = view * 255
        torch.testing.assert_close(levels, levels.round(), rtol=0, atol=1e-4)


def test_make_views_authors_mode_composes_the_ops() -> None:
    images8 = to_tensor(random_images(2, 40, 60))
    labels = torch.from_numpy(np.random.default_rng(8).integers(0, 19, (2, 40, 60)))
    views = make_views(images8.float() / 255, labels, SIZE, generator(4), Augmentation.authors)
    draws = generator(4)
    boxes = albumentations_offsets(sample_crop_boxes(2, 40, 60, draws))
    weak = crop_resize_linear(images8, boxes, SIZE)
    strong = apply_strong(weak, sample_strong_params(2, draws))
    assert torch.equal(views.weak, weak.float() / 255)
    assert torch.equal(views.strong, strong.float() / 255)
    assert torch.equal(views.label, crop_resize_nearest(labels, boxes, SIZE))


def test_make_views_default_is_the_torchvision_mode() -> None:
    images = to_tensor(random_images(2, 40, 60)).float() / 255
    labels = torch.from_numpy(np.random.default_rng(8).integers(0, 19, (2, 40, 60)))
    views = make_views(images, labels, SIZE, generator(5))
    draws = generator(5)
    boxes = sample_crop_boxes(2, 40, 60, draws)
    weak = crop_resize(images, boxes, SIZE, "bilinear")
    assert torch.equal(views.weak, weak)
    assert torch.equal(views.strong, strong_augment(weak, draws))
    assert torch.equal(views.label, crop_resize(labels, boxes, SIZE, "nearest"))


class _Teacher(torch.nn.Module):
    """Logits that copy the image's red channel into every class (a per-pixel map to crop)."""

    def forward(self, x: torch.Tensor, aux: bool = True) -> SegOutput:
        return SegOutput(x[:, :1].repeat(1, 4, 1, 1), None, x[:, :1, ::8, ::8])


def test_mixed_target_views_passes_the_mode_down() -> None:
    images = to_tensor(random_images(2, 40, 60)).float() / 255
    source = {"image": images, "label": torch.zeros(2, 40, 60, dtype=torch.long)}
    target = {"image": images.flip(-1)}
    for mode in Augmentation:
        method = MethodConfig(augmentation=mode, self_training=False)
        views = mixed_target_views(_Teacher(), source, target, method, SIZE, generator(6))
        levels = views.target_weak * 255
        whole = torch.equal(levels, levels.round())
        # the authors' crop is whole uint8 levels; hqtd's antialiased bilinear crop is not
        assert whole == (mode is Augmentation.authors)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("cityscapes")
    make_cityscapes(root / "raw")
    args = ["prepare", "cityscapes", "--root", str(root / "raw"), "--out", str(root / "out")]
    assert main([*args, "--workers", "1"]) == 0
    return root / "out"


@pytest.mark.parametrize(
    ("mode", "resample"),
    [(Augmentation.authors, Image.Resampling.BICUBIC),
     (Augmentation.torchvision, Image.Resampling.BILINEAR)],
)  # fmt: skip
def test_dataset_resizes_images_with_the_modes_filter(
    prepared: Path, mode: Augmentation, resample: Image.Resampling
) -> None:
    size = (11, 6)
    dataset = SegmentationDataset(
        prepared, "train", size, num_classes=19, train=False, image_resample=image_resample(mode)
    )
    item = dataset[0]
    stored = Image.open(prepared / dataset.samples[0]["image"]).convert("RGB")
    expected = np.asarray(stored.resize(size, resample))
    np.testing.assert_array_equal(item["image"].permute(1, 2, 0).numpy(), expected)
    other = Image.Resampling.BILINEAR if resample is Image.Resampling.BICUBIC else resample.BICUBIC
    assert not np.array_equal(expected, np.asarray(stored.resize(size, other)))
    # labels stay nearest in both modes
    default = SegmentationDataset(prepared, "train", size, num_classes=19, train=False)[0]
    assert torch.equal(item["label"], default["label"])

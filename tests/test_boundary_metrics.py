"""Boundary IoU, trimap IoU, per-image counts and bootstrap intervals (issue 14).

The references are written here from OpenCV's chessboard distance transform
(``cv2.distanceTransform`` with ``DIST_C``), one class at a time, never from hqtd's max-pools.
"""

import math

import cv2
import numpy as np
import pytest
import torch

from hqtd.metrics import (
    SegmentationCounts,
    bootstrap_mean_iou,
    boundary_width,
    confusion_counts,
    paired_delta_interval,
)

IGNORE = 255


def _chessboard_distance(mask: np.ndarray, pad: int, pad_value: int) -> np.ndarray:
    """Chessboard distance of every pixel of ``mask`` to its nearest zero pixel, the image padded
    by ``pad`` pixels of ``pad_value`` (0: the border is background, 1: it is not)."""
    padded = cv2.copyMakeBorder(
        mask.astype(np.uint8), pad, pad, pad, pad, cv2.BORDER_CONSTANT, value=pad_value
    )
    dist = cv2.distanceTransform(padded, cv2.DIST_C, 3)
    return dist[pad:-pad, pad:-pad]


def _reference_boundary_iou(pred, target, num_classes, d):
    """Per-class Boundary IoU summed over images: the boundary region of a mask is its pixels
    within distance d of a background pixel, the outside of the image being background."""
    inter, union = np.zeros(num_classes), np.zeros(num_classes)
    for p, t in zip(pred, target, strict=True):
        valid = t != IGNORE
        for c in range(num_classes):
            g_mask, p_mask = (t == c) & valid, (p == c) & valid
            g_b = g_mask & (_chessboard_distance(g_mask, 1, 0) <= d)
            p_b = p_mask & (_chessboard_distance(p_mask, 1, 0) <= d)
            inter[c] += np.sum(g_b & p_b)
            union[c] += np.sum(g_b | p_b)
    with np.errstate(invalid="ignore"):
        return np.where(union > 0, inter / union, np.nan)


def _reference_trimap_iou(pred, target, num_classes, w):
    """Per-class IoU over the non-ignored pixels within distance w of another ground-truth label
    (ignore counts as a label; the image border is not a change)."""
    inter, union = np.zeros(num_classes), np.zeros(num_classes)
    for p, t in zip(pred, target, strict=True):
        band = np.zeros(t.shape, dtype=bool)
        for value in np.unique(t):
            own = t == value
            band |= own & (_chessboard_distance(own, w + 1, 1) <= w)
        band &= t != IGNORE
        for c in range(num_classes):
            inter[c] += np.sum(band & (t == c) & (p == c))
            union[c] += np.sum(band & ((t == c) | (p == c)))
    with np.errstate(invalid="ignore"):
        return np.where(union > 0, inter / union, np.nan)


def _hand_made_masks():
    """Two 14x18 label maps: blocks touching the border, a thin strip, an ignored patch, and
    class 3 absent from both ground truth and prediction (4 classes)."""
    target = np.zeros((2, 14, 18), dtype=np.int64)
    target[0, 3:9, 0:7] = 1  # touches the left border
    target[0, 10:14, 5:18] = 2  # the bottom-right corner
    target[0, 0:14, 12:13] = 1  # a one-pixel-wide strip, top to bottom
    target[0, 5:7, 9:11] = IGNORE
    target[1, :, 9:] = 2
    target[1, 4:10, 3:7] = 1
    target[1, 0:2, 0:3] = IGNORE
    pred = target.copy()
    pred[pred == IGNORE] = 1  # predictions under ignored pixels never count
    pred[0, 2:9, 0:8] = 1  # a block one pixel too large
    pred[0, 10:14, 5:9] = 0  # part of class 2 missed
    pred[0, :, 12] = 0  # the strip missed
    pred[1, :, 8:] = 2  # the vertical edge one pixel off
    pred[1, 6:12, 4:9] = 1
    return pred, target


def _hqtd_scores(pred, target, num_classes, ratio=None, widths=()):
    counts = SegmentationCounts(num_classes, boundary_ratio=ratio, trimap_widths=widths)
    for p, t in zip(pred, target, strict=True):  # one image per update, as evaluate_model
        counts.update(torch.as_tensor(p)[None], torch.as_tensor(t)[None])
    return counts


def _iou(arrays, metric):
    inter = arrays[f"{metric}_intersection"].sum(0).astype(float)
    union = arrays[f"{metric}_union"].sum(0).astype(float)
    with np.errstate(invalid="ignore"):
        return np.where(union > 0, inter / union, np.nan)


@pytest.mark.parametrize("ratio", [0.005, 0.02, 0.04])  # d = 1, 1, 2 px at 14x18
def test_boundary_iou_matches_distance_transform_reference(ratio):
    pred, target = _hand_made_masks()
    d = max(1, round(ratio * math.hypot(14, 18)))
    counts = _hqtd_scores(pred, target, 4, ratio=ratio)
    assert counts.boundary_px == d
    expected = _reference_boundary_iou(pred, target, 4, d)
    got = _iou(counts.per_image(), "boundary_iou")
    np.testing.assert_allclose(got, expected, equal_nan=True)
    assert np.isnan(got[3]) and np.isfinite(got[:3]).all()  # the empty class stays undefined
    assert got[1] < 1 and got[0] > 0


def test_boundary_iou_on_random_blocky_masks_and_larger_width():
    rng = np.random.default_rng(3)
    coarse = rng.integers(0, 5, size=(3, 6, 8))
    target = np.kron(coarse, np.ones((5, 5), dtype=np.int64))  # 30x40 blocks
    pred = np.roll(target, (1, -2), axis=(1, 2))
    target[rng.random(target.shape) < 0.05] = IGNORE
    counts = _hqtd_scores(pred, target, 6, ratio=0.06)  # d = 3 px; class 5 empty
    expected = _reference_boundary_iou(pred, target, 6, 3)
    np.testing.assert_allclose(_iou(counts.per_image(), "boundary_iou"), expected, equal_nan=True)


@pytest.mark.parametrize("width", [1, 2, 4])
def test_trimap_iou_matches_distance_transform_reference(width):
    pred, target = _hand_made_masks()
    counts = _hqtd_scores(pred, target, 4, widths=(width,))
    expected = _reference_trimap_iou(pred, target, 4, width)
    np.testing.assert_allclose(
        _iou(counts.per_image(), f"trimap{width}_iou"), expected, equal_nan=True
    )


def test_hand_computed_boundary_iou():
    """3x6, d=1 (3x3 windows; the outside of the image counts as background). Ground truth:
    class 0 in columns 0-2, class 1 in columns 3-5; prediction: class 0 in columns 0-3.
    Boundary pixels are all but those whose 3x3 window is inside one class: ground truth all
    but (1,1) and (1,4) per class (8 each); prediction class 0 all but (1,1), (1,2) (10),
    class 1 all 6. Class 0: intersection 7 (8 minus (1,2)), union 8 + 10 - 7 = 11. Class 1:
    intersection 5 (the 6 predicted minus (1,4)), union 8 + 6 - 5 = 9."""
    target = np.array([[0, 0, 0, 1, 1, 1]] * 3)
    pred = np.array([[0, 0, 0, 0, 1, 1]] * 3)
    counts = _hqtd_scores(pred[None], target[None], 2, ratio=1 / math.hypot(3, 6))
    np.testing.assert_allclose(_iou(counts.per_image(), "boundary_iou"), [7 / 11, 5 / 9])


def test_boundary_width_of_the_paper_ratio():
    assert boundary_width(640, 1280, 0.02) == 29  # 0.02 * 1431.1 = 28.6
    assert boundary_width(96, 192, 0.02) == 4  # 0.02 * 214.7 = 4.3
    assert boundary_width(10, 10, 0.02) == 1  # at least one pixel


def test_per_image_counts_sum_to_the_confusion_matrix():
    rng = np.random.default_rng(5)
    target = rng.integers(0, 7, size=(5, 11, 13))
    target[rng.random(target.shape) < 0.2] = IGNORE
    pred = rng.integers(0, 7, size=target.shape)
    counts = _hqtd_scores(pred, target, 7, ratio=0.1, widths=(2,))
    arrays = counts.per_image()
    conf = confusion_counts(pred, target, 7).numpy()
    assert arrays["iou_intersection"].shape == (5, 7)
    assert all(a.dtype == np.int64 for a in arrays.values())
    np.testing.assert_array_equal(arrays["iou_intersection"].sum(0), np.diag(conf))
    union = conf.sum(0) + conf.sum(1) - np.diag(conf)
    np.testing.assert_array_equal(arrays["iou_union"].sum(0), union)
    np.testing.assert_array_equal(counts.confusion.numpy(), conf)


def test_bootstrap_interval_coverage_on_simulated_data():
    """The 95% interval of the mean IoU holds the true value in about 95% of 400 datasets."""
    rng = np.random.default_rng(0)
    true_iou = np.array([0.6, 0.3])
    hits = 0
    for trial in range(400):
        union = rng.integers(20, 400, size=(150, 2))
        intersection = rng.binomial(union, true_iou)
        low, high = bootstrap_mean_iou(intersection, union, 500, 0.95, seed=trial)
        hits += low <= true_iou.mean() <= high
    assert 0.90 <= hits / 400 <= 0.99


def test_paired_delta_interval_coverage_and_sign():
    """Paired delta of two simulated methods on the same images: the interval holds the true
    difference about 95% of the time and excludes 0 when the difference is large."""
    rng = np.random.default_rng(1)
    hits = 0
    for trial in range(200):
        union = rng.integers(20, 400, size=(100, 1))
        a = rng.binomial(union, 0.5)
        b = rng.binomial(union, 0.52)
        delta, low, high = paired_delta_interval([(a, union, b, union)], 400, 0.95, seed=trial)
        assert low <= delta <= high
        hits += low <= 0.02 <= high
    assert 0.88 <= hits / 200 <= 0.99
    union = rng.integers(20, 400, size=(100, 1))
    far = [(rng.binomial(union, 0.4), union, rng.binomial(union, 0.6), union) for _ in range(3)]
    delta, low, high = paired_delta_interval(far, 400, 0.95)
    assert 0 < low < delta < high

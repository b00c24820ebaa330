"""§5 boundary bands: a hand-drawn mask, and OpenCV's 2x2 dilate/erode as independent reference."""

import cv2
import numpy as np
import pytest
import torch

from hqtd.adapt.edges import boundary_band


def test_band_of_a_hand_drawn_square():
    # A 2x2 square at rows 1-2, columns 1-2 of a 4x4 image. The 2x2 window of pixel (r, c) covers
    # rows r-1..r and columns c-1..c; the band is where that window holds both 0 and 1: every pixel
    # whose window touches the square but is not inside it — the square shifted by (0..1, 0..1)
    # (rows 1-3, columns 1-3) minus the pixel (2, 2) whose window is the whole square.
    mask = torch.zeros(1, 4, 4, dtype=torch.bool)
    mask[0, 1:3, 1:3] = True
    expected = [
        [0, 0, 0, 0],
        [0, 1, 1, 1],
        [0, 1, 0, 1],
        [0, 1, 1, 1],
    ]
    assert boundary_band(mask)[0].int().tolist() == expected


def test_image_border_does_not_create_a_band():
    # Mask = left column of a 3x3 image: the band is column 1 (its window mixes columns 0 and 1);
    # the image border does not erode column 0.
    mask = torch.zeros(1, 3, 3, dtype=torch.bool)
    mask[0, :, 0] = True
    assert boundary_band(mask)[0].int().tolist() == [[0, 1, 0], [0, 1, 0], [0, 1, 0]]


@pytest.mark.parametrize("fill", [False, True])
def test_uniform_masks_have_no_band(fill):
    assert not boundary_band(torch.full((2, 5, 6), fill)).any()


def test_matches_opencv_on_random_masks():
    rng = np.random.default_rng(0)
    kernel = np.ones((2, 2), np.uint8)
    for _ in range(100):
        height, width = rng.integers(1, 12, size=2)
        mask = (rng.random((height, width)) < rng.random()).astype(np.uint8)
        dilated = cv2.dilate(mask * 255, kernel) > 254
        eroded = cv2.erode(mask * 255, kernel) > 254
        expected = dilated.astype(int) - eroded.astype(int)
        got = boundary_band(torch.from_numpy(mask).bool()[None])[0].numpy().astype(int)
        np.testing.assert_array_equal(got, expected)

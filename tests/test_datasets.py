"""SegmentationDataset on a prepared folder: shapes, resizing, 16-class remap, augmentation."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from raw_datasets import (
    CITYSCAPES_TO_TRAIN,
    SIZE,
    all_8bit_ids,
    expected_16,
    expected_trainids,
    make_cityscapes,
)

from hqtd.cli import main
from hqtd.data.datasets import SegmentationDataset, flip_and_blur
from hqtd.errors import HqtdError


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("cityscapes")
    make_cityscapes(root / "raw")
    args = ["prepare", "cityscapes", "--root", str(root / "raw"), "--out", str(root / "out")]
    assert main([*args, "--workers", "1"]) == 0
    return root / "out"


def test_item_shapes_and_types(prepared: Path) -> None:
    dataset = SegmentationDataset(prepared, "val", None, num_classes=19, train=False)
    assert len(dataset) == 2
    item = dataset[0]
    assert item["image"].shape == (3, SIZE, SIZE) and item["image"].dtype == torch.uint8
    assert item["label"].shape == (SIZE, SIZE) and item["label"].dtype == torch.int64
    assert item["id"] == "frankfurt_000000_000019"
    raw = np.asarray(Image.open(prepared / dataset.samples[0]["image"]))
    np.testing.assert_array_equal(item["image"].permute(1, 2, 0).numpy(), raw)


def test_size_resizes_image_and_label(prepared: Path) -> None:
    item = SegmentationDataset(prepared, "train", (8, 4), num_classes=19, train=False)[0]
    assert item["image"].shape == (3, 4, 8)
    full = expected_trainids(all_8bit_ids(), CITYSCAPES_TO_TRAIN)
    # nearest 16 -> 8 columns, 16 -> 4 rows samples source pixel (2j + 1, 4i + 2)
    np.testing.assert_array_equal(item["label"].numpy(), full[2::4, 1::2])


def test_16_class_remap(prepared: Path) -> None:
    item = SegmentationDataset(prepared, "train", None, num_classes=16, train=False)[0]
    full = expected_trainids(all_8bit_ids(), CITYSCAPES_TO_TRAIN)
    np.testing.assert_array_equal(item["label"].numpy(), expected_16(full))


def test_train_flip_moves_image_and_label_together(prepared: Path) -> None:
    plain = SegmentationDataset(prepared, "train", None, num_classes=19, train=False)[0]
    dataset = SegmentationDataset(prepared, "train", None, num_classes=19, train=True)
    torch.manual_seed(0)
    flips = 0
    for _ in range(12):
        item = dataset[0]
        flipped = torch.equal(item["label"], plain["label"].flip(-1))
        assert flipped or torch.equal(item["label"], plain["label"])
        original, mirrored = plain["image"].float(), plain["image"].flip(-1).float()
        same, other = (mirrored, original) if flipped else (original, mirrored)
        # the image (blurred or not) is nearest the version flipped like the label
        image = item["image"].float()
        assert (image - same).abs().mean() < (image - other).abs().mean()
        flips += flipped
    assert 0 < flips < 12


def test_flip_and_blur_draws_from_torch_seed() -> None:
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (8, 8, 3), dtype=np.uint8))
    label = np.arange(64, dtype=np.uint8).reshape(8, 8)
    runs = []
    for _ in range(2):
        torch.manual_seed(3)
        runs.append([flip_and_blur(image, label) for _ in range(4)])
    for (image_a, label_a), (image_b, label_b) in zip(*runs, strict=True):
        assert np.array_equal(np.asarray(image_a), np.asarray(image_b))
        assert np.array_equal(label_a, label_b)


def test_missing_manifest_and_unknown_split(prepared: Path, tmp_path: Path) -> None:
    with pytest.raises(HqtdError, match="manifest.json: not found"):
        SegmentationDataset(tmp_path, "train", None, num_classes=19, train=False)
    with pytest.raises(HqtdError, match="no split 'test'; it has train, val"):
        SegmentationDataset(prepared, "test", None, num_classes=19, train=False)
    with pytest.raises(HqtdError, match="num_classes must be 19 or 16"):
        SegmentationDataset(prepared, "val", None, num_classes=13, train=False)
    (tmp_path / "manifest.json").write_text(json.dumps({"dataset": "x"}))
    with pytest.raises(HqtdError, match="'splits'"):
        SegmentationDataset(tmp_path, "train", None, num_classes=19, train=False)

"""Tiny raw datasets in the real on-disk formats of GTA5, SYNTHIA and Cityscapes, for the tests.

Each first sample's label holds every raw id the format can express in a 16x16 map (0..255 for the
8-bit formats; 0..199 then 1000..1055 for SYNTHIA's 16-bit ids), so one file checks the whole
id -> trainId table. The tables below are typed from METHOD.md §1, independently of hqtd.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
from PIL import Image

SIZE = 16  # images and labels are SIZE x SIZE unless a test says otherwise

CITYSCAPES_TO_TRAIN = {
    7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10, 24: 11, 25: 12,
    26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18,
}  # fmt: skip
SYNTHIA_TO_TRAIN = {
    1: 10, 2: 2, 3: 0, 4: 1, 5: 4, 6: 8, 7: 5, 8: 13, 9: 7, 10: 11, 11: 18, 12: 17, 15: 6, 16: 9,
    17: 12, 18: 14, 19: 15, 20: 16, 21: 3,
}  # fmt: skip
KEPT_16 = [0, 1, 2, 3, 4, 5, 6, 7, 8, 10, 11, 12, 13, 15, 17, 18]

CITIES = {"train": {"aachen": 2, "bochum": 1}, "val": {"frankfurt": 2}}


def expected_trainids(raw: np.ndarray, table: dict[int, int]) -> np.ndarray:
    """Per-pixel reference mapping, one dictionary lookup per pixel."""
    return np.vectorize(lambda v: table.get(int(v), 255), otypes=[np.uint8])(raw)


def expected_16(train_ids: np.ndarray) -> np.ndarray:
    """19-class trainIds -> 16-class indices, one lookup per pixel."""
    index = {t: i for i, t in enumerate(KEPT_16)}
    return np.vectorize(lambda v: index.get(int(v), 255), otypes=[np.uint8])(train_ids)


def write_rgb(path: Path, rng: np.random.Generator, size: tuple[int, int] = (SIZE, SIZE)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)


def write_palette_label(path: Path, ids: np.ndarray) -> None:
    """8-bit palette PNG whose indices are the ids (GTA5's format)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.frombytes("P", (ids.shape[1], ids.shape[0]), ids.astype(np.uint8).tobytes())
    image.putpalette(np.random.default_rng(0).integers(0, 256, 768, dtype=np.uint8).tobytes())
    image.save(path)


def write_gray_label(path: Path, ids: np.ndarray) -> None:
    """8-bit grayscale PNG of ids (Cityscapes' labelIds format)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(ids.astype(np.uint8)).save(path)


def write_synthia_label(path: Path, class_ids: np.ndarray, rng: np.random.Generator) -> None:
    """16-bit 3-channel PNG, class id in the first PNG channel, an instance id in the second."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rgb = np.zeros((*class_ids.shape, 3), dtype=np.uint16)
    rgb[..., 0] = class_ids
    rgb[..., 1] = rng.integers(0, 60000, class_ids.shape)
    assert cv2.imwrite(str(path), rgb[..., ::-1].copy())  # cv2 writes BGR


def all_8bit_ids() -> np.ndarray:
    return np.arange(256, dtype=np.uint8).reshape(SIZE, SIZE)


def all_synthia_ids() -> np.ndarray:
    ids = np.arange(256, dtype=np.uint16)
    ids[200:] += 800  # 1000..1055: ids above 8 bits must map to ignore, not wrap around
    return ids.reshape(SIZE, SIZE)


def make_gta5(root: Path, n: int = 3, seed: int = 0) -> list[str]:
    """``images/NNNNN.png`` + ``labels/NNNNN.png``; returns the ids."""
    rng = np.random.default_rng(seed)
    ids = [f"{i:05d}" for i in range(1, n + 1)]
    for k, sample in enumerate(ids):
        write_rgb(root / "images" / f"{sample}.png", rng)
        raw = all_8bit_ids() if k == 0 else rng.integers(0, 40, (SIZE, SIZE))
        write_palette_label(root / "labels" / f"{sample}.png", raw)
    return ids


def make_synthia(root: Path, n: int = 3, seed: int = 0) -> list[str]:
    """``RGB/NNNNNNN.png`` + ``GT/LABELS/NNNNNNN.png``; returns the ids."""
    rng = np.random.default_rng(seed)
    ids = [f"{i:07d}" for i in range(n)]
    for k, sample in enumerate(ids):
        write_rgb(root / "RGB" / f"{sample}.png", rng)
        raw = all_synthia_ids() if k == 0 else rng.integers(0, 23, (SIZE, SIZE))
        write_synthia_label(root / "GT" / "LABELS" / f"{sample}.png", raw, rng)
    return ids


def cityscapes_paths(root: Path, split: str, sample: str) -> tuple[Path, Path]:
    city = sample.split("_")[0]
    image = root / "leftImg8bit" / split / city / f"{sample}_leftImg8bit.png"
    label = root / "gtFine" / split / city / f"{sample}_gtFine_labelIds.png"
    return image, label


def make_cityscapes(root: Path, seed: int = 0) -> dict[str, list[str]]:
    """The real naming, with the other gtFine files present; returns the ids per split."""
    rng = np.random.default_rng(seed)
    ids: dict[str, list[str]] = {}
    for split, cities in CITIES.items():
        ids[split] = []
        for city, count in cities.items():
            for frame in range(count):
                sample = f"{city}_{frame:06d}_{19 + frame:06d}"
                image, label = cityscapes_paths(root, split, sample)
                write_rgb(image, rng)
                first = split == "train" and not ids[split]
                raw = all_8bit_ids() if first else rng.integers(0, 34, (SIZE, SIZE))
                write_gray_label(label, raw)
                write_gray_label(label.with_name(f"{sample}_gtFine_instanceIds.png"), raw)
                label.with_name(f"{sample}_gtFine_polygons.json").write_text("{}")
                ids[split].append(sample)
    return {split: sorted(samples) for split, samples in ids.items()}

"""Prepared datasets for the data-path and adaptation-step benches, made once and cached.

Raw samples are written in GTA5's layout (``images/NNNNN.png``, ``labels/NNNNN.png`` palette PNGs
of labelIds) and turned into a prepared folder by ``hqtd prepare``, i.e. through the same code as
real data. Images are smooth random fields plus a little noise, so that PNG sizes and decode
times are close to photographs rather than to incompressible noise; labels are piecewise
constant regions of labelIds.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from hqtd.data.formats import MANIFEST_NAME
from hqtd.data.labels import CITYSCAPES_ID_TO_TRAINID

#: Bump when the drawing changes: cached fixtures are then made again.
FIXTURE_VERSION = 1
CACHE = Path(tempfile.gettempdir()) / f"hqtd-bench-v{FIXTURE_VERSION}"
LABEL_IDS = np.array([0, *CITYSCAPES_ID_TO_TRAINID], dtype=np.uint8)  # void and the 19 classes


def smooth_image(rng: np.random.Generator, size: tuple[int, int]) -> np.ndarray:
    """A (H, W, 3) uint8 image of ``size`` = (W, H): a smooth random field plus a little noise
    (PNG size and decode time close to a photograph's, unlike incompressible noise)."""
    width, height = size
    coarse = rng.integers(0, 256, (max(2, height // 24), max(2, width // 24), 3), np.uint8)
    smooth = cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC)
    return np.clip(smooth + rng.normal(0, 3, smooth.shape), 0, 255).astype(np.uint8)


def blocky_label(rng: np.random.Generator, size: tuple[int, int], values: np.ndarray) -> np.ndarray:
    """A (H, W) map of ``size`` = (W, H): regions of about 48 px, each one of ``values``."""
    width, height = size
    regions = rng.choice(values, (max(2, height // 48), max(2, width // 48)))
    return cv2.resize(regions, (width, height), interpolation=cv2.INTER_NEAREST)


def write_gta5(root: Path, count: int, size: tuple[int, int], seed: int = 0) -> None:
    """``count`` raw GTA5-layout samples of ``size`` = (W, H) under ``root``."""
    rng = np.random.default_rng(seed)
    width, height = size
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "labels").mkdir(parents=True, exist_ok=True)
    for index in range(1, count + 1):
        Image.fromarray(smooth_image(rng, size)).save(root / "images" / f"{index:05d}.png")
        label = blocky_label(rng, size, LABEL_IDS)
        palette_png = Image.frombytes("P", (width, height), label.tobytes())
        palette_png.putpalette(rng.integers(0, 256, 768, dtype=np.uint8).tobytes())
        palette_png.save(root / "labels" / f"{index:05d}.png")


def prepared_gta5(
    name: str, count: int, size: tuple[int, int], resize: tuple[int, int] | None = None
) -> Path:
    """A prepared folder of ``count`` samples drawn at ``size`` (W, H), pre-resized to ``resize``
    by ``hqtd prepare --resize`` if given; made on first use under :data:`CACHE`.

    Returns:
        The prepared folder (holding ``manifest.json``).
    """
    raw = CACHE / "raw" / f"gta5_{count}_{size[0]}x{size[1]}"
    out = CACHE / "prepared" / name
    if (out / MANIFEST_NAME).exists():
        return out
    if not (raw / "labels" / f"{count:05d}.png").exists():
        write_gta5(raw, count, size)
    command = [str(Path(sys.executable).parent / "hqtd"), "prepare", "gta5", "--root", str(raw),
               "--out", str(out), "--workers", "1"]  # fmt: skip
    if resize is not None:
        command += ["--resize", f"{resize[0]}x{resize[1]}"]
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    return out

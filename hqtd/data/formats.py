"""The raw on-disk layouts of GTA5, SYNTHIA-RAND-CITYSCAPES and Cityscapes (METHOD.md §1).

One place knows each layout: which folders hold images and labels, how a sample id is spelled,
what a label PNG must look like, and how its raw ids become trainIds. Everything else
(``hqtd prepare``, the training datasets) goes through these functions.

Layouts (``ROOT`` is the dataset folder):

- GTA5: ``images/NNNNN.png`` (RGB) and ``labels/NNNNN.png`` (8-bit palette PNG, index = labelId).
- SYNTHIA: ``RGB/NNNNNNN.png`` and ``GT/LABELS/NNNNNNN.png`` (16-bit, 3 channels, class id in the
  first channel; PIL cannot read these, cv2 can).
- Cityscapes: ``leftImg8bit/{train,val}/<city>/<id>_leftImg8bit.png`` and
  ``gtFine/{train,val}/<city>/<id>_gtFine_labelIds.png`` with ``id = <city>_<seq>_<frame>``.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from hqtd.data.labels import CITYSCAPES_LUT, SYNTHIA_LUT, apply_lut
from hqtd.errors import HqtdError

DATASETS = ("gta5", "synthia", "cityscapes")
LAYOUTS = {
    "gta5": "images/NNNNN.png + labels/NNNNN.png",
    "synthia": "RGB/NNNNNNN.png + GT/LABELS/NNNNNNN.png",
    "cityscapes": "leftImg8bit/{train,val}/CITY/ID_leftImg8bit.png + "
    "gtFine/{train,val}/CITY/ID_gtFine_labelIds.png",
}

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# Every complete PNG ends with an empty IEND chunk: length 0, type, CRC.
_PNG_TRAILER = b"\x00\x00\x00\x00IEND\xaeB`\x82"
_COLOUR_TYPES = {0: "grayscale", 2: "RGB", 3: "palette", 4: "grayscale+alpha", 6: "RGBA"}

_CITYSCAPES_IMAGE_SUFFIX = "_leftImg8bit.png"
_CITYSCAPES_LABEL_SUFFIX = "_gtFine_labelIds.png"


@dataclass(frozen=True)
class RawSample:
    """One image and its label in a raw dataset."""

    id: str
    image: Path
    label: Path


@dataclass(frozen=True)
class PngHeader:
    """What a PNG's IHDR chunk says about it."""

    width: int
    height: int
    bit_depth: int
    colour_type: int

    @property
    def size(self) -> tuple[int, int]:
        """(width, height)."""
        return self.width, self.height

    def describe(self) -> str:
        """E.g. ``1914x1052 8-bit palette``."""
        kind = _COLOUR_TYPES.get(self.colour_type, f"colour type {self.colour_type}")
        return f"{self.width}x{self.height} {self.bit_depth}-bit {kind}"


def read_png_header(path: Path) -> PngHeader:
    """Read a PNG's size and pixel format without decoding it, and check the file is complete.

    Reads the 33-byte head and the 12-byte tail only, so a whole dataset can be checked before
    anything is converted. A truncated file lacks the IEND trailer.

    Raises:
        HqtdError: unreadable, not a PNG, or truncated.
    """
    try:
        with open(path, "rb") as handle:
            head = handle.read(33)
            handle.seek(0, 2)
            length = handle.tell()
            handle.seek(max(length - len(_PNG_TRAILER), 0))
            tail = handle.read()
    except OSError as error:
        raise HqtdError(f"{path}: cannot read ({error.strerror})") from None
    if len(head) < 33 or not head.startswith(_PNG_SIGNATURE) or head[12:16] != b"IHDR":
        raise HqtdError(f"{path}: not a PNG file")
    if tail != _PNG_TRAILER:
        raise HqtdError(f"{path}: truncated PNG (no IEND chunk at the end)")
    width, height, bit_depth, colour_type = struct.unpack(">IIBB", head[16:26])
    return PngHeader(width, height, bit_depth, colour_type)


def check_image_header(header: PngHeader, path: Path) -> None:
    """An image must be an 8-bit PNG (RGB, RGBA, palette or grayscale; read as RGB).

    Raises:
        HqtdError: naming the file and what was found.
    """
    if header.bit_depth != 8:
        raise HqtdError(f"{path}: expected an 8-bit RGB PNG image, got {header.describe()}")


def check_label_header(dataset: str, header: PngHeader, path: Path) -> None:
    """A raw label must be in its dataset's format (see the module docstring).

    Raises:
        HqtdError: naming the file, what was expected and what was found.
    """
    if dataset == "synthia":
        if header.bit_depth != 16 or header.colour_type not in (2, 6):
            raise HqtdError(
                f"{path}: expected a 16-bit 3-channel SYNTHIA label PNG, got {header.describe()}"
            )
    elif header.bit_depth != 8 or header.colour_type not in (0, 3):
        raise HqtdError(
            f"{path}: expected an 8-bit palette or grayscale PNG of labelIds, "
            f"got {header.describe()}"
        )


def label_table(dataset: str) -> np.ndarray:
    """The lookup table from a dataset's raw label ids to trainIds (see :func:`decode_label`)."""
    return SYNTHIA_LUT if dataset == "synthia" else CITYSCAPES_LUT


def decode_label(dataset: str, path: Path) -> np.ndarray:
    """Read a raw label file and map its ids to trainIds in one lookup-table pass.

    Returns:
        (H, W) uint8 trainIds, 255 = ignore.

    Raises:
        HqtdError: the file cannot be decoded or has the wrong pixel format.
    """
    if dataset == "synthia":
        # IMREAD_UNCHANGED keeps 16 bits; cv2 returns BGR(A), so the class (first PNG channel) is 2.
        raw = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        if raw is None:
            raise HqtdError(f"{path}: cannot decode PNG")
        if raw.dtype != np.uint16 or raw.ndim != 3 or raw.shape[2] < 3:
            raise HqtdError(f"{path}: expected a 16-bit 3-channel SYNTHIA label PNG")
        return apply_lut(label_table(dataset), raw[:, :, 2])
    ids = read_label_png(path)
    return apply_lut(label_table(dataset), ids)


def read_label_png(path: Path) -> np.ndarray:
    """Read a single-channel 8-bit PNG (palette indices or gray values) as (H, W) uint8.

    Raises:
        HqtdError: the file cannot be decoded or is not single-channel 8-bit.
    """
    try:
        with Image.open(path) as image:
            if image.mode not in ("P", "L"):
                raise HqtdError(
                    f"{path}: expected a single-channel 8-bit label PNG, got {image.mode}"
                )
            return np.asarray(image)
    except (OSError, SyntaxError, ValueError) as error:
        raise HqtdError(f"{path}: cannot decode PNG ({error})") from None


def read_image(path: Path) -> Image.Image:
    """Read an image file as an RGB PIL image.

    Raises:
        HqtdError: the file cannot be decoded.
    """
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except (OSError, SyntaxError, ValueError) as error:
        raise HqtdError(f"{path}: cannot decode image ({error})") from None


def resize_image(
    image: Image.Image,
    size: tuple[int, int],
    resample: Image.Resampling = Image.Resampling.BILINEAR,
) -> Image.Image:
    """Resize an RGB image to ``size`` = (W, H), bilinear unless ``resample`` says otherwise (the
    authors' datasets use bicubic, METHOD.md §8.6); a no-op at that size already."""
    if image.size == tuple(size):
        return image
    return image.resize(tuple(size), resample)


def resize_label(label: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize an (H, W) uint8 label map to ``size`` = (W, H), nearest neighbour (PIL, as the
    authors' datasets do)."""
    if label.shape[::-1] == tuple(size):
        return label
    resized = Image.fromarray(label).resize(tuple(size), Image.Resampling.NEAREST)
    return np.asarray(resized)


def list_samples(dataset: str, root: Path) -> dict[str, list[RawSample]]:
    """Find every image/label pair of a raw dataset, per split, sorted by id.

    GTA5 and SYNTHIA have one split, ``train`` (everything); Cityscapes has ``train`` and ``val``.

    Raises:
        HqtdError: the root or a layout folder is missing, or an image lacks its label or a label
            its image (all such files are counted, the first few named).
    """
    if dataset not in LAYOUTS:
        raise HqtdError(f"unknown dataset {dataset!r}; expected one of {', '.join(DATASETS)}")
    if not root.is_dir():
        raise HqtdError(f"{root}: dataset root does not exist (expected {LAYOUTS[dataset]})")
    folders = _split_folders(dataset, root)
    for folder in (folder for pair in folders.values() for folder in pair):
        if not folder.is_dir():
            raise HqtdError(f"{folder}: missing folder (expected {LAYOUTS[dataset]})")
    pair = _pair_cityscapes if dataset == "cityscapes" else _pair_flat
    return {split: pair(images, labels) for split, (images, labels) in folders.items()}


def _split_folders(dataset: str, root: Path) -> dict[str, tuple[Path, Path]]:
    """(image folder, label folder) of each split."""
    if dataset == "gta5":
        return {"train": (root / "images", root / "labels")}
    if dataset == "synthia":
        return {"train": (root / "RGB", root / "GT" / "LABELS")}
    return {split: (root / "leftImg8bit" / split, root / "gtFine" / split)
            for split in ("train", "val")}  # fmt: skip


def raise_problems(problems: list[str], what: str) -> None:
    """Raise one one-line HqtdError for a list of problems (count, then the first three)."""
    if len(problems) == 1:
        raise HqtdError(problems[0])
    if problems:
        shown = "; ".join(problems[:3])
        more = f"; ... and {len(problems) - 3} more" if len(problems) > 3 else ""
        raise HqtdError(f"{len(problems)} {what}: {shown}{more}")


def _pair_flat(image_dir: Path, label_dir: Path) -> list[RawSample]:
    """Pair ``image_dir/ID.png`` with ``label_dir/ID.png`` (GTA5, SYNTHIA)."""
    images = {path.stem: path for path in image_dir.glob("*.png")}
    labels = {path.stem: path for path in label_dir.glob("*.png")}
    return _pair(
        image_dir,
        images,
        labels,
        lambda i: image_dir / f"{i}.png",
        lambda i: label_dir / f"{i}.png",
    )


def _pair_cityscapes(image_dir: Path, label_dir: Path) -> list[RawSample]:
    """Pair ``<city>/<id>_leftImg8bit.png`` with ``<city>/<id>_gtFine_labelIds.png``."""

    def by_id(folder: Path, suffix: str) -> dict[str, Path]:
        return {path.name[: -len(suffix)]: path for path in folder.glob(f"*/*{suffix}")}

    def city(sample_id: str) -> str:
        return sample_id.split("_")[0]

    return _pair(
        image_dir,
        by_id(image_dir, _CITYSCAPES_IMAGE_SUFFIX),
        by_id(label_dir, _CITYSCAPES_LABEL_SUFFIX),
        lambda i: image_dir / city(i) / f"{i}{_CITYSCAPES_IMAGE_SUFFIX}",
        lambda i: label_dir / city(i) / f"{i}{_CITYSCAPES_LABEL_SUFFIX}",
    )


def _pair(
    image_dir: Path,
    images: dict[str, Path],
    labels: dict[str, Path],
    image_path: Callable[[str], Path],
    label_path: Callable[[str], Path],
) -> list[RawSample]:
    """Match images and labels by id; an unmatched file is an error naming the missing partner,
    and so is a folder without images."""
    problems = [
        f"{images[i]}: image has no label (expected {label_path(i)})"
        for i in sorted(images.keys() - labels.keys())
    ] + [
        f"{labels[i]}: label has no image (expected {image_path(i)})"
        for i in sorted(labels.keys() - images.keys())
    ]
    raise_problems(problems, "unpaired files")
    if not images:
        raise HqtdError(f"{image_dir}: no images found")
    return [RawSample(i, images[i], labels[i]) for i in sorted(images)]

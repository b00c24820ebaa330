"""PNG files as every raw layout stores them: header checks without decoding, reading, resizing
and encoding (what :mod:`hqtd.data.formats.gta5`, ``synthia`` and ``cityscapes`` share)."""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from hqtd.errors import HqtdError

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# Every complete PNG ends with an empty IEND chunk: length 0, type, CRC.
_PNG_TRAILER = b"\x00\x00\x00\x00IEND\xaeB`\x82"
_COLOUR_TYPES = {0: "grayscale", 2: "RGB", 3: "palette", 4: "grayscale+alpha", 6: "RGBA"}


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


@dataclass(frozen=True)
class PngFormat:
    """The pixel format a layout requires of a kind of file."""

    bit_depth: int
    colour_types: tuple[int, ...]  # IHDR colour types (see :class:`PngHeader`)
    description: str  # for errors: "expected <description>, got ..."

    def check(self, header: PngHeader, path: Path) -> None:
        """Check a file's header against this format.

        Raises:
            HqtdError: naming the file, what was expected and what was found.
        """
        if header.bit_depth != self.bit_depth or header.colour_type not in self.colour_types:
            raise HqtdError(f"{path}: expected {self.description}, got {header.describe()}")


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


def encode_png(array: np.ndarray) -> bytes:
    """PNG bytes of an array in cv2's channel order (BGR); fixed settings: same array, same
    bytes."""
    ok, encoded = cv2.imencode(".png", array, [cv2.IMWRITE_PNG_COMPRESSION, 3])
    if not ok:
        raise RuntimeError(f"cv2 could not encode a {array.shape} {array.dtype} PNG")
    return encoded.tobytes()


def encode_image(rgb: np.ndarray) -> bytes:
    """An (H, W, 3) uint8 RGB image as the PNG file every layout stores its images in."""
    return encode_png(rgb[..., ::-1])

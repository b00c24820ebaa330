"""The pinhole camera and the layered canvas that :mod:`hqtd.data.synth.render` draws scenes with:
world points to image points, and cv2 drawing calls applied to the RGB, scene-code and instance
layers at once (sub-pixel vertices, so small far objects keep their shape)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import cv2
import numpy as np
from numpy.typing import ArrayLike

from hqtd.data.synth.domains import RGB, Range

Z_NEAR = 0.5  # m: ground polygons start here, so no projected point lies behind the camera
Z_FAR = 400.0  # m: the ground ends here, about a pixel below the horizon
_SHIFT = 4  # cv2 fixed-point bits: vertices are placed with 1/16-pixel precision


@dataclass(frozen=True)
class Camera:
    """Pinhole camera looking along +z over a flat ground (x right, y up, metres)."""

    width: int
    height: int
    focal: float  # px
    elevation: float  # m above the ground
    horizon: float  # image row of the horizon
    centre: float  # image column of the vanishing point

    def project(self, x: ArrayLike, y: ArrayLike, z: ArrayLike) -> np.ndarray:
        """World points (broadcast together) -> image points (..., 2) as (column, row)."""
        u = self.centre + self.focal * np.divide(x, z)
        v = self.horizon + self.focal * np.divide(np.subtract(self.elevation, y), z)
        if np.shape(u) != np.shape(v):
            u, v = np.broadcast_arrays(u, v)
        return np.stack([u, v], axis=-1)

    def ground(self) -> tuple[np.ndarray, np.ndarray]:
        """Ground (x, z) seen at every pixel centre, (H,W) each; z = Z_FAR from the horizon up."""
        rows = np.arange(self.height, dtype=np.float32)[:, None] + 0.5
        cols = np.arange(self.width, dtype=np.float32)[None, :] + 0.5
        below = np.maximum(rows - self.horizon, self.focal * self.elevation / Z_FAR)
        z = np.broadcast_to(self.focal * self.elevation / below, (self.height, self.width))
        return (cols - self.centre) * z / self.focal, z

    def ground_quad(self, x0: float, x1: float, z0: float, z1: float) -> np.ndarray:
        """The ground rectangle [x0, x1] x [z0, z1] as an image polygon (4, 2)."""
        return self.project(np.array([x0, x1, x1, x0]), 0.0, np.array([z0, z0, z1, z1]))

    def wall_quad(
        self, x0: float, x1: float, y0: float, y1: float, z0: float, z1: float
    ) -> np.ndarray:
        """The vertical rectangle over the ground segment (x0, z0)-(x1, z1), heights y0..y1."""
        xs, ys, zs = [x0, x1, x1, x0], [y0, y0, y1, y1], [z0, z1, z1, z0]
        return self.project(np.array(xs), np.array(ys), np.array(zs))

    def sprite(self, x: float, z: float, points: np.ndarray) -> np.ndarray:
        """A flat shape facing the camera at (x, z): (..., 2) offsets (lateral, height) in m."""
        return self.project(x + points[..., 0], points[..., 1], z)


def _fixed(points: np.ndarray) -> np.ndarray:
    """Image points -> cv2's int32 fixed-point coordinates (``_SHIFT`` fractional bits)."""
    return np.round(points * (1 << _SHIFT)).astype(np.int32)


class Canvas:
    """The layers every primitive is drawn into: RGB (float), scene code, instance id."""

    def __init__(self, width: int, height: int) -> None:
        self.image = np.zeros((height, width, 3), np.float32)
        self.code = np.zeros((height, width), np.uint8)
        self.instance = np.zeros((height, width), np.uint16)

    def paint(
        self,
        draw: Callable[[np.ndarray, object], object],
        colour: RGB,
        code: int | None,
        instance: int = 0,
    ) -> None:
        """Apply one cv2 drawing call to every layer; ``code=None`` paints colour only (a detail
        such as a window, which keeps the label beneath)."""
        draw(self.image, tuple(float(c) for c in colour))
        if code is not None:
            draw(self.code, int(code))
            draw(self.instance, int(instance))

    def polygons(
        self, polys: Iterable[np.ndarray], colour: RGB, code: int | None, instance: int = 0
    ) -> None:
        """Fill image polygons, each (N,2), or one (K,N,2) array, in one call."""
        pts = list(_fixed(polys)) if isinstance(polys, np.ndarray) else [_fixed(p) for p in polys]
        if pts:
            self.paint(
                lambda layer, c: cv2.fillPoly(layer, pts, c, cv2.LINE_8, _SHIFT),
                colour,
                code,
                instance,
            )

    def disc(
        self,
        centre: np.ndarray,
        radius: float,
        colour: RGB,
        code: int | None,
        instance: int = 0,
        thickness: int = -1,
    ) -> None:
        """A filled disc, or a ring ``thickness`` px wide, around an image point."""
        c = tuple(int(v) for v in _fixed(centre))
        r = int(round(max(radius, 0.5) * (1 << _SHIFT)))
        self.paint(
            lambda layer, v: cv2.circle(layer, c, r, v, thickness, cv2.LINE_8, _SHIFT),
            colour,
            code,
            instance,
        )

    def lines(
        self,
        segments: np.ndarray,
        colour: RGB,
        code: int | None,
        thickness: float,
        instance: int = 0,
    ) -> None:
        """Line segments (K,2,2), ``thickness`` px wide (at least 1)."""
        pts = [_fixed(s) for s in segments]
        width = max(1, int(round(thickness)))
        self.paint(
            lambda layer, v: cv2.polylines(layer, pts, False, v, width, cv2.LINE_8, _SHIFT),
            colour,
            code,
            instance,
        )

    def ellipse(self, centre: np.ndarray, axes: Range, colour: RGB, code: int) -> None:
        """A filled axis-aligned ellipse with semi-axes ``axes`` (px)."""
        c = tuple(int(v) for v in _fixed(centre))
        a = tuple(int(round(v * (1 << _SHIFT))) for v in axes)
        self.paint(
            lambda layer, v: cv2.ellipse(layer, c, a, 0, 0, 360, v, -1, cv2.LINE_8, _SHIFT),
            colour,
            code,
        )

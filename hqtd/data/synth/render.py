"""Drawing one street scene of a domain into an image and its labels (``hqtd synth``).

The three domains (:mod:`hqtd.data.synth.domains`) share one scene grammar, drawn with a pinhole
camera over a flat ground (:mod:`hqtd.data.synth.canvas`) so that an object's size follows its
depth: a road with lanes between sidewalks, rows of buildings with windows, walls and fences along
the sidewalks, poles carrying traffic lights and signs, trees and grass, vehicles in the lanes,
people on the sidewalks, riders in the outer lane. Every class has a characteristic shape and
place, so shape and layout are predictive in every domain; the camera's processing (exposure,
blur, noise, JPEG) comes last. :func:`render` is the entry point: everything it draws comes from
the generator it is given.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import cv2
import numpy as np

from hqtd.data.synth.canvas import Z_FAR, Z_NEAR, Camera, Canvas
from hqtd.data.synth.domains import (
    BICYCLE,
    BUILDING,
    BUS,
    CAR,
    EGO,
    FENCE,
    LANE,
    LIGHT,
    MOTORCYCLE,
    NUM_CODES,
    PERSON,
    POLE,
    RAIL,
    RGB,
    RIDER,
    ROAD,
    SIDEWALK,
    SIGN,
    SKY,
    STATIC,
    TERRAIN,
    TRAIN,
    TRUCK,
    UNLABELED,
    VEGETATION,
    WALL,
    Domain,
    Style,
)

# ------------------------------------------------------------------------------------------------
# Scene layout


@dataclass
class Scene:
    """One image being drawn: camera, street layout, style, random state and canvas."""

    domain: Domain
    rng: np.random.Generator
    cam: Camera
    road: tuple[float, float]  # x of the left and right road edges
    walk: tuple[float, float]  # x of the outer sidewalk edges
    facade: tuple[float, float]  # x of the building fronts
    lanes: tuple[float, ...]  # x of the lane centres
    strip: tuple[float, float]  # width of the grass strip along each curb (0: none)
    tram: float | None  # x of the tram's lane (None: no tram)
    canvas: Canvas
    instances: int = 0

    @property
    def style(self) -> Style:
        return self.domain.style

    def colour(self, code: int) -> RGB:
        """The style's colour of ``code`` with a per-object change."""
        return self.vary(self.style.colours[code])

    def vary(self, base: RGB, scale: float = 1.0) -> RGB:
        """``base`` with a random change of brightness and a smaller change of hue."""
        brightness, *hue = self.rng.normal(0, self.style.jitter * scale, 4)
        return tuple(
            min(max(b + brightness + 0.3 * h, 0.0), 255.0) for b, h in zip(base, hue, strict=True)
        )

    def pick(self, palette: tuple[RGB, ...]) -> RGB:
        """A varied colour from ``palette``."""
        return self.vary(palette[self.rng.integers(len(palette))])

    def new_instance(self) -> int:
        """The next instance id (1, 2, ...)."""
        self.instances += 1
        return self.instances

    def side(self, s: int) -> int:
        """Index of the left (s=-1) or right (s=+1) entry of the layout pairs."""
        return 0 if s < 0 else 1


def _sample_scene(domain: Domain, rng: np.random.Generator) -> Scene:
    """Draw the camera and the street layout; x = 0 is the camera, in one of the lanes."""
    g, pop = domain.geometry, domain.population
    width, height = g.size
    focal = rng.uniform(*g.focal) * width
    cam = Camera(
        width=width,
        height=height,
        focal=focal,
        elevation=rng.uniform(*g.elevation),
        horizon=rng.uniform(*g.horizon) * height,
        centre=width / 2 + focal * np.tan(rng.normal(0, g.yaw)),
    )
    lanes = int(rng.integers(g.lanes[0], g.lanes[1] + 1))
    lane_width = rng.uniform(*g.lane_width)
    left = -(rng.integers(lanes) + rng.uniform(0.3, 0.7)) * lane_width
    road = (left, left + lanes * lane_width)
    sidewalk = rng.uniform(*g.sidewalk, 2)
    walk = (road[0] - sidewalk[0], road[1] + sidewalk[1])
    setback = rng.uniform(*g.setback, 2)
    facade = (walk[0] - setback[0], walk[1] + setback[1])
    centres = tuple(road[0] + (i + 0.5) * lane_width for i in range(lanes))
    # A grass strip leaves at least a metre of the sidewalk to walk on.
    strip = np.minimum(rng.uniform(1.2, 2.5, 2), sidewalk - 1.0) * (rng.random(2) < pop.strip)
    tram = centres[rng.integers(lanes)] if rng.random() < pop.tram else None
    strips = (float(strip[0]), float(strip[1]))
    return Scene(domain, rng, cam, road, walk, facade, centres, strips, tram, Canvas(width, height))


# ------------------------------------------------------------------------------------------------
# Background: sky, ground, buildings, walls and fences


def _draw_sky(scene: Scene) -> None:
    """A vertical sky gradient with clouds, and the hazy skyline of far buildings at the horizon."""
    cam, canvas, rng = scene.cam, scene.canvas, scene.rng
    base = np.asarray(scene.colour(SKY), np.float32)
    rows = np.arange(cam.height, dtype=np.float32)[:, None, None]
    canvas.image[:] = base * (0.8 + 0.35 * np.clip(rows / max(cam.horizon, 1.0), 0, 1))
    canvas.code[:] = SKY
    for _ in range(rng.poisson(2.0)):
        centre = np.array([rng.uniform(0, cam.width), rng.uniform(0, max(cam.horizon * 0.7, 1))])
        cloud = tuple(np.minimum(base * 1.25 + 30, 255))
        canvas.ellipse(centre, (rng.uniform(8, 40), rng.uniform(3, 8)), cloud, SKY)
    # The skyline also hides the seam between the end of the ground and the sky.
    column, z = -1.0, 300.0
    while column < cam.width:
        step = rng.uniform(4, 16)
        top, bottom = cam.horizon - cam.focal * rng.uniform(6, 30) / z, cam.horizon + 2
        block = np.array(
            [[column, top], [column + step, top], [column + step, bottom], [column, bottom]]
        )
        haze = 0.55 * np.asarray(scene.pick(scene.style.facades)) + 0.45 * base
        canvas.polygons([block], tuple(haze), BUILDING)
        column += step


def _draw_ground(scene: Scene) -> None:
    """Grass or paving outside the street, sidewalks with curbs and grass strips, the road with
    its markings and tram rails."""
    cam, canvas, rng, domain = scene.cam, scene.canvas, scene.rng, scene.domain
    outside = TERRAIN if domain.terrain else SIDEWALK
    quads = [
        cam.ground_quad(-1e3, scene.walk[0], Z_NEAR, Z_FAR),
        cam.ground_quad(scene.walk[1], 1e3, Z_NEAR, Z_FAR),
    ]
    canvas.polygons(quads, scene.colour(outside), outside)
    for i in (0, 1):
        verge = domain.terrain and rng.random() < domain.population.verge
        code = TERRAIN if verge else SIDEWALK
        quad = cam.ground_quad(scene.walk[i], scene.facade[i], Z_NEAR, Z_FAR)
        canvas.polygons([quad], scene.colour(code), code)
    paving = scene.colour(SIDEWALK)
    quads = [
        cam.ground_quad(scene.walk[0], scene.road[0], Z_NEAR, Z_FAR),
        cam.ground_quad(scene.road[1], scene.walk[1], Z_NEAR, Z_FAR),
    ]
    canvas.polygons(quads, paving, SIDEWALK)
    grass = []
    for s, edge, width in zip((-1, 1), scene.road, scene.strip, strict=True):
        if width > 0:
            for z in np.arange(rng.uniform(0, 4), 120, 18.0):
                x0, x1 = edge + s * 0.2, edge + s * (0.2 + width)
                grass.append(cam.ground_quad(x0, x1, z, z + rng.uniform(5, 15)))
    canvas.polygons(grass, scene.colour(TERRAIN), TERRAIN)
    curbs = [
        cam.ground_quad(scene.road[0] - 0.2, scene.road[0], Z_NEAR, Z_FAR),
        cam.ground_quad(scene.road[1], scene.road[1] + 0.2, Z_NEAR, Z_FAR),
    ]
    canvas.polygons(curbs, tuple(np.asarray(paving) * 0.8), SIDEWALK)
    canvas.polygons([cam.ground_quad(*scene.road, Z_NEAR, Z_FAR)], scene.colour(ROAD), ROAD)
    _draw_markings(scene)
    if scene.tram is not None:
        rails = [
            cam.ground_quad(scene.tram + dx - 0.06, scene.tram + dx + 0.06, Z_NEAR, Z_FAR)
            for dx in (-0.72, 0.72)
        ]
        canvas.polygons(rails, scene.colour(RAIL), RAIL)


def _draw_markings(scene: Scene) -> None:
    """Dashed lane lines, solid edge lines and maybe a zebra crossing (scene code LANE)."""
    cam, rng = scene.cam, scene.rng
    marks = []
    start = rng.uniform(0, 9)
    for left, right in zip(scene.lanes[:-1], scene.lanes[1:], strict=True):
        x = (left + right) / 2
        marks += [cam.ground_quad(x - 0.08, x + 0.08, z, z + 3) for z in np.arange(start, 90, 9.0)]
    for x in (scene.road[0] + 0.35, scene.road[1] - 0.35):
        marks.append(cam.ground_quad(x - 0.07, x + 0.07, Z_NEAR, 150))
    if rng.random() < scene.domain.population.crossing:
        z = rng.uniform(8, 25)
        stripes = np.arange(scene.road[0] + 0.3, scene.road[1] - 0.5, 1.0)
        marks += [cam.ground_quad(x, x + 0.5, z, z + 3) for x in stripes]
    scene.canvas.polygons(marks, scene.colour(LANE), LANE)


def _draw_building(scene: Scene, x: float, z0: float, z1: float, height: float, s: int) -> None:
    """One building: its front along the street, its end wall facing the camera, windows."""
    cam, canvas, rng = scene.cam, scene.canvas, scene.rng
    colour = np.asarray(scene.pick(scene.style.facades))
    end_wall = cam.wall_quad(x, x + s * 15.0, 0, height, z0, z0)
    canvas.polygons([end_wall], tuple(colour * scene.style.shade), BUILDING)
    canvas.polygons([cam.wall_quad(x, x, 0, height, z0, z1)], tuple(colour), BUILDING)
    spacing = rng.uniform(2.4, 3.6)
    # Windows beyond the depth where they shrink under 1.5 px would only alias: leave them out.
    z1 = min(z1, cam.focal * 1.2 / 1.5)
    zs = np.arange(z0 + 0.6, z1 - spacing * 0.5, spacing)
    floors = np.arange(1.0 if rng.random() < 0.5 else 4.0, height - 1.5, 3.0)
    if len(zs) and len(floors):
        zz, yy = (a.reshape(-1, 1) for a in np.meshgrid(zs, floors))
        corner_z = zz + np.array([0.0, 0.55, 0.55, 0.0]) * spacing
        corner_y = yy + np.array([0.0, 0.0, 1.5, 1.5])
        windows = cam.project(x, corner_y, corner_z)  # (K, 4, 2)
        canvas.polygons(windows, scene.vary(scene.style.windows, 0.5), None)


def _draw_buildings(scene: Scene) -> None:
    """On both sides, a continuous back row and a front row with gaps, then walls and fences."""
    rng, g = scene.rng, scene.domain.geometry
    for s in (-1, 1):
        front = scene.facade[scene.side(s)]
        back = front + s * 14.0
        blocks = []  # (x, z0, z1, height)
        z = 2.0
        while z < 120:
            length = rng.uniform(10, 30)
            blocks.append((back, z, z + length, 3.0 * rng.integers(*g.storeys) + 2))
            z += length
        z = rng.uniform(0, 6)
        while z < 120:
            length = rng.uniform(8, 25)
            blocks.append((front, z, z + length, 3.0 * rng.integers(*g.storeys) + 1))
            gap = rng.random() < scene.domain.population.gap
            z += length + (rng.uniform(4, 12) if gap else 0.0)
        # Painter's order: the back row, then far to near (an end wall hides farther fronts).
        for x, z0, z1, height in sorted(blocks, key=lambda b: (abs(b[0]), b[1]), reverse=True):
            _draw_building(scene, x, z0, z1, height, s)
        _draw_barriers(scene, s)


def _draw_barriers(scene: Scene, s: int) -> None:
    """Wall segments (with a coping) and fence segments (panel, bars, rail) along the sidewalk's
    outer edge, far to near."""
    cam, canvas, rng, pop = scene.cam, scene.canvas, scene.rng, scene.domain.population
    x = scene.walk[scene.side(s)]
    segments = []
    z = rng.uniform(1, 10)
    while z < 90:
        length = rng.uniform(5, 20)
        kind = rng.choice(3, p=[pop.wall, pop.fence, 1 - pop.wall - pop.fence])
        segments.append((kind, z, z + length))
        z += length
    for kind, z0, z1 in reversed(segments):
        if kind == 0:
            height = rng.uniform(0.8, 2.6)
            colour = np.asarray(scene.colour(WALL))
            canvas.polygons([cam.wall_quad(x, x, 0, height, z0, z1)], tuple(colour), WALL)
            coping = cam.wall_quad(x, x, height - 0.15, height, z0, z1)
            canvas.polygons([coping], tuple(colour * 1.15), None)
        elif kind == 1:
            height = rng.uniform(1.0, 2.0)
            colour = np.asarray(scene.colour(FENCE))
            canvas.polygons([cam.wall_quad(x, x, 0, height, z0, z1)], tuple(colour * 1.25), FENCE)
            posts = np.arange(z0, z1, 0.35)[:, None]
            bars = cam.project(x, np.array([[0.0, height]]), posts)
            rail = cam.project(x, height - 0.1, np.array([[z0, z1]]))
            thickness = cam.focal * 0.06 / z1
            canvas.lines(np.concatenate([bars, rail]), tuple(colour * 0.7), None, thickness)


# ------------------------------------------------------------------------------------------------
# Objects: each stands on the ground at (x, z); they are drawn far to near


def _draw_box(
    scene: Scene,
    x0: float,
    x1: float,
    y0: float,
    y1: float,
    z0: float,
    z1: float,
    colour: np.ndarray,
    code: int,
    instance: int,
) -> None:
    """The visible faces of an axis-aligned box: the side facing the camera, the top, the front."""
    cam, canvas, shade = scene.cam, scene.canvas, scene.style.shade
    side = _visible_side(x0, x1)
    if side is not None:
        face = cam.wall_quad(side, side, y0, y1, z0, z1)
        canvas.polygons([face], tuple(colour * shade), code, instance)
    if cam.elevation > y1:
        top = cam.project(np.array([x0, x1, x1, x0]), y1, np.array([z0, z0, z1, z1]))
        canvas.polygons([top], tuple(np.minimum(colour * 1.15, 255)), code, instance)
    canvas.polygons([cam.wall_quad(x0, x1, y0, y1, z0, z0)], tuple(colour), code, instance)


def _visible_side(x0: float, x1: float) -> float | None:
    """x of the side face of a box spanning [x0, x1] that the camera (x = 0) sees, if any."""
    return x0 if x0 > 0 else (x1 if x1 < 0 else None)


def _wheels(
    scene: Scene,
    x0: float,
    x1: float,
    z0: float,
    z1: float,
    radius: float,
    code: int,
    instance: int,
) -> None:
    """Dark tyres under the front face and, where the side is visible, along it."""
    cam, canvas = scene.cam, scene.canvas
    tyre = (22, 22, 24)
    front = [
        cam.wall_quad(x + 0.05, x + 0.3, 0, radius * 1.1, z0 - 0.01, z0 - 0.01)
        for x in (x0, x1 - 0.35)
    ]
    canvas.polygons(front, tyre, code, instance)
    side = _visible_side(x0, x1)
    if side is not None:
        for z in (z0 + 0.9, z1 - 0.9):
            canvas.disc(cam.project(side, radius, z), cam.focal * radius / z, tyre, code, instance)


def _draw_car(scene: Scene, x: float, z: float) -> None:
    """A body with tail lights and a glass cabin on top, on four wheels."""
    cam, inst = scene.cam, scene.new_instance()
    paint = np.asarray(scene.pick(scene.style.paints))
    glass = np.asarray(scene.vary(scene.style.windows, 0.5)) * 0.6
    length = scene.rng.uniform(3.8, 4.8)
    _draw_box(scene, x - 0.9, x + 0.9, 0.25, 1.0, z, z + length, paint, CAR, inst)
    _draw_box(scene, x - 0.75, x + 0.75, 1.0, 1.45, z + 1.0, z + length - 1.2, glass, CAR, inst)
    lights = [
        cam.wall_quad(x + dx, x + dx + 0.3, 0.7, 0.85, z - 0.01, z - 0.01) for dx in (-0.85, 0.55)
    ]
    scene.canvas.polygons(lights, (200, 30, 30), None)
    _wheels(scene, x - 0.9, x + 0.9, z, z + length, 0.32, CAR, inst)


def _draw_truck(scene: Scene, x: float, z: float) -> None:
    """A tall cargo box (white or orange, dark bumper) in front of a lower cab."""
    cam, inst = scene.cam, scene.new_instance()
    cargo = np.asarray(scene.vary((226, 226, 222) if scene.rng.random() < 0.6 else (200, 110, 40)))
    cab = np.asarray(scene.pick(scene.style.paints))
    _draw_box(scene, x - 1.15, x + 1.15, 0.5, 2.9, z + 6.5, z + 9.0, cab, TRUCK, inst)
    _draw_box(scene, x - 1.25, x + 1.25, 0.6, 3.8, z, z + 6.5, cargo, TRUCK, inst)
    bumper = cam.wall_quad(x - 1.25, x + 1.25, 0.6, 0.85, z - 0.01, z - 0.01)
    scene.canvas.polygons([bumper], tuple(cargo * 0.45), None)
    _wheels(scene, x - 1.2, x + 1.2, z, z + 9.0, 0.5, TRUCK, inst)


def _draw_bus(scene: Scene, x: float, z: float) -> None:
    """A long red or yellow box with a rear window and a row of side windows."""
    cam, inst = scene.cam, scene.new_instance()
    paint = np.asarray(scene.vary((210, 40, 36) if scene.rng.random() < 0.5 else (232, 196, 40)))
    _draw_box(scene, x - 1.25, x + 1.25, 0.3, 3.2, z, z + 12.0, paint, BUS, inst)
    panes = [cam.wall_quad(x - 1.0, x + 1.0, 1.6, 2.8, z - 0.01, z - 0.01)]
    side = _visible_side(x - 1.25, x + 1.25)
    if side is not None:
        panes += [
            cam.wall_quad(side, side, 1.5, 2.7, zw, zw + 1.6)
            for zw in np.arange(z + 0.5, z + 11, 2.0)
        ]
    scene.canvas.polygons(panes, scene.vary(scene.style.windows, 0.5), None)
    _wheels(scene, x - 1.2, x + 1.2, z, z + 12.0, 0.5, BUS, inst)


def _draw_tram(scene: Scene, x: float, z: float) -> None:
    """A train: a very long box with a coloured skirt, a window band and a pantograph."""
    cam, canvas, inst = scene.cam, scene.canvas, scene.new_instance()
    paint = np.asarray(scene.colour(TRAIN))
    _draw_box(scene, x - 1.3, x + 1.3, 0.35, 3.5, z, z + 30.0, paint, TRAIN, inst)
    side = _visible_side(x - 1.3, x + 1.3)
    skirt = [cam.wall_quad(x - 1.3, x + 1.3, 0.35, 1.0, z - 0.01, z - 0.01)]
    glass = [cam.wall_quad(x - 1.1, x + 1.1, 1.5, 2.9, z - 0.01, z - 0.01)]
    if side is not None:
        skirt.append(cam.wall_quad(side, side, 0.35, 1.0, z, z + 30))
        glass.append(cam.wall_quad(side, side, 1.6, 2.8, z + 0.5, z + 29.5))
    canvas.polygons(skirt, (180, 40, 40), None)
    canvas.polygons(glass, scene.vary(scene.style.windows, 0.5), None)
    pantograph = np.array([[3.5, 4.4], [4.4, 4.4]]), np.array([[z + 4, z + 5], [z + 5, z + 8]])
    canvas.lines(cam.project(x, *pantograph), (40, 40, 40), TRAIN, cam.focal * 0.08 / z, inst)


def _draw_person(
    scene: Scene,
    x: float,
    z: float,
    code: int = PERSON,
    seat: float | None = None,
    facing: float = 1.0,
) -> None:
    """A pedestrian (legs, torso, arms, head), or with ``seat`` a rider sitting at that height
    with bent legs and arms reaching forward; ``facing`` -1 mirrors the figure."""
    cam, canvas, rng, inst = scene.cam, scene.canvas, scene.rng, scene.new_instance()
    tall = rng.uniform(1.55, 1.9)
    shirt, trousers = scene.pick(scene.style.clothes), scene.pick(scene.style.clothes)
    hip = 0.5 * tall if seat is None else seat
    shoulder = hip + 0.33 * tall
    if seat is None:
        stride = rng.uniform(0.0, 0.3)
        legs = [[[-0.17, hip], [0.0, hip], [0.02 - stride, 0], [-0.13 - stride, 0]],
                [[0.0, hip], [0.17, hip], [0.13 + stride, 0], [stride - 0.02, 0]]]  # fmt: skip
        lean, reach = 0.0, 0.25
    else:
        knee = hip - 0.5  # thighs forward to the knee, shins down to the pedal
        thigh = [[-0.15, hip], [0.1, hip], [0.25, knee + 0.05], [0.12, knee]]
        shin = [[0.12, knee], [0.25, knee + 0.05], [0.2, knee - 0.35], [0.06, knee - 0.35]]
        legs = [thigh, shin]
        lean, reach = 0.15, 0.55
    torso = [[-0.2, hip], [0.17, hip], [0.22 + lean, shoulder], [-0.22 + lean, shoulder]]
    arms = [[[lean - 0.24, shoulder], [lean - 0.14, shoulder], [0.3 * reach - 0.2, hip - 0.05],
             [-0.3, hip - 0.05]],
            [[lean + 0.14, shoulder], [lean + 0.24, shoulder], [reach + 0.25, hip + 0.05],
             [reach + 0.16, hip - 0.03]]]  # fmt: skip
    mirror = np.array([facing, 1.0])
    canvas.polygons(cam.sprite(x, z, np.array(legs) * mirror), trousers, code, inst)
    canvas.polygons(cam.sprite(x, z, np.array([torso, *arms]) * mirror), shirt, code, inst)
    head = cam.sprite(x, z, np.array([lean, shoulder + 0.14]) * mirror)
    canvas.disc(head, cam.focal * 0.12 / z, scene.colour(code), code, inst)


def _draw_two_wheeler(scene: Scene, x: float, z: float, motor: bool, rider: bool) -> None:
    """Side view of a bicycle (two rings, a thin frame) or a motorcycle (two tyres, a body), with
    or without a rider."""
    cam, canvas, inst = scene.cam, scene.canvas, scene.new_instance()
    code = MOTORCYCLE if motor else BICYCLE
    facing = 1.0 if scene.rng.random() < 0.5 else -1.0
    mirror = np.array([facing, 1.0])
    radius, scale = 0.33, cam.focal / z
    colour = scene.pick(scene.style.paints) if motor else scene.vary((36, 36, 40))
    for dx in (-0.55, 0.55):
        hub = cam.sprite(x, z, np.array([dx, radius]))
        if motor:
            canvas.disc(hub, scale * radius, (24, 24, 26), code, inst)
        else:
            ring = max(1, round(scale * 0.06))
            canvas.disc(hub, scale * radius, (30, 30, 32), code, inst, thickness=ring)
    if motor:
        body = np.array([[-0.45, 0.45], [0.45, 0.45], [0.6, 0.8], [0.2, 0.95], [-0.5, 0.85]])
        canvas.polygons([cam.sprite(x, z, body * mirror)], colour, code, inst)
    rear, saddle, crank, head, front = (
        (-0.55, radius),
        (-0.1, 0.95),
        (0.0, 0.35),
        (0.45, 0.95),
        (0.55, radius),
    )
    tubes = [(rear, saddle), (saddle, crank), (crank, rear), (crank, head), (head, front),
             (saddle, head), (head, (0.35, 1.1))]  # fmt: skip
    frame = np.array(tubes)
    canvas.lines(cam.sprite(x, z, frame * mirror), colour, code, scale * 0.06, inst)
    if rider:
        seat = 0.95 if motor else 1.0
        _draw_person(scene, x - facing * 0.1, z, RIDER, seat=seat, facing=facing)


def _draw_pole(scene: Scene, x: float, z: float, s: int) -> None:
    """A pole, maybe with an arm over the road carrying a traffic light, maybe with a sign."""
    cam, canvas, rng, pop = scene.cam, scene.canvas, scene.rng, scene.domain.population
    height = rng.uniform(4.0, 7.0)
    metal = scene.colour(POLE)
    half = max(0.12, 0.75 * z / cam.focal)  # at least 1.5 px wide
    shaft = np.array([[-half, 0], [half, 0], [half, height], [-half, height]])
    canvas.polygons([cam.sprite(x, z, shaft)], metal, POLE)
    if rng.random() < pop.light:
        reach = -s * rng.uniform(0.0, 3.0)
        arm = np.array([[0, -0.1], [reach, -0.1], [reach, 0.05], [0, 0.05]]) + [0.0, height]
        canvas.polygons([cam.sprite(x, z, arm)], metal, POLE)
        housing = np.array([[-0.2, -1.0], [0.2, -1.0], [0.2, 0.0], [-0.2, 0.0]]) + [reach, height]
        canvas.polygons([cam.sprite(x, z, housing)], scene.colour(LIGHT), LIGHT)
        lit = rng.integers(3)
        for i, lamp in enumerate(((230, 40, 30), (240, 170, 20), (40, 210, 90))):
            centre = cam.sprite(x, z, np.array([reach, height - 0.2 - 0.3 * i]))
            glow = lamp if i == lit else tuple(0.25 * c for c in lamp)
            canvas.disc(centre, cam.focal * 0.1 / z, glow, None)
    if rng.random() < pop.sign:
        _draw_sign(scene, x, z, rng.uniform(2.2, min(3.2, height - 0.4)))


#: Sign plate outlines in units of the plate's half size: triangle, square, diamond.
_PLATES = (
    np.array([[-1.0, -0.8], [1.0, -0.8], [0.0, 1.0]]),
    np.array([[-1.0, -1.0], [1.0, -1.0], [1.0, 1.0], [-1.0, 1.0]]),
    np.array([[0.0, -1.0], [1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]]),
)


def _draw_sign(scene: Scene, x: float, z: float, y: float) -> None:
    """A plate with a white centre: red disc, red triangle, blue square or yellow diamond."""
    cam, canvas, rng = scene.cam, scene.canvas, scene.rng
    size = rng.uniform(0.3, 0.42)
    shape = int(rng.integers(4))
    if shape == 3:
        centre, radius = cam.sprite(x, z, np.array([0.0, y])), cam.focal * size / z
        canvas.disc(centre, radius, scene.colour(SIGN), SIGN)
        canvas.disc(centre, radius * 0.7, (236, 236, 236), None)
        return
    colour = (scene.colour(SIGN), scene.vary((30, 80, 190)), scene.vary((235, 200, 40)))[shape]
    canvas.polygons([cam.sprite(x, z, _PLATES[shape] * size + [0.0, y])], colour, SIGN)
    inner = cam.sprite(x, z, _PLATES[shape] * size * 0.55 + [0.0, y])
    canvas.polygons([inner], (236, 236, 236), None)


def _draw_tree(scene: Scene, x: float, z: float) -> None:
    """A trunk and a crown of overlapping discs (all vegetation)."""
    cam, canvas, rng = scene.cam, scene.canvas, scene.rng
    trunk_top = rng.uniform(2.0, 3.0)
    trunk = np.array([[-0.15, 0], [0.15, 0], [0.12, trunk_top + 0.5], [-0.12, trunk_top + 0.5]])
    canvas.polygons([cam.sprite(x, z, trunk)], scene.vary((92, 70, 52)), VEGETATION)
    leaves = np.asarray(scene.colour(VEGETATION))
    size = rng.uniform(1.3, 2.4)
    count = int(rng.integers(4, 8))
    offsets = np.stack([rng.uniform(-1, 1, count), 1 + rng.uniform(-0.6, 0.8, count)], 1) * size
    radii = cam.focal * size * rng.uniform(0.55, 0.9, count) / z
    shades = rng.uniform(0.8, 1.15, count)
    centres = cam.sprite(x, z, offsets + [0.0, trunk_top])
    for centre, radius, shade in zip(centres, radii, shades, strict=True):
        canvas.disc(centre, radius, tuple(np.minimum(leaves * shade, 255)), VEGETATION)


def _draw_bin(scene: Scene, x: float, z: float) -> None:
    """A litter bin: street furniture, labelled void (static)."""
    colour = np.asarray(scene.colour(STATIC))
    _draw_box(scene, x - 0.3, x + 0.3, 0.0, 1.0, z, z + 0.6, colour, STATIC, 0)


def _place_objects(scene: Scene) -> list[tuple[float, Callable[[], None]]]:
    """Sample every object of the scene as (depth, draw) pairs."""
    rng, pop = scene.rng, scene.domain.population
    objects: list[tuple[float, Callable[[], None]]] = []

    def add(z: float, draw: Callable[..., None], *args: object) -> None:
        objects.append((z, lambda: draw(scene, *args)))

    def a_side() -> int:
        return 1 if rng.random() < 0.5 else -1

    def on_sidewalk(s: int, margin: float = 0.4) -> float:
        i = scene.side(s)
        inner, outer = abs(scene.road[i]) + margin, abs(scene.walk[i]) - margin
        return s * rng.uniform(inner, max(inner, outer))

    lanes = [x for x in scene.lanes if x != scene.tram]
    if scene.tram is not None:
        add(z := rng.uniform(14, 50), _draw_tram, scene.tram, z)
    for draw, mean in ((_draw_car, pop.cars), (_draw_truck, pop.trucks), (_draw_bus, pop.buses)):
        for _ in range(rng.poisson(mean) if lanes else 0):
            x = lanes[rng.integers(len(lanes))] + rng.normal(0, 0.2)
            add(z := rng.uniform(4, 70), draw, x, z)
    for _ in range(rng.poisson(pop.parked_cars)):
        s = a_side()
        add(z := rng.uniform(4.5, 60), _draw_car, scene.road[scene.side(s)] - s * 1.1, z)
    for _ in range(rng.poisson(pop.pedestrians)):
        crossing = rng.random() < 0.15
        x = rng.uniform(*scene.road) if crossing else on_sidewalk(a_side())
        add(z := rng.uniform(3, 45), _draw_person, x, z, PERSON, None, float(a_side()))
    for _ in range(rng.poisson(pop.riders)):
        s = a_side()
        x = scene.road[scene.side(s)] - s * rng.uniform(0.6, 1.2)  # in the outer lane
        motor = rng.random() < pop.motorbike_share
        add(z := rng.uniform(4, 45), _draw_two_wheeler, x, z, motor, True)
    for _ in range(rng.poisson(pop.parked_bikes)):
        s = a_side()
        x = scene.road[scene.side(s)] + s * rng.uniform(0.4, 1.0)  # at the curb
        motor = rng.random() < pop.motorbike_share
        add(z := rng.uniform(5, 35), _draw_two_wheeler, x, z, motor, False)
    for _ in range(rng.poisson(pop.bins)):
        add(z := rng.uniform(5, 40), _draw_bin, on_sidewalk(a_side()), z)
    for s in (-1, 1):
        i = scene.side(s)
        poles = np.cumsum(rng.uniform(12, 28, 8)) - rng.uniform(0, 9)
        for z in poles[poles < 90]:
            add(z, _draw_pole, scene.road[i] + s * 0.5, z, s)
        if scene.strip[i] > 0:
            trees_x = scene.road[i] + s * (0.2 + scene.strip[i] / 2)
        elif rng.random() < pop.tree_rows:
            trees_x = scene.walk[i] - s * rng.uniform(0.6, 1.2)
        else:
            continue
        for z in np.arange(rng.uniform(4, 10), 80, rng.uniform(7, 13)):
            add(z, _draw_tree, trees_x, z)
    return objects


def _draw_hood(scene: Scene) -> None:
    """The ego vehicle's bonnet across the bottom (void) and a 2 px out-of-roi border
    (unlabeled, label only) on the left and right, as in Cityscapes."""
    cam, canvas = scene.cam, scene.canvas
    fraction = scene.domain.geometry.hood
    top = cam.height * (1 - fraction)
    cols = np.linspace(-0.1 * cam.width, 1.1 * cam.width, 24)
    rows = top + 0.6 * fraction * cam.height * ((cols - cam.width / 2) / (0.6 * cam.width)) ** 2
    below = [[cols[-1], cam.height + 5], [cols[0], cam.height + 5]]
    canvas.polygons([np.concatenate([np.stack([cols, rows], 1), below])], scene.colour(EGO), EGO)
    canvas.code[:, :2] = UNLABELED
    canvas.code[:, -2:] = UNLABELED


# ------------------------------------------------------------------------------------------------
# Texture and the camera


def _lookup(values: dict[int, float]) -> np.ndarray:
    """A per-scene-code table of ``values`` (0 for codes not listed)."""
    table = np.zeros(NUM_CODES, np.float32)
    table[list(values)] = list(values.values())
    return table


def _texture(scene: Scene) -> None:
    """Per-class grain and blotches, and a perspective-correct paving grid on sidewalks."""
    cam, canvas, rng, style = scene.cam, scene.canvas, scene.rng, scene.style
    h, w = canvas.code.shape
    grain = rng.standard_normal((h, w), dtype=np.float32)
    coarse = rng.standard_normal((h // 8 + 2, w // 8 + 2), dtype=np.float32)
    blotches = cv2.resize(coarse, (w, h), interpolation=cv2.INTER_CUBIC)
    code = canvas.code
    relief = _lookup(style.fine)[code] * grain + _lookup(style.blob)[code] * blotches
    canvas.image += relief[..., None]
    x, z = cam.ground()
    tile = rng.uniform(0.5, 0.8)
    joints = ((x / tile) % 1 < 0.1) | ((z / tile) % 1 < 0.1)
    fade = np.clip(1 - z / 30, 0, 1)  # far away the grid would alias into noise
    canvas.image *= (1 - style.tiles * joints * fade * (code == SIDEWALK))[..., None]


def _camera(image: np.ndarray, style: Style, rng: np.random.Generator) -> np.ndarray:
    """Exposure, white balance, saturation, vignetting, blur, noise, JPEG.

    Args:
        image: (H,W,3) float RGB, about 0..255.

    Returns:
        (H,W,3) uint8 RGB.
    """
    h, w, _ = image.shape
    tint = np.asarray(style.tint) * rng.normal(1, style.tint_jitter, 3)
    image = image * (rng.uniform(*style.gain) * tint).astype(np.float32)
    grey = image.mean(axis=2, keepdims=True)
    image = grey + (image - grey) * rng.uniform(*style.saturation)
    if style.vignette > 0:
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        r2 = ((xx - w / 2) / (w / 2)) ** 2 + ((yy - h / 2) / (h / 2)) ** 2
        image *= (1 - style.vignette * r2 / 2)[..., None]
    sigma = rng.uniform(*style.blur)
    if sigma > 0.05:
        image = cv2.GaussianBlur(image, (0, 0), sigma)
    image = image + rng.normal(0, style.noise, image.shape).astype(np.float32)
    rgb = np.clip(np.round(image), 0, 255).astype(np.uint8)
    if style.jpeg is None:
        return rgb
    quality = int(rng.integers(style.jpeg[0], style.jpeg[1] + 1))
    _, encoded = cv2.imencode(".jpg", rgb[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, quality])
    return cv2.imdecode(encoded, cv2.IMREAD_COLOR)[..., ::-1]


def render(domain: Domain, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Draw one street scene of ``domain``.

    Returns:
        image (H,W,3) uint8 RGB; code (H,W) uint8 scene codes (trainIds 0..18, void kinds
        19..23); instance (H,W) uint16 ids of things (0 on stuff).
    """
    scene = _sample_scene(domain, rng)
    _draw_sky(scene)
    _draw_ground(scene)
    _draw_buildings(scene)
    for _, draw in sorted(_place_objects(scene), key=lambda o: -o[0]):  # far to near
        draw()
    if domain.geometry.hood > 0:
        _draw_hood(scene)
    _texture(scene)
    image = _camera(scene.canvas.image, scene.style, rng)
    return image, scene.canvas.code, scene.canvas.instance

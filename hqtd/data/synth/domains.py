"""The three domains of the mini benchmark (``hqtd synth``): what distinguishes the GTA5-like and
SYNTHIA-like sources and the Cityscapes-like target, as distributions of one scene grammar.

- appearance (:class:`Style`): per-class colours and textures, sun versus overcast shading,
  exposure, saturation, noise, blur and (target only) JPEG artefacts, with look-alikes across
  domains: the target's sidewalk is as dark as the source's road, its terrain as green as the
  source's vegetation, its building façades as pale as the source's trucks;
- geometry (:class:`Geometry`): camera height, pitch (horizon row), yaw, focal length, lane and
  sidewalk widths;
- class frequencies (:class:`Population`): the GTA5-like source has more cars and trucks, the
  Cityscapes-like target more people, riders and bicycles; the SYNTHIA-like source has no
  terrain, truck or train.

:mod:`hqtd.data.synth.render` draws a scene of a domain; every pixel gets a scene code.
"""

from __future__ import annotations

from dataclasses import dataclass

# Scene codes: the trainIds 0..18, then pixel kinds that the formats label as void (lane markings:
# road in GTA5 / Cityscapes, their own void class in SYNTHIA).
(ROAD, SIDEWALK, BUILDING, WALL, FENCE, POLE, LIGHT, SIGN, VEGETATION, TERRAIN, SKY,
 PERSON, RIDER, CAR, TRUCK, BUS, TRAIN, MOTORCYCLE, BICYCLE) = range(19)  # fmt: skip
LANE, RAIL, STATIC, EGO, UNLABELED = range(19, 24)
NUM_CODES = 24
RGB = tuple[float, float, float]
Range = tuple[float, float]


@dataclass(frozen=True)
class Geometry:
    """Camera and street-layout distributions (each range is a uniform draw)."""

    size: tuple[int, int]  # (W, H) of the written images
    focal: Range  # focal length in units of the image width
    elevation: Range  # camera height above the ground (m)
    horizon: Range  # horizon row in units of the image height (the camera pitch)
    yaw: float  # std of the camera yaw (rad): moves the vanishing point sideways
    lanes: tuple[int, int]  # inclusive range of the number of lanes
    lane_width: Range
    sidewalk: Range
    setback: Range  # from the sidewalk's outer edge to the building fronts
    storeys: tuple[int, int]  # inclusive range of building storeys (3 m each)
    hood: float  # ego-vehicle bonnet height in units of the image height (0: none)


@dataclass(frozen=True)
class Population:
    """Poisson means of object counts per image, and per-place probabilities."""

    cars: float
    parked_cars: float
    trucks: float
    buses: float
    tram: float  # probability of a tram (train) on rails
    pedestrians: float
    riders: float
    motorbike_share: float  # fraction of riders and parked two-wheelers on motorcycles
    parked_bikes: float
    bins: float  # street furniture labelled void
    tree_rows: float  # probability that a side of the street is lined with trees
    verge: float  # probability of grass (terrain) between a sidewalk and the buildings
    strip: float  # probability of a grass strip along a curb (trees then stand in it)
    gap: float  # probability of a gap after each building
    wall: float  # probability of a wall for each segment along the sidewalk's outer edge
    fence: float
    light: float  # probability that a pole carries a traffic light
    sign: float  # probability that a pole carries a sign
    crossing: float  # probability of a zebra crossing


@dataclass(frozen=True)
class Style:
    """Appearance: class colours and textures, lighting, and the camera's processing."""

    colours: dict[int, RGB]  # base colour per scene code
    facades: tuple[RGB, ...]  # building colours, one drawn per building
    windows: RGB
    paints: tuple[RGB, ...]  # vehicle colours
    clothes: tuple[RGB, ...]
    fine: dict[int, float]  # per-code amplitude of pixel grain
    blob: dict[int, float]  # per-code amplitude of smooth blotches (foliage, stains)
    tiles: float  # contrast of the paving grid on sidewalks
    jitter: float  # std of the per-object colour change
    shade: float  # brightness of faces turned from the light (1: overcast, no shading)
    gain: Range  # exposure
    tint: RGB  # white balance
    tint_jitter: float  # per-image std of the white balance, relative
    saturation: Range
    vignette: float
    blur: Range  # Gaussian blur sigma (px)
    noise: float  # sensor noise std (grey levels)
    jpeg: tuple[int, int] | None  # JPEG quality range; None: lossless


@dataclass(frozen=True)
class Domain:
    """The distributions of one mini dataset."""

    geometry: Geometry
    population: Population
    style: Style
    terrain: bool  # False: grass becomes paving (SYNTHIA labels no terrain)


_GTA5_STYLE = Style(
    colours={
        ROAD: (78, 78, 84), LANE: (225, 222, 205), SIDEWALK: (186, 176, 160),
        WALL: (160, 164, 172), FENCE: (128, 92, 58), POLE: (132, 132, 138), LIGHT: (34, 34, 36),
        SIGN: (205, 40, 35), VEGETATION: (56, 126, 40), TERRAIN: (166, 160, 92),
        SKY: (92, 150, 228), PERSON: (222, 178, 146), RIDER: (222, 178, 146), RAIL: (70, 58, 50),
        STATIC: (60, 110, 70), TRAIN: (232, 232, 236), EGO: (30, 30, 30),
    },
    facades=((192, 122, 92), (212, 200, 178), (112, 128, 150), (204, 170, 120), (136, 120, 116)),
    windows=(62, 86, 118),
    paints=((200, 30, 30), (30, 70, 190), (236, 200, 40), (236, 236, 236), (26, 26, 30),
            (40, 150, 60), (236, 120, 30), (140, 140, 150)),
    clothes=((200, 40, 40), (40, 80, 200), (240, 220, 60), (240, 240, 240), (40, 40, 40),
             (60, 160, 80)),
    fine={ROAD: 6, SIDEWALK: 4, BUILDING: 7, WALL: 2, TERRAIN: 4, VEGETATION: 8, FENCE: 4},
    blob={ROAD: 4, BUILDING: 4, VEGETATION: 26, TERRAIN: 6, SKY: 3},
    tiles=0.16, jitter=10.0, shade=0.68, gain=(0.75, 1.2), tint=(1.06, 1.0, 0.92),
    tint_jitter=0.06, saturation=(0.8, 1.3), vignette=0.0, blur=(0.0, 0.0), noise=1.5,
    jpeg=None,
)  # fmt: skip

_SYNTHIA_STYLE = Style(
    colours={
        ROAD: (98, 92, 88), LANE: (200, 200, 190), SIDEWALK: (150, 142, 128),
        WALL: (182, 172, 158), FENCE: (142, 142, 146), POLE: (104, 96, 90), LIGHT: (40, 44, 40),
        SIGN: (30, 90, 200), VEGETATION: (82, 112, 48), TERRAIN: (82, 112, 48),
        SKY: (150, 182, 212), PERSON: (200, 160, 130), RIDER: (200, 160, 130),
        RAIL: (70, 58, 50), STATIC: (120, 100, 80), TRAIN: (200, 200, 200), EGO: (30, 30, 30),
    },
    facades=((172, 150, 130), (130, 132, 142), (192, 182, 170), (104, 92, 82), (160, 110, 90)),
    windows=(90, 110, 130),
    paints=((150, 30, 40), (40, 60, 120), (210, 210, 200), (60, 60, 64), (180, 140, 40),
            (70, 110, 130)),
    clothes=((120, 60, 50), (60, 70, 110), (170, 160, 140), (50, 50, 55), (130, 120, 60)),
    fine={ROAD: 3, SIDEWALK: 3, BUILDING: 3, VEGETATION: 6, WALL: 3},
    blob={ROAD: 3, VEGETATION: 16, BUILDING: 6, SIDEWALK: 4},
    tiles=0.08, jitter=14.0, shade=0.8, gain=(0.55, 1.3), tint=(1.0, 1.0, 1.0),
    tint_jitter=0.05, saturation=(0.7, 1.1), vignette=0.1, blur=(0.0, 0.6), noise=3.0,
    jpeg=None,
)  # fmt: skip

_CITYSCAPES_STYLE = Style(
    colours={
        # The sidewalk is about as dark as the source road, the terrain as green as the source
        # vegetation: a colour-driven source model confuses them, the paving grid, the grain and
        # the layout still tell them apart.
        ROAD: (94, 92, 98), LANE: (210, 210, 204), SIDEWALK: (118, 112, 108),
        WALL: (150, 146, 134), FENCE: (104, 106, 112), POLE: (125, 128, 132), LIGHT: (40, 42, 36),
        SIGN: (200, 60, 50), VEGETATION: (50, 100, 42), TERRAIN: (100, 150, 50),
        SKY: (176, 200, 232), PERSON: (210, 170, 146), RIDER: (210, 170, 146),
        RAIL: (64, 60, 56), STATIC: (110, 112, 116), TRAIN: (230, 220, 190), EGO: (34, 34, 38),
    },
    facades=((176, 166, 150), (196, 186, 166), (140, 132, 124), (170, 160, 170), (160, 150, 120)),
    windows=(48, 54, 62),
    paints=((96, 96, 100), (24, 24, 28), (210, 210, 212), (40, 52, 90), (160, 160, 166),
            (110, 30, 30)),
    clothes=((30, 30, 34), (60, 64, 80), (110, 100, 90), (150, 40, 50), (200, 200, 196)),
    # Textures swap roles too: walls are grainy and façades smooth, grass is grainy.
    fine={ROAD: 3, SIDEWALK: 3, WALL: 8, TERRAIN: 12, VEGETATION: 6, BUILDING: 2},
    blob={ROAD: 10, BUILDING: 8, VEGETATION: 14, TERRAIN: 8, SKY: 6, SIDEWALK: 4},
    tiles=0.22, jitter=8.0, shade=0.9, gain=(0.9, 1.05), tint=(0.95, 1.0, 1.03),
    tint_jitter=0.02, saturation=(0.8, 1.0), vignette=0.2, blur=(0.2, 0.6), noise=2.5,
    jpeg=(40, 70),
)  # fmt: skip

GTA5 = Domain(
    geometry=Geometry(
        size=(256, 144), focal=(0.85, 1.0), elevation=(1.3, 1.9), horizon=(0.42, 0.52),
        yaw=0.1, lanes=(2, 4), lane_width=(3.3, 3.8), sidewalk=(1.8, 3.5), setback=(0.0, 8.0),
        storeys=(3, 12), hood=0.0,
    ),
    population=Population(
        cars=5.0, parked_cars=2.0, trucks=1.3, buses=0.5, tram=0.15, pedestrians=2.0,
        riders=0.8, motorbike_share=0.6, parked_bikes=0.5, bins=1.0, tree_rows=0.4, verge=0.5,
        strip=0.3, gap=0.3, wall=0.2, fence=0.2, light=0.35, sign=0.5, crossing=0.0,
    ),
    style=_GTA5_STYLE,
    terrain=True,
)  # fmt: skip

SYNTHIA = Domain(
    geometry=Geometry(
        size=(256, 144), focal=(0.7, 0.9), elevation=(1.8, 4.5), horizon=(0.22, 0.40),
        yaw=0.2, lanes=(2, 5), lane_width=(3.2, 3.8), sidewalk=(3.0, 6.0), setback=(0.0, 4.0),
        storeys=(3, 10), hood=0.0,
    ),
    population=Population(
        cars=3.0, parked_cars=1.0, trucks=0.0, buses=0.8, tram=0.0, pedestrians=8.0,
        riders=1.2, motorbike_share=0.5, parked_bikes=0.5, bins=1.0, tree_rows=0.5, verge=0.0,
        strip=0.0, gap=0.3, wall=0.25, fence=0.25, light=0.4, sign=0.5, crossing=0.3,
    ),
    style=_SYNTHIA_STYLE,
    terrain=False,
)  # fmt: skip

CITYSCAPES = Domain(
    geometry=Geometry(
        size=(256, 128), focal=(1.0, 1.15), elevation=(1.15, 1.35), horizon=(0.36, 0.44),
        yaw=0.04, lanes=(2, 3), lane_width=(2.8, 3.2), sidewalk=(2.5, 5.0), setback=(0.0, 6.0),
        storeys=(4, 7), hood=0.1,
    ),
    population=Population(
        cars=2.0, parked_cars=2.0, trucks=0.3, buses=0.3, tram=0.15, pedestrians=6.0,
        riders=2.0, motorbike_share=0.2, parked_bikes=2.0, bins=1.0, tree_rows=0.5, verge=0.5,
        strip=0.5, gap=0.3, wall=0.2, fence=0.2, light=0.4, sign=0.5, crossing=0.4,
    ),
    style=_CITYSCAPES_STYLE,
    terrain=True,
)  # fmt: skip

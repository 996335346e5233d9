"""Synthetic pedestrians: the embedded default dataset, drawn on the fly from a seed.

A small person re-identification set in the shape of Market-1501 (Zheng et al., ICCV 2015) with
identity-level attributes in the spirit of Lin et al.'s Market-1501 annotation (Pattern Recognition
2019), so that every method, attribute-aware ones included, runs without any download. Nothing is
written to disk: each image is a pure function of ``(seed, record.source)`` and is redrawn whenever it
is opened.

Identities. Each person id draws attributes from correlated priors (gender, age, hair length, sleeve and
lower-body length, dress or pants, hat, backpack, shoulder bag, handbag, upper and lower clothing colour;
e.g. long hair and dresses mostly for women, backpacks mostly for the young, grey hair for the old) plus
an appearance of its own beyond the attributes: the exact shade of each colour, skin and hair tone, body
proportions, a small pattern on the upper garment, shoe and bag colours, the shoulder a bag hangs from.
Identities that share all attributes are thus separable, but confusable.

Cameras. Each camera has its own background scene, illumination (gain, colour cast, gamma, contrast,
vertical light gradient), sharpness (blur, low resolution), sensor noise, framing (person scale and
position jitter of the detection box), a preference over viewpoints (front, back, side facing left or
right; a backpack shows from the back and the side, only its straps from the front) and a rate of partial
occlusion by a random object (pole, car, bush, passer-by, sign).

Splits (Market-1501 protocol). Train and test identities are disjoint. Each identity appears in two or
more cameras with at least two images in each; for a test identity one image per camera goes to the
query set and the rest to the gallery, so every query has a match in another camera. The gallery also
holds distractors (pid 0: people who appear nowhere else, with looser boxes) and junk images (pid -1:
bad detections, i.e. background or a fragment of a person). Camera ids are 1-based.

Record sources are keys such as ``p0007_c3_005`` (person 7, camera 3, its image 5), ``d0012_c2_000``
(distractor 12) and ``j0003_c5_000`` (junk 3). Bump :data:`GENERATOR_VERSION` whenever the drawing or the
split layout changes: it enters :meth:`SyntheticPedestrians.digest`, the key of every feature cache.
"""

from __future__ import annotations

import colorsys
import hashlib
import json
import math
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from hashbench.data import AttributeGroup, AttributeSchema, AttributeTable, Dataset, Record
from hashbench.errors import HashbenchError

GENERATOR_VERSION = 1
HEIGHT, WIDTH = 128, 64  # output image size (Market-1501 crops)
SUPERSAMPLE = 2  # drawing canvas scale; the image is box-filtered down by this factor (antialiasing)

RGB = tuple[int, int, int]

# Colour names and code order of Market-1501's attribute annotation (upblack..upgreen, downblack..downbrown).
UPPER_COLORS: dict[str, RGB] = {
    "black": (28, 28, 32),
    "white": (226, 226, 220),
    "red": (185, 32, 38),
    "purple": (112, 52, 142),
    "yellow": (226, 196, 44),
    "gray": (128, 128, 130),
    "blue": (40, 72, 165),
    "green": (42, 122, 62),
}
LOWER_COLORS: dict[str, RGB] = {
    "black": (26, 26, 30),
    "white": (222, 222, 216),
    "pink": (232, 150, 182),
    "purple": (108, 56, 138),
    "yellow": (222, 192, 60),
    "gray": (124, 124, 128),
    "blue": (48, 70, 125),
    "green": (66, 102, 60),
    "brown": (112, 76, 46),
}
UPPER_PRIOR = np.array([0.24, 0.20, 0.08, 0.04, 0.05, 0.17, 0.14, 0.08])
LOWER_PRIOR = np.array([0.36, 0.05, 0.02, 0.03, 0.02, 0.17, 0.27, 0.03, 0.05])

SCHEMA = AttributeSchema(
    groups=(
        AttributeGroup("gender", ("male", "female"), ("gender",), "gender"),
        AttributeGroup("age", ("young", "teenager", "adult", "old"), ("age",), "age group"),
        AttributeGroup("hair", ("short", "long"), ("hair",), "hair length"),
        AttributeGroup("sleeve", ("long", "short"), ("up",), "sleeve length of the upper-body clothing"),
        AttributeGroup("lower_length", ("long", "short"), ("down",), "length of the lower-body clothing"),
        AttributeGroup("lower_type", ("dress", "pants"), ("clothes",), "type of the lower-body clothing"),
        AttributeGroup("hat", ("no", "yes"), ("hat",), "wearing a hat"),
        AttributeGroup("backpack", ("no", "yes"), ("backpack",), "carrying a backpack"),
        AttributeGroup("bag", ("no", "yes"), ("bag",), "carrying a shoulder bag"),
        AttributeGroup("handbag", ("no", "yes"), ("handbag",), "carrying a handbag"),
        AttributeGroup(
            "upper_color", tuple(UPPER_COLORS), tuple(f"up{c}" for c in UPPER_COLORS), "upper-body colour"
        ),
        AttributeGroup(
            "lower_color", tuple(LOWER_COLORS), tuple(f"down{c}" for c in LOWER_COLORS), "lower-body colour"
        ),
    )
)
(GENDER, AGE, HAIR, SLEEVE, LOWER_LENGTH, CLOTHES, HAT, BACKPACK, BAG, HANDBAG, UPPER_COLOR, LOWER_COLOR) = (
    range(len(SCHEMA))
)
YOUNG, TEEN, ADULT, OLD = range(4)
FRONT, BACK, SIDE = range(3)

DEFAULTS: dict[str, int] = {
    "seed": 0,
    "n_train_ids": 150,
    "n_test_ids": 150,
    "images_per_id": 11,
    "n_cameras": 6,
}
LIMITS: dict[str, tuple[int, int]] = {
    "seed": (0, 2**63 - 1),
    "n_train_ids": (1, 100_000),
    "n_test_ids": (1, 100_000),
    "images_per_id": (4, 1_000),  # two cameras with two images each at least
    "n_cameras": (2, 100),
}

# keys of the random streams (the first entropy words after the seed)
_IDENTITY, _CAMERA, _IMAGE, _LAYOUT, _EXTRAS = range(1, 6)
_KINDS = {"p": 1, "d": 2, "j": 3}  # person, distractor, junk
_SOURCE = re.compile(r"^([pdj])(\d+)_c(\d+)_(\d+)$")

HAIR_COLORS: tuple[RGB, ...] = ((22, 18, 16), (58, 38, 24), (104, 70, 40), (196, 160, 96))
GREY_HAIR: tuple[RGB, ...] = ((150, 148, 145), (200, 198, 194), (110, 108, 106))
SKIN_TONES: tuple[RGB, ...] = (
    (238, 200, 172),
    (222, 180, 146),
    (196, 148, 110),
    (150, 104, 72),
    (100, 68, 48),
)
SHOE_COLORS: tuple[RGB, ...] = ((20, 20, 22), (235, 235, 235), (92, 60, 36), (120, 120, 124), (200, 40, 40))
BAG_COLORS: tuple[RGB, ...] = (
    (24, 24, 26),
    (92, 60, 36),
    (140, 100, 60),
    (60, 60, 64),
    (150, 30, 40),
    (40, 60, 110),
)


@dataclass(frozen=True)
class Identity:
    """Everything that makes one person look like themselves: attribute codes plus private details."""

    codes: tuple[int, ...]  # attribute codes in SCHEMA order
    skin: RGB
    hair: RGB
    upper: RGB
    lower: RGB
    shoes: RGB
    hat: RGB
    backpack: RGB
    bag: RGB
    handbag: RGB
    pattern: int  # 0 plain, 1 stripes, 2 chest logo, 3 open jacket, 4 shoulder yoke
    pattern_color: RGB
    tights: RGB | None  # legs under a dress: bare skin when None
    head: float  # head radius, in units of the person's height
    leg: float  # hip-to-ground length
    shoulder: float  # shoulder half-width (front view)
    waist: float  # waist half-width
    depth: float  # torso half-depth (side view)
    stoop: float  # forward lean of head and shoulders (side view)
    bag_side: int  # +1: the bag hangs on the person's right, -1: left
    handbag_side: int

    def has(self, group: int) -> bool:
        """True when the binary attribute ``group`` is set (``yes``, ``female``, ``long``, ``short``...)."""
        return self.codes[group] == 1


@dataclass(frozen=True)
class Camera:
    """The fixed conditions of one camera."""

    gain: float
    cast: tuple[float, float, float]
    gamma: float
    contrast: float
    gradient: float  # brightness change from the top of the image to its bottom
    noise: float  # sensor noise sigma, in [0, 1] intensity units
    blur: float  # Gaussian blur radius (pixels of the output image)
    lowres: float  # 1.0, or the factor images are downscaled by before being upscaled again
    views: tuple[float, float, float]  # probabilities of front, back, side
    occlusion: float  # probability of an occluding object
    fill: float  # mean person height / image height
    background: Image.Image  # panorama at the drawing scale; each image crops a window of it


def _mixed(rng: np.random.Generator, p: np.ndarray) -> int:
    """A draw from the categorical distribution proportional to ``p``."""
    cumulative = np.cumsum(p)
    return min(int(np.searchsorted(cumulative, rng.random() * cumulative[-1], side="right")), len(p) - 1)


def _pick(rng: np.random.Generator, options: Sequence[RGB]) -> RGB:
    return options[int(rng.integers(len(options)))]


def _jitter(rng: np.random.Generator, base: RGB, spread: float = 1.0) -> RGB:
    """An identity's own shade of a named colour (lightness and per-channel jitter)."""
    scale, offset = rng.uniform(0.82, 1.12), rng.uniform(-12, 14) * spread
    noise = rng.normal(0.0, 9.0 * spread, 3).tolist()
    channels = (min(251.0, max(4.0, v * scale + offset + e)) for v, e in zip(base, noise, strict=True))
    return tuple(int(c) for c in channels)  # type: ignore[return-value]


def _shade(c: RGB, f: float) -> RGB:
    return tuple(min(255, int(v * f)) for v in c)  # type: ignore[return-value]


def _hsv(h: float, s: float, v: float) -> RGB:
    return tuple(int(255 * x) for x in colorsys.hsv_to_rgb(h % 1.0, s, v))  # type: ignore[return-value]


def sample_identity(rng: np.random.Generator) -> Identity:
    """Draw one identity: attributes from correlated priors, then the private appearance details."""
    female = rng.random() < 0.45
    age = _mixed(rng, np.array([0.04, 0.18, 0.66, 0.12]))
    long_hair = rng.random() < ((0.4 if age == OLD else 0.72) if female else 0.06)
    dress = female and rng.random() < {YOUNG: 0.4, TEEN: 0.3, ADULT: 0.32, OLD: 0.25}[age]
    if dress:
        short_lower = rng.random() < 0.7
    else:
        short_lower = rng.random() < {YOUNG: 0.35, TEEN: 0.22, ADULT: 0.15, OLD: 0.05}[age]
    short_sleeve = rng.random() < (0.75 if short_lower else (0.25 if age == OLD else 0.4))
    hat = rng.random() < (0.25 if age == OLD else 0.09 if not female else 0.05)
    backpack = rng.random() < {YOUNG: 0.4, TEEN: 0.45, ADULT: 0.18, OLD: 0.08}[age]
    bag = rng.random() < {YOUNG: 0.03, TEEN: 0.1, ADULT: 0.28 if female else 0.2, OLD: 0.15}[age]
    handbag = rng.random() < (0.02 if age == YOUNG else 0.16 if female else 0.04)

    up_p = UPPER_PRIOR.copy()
    if female:
        up_p[[2, 3]] *= (1.5, 2.0)  # red, purple
    if short_sleeve:
        up_p[[0, 1, 4]] *= (0.8, 1.3, 1.4)  # summer: less black, more white and yellow
    upper_code = _mixed(rng, up_p)
    low_p = LOWER_PRIOR.copy()
    if female:
        low_p[[1, 2, 3]] *= (1.5, 5.0, 2.0)  # white, pink, purple
    else:
        low_p[2] *= 0.1
    if dress:
        low_p[[2, 6, 1]] *= (2.0, 0.4, 1.5)  # few blue (denim) dresses
    if upper_code == 0:
        low_p[0] *= 1.4  # black on black is common
    lower_code = _mixed(rng, low_p)

    codes = (
        int(female), age, int(long_hair), int(short_sleeve), int(short_lower), int(not dress),
        int(hat), int(backpack), int(bag), int(handbag), upper_code, lower_code,
    )  # fmt: skip
    upper = _jitter(rng, tuple(UPPER_COLORS.values())[upper_code])
    lower = _jitter(rng, tuple(LOWER_COLORS.values())[lower_code])
    if age == OLD and rng.random() < 0.7:
        hair = _jitter(rng, _pick(rng, GREY_HAIR), 0.5)
    else:
        hair = _jitter(rng, _pick(rng, HAIR_COLORS), 0.5)
    pattern = _mixed(rng, np.array([0.45, 0.15, 0.15, 0.12, 0.13]))
    pattern_color = _hsv(rng.random(), rng.uniform(0.2, 0.9), rng.uniform(0.25, 0.95))
    if pattern == 3:  # an open jacket shows the shirt: usually light or dark
        pattern_color = _jitter(rng, UPPER_COLORS["white"] if rng.random() < 0.6 else UPPER_COLORS["black"])
    width = (0.93 if female else 1.07) * {YOUNG: 1.12, TEEN: 0.94, ADULT: 1.0, OLD: 1.02}[age]
    width *= rng.uniform(0.9, 1.12)
    return Identity(
        codes=codes,
        skin=_jitter(rng, _pick(rng, SKIN_TONES), 0.4),
        hair=hair,
        upper=upper,
        lower=lower,
        shoes=_jitter(rng, _pick(rng, SHOE_COLORS), 0.5),
        hat=_hsv(rng.random(), rng.uniform(0.0, 0.8), rng.uniform(0.15, 0.9)),
        backpack=_jitter(rng, _pick(rng, BAG_COLORS + ((40, 120, 60), (210, 180, 50))), 0.6),
        bag=_jitter(rng, _pick(rng, BAG_COLORS), 0.6),
        handbag=_jitter(rng, _pick(rng, BAG_COLORS + ((220, 210, 190), (190, 60, 110))), 0.6),
        pattern=pattern,
        pattern_color=pattern_color,
        tights=_jitter(rng, (30, 30, 34), 0.5) if dress and rng.random() < 0.3 else None,
        head={YOUNG: 0.085, TEEN: 0.07, ADULT: 0.064, OLD: 0.066}[age] * rng.uniform(0.93, 1.07),
        leg={YOUNG: 0.42, TEEN: 0.48, ADULT: 0.47, OLD: 0.45}[age] * rng.uniform(0.96, 1.04),
        shoulder=0.122 * width,
        waist=0.088 * width * (1.1 if female else 1.0) * rng.uniform(0.92, 1.1),
        depth=0.07 * width * rng.uniform(0.9, 1.12),
        stoop=(0.035 if age == OLD else 0.0) + rng.uniform(0.0, 0.015),
        bag_side=1 if rng.random() < 0.5 else -1,
        handbag_side=1 if rng.random() < 0.6 else -1,
    )


class Pen:
    """Draws in a person's frame: ``x`` (mirrored by ``m``) and ``y`` in units of the person's height."""

    def __init__(self, draw: ImageDraw.ImageDraw, cx: float, y0: float, size: float, m: int) -> None:
        self.draw, self.cx, self.y0, self.size, self.m = draw, cx, y0, size, m

    def pt(self, x: float, y: float) -> tuple[float, float]:
        return (self.cx + self.m * x * self.size, self.y0 + y * self.size)

    def poly(self, points: Sequence[tuple[float, float]], color: RGB) -> None:
        self.draw.polygon([self.pt(x, y) for x, y in points], fill=color)

    def box(self, x: float, y: float, rx: float, ry: float) -> list[float]:
        (x0, y0), (x1, y1) = self.pt(x - rx, y - ry), self.pt(x + rx, y + ry)
        return [min(x0, x1), y0, max(x0, x1), y1]

    def ellipse(self, x: float, y: float, rx: float, ry: float, color: RGB) -> None:
        self.draw.ellipse(self.box(x, y, rx, ry), fill=color)

    def chord(self, x: float, y: float, rx: float, ry: float, start: float, end: float, color: RGB) -> None:
        """A chord of an ellipse; angles in PIL's convention (degrees, clockwise from +x), mirrored with x."""
        if self.m < 0:
            start, end = 180 - end, 180 - start
        self.draw.chord(self.box(x, y, rx, ry), start, end, fill=color)

    def limb(self, a: tuple[float, float], b: tuple[float, float], width: float, color: RGB) -> None:
        """A segment with round ends (arm, leg, strap)."""
        w = max(1, round(width * self.size))
        self.draw.line([self.pt(*a), self.pt(*b)], fill=color, width=w)
        r = width / 2
        self.ellipse(a[0], a[1], r, r, color)
        self.ellipse(b[0], b[1], r, r, color)


def _lerp(a: tuple[float, float], b: tuple[float, float], t: float) -> tuple[float, float]:
    return (a[0] + (b[0] - a[0]) * t, a[1] + (b[1] - a[1]) * t)


def draw_person(pen: Pen, p: Identity, view: int, phase: float) -> None:
    """Draw identity ``p`` in ``view`` (FRONT, BACK or SIDE facing +x) at walking ``phase`` in [-1, 1]."""
    if view == SIDE:
        _draw_side(pen, p, phase)
    else:
        _draw_front_back(pen, p, view == BACK, phase)


def _geometry(p: Identity) -> tuple[float, float, float, float, float]:
    rh = p.head
    ys = 2 * rh + 0.022  # shoulders
    yh = 1.0 - p.leg  # hips
    ya = 0.965  # ankles
    yk = yh + 0.5 * (ya - yh)  # knees
    return rh, ys, yh, yk, ya


def _draw_legs(pen: Pen, p: Identity, hip, knee, ankle, shade: float, side_view: bool) -> None:
    lw = 0.056
    lower, skin = _shade(p.lower, shade), _shade(p.skin, shade)
    if p.has(CLOTHES):  # pants
        if p.has(LOWER_LENGTH):  # shorts
            pen.limb(knee, ankle, lw * 0.8, skin)
            pen.limb(hip, _lerp(hip, knee, 1.1), lw * 1.12, lower)
        else:
            pen.limb(hip, ankle, lw, lower)
    else:  # dress: legs show below it
        pen.limb(_lerp(hip, knee, 0.5), ankle, lw * 0.78, _shade(p.tights or p.skin, shade))
    shoes = _shade(p.shoes, shade)
    if side_view:
        pen.ellipse(ankle[0] + 0.022, ankle[1] + 0.014, 0.042, 0.018, shoes)
    else:
        pen.ellipse(ankle[0], ankle[1] + 0.016, 0.03, 0.019, shoes)


def _draw_arm(pen: Pen, p: Identity, shoulder, hand, shade: float) -> None:
    aw = 0.046
    upper, skin = _shade(p.upper, shade), _shade(p.skin, shade)
    if p.has(SLEEVE):  # short sleeve
        pen.limb(_lerp(shoulder, hand, 0.38), hand, aw * 0.82, skin)
        pen.limb(shoulder, _lerp(shoulder, hand, 0.4), aw * 1.1, upper)
    else:
        pen.limb(shoulder, _lerp(shoulder, hand, 0.92), aw, upper)
        pen.ellipse(hand[0], hand[1], 0.021, 0.023, skin)


def _draw_handbag(pen: Pen, p: Identity, hand) -> None:
    x, y = hand
    pen.limb((x - 0.012, y), (x + 0.012, y + 0.025), 0.008, _shade(p.handbag, 0.7))
    pen.poly(
        [(x - 0.04, y + 0.025), (x + 0.04, y + 0.025), (x + 0.05, y + 0.095), (x - 0.05, y + 0.095)],
        p.handbag,
    )


def _torso_stripes(pen: Pen, p: Identity, x0: float, x1: float, ys: float, yh: float) -> None:
    y = ys + 0.05
    while y < yh - 0.01:
        pen.limb((x0, y), (x1, y), 0.012, p.pattern_color)
        y += 0.045


def _draw_front_back(pen: Pen, p: Identity, back: bool, phase: float) -> None:
    rh, ys, yh, yk, ya = _geometry(p)
    sw, hw = p.shoulder, p.waist
    right = 1 if back else -1  # image-x sign of the person's right-hand side
    dress = not p.has(CLOTHES)
    if p.has(HAIR) and not back:  # long hair falling behind the shoulders
        pen.poly([(-rh * 1.02, rh), (rh * 1.02, rh), (rh * 1.25, ys + 0.08), (-rh * 1.25, ys + 0.08)], p.hair)
    # legs (one foot lifted by the walking phase)
    for side in (-1, 1):
        lift = 0.025 * abs(phase) if side * phase > 0 else 0.0
        hip = (side * 0.042 * (1 + hw), yh + 0.01)
        ankle = (side * (0.045 + 0.012 * abs(phase)), ya - lift)
        _draw_legs(pen, p, hip, _lerp(hip, ankle, 0.5), ankle, 1.0, False)
    # lower garment
    if dress:
        hem = yk + 0.03 if p.has(LOWER_LENGTH) else ya - 0.07
        pen.poly(
            [(-hw * 0.95, yh - 0.04), (hw * 0.95, yh - 0.04), (hw * 1.75, hem), (-hw * 1.75, hem)], p.lower
        )
    else:
        pen.poly(
            [
                (-hw, yh - 0.03),
                (hw, yh - 0.03),
                (hw * 1.05, yh + 0.075),
                (0, yh + 0.05),
                (-hw * 1.05, yh + 0.075),
            ],
            p.lower,
        )
    # neck, torso, shoulders
    pen.poly(
        [(-0.022, 2 * rh - 0.02), (0.022, 2 * rh - 0.02), (0.026, ys + 0.02), (-0.026, ys + 0.02)], p.skin
    )
    pen.poly(
        [(-sw, ys + 0.012), (sw, ys + 0.012), (hw * 1.05, yh + 0.015), (-hw * 1.05, yh + 0.015)], p.upper
    )
    pen.ellipse(-sw + 0.028, ys + 0.03, 0.03, 0.025, p.upper)
    pen.ellipse(sw - 0.028, ys + 0.03, 0.03, 0.025, p.upper)
    pen.ellipse(0, ys + 0.012, sw - 0.03, 0.014, p.upper)
    if p.pattern == 1:
        _torso_stripes(pen, p, -hw, hw, ys, yh)
    elif p.pattern == 2 and not back:
        pen.ellipse(right * 0.035, ys + 0.075, 0.022, 0.02, p.pattern_color)
    elif p.pattern == 3 and not back:
        pen.poly(
            [(-0.018, ys + 0.012), (0.018, ys + 0.012), (0.02, yh + 0.01), (-0.02, yh + 0.01)],
            p.pattern_color,
        )
    elif p.pattern == 4:
        pen.poly(
            [(-sw, ys + 0.012), (sw, ys + 0.012), (sw * 0.96, ys + 0.05), (-sw * 0.96, ys + 0.05)],
            p.pattern_color,
        )
    if p.has(BACKPACK):
        if back:
            pen.poly(
                [
                    (-sw * 0.72, ys + 0.035),
                    (sw * 0.72, ys + 0.035),
                    (sw * 0.75, ys + 0.25),
                    (-sw * 0.75, ys + 0.25),
                ],
                p.backpack,
            )
            pen.ellipse(0, ys + 0.035, sw * 0.72, 0.02, p.backpack)
            pen.poly(
                [
                    (-sw * 0.5, ys + 0.17),
                    (sw * 0.5, ys + 0.17),
                    (sw * 0.5, ys + 0.23),
                    (-sw * 0.5, ys + 0.23),
                ],
                _shade(p.backpack, 0.75),
            )
        else:
            for side in (-1, 1):
                pen.limb((side * sw * 0.55, ys + 0.01), (side * sw * 0.62, ys + 0.17), 0.016, p.backpack)
    if p.has(BAG):
        bs = right * p.bag_side
        pen.limb((-bs * sw * 0.6, ys + 0.01), (bs * (hw + 0.03), yh - 0.04), 0.011, _shade(p.bag, 0.8))
        x = bs * (hw + 0.045)
        pen.poly(
            [(x - 0.045, yh - 0.06), (x + 0.045, yh - 0.06), (x + 0.045, yh + 0.05), (x - 0.045, yh + 0.05)],
            p.bag,
        )
    # arms swing a little; hands beside the hips
    for side in (-1, 1):
        shoulder = (side * (sw - 0.02), ys + 0.028)
        hand = (side * (sw + 0.018 + 0.012 * abs(phase)), yh + 0.035 - 0.015 * side * phase)
        _draw_arm(pen, p, shoulder, hand, 1.0)
        if p.has(HANDBAG) and side == right * p.handbag_side:
            _draw_handbag(pen, p, hand)
    # head
    hy = rh
    if back:
        pen.ellipse(0, hy, rh * 0.9, rh, p.hair)
        if p.has(HAIR):
            pen.poly(
                [(-rh * 0.95, hy), (rh * 0.95, hy), (rh * 1.2, ys + 0.11), (-rh * 1.2, ys + 0.11)], p.hair
            )
    else:
        pen.ellipse(0, hy, rh * 0.86, rh, p.skin)
        pen.chord(0, hy - rh * 0.06, rh * 0.94, rh * 1.0, 175, 365, p.hair)
        eye = _shade(p.skin, 0.45)
        pen.ellipse(-rh * 0.35, hy + rh * 0.15, rh * 0.12, rh * 0.1, eye)
        pen.ellipse(rh * 0.35, hy + rh * 0.15, rh * 0.12, rh * 0.1, eye)
    if p.has(HAT):
        pen.chord(0, hy - rh * 0.2, rh * 1.0, rh * 0.95, 180, 360, p.hat)
        if not back:
            pen.ellipse(0, hy - rh * 0.22, rh * 1.2, rh * 0.2, _shade(p.hat, 0.8))


def _draw_side(pen: Pen, p: Identity, phase: float) -> None:
    rh, ys, yh, yk, ya = _geometry(p)
    td, lean = p.depth, p.stoop
    far = 0.72
    leg_len, arm_len = ya - yh, yh + 0.04 - ys
    hip = (0.0, yh + 0.01)
    shoulder = (lean * 0.6, ys + 0.03)

    def leg_end(angle: float) -> tuple[float, float]:
        return (hip[0] + leg_len * math.sin(angle), hip[1] + leg_len * math.cos(angle))

    def arm_end(angle: float) -> tuple[float, float]:
        return (shoulder[0] + arm_len * math.sin(angle), shoulder[1] + arm_len * math.cos(angle))

    swing = math.radians(24) * phase
    near_hand, far_hand = arm_end(-0.8 * swing), arm_end(0.8 * swing)
    near_bag = p.bag_side == 1  # the person's right side faces the camera when walking towards +x
    _draw_arm(pen, p, shoulder, far_hand, far)
    far_ankle = leg_end(-swing)
    _draw_legs(pen, p, hip, _lerp(hip, far_ankle, 0.5), far_ankle, far, True)
    if p.has(BACKPACK):
        x0 = -td - 0.085 + lean * 0.4
        pen.poly(
            [(x0, ys + 0.02), (-td + 0.01, ys + 0.02), (-td + 0.01, ys + 0.25), (x0 + 0.005, ys + 0.25)],
            p.backpack,
        )
        pen.ellipse(x0 + 0.01, ys + 0.2, 0.02, 0.045, _shade(p.backpack, 0.78))
    if p.has(BAG) and not near_bag:
        pen.poly(
            [(-0.01, yh - 0.07), (0.07, yh - 0.07), (0.07, yh + 0.04), (-0.01, yh + 0.04)], _shade(p.bag, far)
        )
    if p.has(HANDBAG) and p.handbag_side != 1:
        _draw_handbag(pen, p, far_hand)
    near_ankle = leg_end(swing)
    _draw_legs(pen, p, hip, _lerp(hip, near_ankle, 0.5), near_ankle, 1.0, True)
    if not p.has(CLOTHES):
        hem = yk + 0.03 if p.has(LOWER_LENGTH) else ya - 0.07
        pen.poly([(-td, yh - 0.04), (td, yh - 0.04), (td * 1.6, hem), (-td * 1.5, hem)], p.lower)
    else:
        pen.poly(
            [(-td, yh - 0.03), (td, yh - 0.03), (td * 1.05, yh + 0.07), (-td * 1.05, yh + 0.07)], p.lower
        )
    pen.poly(
        [
            (-0.02 + lean, 2 * rh - 0.02),
            (0.022 + lean, 2 * rh - 0.02),
            (0.024, ys + 0.02),
            (-0.024, ys + 0.02),
        ],
        p.skin,
    )
    top = lean * 0.6
    torso = [
        (-td + top, ys + 0.012),
        (td * 0.9 + top, ys + 0.012),
        (td * 1.05, yh + 0.015),
        (-td, yh + 0.015),
    ]
    pen.poly(torso, p.upper)
    pen.ellipse(lean * 0.6, ys + 0.035, td * 0.95, 0.03, p.upper)
    if p.pattern == 1:
        _torso_stripes(pen, p, -td, td, ys, yh)
    elif p.pattern == 4:
        pen.poly(
            torso[:2] + [(td * 0.9 + lean * 0.6, ys + 0.05), (-td + lean * 0.6, ys + 0.05)], p.pattern_color
        )
    elif p.pattern in (2, 3):
        pen.limb((td * 0.85 + lean * 0.6, ys + 0.03), (td * 0.95, yh), 0.014, p.pattern_color)
    if p.has(BACKPACK):
        pen.limb((td * 0.6 + lean * 0.6, ys + 0.015), (-td * 0.2, ys + 0.16), 0.014, _shade(p.backpack, 0.85))
    if p.has(BAG) and near_bag:
        pen.limb((lean * 0.6, ys + 0.01), (0.0, yh - 0.05), 0.011, _shade(p.bag, 0.8))
        pen.poly([(-0.05, yh - 0.06), (0.035, yh - 0.06), (0.035, yh + 0.05), (-0.05, yh + 0.05)], p.bag)
    _draw_arm(pen, p, shoulder, near_hand, 1.0)
    if p.has(HANDBAG) and p.handbag_side == 1:
        _draw_handbag(pen, p, near_hand)
    hx, hy = lean, rh
    pen.ellipse(hx, hy, rh * 0.9, rh, p.skin)
    pen.chord(hx, hy - rh * 0.05, rh * 0.97, rh * 1.02, 105, 345, p.hair)
    if p.has(HAIR):
        pen.poly(
            [
                (hx - rh * 0.9, hy - rh * 0.2),
                (hx - rh * 0.1, hy),
                (hx - rh * 0.3, ys + 0.1),
                (hx - rh * 1.15, ys + 0.1),
            ],
            p.hair,
        )
    pen.ellipse(hx + rh * 0.5, hy + rh * 0.12, rh * 0.12, rh * 0.1, _shade(p.skin, 0.45))
    if p.has(HAT):
        pen.chord(hx, hy - rh * 0.2, rh * 1.0, rh * 0.95, 180, 360, p.hat)
        pen.poly(
            [
                (hx, hy - rh * 0.35),
                (hx + rh * 1.55, hy - rh * 0.3),
                (hx + rh * 1.5, hy - rh * 0.12),
                (hx, hy - rh * 0.1),
            ],
            _shade(p.hat, 0.8),
        )


def _draw_background(rng: np.random.Generator, width: int, height: int) -> Image.Image:
    """One camera's scene: a wall or street front above a floor, with clutter."""
    hue = rng.random()
    wall = _hsv(hue, rng.uniform(0.03, 0.22), rng.uniform(0.35, 0.78))
    floor = _hsv(rng.random(), rng.uniform(0.0, 0.18), rng.uniform(0.3, 0.65))
    img = Image.new("RGB", (width, height), wall)
    d = ImageDraw.Draw(img)
    horizon = int(height * rng.uniform(0.42, 0.68))
    d.rectangle([0, horizon, width, height], fill=floor)
    # floor texture: tiles or lane markings
    if rng.random() < 0.6:
        step = int(rng.integers(18, 40))
        line = _shade(floor, rng.uniform(0.75, 1.2))
        for y in range(horizon + step // 2, height, step):
            d.line([0, y, width, y], fill=line, width=2)
        for x in range(int(rng.integers(step)), width, step * 2):
            d.line([x, horizon, x + (x - width / 2) * 0.6, height], fill=line, width=2)
    # structures on the wall: windows, doors, pillars, shop signs, trees
    n = int(rng.integers(4, 12))
    for _ in range(n):
        kind = rng.random()
        x = rng.uniform(-20, width)
        if kind < 0.35:  # window / door
            w, h = rng.uniform(18, 60), rng.uniform(24, horizon * 0.9)
            y = rng.uniform(0, max(1.0, horizon - h))
            c = _hsv(rng.random(), rng.uniform(0.0, 0.3), rng.uniform(0.15, 0.85))
            d.rectangle([x, y, x + w, y + h], fill=c)
            if rng.random() < 0.5:
                d.rectangle([x + 3, y + 3, x + w - 3, y + h - 3], fill=_shade(c, 0.7))
        elif kind < 0.55:  # pillar / lamp post
            w = rng.uniform(4, 16)
            d.rectangle(
                [x, 0, x + w, horizon + rng.uniform(0, 30)],
                fill=_hsv(hue, rng.uniform(0, 0.3), rng.uniform(0.2, 0.8)),
            )
        elif kind < 0.65:  # shop sign
            w, h = rng.uniform(30, 80), rng.uniform(10, 22)
            y = rng.uniform(0, horizon * 0.6)
            d.rectangle(
                [x, y, x + w, y + h], fill=_hsv(rng.random(), rng.uniform(0.3, 0.8), rng.uniform(0.4, 0.9))
            )
        elif kind < 0.85:  # tree / bush
            r = rng.uniform(14, 40)
            y = horizon - rng.uniform(0, 40)
            d.rectangle([x - 3, y, x + 3, horizon + 5], fill=(70, 50, 35))
            d.ellipse(
                [x - r, y - 1.6 * r, x + r, y + 0.2 * r],
                fill=_hsv(rng.uniform(0.2, 0.4), 0.6, rng.uniform(0.2, 0.55)),
            )
        else:  # parked bike, bin, bench: low objects on the floor line
            w, h = rng.uniform(20, 60), rng.uniform(12, 36)
            y = horizon + rng.uniform(-h, 10)
            d.rectangle(
                [x, y, x + w, y + h], fill=_hsv(rng.random(), rng.uniform(0, 0.6), rng.uniform(0.15, 0.7))
            )
    # far-away passers-by: small dark blobs near the horizon
    for _ in range(int(rng.integers(0, 4))):
        x, s = rng.uniform(0, width), rng.uniform(14, 34)
        c = _hsv(rng.random(), rng.uniform(0, 0.5), rng.uniform(0.1, 0.6))
        d.rectangle([x, horizon - s * 0.9, x + s * 0.3, horizon + s * 0.1], fill=c)
        d.ellipse([x + s * 0.05, horizon - s * 1.1, x + s * 0.25, horizon - s * 0.88], fill=_shade(c, 1.3))
    return img


def _draw_occluder(draw: ImageDraw.ImageDraw, rng: np.random.Generator, width: int, height: int) -> None:
    """Something between the camera and the person: pole, car, bush, passer-by or sign."""
    kind = int(rng.integers(5))
    color = _hsv(rng.random(), rng.uniform(0, 0.7), rng.uniform(0.15, 0.85))
    if kind == 0:  # pole
        x, w = rng.uniform(0, width), rng.uniform(6, 16)
        draw.rectangle([x, 0, x + w, height], fill=color)
    elif kind == 1:  # car / railing at the bottom
        h = rng.uniform(0.15, 0.4) * height
        draw.rectangle([0, height - h, width, height], fill=color)
        draw.rectangle([0, height - h * 0.75, width, height - h * 0.55], fill=_shade(color, 0.6))
    elif kind == 2:  # bush
        for _ in range(3):
            x, r = rng.uniform(0, width), rng.uniform(0.15, 0.3) * width * 1.5
            draw.ellipse(
                [x - r, height - r * 1.2, x + r, height + r * 0.5],
                fill=_hsv(rng.uniform(0.2, 0.4), 0.6, rng.uniform(0.2, 0.5)),
            )
    elif kind == 3:  # passer-by at the edge
        side = -1 if rng.random() < 0.5 else 1
        w = rng.uniform(0.25, 0.45) * width
        x0 = 0 - w * 0.3 if side < 0 else width - w * 0.7
        draw.rectangle([x0, height * 0.22, x0 + w, height], fill=color)
        draw.ellipse([x0 + w * 0.2, height * 0.06, x0 + w * 0.8, height * 0.24], fill=_hsv(0.07, 0.4, 0.8))
    else:  # sign / box
        w, h = rng.uniform(0.3, 0.7) * width, rng.uniform(0.12, 0.3) * height
        x, y = rng.uniform(-w * 0.3, width - w * 0.7), rng.uniform(0.3, 0.9) * height
        draw.rectangle([x, y, x + w, y + h], fill=color)


class SyntheticPedestrians(Dataset):
    """The seeded, procedurally drawn pedestrian re-id set (see the module docstring).

    Options: ``seed`` (int >= 0), ``n_train_ids``, ``n_test_ids``, ``images_per_id`` (>= 4) and
    ``n_cameras`` (>= 2); integers, or strings of integers as a command line passes them.
    """

    name = "synthetic"
    description = (
        "Procedurally drawn pedestrians (seeded, generated on the fly, no download): Market-style splits"
    )
    needs_root = False
    default_input_size = (HEIGHT, WIDTH)

    def __init__(self, root=None, **options) -> None:
        unknown = sorted(set(options) - set(DEFAULTS))
        if unknown:
            raise HashbenchError(
                f"dataset synthetic: unknown option {unknown[0]!r}; valid: {', '.join(DEFAULTS)}"
            )
        values = {key: _check_option(key, options.get(key, default)) for key, default in DEFAULTS.items()}
        super().__init__(root, **values)
        self.seed = values["seed"]
        self._splits: dict[str, list[Record]] | None = None
        self._identities: dict[tuple[str, int], Identity] = {}
        self._cameras: dict[int, Camera] = {}

    # -- the Dataset interface -----------------------------------------------------------------------
    def splits(self) -> dict[str, list[Record]]:
        if self._splits is None:
            self._splits = self._make_splits()
        return {k: list(v) for k, v in self._splits.items()}

    def attributes(self) -> AttributeTable:
        n = self.options["n_train_ids"] + self.options["n_test_ids"]
        pids = np.arange(1, n + 1, dtype=np.int64)
        values = np.array([self.identity(int(pid)).codes for pid in pids], dtype=np.int16)
        return AttributeTable(schema=SCHEMA, pids=pids, values=values.reshape(n, len(SCHEMA)))

    def open_images(self, records: Sequence[Record]) -> Iterator[Image.Image]:
        for record in records:
            yield self.render(record.source)

    def digest(self) -> str:
        payload = json.dumps({"generator": GENERATOR_VERSION, **self.options}, sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()[:16]

    # -- generation ----------------------------------------------------------------------------------
    def _rng(self, *key: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, *key])

    def identity(self, pid: int, kind: str = "p") -> Identity:
        """The appearance of person ``pid`` (``kind`` "d" and "j": of distractor or junk number ``pid``)."""
        cached = self._identities.get((kind, pid))
        if cached is None:
            cached = sample_identity(self._rng(_IDENTITY, _KINDS[kind], pid))
            self._identities[(kind, pid)] = cached
        return cached

    def camera(self, camid: int) -> Camera:
        """The conditions of camera ``camid`` (1-based); a function of the seed and ``camid`` only."""
        cached = self._cameras.get(camid)
        if cached is None:
            cached = self._make_camera(camid)
            self._cameras[camid] = cached
        return cached

    def _make_camera(self, camid: int) -> Camera:
        rng = self._rng(_CAMERA, camid)
        cast = 1.0 + rng.normal(0.0, 0.06, 3)
        cast /= cast.mean()
        views = rng.dirichlet([2.0, 2.0, 1.6])
        s = SUPERSAMPLE
        background = _draw_background(rng, WIDTH * s * 3, HEIGHT * s + 48 * s)
        return Camera(
            gain=float(rng.uniform(0.8, 1.15)),
            cast=tuple(float(c) for c in cast),  # type: ignore[arg-type]
            gamma=float(np.exp(rng.uniform(-0.22, 0.22))),
            contrast=float(rng.uniform(0.8, 1.05)),
            gradient=float(rng.uniform(-0.2, 0.2)),
            noise=float(rng.uniform(0.01, 0.035)),
            blur=float(rng.choice([0.0, 0.4, 0.7, 1.0])),
            lowres=float(rng.choice([1.0, 1.0, 0.75, 0.6])),
            views=tuple(float(v) for v in views),  # type: ignore[arg-type]
            occlusion=float(rng.uniform(0.05, 0.25)),
            fill=float(rng.uniform(0.82, 0.92)),
            background=background,
        )

    def render(self, source: str) -> Image.Image:
        """Draw the image of a record ``source`` (``p0007_c3_005``, ``d0012_c2_000``, ``j0003_c5_000``)."""
        m = _SOURCE.match(source)
        if m is None:
            raise HashbenchError(
                f"dataset synthetic: {source!r} is not a synthetic image key (e.g. p0007_c3_005)"
            )
        kind, number, camid, index = m.group(1), int(m.group(2)), int(m.group(3)), int(m.group(4))
        if camid < 1:
            raise HashbenchError(f"dataset synthetic: {source!r}: camera ids are 1-based")
        cam = self.camera(camid)
        rng = self._rng(_IMAGE, _KINDS[kind], number, camid, index)
        s = SUPERSAMPLE
        w, h = WIDTH * s, HEIGHT * s
        ox = int(rng.integers(0, cam.background.width - w + 1))
        oy = int(rng.integers(0, cam.background.height - h + 1))
        canvas = cam.background.crop((ox, oy, ox + w, oy + h))
        draw = ImageDraw.Draw(canvas)
        person = self.identity(number, kind)
        view = int(rng.choice(3, p=np.asarray(cam.views)))
        mirror = 1 if view != SIDE or rng.random() < 0.5 else -1
        phase = float(rng.uniform(-1, 1))
        fill = float(np.clip(cam.fill + rng.normal(0, 0.035), 0.7, 0.98))
        loose = 2.5 if kind == "d" else 1.0  # distractors: poorly aligned boxes
        if kind == "j":  # a bad detection: background only, or a fragment of a person
            fill *= rng.uniform(1.6, 2.6)
            how = rng.random()
            cx = w * (
                0.5 + (rng.choice([-1, 1]) * rng.uniform(0.45, 0.7) if how < 0.4 else rng.normal(0, 0.1))
            )
            y0 = -rng.uniform(0.0, 0.7) * fill * h
            if how >= 0.85:
                fill = 0.0
        else:
            cx = w * (0.5 + rng.normal(0, 0.035 * loose))
            y0 = (h - fill * h) * rng.uniform(0.25, 0.75) + rng.normal(0, 0.02 * (loose - 1)) * h
        if fill > 0:
            draw_person(Pen(draw, cx, y0, fill * h, mirror), person, view, phase)
        if rng.random() < cam.occlusion:
            _draw_occluder(draw, rng, w, h)
        img = canvas.reduce(s)
        return self._photograph(img, cam, rng)

    def _photograph(self, img: Image.Image, cam: Camera, rng: np.random.Generator) -> Image.Image:
        """Apply the camera: resolution, blur, contrast, illumination and gamma (one lookup table), noise."""
        if cam.lowres < 1.0:
            small = (max(1, round(WIDTH * cam.lowres)), max(1, round(HEIGHT * cam.lowres)))
            img = img.resize(small, Image.Resampling.BILINEAR).resize(
                (WIDTH, HEIGHT), Image.Resampling.BILINEAR
            )
        if cam.blur > 0:
            img = img.filter(ImageFilter.GaussianBlur(cam.blur * rng.uniform(0.7, 1.3)))
        mean = float(np.asarray(img).mean()) / 255
        x = np.linspace(0.0, 1.0, 256)
        gain = np.asarray(cam.cast) * cam.gain * rng.uniform(0.92, 1.08)
        lut = np.clip(((x - mean) * cam.contrast + mean)[None, :] * gain[:, None], 0.0, 1.0) ** cam.gamma
        img = img.point((lut * 255 + 0.5).astype(np.uint8).ravel().tolist())
        ramp = 1.0 + cam.gradient * np.linspace(-0.5, 0.5, HEIGHT, dtype=np.float32)
        a = np.asarray(img, dtype=np.float32) * ramp[:, None, None]
        a += rng.standard_normal(a.shape, dtype=np.float32) * np.float32(cam.noise * 255)
        return Image.fromarray(np.clip(a + 0.5, 0, 255).astype(np.uint8), "RGB")

    # -- splits ---------------------------------------------------------------------------------------
    def layout(self, pid: int) -> np.ndarray:
        """Camera id of each of person ``pid``'s images: 2+ cameras, 2+ images in each, sorted by camera."""
        n, n_cams = self.options["images_per_id"], self.options["n_cameras"]
        rng = self._rng(_LAYOUT, pid)
        k = int(rng.integers(2, min(n_cams, n // 2) + 1))
        cams = np.sort(rng.choice(n_cams, size=k, replace=False) + 1)
        counts = 2 + rng.multinomial(n - 2 * k, rng.dirichlet(np.full(k, 2.0)))
        return np.repeat(cams, counts)

    def _make_splits(self) -> dict[str, list[Record]]:
        n_train, n_test = self.options["n_train_ids"], self.options["n_test_ids"]
        n_cams = self.options["n_cameras"]
        train: list[Record] = []
        query: list[Record] = []
        gallery: list[Record] = []
        rng = self._rng(_EXTRAS)
        # Market-1501's order: junk (-1) first, then distractors (0), then the test identities
        for kind, pid, count in (("j", -1, max(1, n_test // 2)), ("d", 0, n_test)):
            for j, c in enumerate(rng.integers(1, n_cams + 1, size=count)):
                gallery.append(Record(f"{kind}{j:04d}_c{c}_000", pid, int(c)))
        for pid in range(1, n_train + n_test + 1):
            camids = self.layout(pid)
            records = [Record(f"p{pid:04d}_c{c}_{i:03d}", pid, int(c)) for i, c in enumerate(camids)]
            if pid <= n_train:
                train += records
                continue
            pick = self._rng(_LAYOUT, pid, 1)
            chosen = {int(pick.choice(np.flatnonzero(camids == c))) for c in np.unique(camids)}
            for i, r in enumerate(records):
                (query if i in chosen else gallery).append(r)
        return {"train": train, "query": query, "gallery": gallery}


def _check_option(key: str, value) -> int:
    lo, hi = LIMITS[key]
    number: int | None = None
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        number = int(value)
    elif isinstance(value, str) and re.fullmatch(r"\s*[+-]?\d+\s*", value):
        number = int(value)
    if number is None or not lo <= number <= hi:
        raise HashbenchError(
            f"dataset synthetic: option {key} must be an integer in [{lo}, {hi}], got {value!r}"
        )
    return number

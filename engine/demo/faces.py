"""Synthetic labelled faces: a procedural renderer whose geometry is driven by FACS Action Units,
and a writer for FEA-20K style face sets (the embedded default data of the engine).

Rendering works in face units: the origin is the face centre, one unit is roughly half the face
width, y grows downwards. The face is drawn upright at 4x resolution on a transparent layer,
rotated by the head tilt, composited on the background and downsampled (cheap anti-aliasing).

Every AU has a visible effect whose size scales with its intensity in [0, 1]. Contempt is
rendered one-sided: `FaceStyle.one_sided` lists the AUs that act on `FaceStyle.side` only.
"""
from __future__ import annotations

import hashlib
import io
import json
import math
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from engine.core.facs import NO_AU

DATASET = "SynthFaces"
QUESTION = "What is the emotion of this face?"
SUPERSAMPLE = 2  # drawn at 2x and downsampled: anti-aliased edges at a quarter of the 4x cost
TEST_FRACTION = 0.2

# AUs the renderer draws; anything else in an AU dict is an error (it could not be seen).
RENDERED_AUS: tuple[str, ...] = (
    "AU1", "AU2", "AU4", "AU5", "AU6", "AU7", "AU9", "AU10", "AU11", "AU12", "AU13", "AU14", "AU15",
    "AU16", "AU17", "AU18", "AU19", "AU20", "AU22", "AU23", "AU24", "AU25", "AU26", "AU27", "AU28",
    "AU30", "AU43",
)

# Layout of the upright face, in face units (see module docstring).
EYE_X, EYE_Y, EYE_HALF_WIDTH = 0.36, -0.12, 0.16
BROW_Y = -0.36
NOSE_TIP_Y = 0.24
MOUTH_Y = 0.55
FACE_TOP, FACE_BOTTOM = 1.1, 1.0
UNIT_PER_CANVAS = 0.29  # one face unit = this fraction of the canvas side at scale 1

SKIN_TONES = ((255, 224, 196), (241, 194, 160), (224, 172, 105), (198, 134, 66), (141, 85, 36), (100, 64, 42))
HAIR_COLOURS = ((25, 20, 18), (60, 40, 25), (110, 75, 40), (170, 130, 70), (200, 170, 110), (120, 40, 20), (90, 90, 90))
IRIS_COLOURS = ((70, 45, 25), (40, 30, 25), (60, 100, 140), (70, 110, 70), (110, 90, 50))

# Emotion sampling noise: each prototype keeps its key AUs; others may drop out, and an extra AU may
# appear. Extras come from movements that do not turn the face into another emotion.
KEY_AUS: dict[str, tuple[str, ...]] = {
    "happiness": ("AU12",), "sadness": ("AU1", "AU15"), "surprise": ("AU2", "AU26"),
    "fear": ("AU4", "AU20"), "anger": ("AU4", "AU23"), "disgust": ("AU9",), "contempt": ("AU12", "AU14"),
    "neutral": (),
}
EXTRA_AUS = ("AU7", "AU10", "AU14", "AU17", "AU24", "AU25", "AU43")
NEUTRAL_EXTRAS = ("AU7", "AU17", "AU24", "AU25")
CONFLICTS = frozenset(frozenset(pair) for pair in (
    ("AU5", "AU43"), ("AU7", "AU43"), ("AU12", "AU15"), ("AU24", "AU25"), ("AU24", "AU26"),
    ("AU17", "AU26"), ("AU14", "AU20"), ("AU10", "AU12"),
))
P_DROP, P_EXTRA, P_NEUTRAL_EXTRA = 0.3, 0.25, 0.3


@dataclass(frozen=True)
class FaceStyle:
    """Everything about a face that is not an expression."""

    face_width: float = 0.9  # half-width of the face outline, face units
    face_height: float = 1.0  # vertical stretch of the outline
    skin: tuple[int, int, int] = SKIN_TONES[1]
    hair: tuple[int, int, int] = HAIR_COLOURS[1]
    iris: tuple[int, int, int] = IRIS_COLOURS[0]
    background: tuple[int, int, int] = (200, 210, 220)
    long_hair: bool = False
    offset: tuple[float, float] = (0.0, 0.0)  # face centre shift, fraction of the image side
    scale: float = 1.0
    tilt_deg: float = 0.0  # head roll, counter-clockwise
    one_sided: tuple[str, ...] = ()  # AUs acting on one side of the face only (contempt)
    side: str = "right"  # which side of the image `one_sided` AUs act on

    def __post_init__(self) -> None:
        if self.side not in ("left", "right"):
            raise ValueError(f"side must be 'left' or 'right', got {self.side!r}")

    def to_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(asdict(self)))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "FaceStyle":
        unknown = sorted(set(data) - set(cls.__dataclass_fields__))
        if unknown:
            raise ValueError(f"unknown face style fields {unknown}")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})


@dataclass
class _Canvas:
    """Maps face units to pixels of the supersampled, upright drawing."""

    size: int
    style: FaceStyle
    img: Image.Image = field(init=False)
    draw: ImageDraw.ImageDraw = field(init=False)

    def __post_init__(self) -> None:
        self.img = Image.new("RGBA", (self.size, self.size), (0, 0, 0, 0))
        self.draw = ImageDraw.Draw(self.img)

    @property
    def unit(self) -> float:
        return self.size * UNIT_PER_CANVAS * self.style.scale

    @property
    def centre(self) -> tuple[float, float]:
        dx, dy = self.style.offset
        return self.size * (0.5 + dx), self.size * (0.5 + dy)

    def px(self, x: float, y: float) -> tuple[float, float]:
        cx, cy = self.centre
        return cx + x * self.unit, cy + y * self.unit

    def pts(self, points: list[tuple[float, float]]) -> list[tuple[float, float]]:
        return [self.px(x, y) for x, y in points]

    def width(self, w: float) -> int:
        return max(1, round(w * self.unit))

    def polygon(self, points: list[tuple[float, float]], fill: tuple[int, ...]) -> None:
        self.draw.polygon(self.pts(points), fill=fill)

    def line(self, points: list[tuple[float, float]], fill: tuple[int, ...], w: float) -> None:
        self.draw.line(self.pts(points), fill=fill, width=self.width(w), joint="curve")

    def ellipse(self, x: float, y: float, rx: float, ry: float, fill: tuple[int, ...]) -> None:
        (x0, y0), (x1, y1) = self.px(x - rx, y - ry), self.px(x + rx, y + ry)
        self.draw.ellipse((x0, y0, x1, y1), fill=fill)

    def clipped(self, clip: list[tuple[float, float]]) -> "_Clip":
        return _Clip(self, clip)


class _Clip:
    """Draw on a copy of the canvas and keep only what falls inside a polygon (irises in eyes,
    teeth in the mouth)."""

    def __init__(self, canvas: _Canvas, clip: list[tuple[float, float]]) -> None:
        self.canvas, self.clip = canvas, clip

    def __enter__(self) -> _Canvas:
        self.saved_img, self.saved_draw = self.canvas.img, self.canvas.draw
        self.canvas.img = self.saved_img.copy()
        self.canvas.draw = ImageDraw.Draw(self.canvas.img)
        return self.canvas

    def __exit__(self, *exc: object) -> None:
        mask = Image.new("L", self.saved_img.size, 0)
        ImageDraw.Draw(mask).polygon(self.canvas.pts(self.clip), fill=255)
        self.canvas.img = Image.composite(self.canvas.img, self.saved_img, mask)
        self.canvas.draw = ImageDraw.Draw(self.canvas.img)


def _curve(p0: tuple[float, float], mid: tuple[float, float], p2: tuple[float, float], n: int = 16) -> list[tuple[float, float]]:
    """Quadratic Bezier from p0 to p2 passing through `mid` at its half-way point."""
    cx, cy = 2 * mid[0] - (p0[0] + p2[0]) / 2, 2 * mid[1] - (p0[1] + p2[1]) / 2
    out = []
    for i in range(n + 1):
        t = i / n
        a, b, c = (1 - t) ** 2, 2 * t * (1 - t), t * t
        out.append((a * p0[0] + b * cx + c * p2[0], a * p0[1] + b * cy + c * p2[1]))
    return out


def _shade(rgb: tuple[int, ...], factor: float, alpha: int = 255) -> tuple[int, int, int, int]:
    return (*(max(0, min(255, round(c * factor))) for c in rgb[:3]), alpha)


def _mix(a: tuple[int, ...], b: tuple[int, ...], t: float, alpha: int = 255) -> tuple[int, int, int, int]:
    return (*(round(x + (y - x) * t) for x, y in zip(a[:3], b[:3])), alpha)


class _Expression:
    """AU intensities, with per-side lookup for one-sided AUs. side: -1 = image left, +1 = image right."""

    def __init__(self, aus: dict[str, float], style: FaceStyle) -> None:
        unknown = sorted(set(aus) - set(RENDERED_AUS))
        if unknown:
            raise ValueError(f"the renderer cannot draw {unknown}; drawable AUs: {', '.join(RENDERED_AUS)}")
        bad = {au: v for au, v in aus.items() if not 0.0 <= float(v) <= 1.0}
        if bad:
            raise ValueError(f"AU intensities must lie in [0, 1]: {bad}")
        self.aus = {au: float(v) for au, v in aus.items()}
        self.one_sided = set(style.one_sided)
        self.active_side = 1 if style.side == "right" else -1

    def __getitem__(self, au: str) -> float:
        return 0.0 if au in self.one_sided else self.aus.get(au, 0.0)

    def side(self, au: str, side: int) -> float:
        value = self.aus.get(au, 0.0)
        if au in self.one_sided:
            return value if side == self.active_side else 0.0
        return value


# ------------------------------------------------------------------------------------ face parts
def _face_outline(e: _Expression, s: FaceStyle) -> list[tuple[float, float]]:
    jaw = 0.2 * e["AU26"] + 0.32 * e["AU27"]
    chin_shift = 0.14 * e["AU30"]
    points = []
    for i in range(72):
        t = 2 * math.pi * i / 72
        c, sn = math.cos(t), math.sin(t)
        if sn > 0:  # lower half: narrower towards a chin, longer when the jaw drops
            x = s.face_width * c * (1 - 0.18 * sn ** 3) + chin_shift * sn ** 2
            y = (FACE_BOTTOM * s.face_height + jaw) * sn
        else:
            x, y = s.face_width * c, FACE_TOP * s.face_height * sn
        x *= 1 + 0.1 * e["AU13"] * math.exp(-((y - 0.25) / 0.3) ** 2)  # puffed cheeks widen the face
        points.append((x, y))
    return points


def _draw_head(cv: _Canvas, e: _Expression, s: FaceStyle) -> list[tuple[float, float]]:
    skin, hair = s.skin, s.hair
    cv.polygon([(-0.32, 0.6), (0.32, 0.6), (0.36, 1.8), (-0.36, 1.8)], _shade(skin, 0.85))  # neck
    cv.ellipse(0, 2.15, 1.5, 0.75, _mix(s.background, (60, 60, 80), 0.6))  # shoulders
    if s.long_hair:
        fw = s.face_width
        right = _curve((fw + 0.2, -0.3), (fw + 0.34, 0.55), (fw + 0.22, 1.3))
        bottom = _curve((fw + 0.22, 1.3), (0, 1.45), (-fw - 0.22, 1.3))
        cv.polygon(right + bottom + [(-x, y) for x, y in right[::-1]], _shade(hair, 1.0))
    hair_rx, hair_ry = s.face_width + 0.14, FACE_TOP * s.face_height + 0.14
    scalp = [(hair_rx * math.cos(t), -0.08 + hair_ry * math.sin(t)) for t in np.linspace(0, 2 * math.pi, 73)]
    cv.polygon([(x, min(y, 0.1)) for x, y in scalp], _shade(hair, 1.0))  # short hair ends at the ears
    for side in (-1, 1):  # ears
        cv.ellipse(side * (s.face_width - 0.02), -0.02, 0.1, 0.18, _shade(skin, 0.9))
    outline = _face_outline(e, s)
    cv.polygon(outline, _shade(skin, 1.0))
    top = -FACE_TOP * s.face_height
    fringe = _curve((-s.face_width, -0.55), (0, top + 0.3), (s.face_width, -0.55))
    with cv.clipped(scalp) as inside:  # the fringe stays within the hair outline
        inside.polygon([(-s.face_width - 0.2, top - 0.3), (s.face_width + 0.2, top - 0.3)] + fringe[::-1], _shade(hair, 1.0))
    return outline


def _draw_brows(cv: _Canvas, e: _Expression, s: FaceStyle) -> None:
    colour = _mix(s.hair, (20, 15, 10), 0.5)
    wrinkle = _shade(s.skin, 0.68)
    for side in (-1, 1):
        au1, au2, au4 = e.side("AU1", side), e.side("AU2", side), e.side("AU4", side)
        inner = (side * (0.12 - 0.05 * au4) * s.face_width / 0.9, BROW_Y - 0.15 * au1 + 0.1 * au4)
        outer = (side * 0.56 * s.face_width / 0.9, BROW_Y - 0.02 - 0.15 * au2 + 0.04 * au4)
        mid = (side * 0.34 * s.face_width / 0.9, BROW_Y - 0.07 - 0.06 * au1 - 0.09 * au2 + 0.06 * au4)
        cv.line(_curve(inner, mid, outer), colour, 0.055)
    lift = max(e["AU1"], e["AU2"])
    for k in range(2):  # raised brows fold the forehead
        if lift > 0:
            y = -0.64 - 0.09 * k
            cv.line(_curve((-0.3, y + 0.02), (0, y - 0.03 * lift), (0.3, y + 0.02)), wrinkle, 0.012 + 0.012 * lift)
    au4 = e["AU4"]
    if au4 > 0:  # vertical furrows between lowered brows
        for x in (-0.045, 0.045):
            cv.line([(x, BROW_Y - 0.04), (x * 0.8, BROW_Y + 0.07)], wrinkle, 0.01 + 0.015 * au4)


def _eye_shape(e: _Expression, side: int) -> tuple[list[tuple[float, float]], list[tuple[float, float]]]:
    au5, au6, au7, au43 = (e.side(au, side) for au in ("AU5", "AU6", "AU7", "AU43"))
    openness = 1 - au43
    upper = 0.085 * (1 + 1.1 * au5 - 0.45 * au7 - 0.2 * au6) * openness
    lower = 0.06 * (1 + 0.3 * au5 - 0.6 * au7 - 0.7 * au6) * openness + 0.004
    cx = side * EYE_X
    inner, outer = (cx - side * EYE_HALF_WIDTH, EYE_Y), (cx + side * EYE_HALF_WIDTH, EYE_Y - 0.01)
    top = _curve(inner, (cx, EYE_Y - upper), outer)
    bottom = _curve(inner, (cx, EYE_Y + lower), outer)
    return top, bottom


def _draw_eyes(cv: _Canvas, e: _Expression, s: FaceStyle) -> None:
    lid_line = (35, 25, 25, 255)
    for side in (-1, 1):
        top, bottom = _eye_shape(e, side)
        shape = top + bottom[::-1]
        cv.polygon(shape, (245, 245, 240, 255))
        with cv.clipped(shape) as inner:
            inner.ellipse(side * EYE_X, EYE_Y + 0.01, 0.08, 0.08, _shade(s.iris, 1.0))
            inner.ellipse(side * EYE_X, EYE_Y + 0.01, 0.036, 0.036, (10, 10, 10, 255))
        cv.line(top, lid_line, 0.028)
        cv.line(bottom, _shade(s.skin, 0.55), 0.012)
        au6, au7 = e.side("AU6", side), e.side("AU7", side)
        if au6 > 0:  # crow's feet at the outer corners
            ox = side * (EYE_X + EYE_HALF_WIDTH + 0.04)
            for dy in (-0.04, 0.01, 0.06):
                cv.line([(ox, EYE_Y + dy * 0.6), (ox + side * 0.08, EYE_Y + dy)], _shade(s.skin, 0.65), 0.008 + 0.01 * au6)
        if au7 > 0:  # tightened lower lid bulge
            cv.line([(x, y + 0.035) for x, y in bottom[3:-3]], _shade(s.skin, 0.75), 0.008 + 0.01 * au7)


def _draw_cheeks(cv: _Canvas, e: _Expression, s: FaceStyle) -> None:
    layer = _Canvas(cv.size, cv.style)
    for side in (-1, 1):
        au6, au13 = e.side("AU6", side), e.side("AU13", side)
        y = 0.2 - 0.1 * au6
        r = 0.13 * (1 + 0.15 * au6 + 0.4 * au13)
        alpha = round(40 + 90 * max(au6, au13))
        layer.ellipse(side * 0.47 * s.face_width / 0.9, y, r, r * 0.85, _mix(s.skin, (230, 90, 90), 0.45, alpha))
    cv.img.alpha_composite(layer.img)
    cv.draw = ImageDraw.Draw(cv.img)


def _draw_nose(cv: _Canvas, e: _Expression, s: FaceStyle) -> None:
    shadow = _shade(s.skin, 0.72)
    au9, au10 = e["AU9"], e["AU10"]
    lift = 0.04 * au9 + 0.02 * au10
    cv.line([(0.05, -0.1), (0.07, NOSE_TIP_Y - 0.08 - lift)], shadow, 0.014)
    for side in (-1, 1):  # nostril wings
        wing = (side * 0.09 * (1 + 0.2 * au9), NOSE_TIP_Y - lift)
        cv.line(_curve((side * 0.03, NOSE_TIP_Y + 0.02 - lift), (side * 0.1, NOSE_TIP_Y + 0.01 - lift), (wing[0], wing[1] - 0.06)),
                shadow, 0.02)
    if au9 > 0:  # wrinkles across the bridge
        for k in range(3):
            y = -0.06 + 0.045 * k
            cv.line(_curve((-0.09, y + 0.012), (0, y - 0.012), (0.09, y + 0.012)), _shade(s.skin, 0.55), 0.014 + 0.016 * au9)
    furrow = max(e["AU11"], 0.5 * au9, 0.6 * au10)
    if furrow > 0:  # nasolabial furrows from the nose wings towards the mouth corners
        for side in (-1, 1):
            cv.line(_curve((side * 0.13, NOSE_TIP_Y - 0.02), (side * 0.25, 0.4), (side * 0.3, 0.56)), _shade(s.skin, 0.6),
                    0.012 + 0.02 * furrow)


def _mouth_geometry(e: _Expression, s: FaceStyle) -> dict[str, Any]:
    """Corner points and the four lip curves (outer upper, inner upper, inner lower, outer lower)."""
    press = max(e["AU23"], e["AU24"])
    narrow = 1 - 0.35 * e["AU18"] - 0.3 * e["AU22"] - 0.15 * e["AU23"] + 0.4 * e["AU20"] + 0.08 * e["AU27"]
    gap = max(0.05 * e["AU25"], 0.22 * e["AU26"], 0.34 * e["AU27"], 0.08 * e["AU19"], 0.1 * e["AU22"])
    corners = []
    for side in (-1, 1):
        pull, dimple = e.side("AU12", side), e.side("AU14", side)
        half = 0.31 * s.face_width / 0.9 * (narrow + 0.15 * pull - 0.1 * dimple)
        y = MOUTH_Y - 0.17 * pull + 0.15 * e["AU15"] - 0.02 * dimple + 0.05 * e["AU20"] + 0.02 * e["AU16"]
        corners.append((side * half, y))
    left, right = corners
    shift = 0.12 * e["AU30"]
    up_in = MOUTH_Y - gap / 2 - 0.07 * e["AU10"]
    low_in = max(MOUTH_Y + gap / 2 - 0.08 * e["AU17"] + 0.07 * e["AU16"], up_in)
    thin = (1 - 0.75 * press) * (1 - 0.9 * e["AU28"]) * (1 - 0.35 * e["AU20"])
    up_out = up_in - 0.07 * thin - 0.02 * e["AU10"] - 0.04 * e["AU18"]
    low_out = low_in + 0.085 * thin + 0.04 * e["AU18"] + 0.03 * e["AU17"]
    return {
        "corners": corners,
        "upper_outer": _curve(left, (0, up_out), right),
        "upper_inner": _curve(left, (0, up_in), right),
        "lower_inner": _curve(left, (shift, low_in), right),
        "lower_outer": _curve(left, (shift, low_out), right),
        "gap": low_in - up_in,
    }


def _draw_mouth(cv: _Canvas, e: _Expression, s: FaceStyle) -> None:
    m = _mouth_geometry(e, s)
    lip = _mix(s.skin, (170, 60, 70), 0.45)
    cavity = m["upper_inner"] + m["lower_inner"][::-1]
    if m["gap"] > 0.01:
        cv.polygon(cavity, (80, 25, 35, 255))
        with cv.clipped(cavity) as inner:  # upper teeth, and the tongue when shown
            inner.polygon(m["upper_inner"] + [(x, y + 0.055) for x, y in m["upper_inner"][::-1]], (248, 248, 240, 255))
    cv.polygon(m["upper_outer"] + m["upper_inner"][::-1], lip)
    cv.polygon(m["lower_inner"] + m["lower_outer"][::-1], _shade(lip, 1.08))
    if e["AU19"] > 0:  # the tongue sticks out over the lower lip
        cv.ellipse(m["lower_inner"][8][0], m["lower_inner"][8][1] + 0.03 * e["AU19"], 0.1, 0.04 + 0.05 * e["AU19"],
                   (215, 100, 115, 255))
    cv.line(m["upper_inner"] if m["gap"] <= 0.01 else m["upper_inner"][1:-1], (70, 30, 35, 255), 0.018)
    for side, (x, y) in zip((-1, 1), m["corners"]):
        dimple = e.side("AU14", side)
        if dimple > 0:
            cv.line(_curve((x + side * 0.03, y - 0.05), (x + side * 0.06, y), (x + side * 0.03, y + 0.05)),
                    _shade(s.skin, 0.55), 0.016 + 0.016 * dimple)
    au17 = e["AU17"]
    if au17 > 0:  # the raised chin boss bunches and wrinkles below the lower lip
        chin_y = m["lower_outer"][8][1] + 0.16
        cv.ellipse(0, chin_y, 0.16, 0.07 + 0.03 * au17, _shade(s.skin, 1 - 0.12 * au17))
        for k in range(2):
            y = chin_y - 0.03 + 0.06 * k
            cv.line(_curve((-0.12 + 0.03 * k, y + 0.02), (0, y - 0.02), (0.12 - 0.03 * k, y + 0.02)),
                    _shade(s.skin, 0.6), 0.01 + 0.016 * au17)
    press = e["AU24"]
    if press > 0:  # pressed lips bulge the skin just below the lower lip
        y = m["lower_outer"][8][1] + 0.04
        cv.line(_curve((-0.16, y + 0.01), (0, y + 0.02), (0.16, y + 0.01)), _shade(s.skin, 0.7), 0.008 + 0.014 * press)


def render_face(aus: dict[str, float], style: FaceStyle | dict[str, Any] | None = None, size: int = 112) -> Image.Image:
    """An RGB image (size x size) of a face showing `aus` (AU id -> intensity in [0, 1])."""
    if isinstance(style, dict):
        style = FaceStyle.from_dict(style)
    style = style or FaceStyle()
    expression = _Expression(aus, style)
    big = size * SUPERSAMPLE
    cv = _Canvas(big, style)
    _draw_head(cv, expression, style)
    _draw_cheeks(cv, expression, style)
    _draw_brows(cv, expression, style)
    _draw_eyes(cv, expression, style)
    _draw_nose(cv, expression, style)
    _draw_mouth(cv, expression, style)
    figure = cv.img
    if style.tilt_deg:
        figure = figure.rotate(style.tilt_deg, resample=Image.Resampling.BICUBIC, center=cv.centre)
    top, bottom = _shade(style.background, 1.12), _shade(style.background, 0.85)
    background = Image.composite(Image.new("RGBA", (big, big), bottom), Image.new("RGBA", (big, big), top),
                                 Image.linear_gradient("L").resize((big, big)))
    background.alpha_composite(figure)
    return background.convert("RGB").resize((size, size), Image.Resampling.LANCZOS)


def region_box(region: str, style: FaceStyle | None = None, size: int = 112) -> tuple[int, int, int, int]:
    """Pixel box (x0, y0, x1, y1) of a facial region of an untilted face: "brows", "eyes", "nose",
    "mouth", "chin". Boxes are generous around the neutral position and do not overlap."""
    style = style or FaceStyle()
    boxes = {  # face units: x0, y0, x1, y1
        "brows": (-0.65, -0.8, 0.65, -0.28), "eyes": (-0.58, -0.24, 0.58, -0.02),
        "nose": (-0.12, -0.1, 0.12, 0.2), "mouth": (-0.45, 0.36, 0.45, 0.75), "chin": (-0.4, 0.8, 0.4, 1.05),
    }
    if region not in boxes:
        raise ValueError(f"unknown region {region!r}; known: {sorted(boxes)}")
    x0, y0, x1, y1 = boxes[region]
    unit = size * UNIT_PER_CANVAS * style.scale
    cx, cy = size * (0.5 + style.offset[0]), size * (0.5 + style.offset[1])
    return (math.floor(cx + x0 * unit), math.floor(cy + y0 * unit), math.ceil(cx + x1 * unit), math.ceil(cy + y1 * unit))


# ------------------------------------------------------------------------------------ sampling
def _emotions_and_prototypes() -> tuple[tuple[str, ...], dict[str, tuple[str, ...]]]:
    from engine.core.facs import EMOTIONS, PROTOTYPES

    return EMOTIONS, PROTOTYPES


def _au_sort_key(au: str) -> int:
    return int(au[2:])


def _conflicts(au: str, chosen: set[str]) -> bool:
    return any(frozenset((au, other)) in CONFLICTS for other in chosen)


def sample_expression(emotion: str, rng: np.random.Generator) -> dict[str, float]:
    """AU intensities for `emotion`: its prototype, possibly missing one non-key AU, possibly with
    one unrelated extra AU, each at a random intensity."""
    _, prototypes = _emotions_and_prototypes()
    if emotion not in prototypes:
        raise ValueError(f"unknown emotion {emotion!r}")
    if emotion == "neutral":
        if rng.random() < P_NEUTRAL_EXTRA:
            return {str(rng.choice(NEUTRAL_EXTRAS)): round(float(rng.uniform(0.35, 0.55)), 2)}
        return {}
    chosen = [au for au in prototypes[emotion] if au in RENDERED_AUS]
    droppable = [au for au in chosen if au not in KEY_AUS[emotion]]
    if droppable and rng.random() < P_DROP:
        chosen.remove(str(rng.choice(droppable)))
    aus = {au: round(float(rng.uniform(0.55, 1.0)), 2) for au in chosen}
    if rng.random() < P_EXTRA:
        pool = [au for au in EXTRA_AUS if au not in aus and not _conflicts(au, set(aus))]
        if pool:
            aus[str(rng.choice(pool))] = round(float(rng.uniform(0.4, 0.8)), 2)
    return dict(sorted(aus.items(), key=lambda kv: _au_sort_key(kv[0])))


def sample_style(emotion: str, rng: np.random.Generator) -> FaceStyle:
    """Who the face belongs to (shape, colours, hair) and the background. The face is aligned: upright,
    centred and of one size, as face crops are aligned before a recognition model sees them (real
    FEA data sets ship aligned crops). Unaligned faces are a choice of FaceStyle (offset, scale,
    tilt_deg), not of the sampler: the demo's ~1M-parameter vision tower cannot learn to see through
    pose variation within a CPU budget."""
    def jitter(rgb: tuple[int, int, int], amount: int) -> tuple[int, int, int]:
        return tuple(int(np.clip(c + rng.integers(-amount, amount + 1), 0, 255)) for c in rgb)  # type: ignore[return-value]

    hue_base = [int(c) for c in rng.integers(90, 235, size=3)]
    return FaceStyle(
        face_width=round(float(rng.uniform(0.8, 0.98)), 3),
        face_height=round(float(rng.uniform(0.92, 1.08)), 3),
        skin=jitter(SKIN_TONES[int(rng.integers(len(SKIN_TONES)))], 10),
        hair=jitter(HAIR_COLOURS[int(rng.integers(len(HAIR_COLOURS)))], 12),
        iris=IRIS_COLOURS[int(rng.integers(len(IRIS_COLOURS)))],
        background=(hue_base[0], hue_base[1], hue_base[2]),
        long_hair=bool(rng.random() < 0.4),
        one_sided=("AU12", "AU14") if emotion == "contempt" else (),
        side=str(rng.choice(["left", "right"])),
    )


# ------------------------------------------------------------------------------------ descriptions
_PHRASES: dict[str, tuple[str, ...]] = {
    "AU1": ("the inner brows are {adv}raised (AU1)", "the inner corners of the brows {adv}lift (AU1)"),
    "AU2": ("the outer brows are {adv}raised (AU2)", "the outer ends of the brows {adv}lift (AU2)"),
    "AU4": ("the brows are {adv}lowered and drawn together (AU4)", "the brows {adv}pull down and together (AU4)"),
    "AU5": ("the upper eyelids are {adv}raised, widening the eyes (AU5)", "the eyes are {adv}widened by lifted upper lids (AU5)"),
    "AU6": ("the cheeks are {adv}raised (AU6)", "the cheeks {adv}lift toward the eyes (AU6)"),
    "AU7": ("the eyelids are {adv}tightened (AU7)", "the lids {adv}tighten around the eyes (AU7)"),
    "AU9": ("the nose is {adv}wrinkled (AU9)", "lines {adv}crease across the nose (AU9)"),
    "AU10": ("the upper lip is {adv}raised (AU10)", "the upper lip {adv}lifts (AU10)"),
    "AU11": ("the nasolabial furrows are {adv}deepened (AU11)", "the furrows beside the nose {adv}deepen (AU11)"),
    "AU12": ("the lip corners are {adv}pulled up (AU12)", "the mouth corners {adv}pull upward (AU12)"),
    "AU13": ("the cheeks are {adv}puffed out (AU13)", "the cheeks {adv}puff outward (AU13)"),
    "AU14": ("dimples {adv}form at the mouth corners (AU14)", "the mouth corners are {adv}tucked into dimples (AU14)"),
    "AU15": ("the lip corners are {adv}pulled down (AU15)", "the mouth corners {adv}turn downward (AU15)"),
    "AU16": ("the lower lip is {adv}pulled down (AU16)", "the lower lip {adv}drops (AU16)"),
    "AU17": ("the chin is {adv}raised, pushing the lower lip up (AU17)", "the chin {adv}bunches upward (AU17)"),
    "AU18": ("the lips are {adv}puckered (AU18)", "the lips {adv}push forward into a pucker (AU18)"),
    "AU19": ("the tongue is {adv}shown (AU19)", "the tongue {adv}shows between the lips (AU19)"),
    "AU20": ("the lips are {adv}stretched sideways (AU20)", "the mouth is {adv}stretched wide (AU20)"),
    "AU22": ("the lips are {adv}funneled (AU22)", "the lips {adv}form a funnel (AU22)"),
    "AU23": ("the lips are {adv}tightened (AU23)", "the lips {adv}tighten into a thin line (AU23)"),
    "AU24": ("the lips are {adv}pressed together (AU24)", "the lips {adv}press against each other (AU24)"),
    "AU25": ("the lips are {adv}parted (AU25)", "the lips {adv}part (AU25)"),
    "AU26": ("the jaw {adv}drops, opening the mouth (AU26)", "the mouth {adv}falls open as the jaw drops (AU26)"),
    "AU27": ("the mouth is {adv}stretched open (AU27)", "the mouth {adv}opens very wide (AU27)"),
    "AU28": ("the lips are {adv}sucked in (AU28)", "the lips {adv}roll inward (AU28)"),
    "AU30": ("the jaw is {adv}shifted sideways (AU30)", "the jaw {adv}moves to one side (AU30)"),
    "AU43": ("the eyes are {adv}closed (AU43)", "the eyelids {adv}shut (AU43)"),
}
_ONE_SIDED_PHRASES: dict[str, tuple[str, ...]] = {
    "AU12": ("the lip corner on the {side} of the image is {adv}pulled up (AU12)",
             "only the mouth corner on the {side} of the image {adv}lifts (AU12)"),
    "AU14": ("a dimple {adv}forms at the mouth corner on the {side} of the image (AU14)",
             "the mouth corner on the {side} of the image is {adv}tucked in (AU14)"),
}
_GIST: dict[str, tuple[str, ...]] = {
    "happiness": ("a warm, smiling look", "a cheerful smile"),
    "sadness": ("a downcast, sorrowful look", "a drooping, unhappy face"),
    "surprise": ("a startled, wide-open look", "an astonished face"),
    "fear": ("a tense, alarmed look", "a frightened, strained face"),
    "anger": ("a hard, hostile glare", "a tense, furious face"),
    "disgust": ("a repelled, sneering look", "a face recoiling from something unpleasant"),
    "contempt": ("a one-sided, dismissive smirk", "a scornful half smile"),
    "neutral": ("a calm, resting face", "a relaxed expression"),
}
_NEUTRAL_OPENINGS = (
    "The face is relaxed: the brows rest level, the eyes are calm and the mouth rests in a soft line.",
    "The facial muscles appear at rest, with level brows, open calm eyes and a closed, relaxed mouth.",
)
_TEMPLATES = (
    "Looking at the face, {features}. Together {these} form {gist}, which indicates {emotion}.",
    "The image shows a face where {features}. This pattern of facial action matches {emotion}, giving {gist}.",
    "Key facial features: {features_semicolon}. Such a configuration is typical of {emotion}: {gist}.",
)
_TWO_PART = "In the upper face, {upper}. In the lower face, {lower}. Overall the expression reads as {gist}, so the emotion is {emotion}."
_UPPER_FACE = frozenset({"AU1", "AU2", "AU4", "AU5", "AU6", "AU7", "AU9", "AU43"})


def _adverb(intensity: float) -> str:
    return "slightly " if intensity < 0.5 else ("strongly " if intensity > 0.85 else "")


def _join(parts: list[str]) -> str:
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


def feature_phrases(aus: dict[str, float], style: FaceStyle, rng: np.random.Generator) -> list[tuple[str, str]]:
    phrases = []
    for au, value in aus.items():
        options = _ONE_SIDED_PHRASES[au] if au in style.one_sided else _PHRASES[au]
        text = str(rng.choice(options)).format(adv=_adverb(value), side=style.side)
        phrases.append((au, text))
    return phrases


def describe(emotion: str, aus: dict[str, float], style: FaceStyle, rng: np.random.Generator) -> str:
    """Template teacher reasoning: '<think>...</think><answer>emotion</answer>' mentioning exactly
    the AUs in `aus` and reasoning from them to `emotion`."""
    gist = str(rng.choice(_GIST[emotion]))
    phrases = feature_phrases(aus, style, rng)
    if not phrases:
        think = f"{rng.choice(_NEUTRAL_OPENINGS)} This adds up to {gist}, which indicates {emotion}."
    else:
        upper = [text for au, text in phrases if au in _UPPER_FACE]
        lower = [text for au, text in phrases if au not in _UPPER_FACE]
        texts = [text for _, text in phrases]
        if upper and lower and rng.random() < 0.3:
            think = _TWO_PART.format(upper=_join(upper), lower=_join(lower), gist=gist, emotion=emotion)
        else:
            template = str(rng.choice(_TEMPLATES))
            these = "these movements" if len(texts) > 1 else "this movement"
            think = template.format(features=_join(texts), features_semicolon="; ".join(texts), these=these, gist=gist,
                                    emotion=emotion)
    return f"<think>{think[0].upper()}{think[1:]}</think><answer>{emotion}</answer>"


# ------------------------------------------------------------------------------------ face sets
def split_for(sample_id: str) -> str:
    """"test" for about TEST_FRACTION of ids, "train" otherwise; a function of the id alone."""
    digest = int(hashlib.sha256(sample_id.encode()).hexdigest()[:8], 16)
    return "test" if digest % 1000 < TEST_FRACTION * 1000 else "train"


def make_record(index: int, seed: int, emotions: tuple[str, ...]) -> tuple[dict[str, Any], Image.Image]:
    """One FEA-20K record and its image. Each sample has its own random stream (seed, index), so a
    set of n faces is a prefix of a larger set with the same seed; emotions cycle through balanced
    blocks."""
    block = np.random.default_rng([seed, index // len(emotions), 1]).permutation(len(emotions))
    emotion = emotions[int(block[index % len(emotions)])]
    rng = np.random.default_rng([seed, index, 0])
    aus = sample_expression(emotion, rng)
    style = sample_style(emotion, rng)
    image = render_face(aus, style)
    sample_id = f"synth-s{seed}-{index:06d}"
    record = {
        "id": sample_id,
        "dataset": DATASET,
        "image": f"images/{sample_id}.png",
        "question": QUESTION,
        "AUs": list(aus) or [NO_AU],  # a face at rest says so explicitly: an empty list means "unknown"
        "labels": [emotion],
        "description": describe(emotion, aus, style, rng),
        "meta_info": {"intensities": aus, "style": style.to_dict(), "split": split_for(sample_id),
                      "emotion": emotion, "seed": seed, "renderer": "engine.demo.faces"},
        "is_valid": True,
    }
    return record, image


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=False, compress_level=6)
    return buffer.getvalue()


def write_face_set(out_dir: str | Path, n: int, seed: int = 0) -> dict[str, Any]:
    """Render n labelled faces: OUT/samples.jsonl (FEA-20K records) and OUT/images/<id>.png.
    Same seed -> identical JSONL and PNG bytes. Returns a summary (counts per emotion and split)."""
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    emotions, _ = _emotions_and_prototypes()
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    by_emotion: Counter[str] = Counter()
    by_split: Counter[str] = Counter()
    jsonl = out / "samples.jsonl"
    with jsonl.open("w", encoding="utf-8") as lines:
        for index in range(n):
            record, image = make_record(index, seed, emotions)
            (out / record["image"]).write_bytes(png_bytes(image))
            lines.write(json.dumps(record, sort_keys=True) + "\n")
            by_emotion[record["labels"][0]] += 1
            by_split[record["meta_info"]["split"]] += 1
    return {"out": str(out), "samples_jsonl": str(jsonl), "n": n, "seed": seed, "dataset": DATASET,
            "by_emotion": dict(sorted(by_emotion.items())), "by_split": dict(sorted(by_split.items()))}

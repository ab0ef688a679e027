"""A procedural face renderer whose geometry is driven by FACS Action Units.

Rendering works in face units: the origin is the face centre, one unit is roughly half the face
width, y grows downwards. The face is drawn upright at SUPERSAMPLE x resolution on a transparent
layer, rotated by the head tilt, composited on the background and downsampled (cheap anti-aliasing).

Every AU has a visible effect whose size scales with its intensity in [0, 1]. Contempt is
rendered one-sided: `FaceStyle.one_sided` lists the AUs that act on `FaceStyle.side` only.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

SUPERSAMPLE = 2  # drawn at 2x and downsampled: anti-aliased edges at a quarter of the 4x cost

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

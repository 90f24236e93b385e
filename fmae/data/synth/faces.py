"""Synthetic face-like images with Facial Action Units drawn as localised, graded changes.

The images stand in for licensed AU/expression datasets in tests and demos. Every face shares one
layout (features sit at similar normalised positions) so AUs are learnable across subjects, while an
:class:`Identity` varies colours and proportions so subjects stay decodable. Per-frame
:class:`Nuisance` (pose, lighting, noise) is applied after drawing so it never mimics an AU.

All geometry is in normalised image coordinates (x right, y down, 0..1) and scaled at draw time;
faces are drawn at 2x and reduced by the final affine warp, which doubles as cheap anti-aliasing.
Only numpy and Pillow are used.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from typing import Mapping

import numpy as np
from PIL import Image, ImageDraw

AU_EFFECTS: dict[int, str] = {
    1: "inner brow raiser: inner brow ends move up, central forehead lines appear",
    2: "outer brow raiser: outer brow ends move up, lateral forehead lines appear",
    4: "brow lowerer: brows lowered and pulled together, vertical furrows between the brows",
    5: "upper lid raiser: upper lids raised, eyes taller with white showing above the iris",
    6: "cheek raiser: blush rises and grows, lower lids pushed up, crow's-feet lines",
    7: "lid tightener: both lids close in, eyes narrower vertically",
    9: "nose wrinkler: horizontal wrinkles on the nose bridge, nostrils and wings lifted",
    10: "upper lip raiser: upper lip lifts toward the nose baring teeth, nasolabial lines",
    12: "lip corner puller: mouth corners pulled up and outward",
    14: "dimpler: dark dimples beside the mouth corners, corners pulled slightly inward",
    15: "lip corner depressor: mouth corners pulled down",
    17: "chin raiser: chin boss shading and crease, lower lip pushed up",
    20: "lip stretcher: mouth widened horizontally and flattened",
    23: "lip tightener: both lips thinner, mouth slightly narrower",
    24: "lip pressor: lips pressed into a thin dark line, mouth narrower",
    25: "lips part: dark gap between the lips showing the upper teeth",
    26: "jaw drop: chin lower, jaw longer, mouth opening taller",
}

RGB = tuple[int, int, int]

# Palettes are tuples so nothing module-level is mutable.
_SKIN_LIGHT, _SKIN_DARK = (246, 208, 182), (96, 62, 44)
_HAIR = ((24, 20, 18), (62, 40, 26), (112, 74, 42), (206, 170, 104), (156, 72, 36), (168, 166, 162))
_IRIS = ((70, 42, 24), (40, 26, 18), (60, 110, 170), (70, 120, 70), (120, 96, 50), (110, 120, 130))
_HAIR_STYLES = ("short", "long", "bald", "volume", "fringe")
_FACE_CX, _FACE_CY = 0.5, 0.5


def _mix(a: RGB, b: RGB, t: float) -> RGB:
    return tuple(int(round(x + (y - x) * t)) for x, y in zip(a, b))  # type: ignore[return-value]


def _shade(c: RGB, f: float) -> RGB:
    return tuple(int(min(255, max(0, round(x * f)))) for x in c)  # type: ignore[return-value]


def _jitter(rng: np.random.Generator, c: RGB, amount: float) -> RGB:
    return tuple(int(np.clip(x + rng.uniform(-amount, amount), 0, 255)) for x in c)  # type: ignore


@dataclass(frozen=True)
class Identity:
    """A subject's stable look. Lengths are fractions of the image side; half-sizes unless noted."""

    skin: RGB
    face_w: float      # head half width
    face_h: float      # head half height
    jaw: float         # superellipse exponent of the lower face: <2 pointed chin, >2 square jaw
    eye_y: float
    eye_dx: float      # half the distance between eye centres
    eye_w: float
    eye_h: float
    iris: RGB
    iris_r: float
    brow: RGB
    brow_gap: float    # brow height above the eye centre
    brow_thick: float
    brow_arch: float
    nose_len: float    # eye line to nose base
    nose_w: float
    mouth_y: float
    mouth_w: float
    lip: RGB
    lip_up: float      # upper / lower lip thickness at the centre
    lip_low: float
    hair: RGB
    hair_style: str    # one of _HAIR_STYLES
    hair_h: float      # hair volume above the head
    hairline: float    # y of the forehead hairline
    ear: float
    background: RGB
    shirt: RGB

    @classmethod
    def sample(cls, rng: np.random.Generator) -> "Identity":
        skin = _jitter(rng, _mix(_SKIN_LIGHT, _SKIN_DARK, rng.uniform()), 10)
        hair = _jitter(rng, _HAIR[rng.integers(len(_HAIR))], 14)
        eye_y = rng.uniform(0.485, 0.51)
        nose_len = rng.uniform(0.11, 0.14)
        mouth_y = eye_y + nose_len + rng.uniform(0.05, 0.065)
        # The chin must leave room below the mouth for AU17/AU26 to show.
        face_h = max(rng.uniform(0.32, 0.36), mouth_y + 0.145 - _FACE_CY)
        u = lambda lo, hi: float(rng.uniform(lo, hi))  # noqa: E731
        return cls(
            skin=skin, face_w=u(0.25, 0.31), face_h=float(face_h), jaw=u(1.5, 2.9),
            eye_y=float(eye_y), eye_dx=u(0.105, 0.135), eye_w=u(0.046, 0.06), eye_h=u(0.022, 0.03),
            iris=_jitter(rng, _IRIS[rng.integers(len(_IRIS))], 12), iris_r=u(0.019, 0.025),
            brow=_mix(hair, (20, 14, 10), 0.35), brow_gap=u(0.055, 0.068),
            brow_thick=u(0.012, 0.022), brow_arch=u(0.0, 0.016),
            nose_len=float(nose_len), nose_w=u(0.028, 0.042),
            mouth_y=float(mouth_y), mouth_w=u(0.075, 0.1),
            lip=_jitter(rng, _mix(skin, (176, 58, 70), 0.5), 10),
            lip_up=u(0.013, 0.02), lip_low=u(0.017, 0.026),
            hair=hair, hair_style=_HAIR_STYLES[rng.integers(len(_HAIR_STYLES))],
            hair_h=u(0.02, 0.07), hairline=u(0.27, 0.31), ear=u(0.045, 0.06),
            background=tuple(int(x) for x in rng.integers(30, 226, 3)),  # type: ignore[arg-type]
            shirt=tuple(int(x) for x in rng.integers(20, 236, 3)),  # type: ignore[arg-type]
        )


@dataclass(frozen=True)
class Nuisance:
    """Per-frame variation applied after drawing, so it cannot be confused with an AU."""

    dx: float = 0.0
    dy: float = 0.0
    scale: float = 1.0
    rotation: float = 0.0          # degrees, counter-clockwise
    brightness: float = 1.0
    light_gradient: float = 0.0    # -1..1: left side darker / brighter
    noise_std: float = 0.0         # 0..255 units

    @classmethod
    def sample(cls, rng: np.random.Generator, strength: float = 1.0) -> "Nuisance":
        # Always draw every value so the rng stream does not depend on strength.
        r = rng.uniform(-1.0, 1.0, 6).tolist()
        s = float(strength)
        return cls(dx=0.04 * s * r[0], dy=0.04 * s * r[1], scale=1.0 + 0.07 * s * r[2],
                   rotation=6.0 * s * r[3], brightness=1.0 + 0.2 * s * r[4],
                   light_gradient=0.25 * s * r[5], noise_std=6.0 * s * float(rng.uniform()))


class _Pen:
    """Draws normalised-coordinate shapes on the supersampled canvas (RGBA mode blends alpha)."""

    def __init__(self, canvas: Image.Image):
        self.k = canvas.width
        self.d = ImageDraw.Draw(canvas, "RGBA")

    def _flat(self, pts: np.ndarray) -> list[float]:
        return (np.asarray(pts, dtype=np.float64) * self.k).ravel().tolist()

    def poly(self, pts: np.ndarray, fill) -> None:
        self.d.polygon(self._flat(pts), fill=fill)

    def line(self, pts: np.ndarray, fill, width: float) -> None:
        self.d.line(self._flat(pts), fill=fill, width=max(1, round(width * self.k)), joint="curve")

    def ellipse(self, cx: float, cy: float, rx: float, ry: float, fill) -> None:
        k = self.k
        self.d.ellipse(((cx - rx) * k, (cy - ry) * k, (cx + rx) * k, (cy + ry) * k), fill=fill)


def _bezier(p0, p1, p2, n: int = 9) -> np.ndarray:
    """(n, 2) points on a quadratic Bezier curve."""
    t = np.linspace(0.0, 1.0, n)[:, None]
    return (1 - t) ** 2 * np.asarray(p0) + 2 * (1 - t) * t * np.asarray(p1) + t**2 * np.asarray(p2)


def _stroke(p0, p1, p2, w0: float, w2: float, n: int = 9) -> np.ndarray:
    """Polygon (2n, 2) of a Bezier stroke tapering from width w0 to w2, e.g. an eyebrow."""
    c = _bezier(p0, p1, p2, n)
    tan = np.gradient(c, axis=0)
    nrm = np.stack([-tan[:, 1], tan[:, 0]], 1) / np.linalg.norm(tan, axis=1, keepdims=True)
    half = np.linspace(w0, w2, n)[:, None] / 2
    return np.concatenate([c + nrm * half, (c - nrm * half)[::-1]])


def _intensities(aus: Mapping[int, float]) -> dict[int, float]:
    out = dict.fromkeys(AU_EFFECTS, 0.0)
    for code, value in aus.items():
        if code not in AU_EFFECTS:
            raise ValueError(f"unknown AU code {code!r}; drawable AUs are {sorted(AU_EFFECTS)}")
        v = float(value)
        if not 0.0 <= v <= 1.0:
            raise ValueError(f"AU{code} intensity {v} outside [0, 1]")
        out[int(code)] = v
    return out


def _head_outline(idn: Identity, mouth_y: float, chin_shift: float) -> np.ndarray:
    """(72, 2) head polygon; the lower face is a superellipse that stretches below the mouth."""
    t = np.linspace(0.0, 2 * np.pi, 72, endpoint=False)
    c, s = np.cos(t), np.sin(t)
    n = np.where(s > 0, idn.jaw, 2.2)
    x = _FACE_CX + idn.face_w * np.sign(c) * np.abs(c) ** (2 / n)
    y = _FACE_CY + idn.face_h * np.sign(s) * np.abs(s) ** (2 / n)
    bottom = _FACE_CY + idn.face_h
    y = y + chin_shift * np.clip((y - mouth_y) / (bottom - mouth_y), 0.0, 1.0)
    return np.stack([x, y], 1)


def _draw_hair(pen: _Pen, idn: Identity, front: bool) -> None:
    cx, cy, fw, fh, style = _FACE_CX, _FACE_CY, idn.face_w, idn.face_h, idn.hair_style
    if not front:
        if style == "bald":
            for side in (-1, 1):
                pen.ellipse(cx + side * fw * 0.96, cy - fh * 0.15, fw * 0.1, fh * 0.2, idn.hair)
            return
        grow = 2.2 if style == "volume" else 1.0
        top = cy - fh - idn.hair_h * grow
        pen.ellipse(cx, (top + cy) / 2, fw * (1.2 if style == "volume" else 1.07), (cy - top) / 2,
                    idn.hair)
        if style == "long":
            pen.d.rounded_rectangle(tuple(v * pen.k for v in (cx - fw * 1.16, cy - fh * 0.4,
                                    cx + fw * 1.16, cy + fh * 0.95)), radius=fw * 0.3 * pen.k,
                                    fill=idn.hair)
        return
    if style == "bald":
        return
    # Front cap: the upper head outline above the hairline, closed along the hairline.
    t = np.linspace(np.pi, 2 * np.pi, 41)
    c, s = np.cos(t), np.sin(t)
    x = cx + fw * 1.02 * np.sign(c) * np.abs(c) ** (2 / 2.2)
    y = cy + fh * 1.02 * np.sign(s) * np.abs(s) ** (2 / 2.2)
    keep = y < idn.hairline
    x, y = x[keep], y[keep]
    ex = np.linspace(x[-1], x[0], 11)
    dip = 0.035 if style == "fringe" else 0.008
    ey = idn.hairline + dip * (1 - ((ex - cx) / (x[-1] - cx)) ** 2)
    pen.poly(np.concatenate([np.stack([x, y], 1), np.stack([ex, ey], 1)]), idn.hair)


def _draw_eye(pen: _Pen, idn: Identity, cx: float, ht: float, hb: float) -> None:
    """Almond eye with the iris clipped analytically to the lid opening."""
    cy, w, r = idn.eye_y, idn.eye_w, idn.iris_r
    u = np.linspace(-1.0, 1.0, 13)
    x, bulge = cx + w * u, 1 - u**2
    up, lo = cy - ht * bulge, cy + hb * bulge
    pen.poly(np.concatenate([np.stack([x, up], 1), np.stack([x, lo], 1)[::-1]]), (238, 234, 226))
    a = np.linspace(0.0, 2 * np.pi, 24, endpoint=False)
    for rad, col in ((r, idn.iris), (r * 0.45, (14, 10, 10))):
        px, py = cx + rad * np.cos(a), cy + rad * np.sin(a)
        b = 1 - np.clip((px - cx) / w, -1, 1) ** 2
        pen.poly(np.stack([px, np.clip(py, cy - ht * b, cy + hb * b)], 1), col)
    if ht > 0.5 * r:
        pen.ellipse(cx + 0.3 * r, cy - 0.35 * r, 0.18 * r, 0.18 * r, (255, 255, 255, 200))
    pen.line(np.stack([x, up], 1), (28, 18, 16), 0.005)
    pen.line(np.stack([x, lo], 1), (*_shade(idn.skin, 0.6), 140), 0.0025)


def render_face(identity: Identity, aus: Mapping[int, float], size: int,
                nuisance: Nuisance = Nuisance(), asymmetry: float = 0.0) -> Image.Image:
    """RGB image ``size`` x ``size`` of ``identity`` showing ``aus`` (AU code -> intensity in [0, 1]).

    ``asymmetry`` in [-1, 1] raises the image-right (>0) or image-left (<0) mouth corner only.
    Unknown AU codes raise ValueError. Deterministic: same inputs give identical pixels.
    """
    # A concave response keeps intensity 0.3 visible at 64 px while 1.0 stays the maximum.
    a = {k: v**0.75 for k, v in _intensities(aus).items()}
    if not -1.0 <= asymmetry <= 1.0:
        raise ValueError(f"asymmetry {asymmetry} outside [-1, 1]")
    if size < 16:
        raise ValueError(f"size {size} too small (need >= 16)")
    idn, cx, skin = identity, _FACE_CX, identity.skin
    dark = _mix(skin, (28, 14, 10), 0.6)   # wrinkle / crease colour, blended with alpha
    canvas = Image.new("RGB", (2 * size, 2 * size), idn.background)
    pen = _Pen(canvas)

    # --- body, hair, head -------------------------------------------------------------------
    chin_shift = 0.05 * a[26] - 0.008 * a[17]
    bottom = _FACE_CY + idn.face_h
    pen.ellipse(cx, bottom + 0.26, 0.46, 0.24, idn.shirt)
    _draw_hair(pen, idn, front=False)
    neck = idn.face_w * 0.5
    pen.poly(np.array([[cx - neck, _FACE_CY], [cx + neck, _FACE_CY], [cx + neck, 1.05],
                       [cx - neck, 1.05]]), _shade(skin, 0.8))
    ear_y = idn.eye_y + 0.035
    for side in (-1, 1):
        pen.ellipse(cx + side * idn.face_w * 0.98, ear_y, idn.ear * 0.55, idn.ear, _shade(skin, 0.9))
    pen.poly(_head_outline(idn, idn.mouth_y, chin_shift), skin)
    _draw_hair(pen, idn, front=True)

    # --- cheeks (AU6 raises and enlarges the blush); three rings fake a soft edge ---------------
    blush = _mix(skin, (214, 90, 96), 0.6)
    for side in (-1, 1):
        bx, by = cx + side * (idn.eye_dx + 0.01), idn.eye_y + 0.08 - 0.03 * a[6]
        r = 0.042 * (1 + 0.4 * a[6])
        for f in (1.0, 0.75, 0.5):
            pen.ellipse(bx, by, r * f, r * f * 0.8, (*blush, int(18 + 30 * a[6])))

    # --- forehead lines: AU1 in the centre, AU2 above the outer brows ---------------------------
    brow_y = idn.eye_y - idn.brow_gap
    for dy in (0.045, 0.068):
        y = brow_y - dy
        if a[1] > 0:
            pen.line(_bezier((cx - 0.05, y + 0.004), (cx, y - 0.004), (cx + 0.05, y + 0.004)),
                     (*dark, int(200 * a[1])), 0.004)
        if a[2] > 0:
            for side in (-1, 1):
                x0, x1 = cx + side * (idn.eye_dx - 0.01), cx + side * (idn.eye_dx + 0.06)
                pen.line(_bezier((x0, y), ((x0 + x1) / 2, y - 0.006), (x1, y + 0.006)),
                         (*dark, int(200 * a[2])), 0.004)

    # --- eyes: upper/lower opening heights driven by AU5 / AU6 / AU7 ---------------------------
    ht = idn.eye_h * max(0.12, 1 + 0.8 * a[5] - 0.5 * a[7] - 0.15 * a[6])
    hb = idn.eye_h * 0.8 * max(0.1, 1 + 0.15 * a[5] - 0.45 * a[7] - 0.55 * a[6])
    for side in (-1, 1):
        ex = cx + side * idn.eye_dx
        _draw_eye(pen, idn, ex, ht, hb)
        # Upper-lid crease rides up and fades as the lid opens (AU5) and deepens when it tightens.
        crease_y = idn.eye_y - max(ht, idn.eye_h) - 0.01
        pen.line(_bezier((ex - idn.eye_w * 0.8, crease_y + 0.006), (ex, crease_y - 0.006),
                         (ex + idn.eye_w * 0.8, crease_y + 0.006)),
                 (*dark, int(70 * (1 - 0.6 * a[5]) + 90 * a[7])), 0.003)
        if a[6] > 0:   # crow's feet fan out from the outer corner; lower-lid bulge below the eye
            ox = ex + side * (idn.eye_w + 0.008)
            for ang in (-30, 0, 30):
                t = math.radians(ang)
                tip = (ox + side * 0.028 * math.cos(t), idn.eye_y + 0.028 * math.sin(t))
                pen.line(np.array([[ox, idn.eye_y], tip]), (*dark, int(200 * a[6])), 0.0035)
            ly = idn.eye_y + hb + 0.012
            pen.line(_bezier((ex - idn.eye_w * 0.7, ly - 0.004), (ex, ly + 0.004),
                             (ex + idn.eye_w * 0.7, ly - 0.004)), (*dark, int(150 * a[6])), 0.004)

    # --- brows: inner/outer end points moved by AU1, AU2, AU4 -----------------------------------
    for side in (-1, 1):
        inner_x = cx + side * (idn.eye_dx - idn.eye_w * 0.8 - 0.016 * a[4])
        outer_x = cx + side * (idn.eye_dx + idn.eye_w * 1.25)
        inner_y = brow_y - 0.036 * a[1] + 0.026 * a[4]
        outer_y = brow_y + 0.006 - 0.036 * a[2] + 0.016 * a[4]
        mid = (inner_x + (outer_x - inner_x) * 0.6,
               brow_y - idn.brow_arch - 0.012 * a[1] - 0.024 * a[2] + 0.02 * a[4])
        pen.poly(_stroke((inner_x, inner_y), mid, (outer_x, outer_y), idn.brow_thick,
                         idn.brow_thick * 0.45), idn.brow)
    if a[4] > 0:
        for side in (-1, 1):
            x = cx + side * 0.011
            pen.line(np.array([[x, brow_y - 0.002], [x + side * 0.002, brow_y + 0.036]]),
                     (*dark, int(220 * a[4])), 0.0045)

    # --- nose: AU9 lifts the base and wrinkles the bridge ----------------------------------------
    base = idn.eye_y + idn.nose_len - 0.014 * a[9]
    nw = idn.nose_w * (1 + 0.18 * a[9])
    for side in (-1, 1):
        pen.line(_bezier((cx + side * 0.014, idn.eye_y), (cx + side * 0.012, base - 0.04),
                         (cx + side * nw * 0.55, base - 0.018)), (*dark, 60), 0.003)
        pen.ellipse(cx + side * nw * 0.72, base - 0.009, 0.017, 0.013, _shade(skin, 0.88))
    pen.ellipse(cx, base - 0.013, nw * 0.5, 0.017, _shade(skin, 1.04))
    for side in (-1, 1):
        pen.ellipse(cx + side * nw * 0.4, base - 0.002, 0.01, 0.005, _shade(skin, 0.35))
    if a[9] > 0:
        for k in range(3):
            y = idn.eye_y + 0.008 + 0.013 * k
            pen.line(_bezier((cx - 0.022, y + 0.003), (cx, y - 0.003), (cx + 0.022, y + 0.003)),
                     (*dark, int(220 * a[9])), 0.004)

    # --- mouth --------------------------------------------------------------------------------
    mw = idn.mouth_w * (1 + 0.14 * a[12] + 0.32 * a[20] - 0.08 * a[14] - 0.08 * a[23]
                        - 0.14 * a[24])
    my = idn.mouth_y
    corner = -0.03 * a[12] + 0.03 * a[15] + 0.005 * a[20] + 0.006 * a[17] - 0.003 * a[14]
    corner_l = corner - 0.032 * max(0.0, -asymmetry)
    corner_r = corner - 0.032 * max(0.0, asymmetry)
    thin = (1 - 0.6 * a[23]) * (1 - 0.75 * a[24]) * (1 - 0.25 * a[20])
    tu, tl = idn.lip_up * thin, idn.lip_low * thin + 0.009 * a[17]
    gap_up = 0.01 * a[25] + 0.018 * a[10]
    gap_low = max(0.0, 0.022 * a[25] + 0.045 * a[26] - 0.008 * a[17])
    u = np.linspace(-1.0, 1.0, 17)
    x, taper = cx + mw * u, 1 - u**2
    mid = np.where(u < 0, corner_l, corner_r) * u**2 + my
    up_in = mid - gap_up * taper**0.7
    lo_in = mid + gap_low * taper**0.7 - 0.01 * a[17] * taper
    up_out = up_in - tu * taper**0.5 + 0.3 * tu * np.exp(-(u / 0.18) ** 2)   # cupid's bow dip
    lo_out = lo_in + tl * taper**0.6
    lip = _mix(idn.lip, _shade(idn.lip, 0.45), 0.7 * a[24] + 0.25 * a[23])
    xy = lambda ys: np.stack([x, ys], 1)  # noqa: E731
    if gap_up + gap_low > 0.001:
        pen.poly(np.concatenate([xy(up_in), xy(np.maximum(lo_in, up_in))[::-1]]), (58, 18, 24))
        teeth = np.minimum(up_in + 0.02 * taper, np.maximum(lo_in, up_in))
        pen.poly(np.concatenate([xy(up_in), xy(teeth)[::-1]]), (236, 232, 216))
    if a[10] > 0:   # nasolabial folds from the nose wings toward the mouth corners
        for side in (-1, 1):
            cy_corner = my + (corner_l if side < 0 else corner_r)
            pen.line(_bezier((cx + side * nw * 1.15, base - 0.008),
                             (cx + side * (mw * 0.95 + 0.012), (base + my) / 2),
                             (cx + side * (mw + 0.014), cy_corner + 0.01)),
                     (*dark, int(200 * a[10])), 0.0045)
    pen.poly(np.concatenate([xy(up_out), xy(up_in)[::-1]]), lip)
    pen.poly(np.concatenate([xy(lo_in), xy(lo_out)[::-1]]), lip)
    pen.line(xy(up_in), _shade(lip, 0.55), 0.004)
    if a[14] > 0:
        for side, cyy in ((-1, corner_l), (1, corner_r)):
            dxm = cx + side * (mw + 0.016)
            pen.line(_bezier((dxm, my + cyy - 0.016), (dxm + side * 0.009, my + cyy),
                             (dxm, my + cyy + 0.016)), (*dark, int(235 * a[14])), 0.007)
            pen.ellipse(dxm + side * 0.004, my + cyy, 0.005, 0.007, (*dark, int(200 * a[14])))

    # --- chin: a faint crease always; AU17 bulges the chin boss ---------------------------------
    chin_b = bottom + chin_shift
    lip_b = float(lo_out.max())
    boss_y = (lip_b + chin_b) / 2 + 0.012
    if a[17] > 0:
        pen.ellipse(cx, boss_y, 0.045, 0.024, (*_shade(skin, 1.2), int(190 * a[17])))
        pen.ellipse(cx, boss_y + 0.02, 0.04, 0.01, (*dark, int(80 * a[17])))
    crease_y = (lip_b + boss_y) / 2 - 0.008
    pen.line(_bezier((cx - 0.03, crease_y + 0.004), (cx, crease_y - 0.004 - 0.004 * a[17]),
                     (cx + 0.03, crease_y + 0.004)), (*dark, int(35 + 170 * a[17])), 0.004)

    return _finish(canvas, size, nuisance, idn.background, (idn, sorted(a.items()), asymmetry))


def _finish(canvas: Image.Image, size: int, nz: Nuisance, fill: RGB, key) -> Image.Image:
    """Pose warp + 2x reduction in one affine resample, then lighting and noise in numpy."""
    if nz.scale <= 0:
        raise ValueError(f"nuisance scale must be > 0, got {nz.scale}")
    big = canvas.width
    th = math.radians(nz.rotation)
    k = big / (size * nz.scale)
    # Inverse map output -> canvas: in = C_in + k * R(-th) (out - C_out - t); y points down.
    a_, b_, d_, e_ = k * math.cos(th), -k * math.sin(th), k * math.sin(th), k * math.cos(th)
    ox, oy = size / 2 + nz.dx * size, size / 2 + nz.dy * size
    coeffs = (a_, b_, big / 2 - a_ * ox - b_ * oy, d_, e_, big / 2 - d_ * ox - e_ * oy)
    # Bilinear at exactly 2:1 samples between canvas pixels, i.e. a 2x2 box filter.
    img = canvas.transform((size, size), Image.Transform.AFFINE, coeffs,
                           resample=Image.Resampling.BILINEAR, fillcolor=fill)
    if nz.brightness == 1.0 and nz.light_gradient == 0.0 and nz.noise_std <= 0.0:
        return img
    arr = np.asarray(img, dtype=np.float32)
    ramp = nz.brightness * (1 + nz.light_gradient * np.linspace(-1, 1, size, dtype=np.float32))
    arr = arr * ramp[None, :, None]
    if nz.noise_std > 0:
        # Seed from the full input so the noise is reproducible yet differs between frames.
        digest = hashlib.blake2b(repr((key, size, nz)).encode(), digest_size=8).digest()
        rng = np.random.default_rng(int.from_bytes(digest, "little"))
        arr += rng.standard_normal(arr.shape, dtype=np.float32) * np.float32(nz.noise_std)
    return Image.fromarray(np.clip(arr + 0.5, 0, 255).astype(np.uint8))

"""Pictures of the miniature MUSIC world: a drawing per instrument, varied in pose, colour
and background.

Each instrument has a canonical drawing (a violin's waisted body, f-holes, neck and bow; a
saxophone's J-shaped tube and bell; ...) in its own palette. A frame jitters the palette
(hue, saturation, brightness), turns, flips, scales and moves the drawing, and lays it on
a random background (gradient, stripes or a cluttered room), so no two frames are equal.

Usage::

    from clipcore.miniature.drawings import draw
    frame = draw("cello", seed=3)        # uint8 [224, 224, 3]
"""

from __future__ import annotations

import colorsys
from typing import Callable

import numpy as np
from PIL import Image, ImageDraw

__all__ = ["PALETTES", "draw"]

RGB = tuple[int, int, int]

PALETTES: dict[str, dict[str, RGB]] = {
    "accordion": {"body": (200, 30, 35), "bellows": (40, 40, 45), "keys": (245, 245, 240), "trim": (220, 200, 90)},
    "acoustic guitar": {"body": (235, 190, 110), "neck": (90, 50, 25), "hole": (25, 15, 10), "trim": (150, 90, 40)},
    "cello": {"body": (120, 40, 20), "neck": (25, 20, 20), "hole": (20, 10, 5), "trim": (210, 200, 180)},
    "clarinet": {"body": (30, 30, 35), "keys": (200, 200, 210), "trim": (120, 120, 130)},
    "erhu": {"body": (110, 30, 30), "neck": (20, 15, 15), "hole": (220, 210, 180), "trim": (230, 220, 190)},
    "flute": {"body": (200, 205, 215), "keys": (90, 95, 105), "trim": (240, 240, 250)},
    "saxophone": {"body": (225, 170, 40), "keys": (250, 230, 150), "trim": (120, 80, 20)},
    "trumpet": {"body": (240, 200, 70), "keys": (190, 190, 200), "trim": (150, 110, 30)},
    "tuba": {"body": (190, 140, 50), "keys": (220, 220, 225), "trim": (110, 80, 25)},
    "violin": {"body": (215, 110, 35), "neck": (30, 20, 15), "hole": (30, 15, 5), "trim": (235, 225, 200)},
    "xylophone": {"body": (150, 70, 40), "keys": (60, 40, 30), "trim": (235, 235, 230)},
}
"""Base colours of each instrument's parts; frames jitter them."""


class _Pen:
    """Draws in unit coordinates (-1..1 across the layer) with the frame's palette."""

    def __init__(self, size: int, palette: dict[str, RGB]) -> None:
        self.size = size
        self.layer = Image.new("RGBA", (size, size), (0, 0, 0, 0))
        self.draw = ImageDraw.Draw(self.layer)
        self.palette = palette

    def _xy(self, x: float, y: float) -> tuple[float, float]:
        return ((x + 1) * self.size / 2, (y + 1) * self.size / 2)

    def _w(self, w: float) -> int:
        return max(1, int(round(w * self.size / 2)))

    def ellipse(self, cx: float, cy: float, rx: float, ry: float, part: str, outline: str | None = None,
                width: float = 0.0) -> None:
        (x0, y0), (x1, y1) = self._xy(cx - rx, cy - ry), self._xy(cx + rx, cy + ry)
        fill = self.palette[part] if part else None
        line = self.palette[outline] if outline else None
        self.draw.ellipse((x0, y0, x1, y1), fill=fill, outline=line, width=self._w(width) if outline else 0)

    def rect(self, x0: float, y0: float, x1: float, y1: float, part: str) -> None:
        self.draw.rectangle((*self._xy(x0, y0), *self._xy(x1, y1)), fill=self.palette[part])

    def polygon(self, points: list[tuple[float, float]], part: str) -> None:
        self.draw.polygon([self._xy(x, y) for x, y in points], fill=self.palette[part])

    def line(self, points: list[tuple[float, float]], part: str, width: float) -> None:
        self.draw.line([self._xy(x, y) for x, y in points], fill=self.palette[part], width=self._w(width), joint="curve")


def _bowed(pen: _Pen, length: float, width: float, bow: bool, endpin: bool) -> None:
    """Violin family: two bouts and a waist, f-holes, fingerboard, scroll, maybe a bow."""
    top, bottom = -0.05 * length, 0.75 * length
    pen.ellipse(0, top + 0.22 * length, 0.75 * width, 0.24 * length, "body")
    pen.ellipse(0, bottom - 0.27 * length, width, 0.29 * length, "body")
    pen.rect(-0.55 * width, top + 0.3 * length, 0.55 * width, bottom - 0.35 * length, "body")
    for side in (-1, 1):
        pen.line([(side * 0.3 * width, 0.3 * length), (side * 0.25 * width, 0.5 * length)], "hole", 0.025)
    pen.rect(-0.07, -0.9 * length, 0.07, 0.35 * length, "neck")
    pen.ellipse(0, -0.92 * length, 0.09, 0.07, "neck")
    if endpin:
        pen.line([(0, bottom), (0, bottom + 0.2)], "trim", 0.03)
    if bow:
        pen.line([(-0.9, 0.55 * length), (0.9, 0.15 * length)], "trim", 0.03)
        pen.line([(-0.9, 0.5 * length), (0.9, 0.1 * length)], "neck", 0.02)


def _violin(pen: _Pen) -> None:
    _bowed(pen, length=0.85, width=0.32, bow=True, endpin=False)


def _cello(pen: _Pen) -> None:
    _bowed(pen, length=1.05, width=0.5, bow=False, endpin=True)


def _erhu(pen: _Pen) -> None:
    pen.rect(-0.03, -0.95, 0.03, 0.75, "neck")
    for y in (-0.85, -0.7):
        pen.rect(-0.15, y - 0.025, 0.15, y + 0.025, "neck")
    hexagon = [(0.22 * np.cos(a), 0.62 + 0.16 * np.sin(a)) for a in np.linspace(0, 2 * np.pi, 7)[:-1]]
    pen.polygon(hexagon, "body")
    pen.ellipse(0.0, 0.62, 0.13, 0.1, "hole")
    pen.line([(-0.75, 0.42), (0.75, 0.35)], "trim", 0.025)
    pen.line([(-0.2, -0.6), (0.2, -0.6)], "trim", 0.02)


def _guitar(pen: _Pen) -> None:
    pen.rect(-0.06, -0.95, 0.06, 0.1, "neck")
    pen.rect(-0.1, -1.0, 0.1, -0.82, "trim")
    for y in np.linspace(-0.8, -0.05, 6):
        pen.line([(-0.06, y), (0.06, y)], "trim", 0.012)
    pen.ellipse(0, 0.12, 0.3, 0.27, "body")
    pen.ellipse(0, 0.55, 0.4, 0.36, "body")
    pen.ellipse(0, 0.25, 0.11, 0.11, "hole")
    pen.rect(-0.15, 0.62, 0.15, 0.68, "trim")


def _accordion(pen: _Pen) -> None:
    pen.rect(-0.8, -0.5, -0.35, 0.5, "body")
    pen.rect(0.35, -0.5, 0.8, 0.5, "body")
    pen.rect(-0.35, -0.45, 0.35, 0.45, "bellows")
    for x in np.linspace(-0.3, 0.3, 7):
        pen.line([(x, -0.45), (x, 0.45)], "trim", 0.02)
    pen.rect(-0.75, -0.45, -0.5, 0.45, "keys")
    for y in np.linspace(-0.38, 0.38, 7):
        pen.rect(-0.75, y - 0.025, -0.6, y + 0.025, "bellows")
    for y in np.linspace(-0.35, 0.35, 5):
        for x in (0.5, 0.65):
            pen.ellipse(x, y, 0.04, 0.04, "trim")


def _clarinet(pen: _Pen) -> None:
    pen.rect(-0.07, -0.85, 0.07, 0.62, "body")
    pen.polygon([(-0.07, 0.6), (0.07, 0.6), (0.2, 0.9), (-0.2, 0.9)], "body")
    pen.polygon([(-0.05, -0.85), (0.05, -0.85), (0.02, -1.0), (-0.02, -1.0)], "trim")
    for y in np.linspace(-0.6, 0.5, 7):
        pen.ellipse(0.0, y, 0.045, 0.03, "keys")
    for y in (-0.4, 0.0, 0.35):
        pen.rect(-0.09, y - 0.015, 0.09, y + 0.015, "keys")


def _flute(pen: _Pen) -> None:
    pen.rect(-0.95, -0.05, 0.95, 0.05, "body")
    pen.rect(-0.75, -0.08, -0.6, 0.08, "trim")
    for x in np.linspace(-0.2, 0.8, 7):
        pen.ellipse(x, 0.0, 0.035, 0.035, "keys")
    pen.line([(-0.2, 0.09), (0.8, 0.09)], "keys", 0.015)


def _saxophone(pen: _Pen) -> None:
    pen.line([(-0.35, -0.95), (-0.15, -0.75), (-0.15, -0.6)], "trim", 0.06)
    pen.polygon([(-0.22, -0.6), (-0.08, -0.6), (0.0, 0.55), (-0.32, 0.55)], "body")
    pen.ellipse(0.05, 0.6, 0.37, 0.28, "body")
    pen.polygon([(0.1, 0.6), (0.42, 0.6), (0.55, -0.05), (0.2, -0.05)], "body")
    pen.ellipse(0.38, -0.08, 0.2, 0.09, "trim")
    for y in np.linspace(-0.45, 0.35, 6):
        pen.ellipse(-0.14, y, 0.05, 0.04, "keys")


def _trumpet(pen: _Pen) -> None:
    pen.rect(-0.75, -0.05, 0.45, 0.05, "body")
    pen.polygon([(0.4, -0.06), (0.4, 0.06), (0.95, 0.3), (0.95, -0.3)], "body")
    pen.ellipse(0.95, 0.0, 0.05, 0.3, "trim")
    pen.ellipse(-0.15, 0.28, 0.45, 0.18, "", outline="body", width=0.07)
    for x in (-0.2, -0.05, 0.1):
        pen.rect(x - 0.045, -0.3, x + 0.045, 0.25, "keys")
        pen.ellipse(x, -0.32, 0.06, 0.04, "keys")
    pen.polygon([(-0.75, -0.07), (-0.75, 0.07), (-0.92, 0.03), (-0.92, -0.03)], "trim")


def _tuba(pen: _Pen) -> None:
    pen.ellipse(0.0, 0.3, 0.55, 0.55, "", outline="body", width=0.2)
    pen.polygon([(-0.2, 0.0), (0.2, 0.0), (0.55, -0.85), (-0.55, -0.85)], "body")
    pen.ellipse(0.0, -0.85, 0.55, 0.12, "trim")
    for x in (-0.15, 0.0, 0.15):
        pen.rect(x - 0.05, 0.05, x + 0.05, 0.55, "keys")
    pen.line([(-0.45, 0.6), (-0.8, 0.35)], "trim", 0.05)


def _xylophone(pen: _Pen) -> None:
    pen.polygon([(-0.9, -0.1), (0.9, 0.05), (0.9, 0.3), (-0.9, 0.55)], "keys")
    for i, x in enumerate(np.linspace(-0.8, 0.8, 9)):
        half = 0.42 - 0.026 * i  # bars shorten towards the treble
        pen.rect(x - 0.075, 0.22 - half, x + 0.075, 0.22 + half, "body")
    for x0, x1 in ((-0.4, -0.1), (0.2, 0.5)):
        pen.line([(x0, -0.9), (x1, -0.35)], "keys", 0.025)
        pen.ellipse(x1, -0.33, 0.07, 0.07, "trim")


_DRAWERS: dict[str, Callable[[_Pen], None]] = {
    "accordion": _accordion, "acoustic guitar": _guitar, "cello": _cello, "clarinet": _clarinet, "erhu": _erhu,
    "flute": _flute, "saxophone": _saxophone, "trumpet": _trumpet, "tuba": _tuba, "violin": _violin,
    "xylophone": _xylophone,
}


def _jitter(palette: dict[str, RGB], rng: np.random.Generator) -> dict[str, RGB]:
    """The same hue shift, saturation and brightness factors on every part."""
    shift, saturation, value = rng.uniform(-0.035, 0.035), rng.uniform(0.75, 1.15), rng.uniform(0.75, 1.15)
    out = {}
    for part, rgb in palette.items():
        h, s, v = colorsys.rgb_to_hsv(*(c / 255 for c in rgb))
        r, g, b = colorsys.hsv_to_rgb((h + shift) % 1.0, min(1.0, s * saturation), min(1.0, v * value))
        out[part] = (int(r * 255), int(g * 255), int(b * 255))
    return out


def _background(rng: np.random.Generator, size: int) -> Image.Image:
    """A random backdrop: vertical gradient, stripes, or a room with clutter."""
    hue = rng.random()
    base = np.array(colorsys.hsv_to_rgb(hue, rng.uniform(0.05, 0.5), rng.uniform(0.25, 0.9))) * 255
    other = np.array(colorsys.hsv_to_rgb(rng.random(), rng.uniform(0.05, 0.5), rng.uniform(0.2, 0.9))) * 255
    kind = rng.integers(3)
    rows = np.linspace(0, 1, size)[:, None, None]
    if kind == 0:
        pixels = base * (1 - rows) + other * rows
        image = Image.fromarray(np.broadcast_to(pixels, (size, size, 3)).astype(np.uint8))
    elif kind == 1:
        period = int(rng.integers(8, 40))
        stripes = ((np.arange(size) // period) % 2)[None, :, None]
        pixels = np.where(stripes, base, 0.7 * base + 0.3 * other)
        image = Image.fromarray(np.broadcast_to(pixels, (size, size, 3)).astype(np.uint8))
        if rng.random() < 0.5:
            image = image.rotate(90)
    else:
        image = Image.new("RGB", (size, size), tuple(int(c) for c in base))
        pen = ImageDraw.Draw(image)
        floor = int(rng.uniform(0.55, 0.85) * size)
        pen.rectangle((0, floor, size, size), fill=tuple(int(c) for c in other))
        for _ in range(int(rng.integers(2, 6))):
            colour = tuple(int(c) for c in rng.integers(30, 220, size=3))
            x0, y0 = (float(v) for v in rng.uniform(0, size, 2))
            w, h = (float(v) for v in rng.uniform(0.05, 0.3, 2) * size)
            (pen.rectangle if rng.random() < 0.5 else pen.ellipse)((x0, y0, x0 + w, y0 + h), fill=colour)
    return image


def draw(name: str, seed: int | np.random.Generator = 0, size: int = 224) -> np.ndarray:
    """One frame showing an instrument.

    Args:
        name: one of :data:`clipcore.miniature.sound.INSTRUMENTS`.
        seed: an integer or a numpy ``Generator``.
        size: the frame is ``size x size`` pixels.

    Returns:
        uint8 ``[size, size, 3]`` (RGB).
    """
    if name not in _DRAWERS:
        raise ValueError(f"unknown instrument {name!r}; choose one of {', '.join(_DRAWERS)}.")
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    image = _background(rng, size)
    pen = _Pen(2 * size, _jitter(PALETTES[name], rng))  # drawn at twice the size, then reduced
    _DRAWERS[name](pen)
    layer = pen.layer
    if rng.random() < 0.5:
        layer = layer.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    layer = layer.rotate(float(rng.uniform(-35, 35)), resample=Image.Resampling.BILINEAR)
    side = int(size * rng.uniform(0.6, 0.95))
    layer = layer.resize((side, side), Image.Resampling.LANCZOS)
    x, y = (int(v) for v in rng.integers(0, size - side + 1, 2))
    image.paste(layer, (x, y), layer)
    return np.asarray(image, dtype=np.uint8).copy()

"""Rendered graphics made by code: UI screenshots, charts, diagrams, logos, icons, gradients with
text, photos with a text overlay, line art, pixel art, maps, tables, posters.

    python -m benchmarks.graphics --out DIR [--seed 0] [--count 24] [--size 768x512]

The web's other half besides photos, and where codecs and metrics behave differently: flat
colour, hard edges, small anti-aliased text, saturated chroma, smooth gradients. Deterministic
(the same seed writes the same pixels with the same Pillow), ours (CC0: drawn here with Pillow
and its built-in font, nothing downloaded), and varied on purpose, as training data for a quality
predictor: every seed cycles through all the kinds in its own order, with its own colours, text,
layout, anti-aliasing (some drawn at 1x with hard pixel edges, some supersampled) and
orientation. Different seeds give disjoint sets (seed 0 for training, seed 1 held out).

The photo-with-text kind uses a photo of the Kodak corpus (../shared/corpora/kodak24) when it is
there, else one of sample_images/: photos of even index for even seeds, odd for odd seeds, so a
training set and a held-out set never share a background photo.
"""

from __future__ import annotations

import argparse
import colorsys
import math
import random
from collections.abc import Callable
from functools import cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

ROOT = Path(__file__).resolve().parent.parent
PHOTO_DIRS = (ROOT.parent / "shared" / "corpora" / "kodak24", ROOT / "sample_images")

_VOCAB = (
    "account active add after agent alpha amber analytics api app archive area audio auto "
    "backup balance banner basic batch beta billing blue board build bundle cache call camera "
    "cart change chart check city clear cloud code colour column comment config contact copy "
    "cost create customer daily dark data date debug delete deploy design detail device draft "
    "edit email energy engine error event export feature feed file filter folder forecast form "
    "garden gift global green group growth guide health help history home hotel image import "
    "inbox index insight invoice item journal key label launch layer layout level library light "
    "limit link list live load local login market media member menu message metric mobile mode "
    "monthly music network news node note notice number offer open order orange output page "
    "panel partner payment people photo plan player policy post preview price print profile "
    "project public quality query queue quick rate record red region release report request "
    "result review river route sales save scale schedule search season secure send server "
    "service session settings share shop signal size slide social source space speed sprint "
    "stage status storage store stream studio style summary support sync system table target "
    "task team theme ticket time today token tool total track traffic travel trend update "
    "upload usage user value version video view visit volume wallet weather weekly window work "
    "yearly zone"
)
WORDS = tuple(_VOCAB.split())


# --- drawing helpers ---------------------------------------------------------------------------


@cache
def _font(size: int) -> ImageFont.FreeTypeFont:
    return ImageFont.load_default(size)


@cache
def _bitmap_font() -> ImageFont.ImageFont:
    return ImageFont.load_default_imagefont()


def words(rng: random.Random, n: int, *, title: bool = False) -> str:
    text = " ".join(rng.choice(WORDS) for _ in range(n))
    return text.title() if title else text.capitalize()


def number(rng: random.Random) -> str:
    kind = rng.randrange(5)
    if kind == 0:
        return f"{rng.randint(1, 999):,}"
    if kind == 1:
        return f"{rng.uniform(0, 100):.1f}%"
    if kind == 2:
        return f"${rng.randint(10, 99999):,}"
    if kind == 3:
        return f"{rng.randint(1, 9)}.{rng.randint(0, 99):02d}k"
    return f"{rng.randint(0, 23):02d}:{rng.randint(0, 59):02d}"


def hsv(h: float, s: float, v: float) -> tuple[int, int, int]:
    r, g, b = colorsys.hsv_to_rgb(h % 1.0, min(max(s, 0), 1), min(max(v, 0), 1))
    return (round(r * 255), round(g * 255), round(b * 255))


def mix(a, b, t: float) -> tuple[int, int, int]:
    return tuple(round(x + (y - x) * t) for x, y in zip(a, b, strict=True))


class Theme:
    """Colours of one image: background, surfaces, text, an accent hue and its neighbours."""

    def __init__(self, rng: random.Random, *, dark: bool | None = None):
        self.dark = rng.random() < 0.35 if dark is None else dark
        self.hue = rng.random()
        s = rng.uniform(0.45, 0.9)
        if self.dark:
            self.bg = hsv(self.hue, rng.uniform(0.05, 0.25), rng.uniform(0.08, 0.16))
            self.surface = mix(self.bg, (255, 255, 255), 0.07)
            self.text = (230, 232, 236)
            self.muted = (150, 155, 165)
            self.line = mix(self.bg, (255, 255, 255), 0.18)
        else:
            self.bg = hsv(self.hue, rng.uniform(0.0, 0.06), rng.uniform(0.94, 1.0))
            self.surface = (255, 255, 255)
            self.text = hsv(self.hue, 0.2, rng.uniform(0.1, 0.22))
            self.muted = (120, 124, 132)
            self.line = (222, 224, 228)
        self.accent = hsv(self.hue, s, rng.uniform(0.75, 0.95))
        spread = rng.choice((0.08, 0.15, 0.33, 0.5, 0.618))
        self.series = [hsv(self.hue + k * spread, s, rng.uniform(0.7, 0.95)) for k in range(8)]
        self.on_accent = (255, 255, 255) if sum(self.accent) < 560 else (20, 20, 20)


class Canvas:
    """A Pillow drawing in output coordinates, optionally supersampled (`scale` > 1) and
    reduced at the end, so shapes come out anti-aliased; at scale 1 edges are hard pixels."""

    def __init__(self, size: tuple[int, int], bg, scale: int = 1, base: Image.Image | None = None):
        self.w, self.h = size
        self.s = scale
        full = (self.w * scale, self.h * scale)
        if base is not None:
            self.im = base.convert("RGB").resize(full, Image.Resampling.BICUBIC)
        else:
            self.im = Image.new("RGB", full, bg)
        self.d = ImageDraw.Draw(self.im, "RGBA")

    def _p(self, seq):
        return [round(v * self.s) for v in seq]

    def _pts(self, pts):
        return [(round(x * self.s), round(y * self.s)) for x, y in pts]

    def rect(self, box, fill=None, outline=None, width=1, radius=0):
        box = self._p(box)
        if radius:
            self.d.rounded_rectangle(
                box, radius * self.s, fill=fill, outline=outline, width=width * self.s
            )
        else:
            self.d.rectangle(box, fill=fill, outline=outline, width=width * self.s)

    def ellipse(self, box, fill=None, outline=None, width=1):
        self.d.ellipse(self._p(box), fill=fill, outline=outline, width=width * self.s)

    def line(self, pts, fill, width=1, joint="curve"):
        self.d.line(self._pts(pts), fill=fill, width=max(1, round(width * self.s)), joint=joint)

    def polygon(self, pts, fill=None, outline=None, width=1):
        self.d.polygon(self._pts(pts), fill=fill, outline=outline, width=width * self.s)

    def pieslice(self, box, start, end, fill, outline=None, width=1):
        self.d.pieslice(self._p(box), start, end, fill=fill, outline=outline, width=width * self.s)

    def arc(self, box, start, end, fill, width=1):
        self.d.arc(self._p(box), start, end, fill=fill, width=width * self.s)

    def text(self, xy, text, size, fill, anchor="la", stroke=0, stroke_fill=None):
        self.d.text(
            self._pts([xy])[0],
            text,
            fill=fill,
            font=_font(max(6, round(size * self.s))),
            anchor=anchor,
            stroke_width=round(stroke * self.s),
            stroke_fill=stroke_fill,
        )

    def text_len(self, text: str, size: int) -> float:
        return _font(max(6, round(size * self.s))).getlength(text) / self.s

    def shadow(self, box, radius=10, blur=8, opacity=0.25):
        """A soft drop shadow under `box` (blurred, then composited)."""
        mask = Image.new("L", self.im.size, 0)
        ImageDraw.Draw(mask).rounded_rectangle(
            self._p(box), radius * self.s, fill=round(255 * opacity)
        )
        mask = mask.filter(ImageFilter.GaussianBlur(blur * self.s))
        self.im.paste((0, 0, 0), (0, 0), mask)

    def paste(self, img: Image.Image, xy):
        self.im.paste(img.resize((img.width * self.s, img.height * self.s)), self._pts([xy])[0])

    def finish(self) -> Image.Image:
        if self.s == 1:
            return self.im
        return self.im.resize((self.w, self.h), Image.Resampling.LANCZOS)


def gradient(size, stops, *, angle=0.0, radial=False, center=(0.5, 0.5), dither=False, rng=None):
    """An RGB gradient image through `stops` (colours, evenly spaced)."""
    w, h = size
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    if radial:
        cx, cy = center[0] * w, center[1] * h
        t = np.hypot(x - cx, y - cy) / math.hypot(max(cx, w - cx), max(cy, h - cy))
    else:
        a = math.radians(angle)
        t = (x - w / 2) * math.cos(a) + (y - h / 2) * math.sin(a)
        t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
    t = np.clip(t, 0, 1) * (len(stops) - 1)
    i = np.minimum(t.astype(int), len(stops) - 2)
    f = (t - i)[..., None]
    cols = np.array(stops, np.float32)
    out = cols[i] * (1 - f) + cols[i + 1] * f
    if dither and rng is not None:
        noise = np.random.default_rng(rng.randrange(1 << 30)).uniform(-0.5, 0.5, out.shape)
        out = out + noise.astype(np.float32)
    return Image.fromarray(np.clip(np.rint(out), 0, 255).astype(np.uint8), "RGB")


def icon(c: Canvas, rng: random.Random, box, colour, bg=None):
    """A simple glyph in `box`: one of a few pictograms made of primitives."""
    x0, y0, x1, y1 = box
    w, h = x1 - x0, y1 - y0
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    k = rng.randrange(9)
    lw = max(1, round(min(w, h) / 10))
    if k == 0:  # house
        c.polygon([(cx, y0 + h * 0.1), (x1 - w * 0.1, cy), (x0 + w * 0.1, cy)], fill=colour)
        c.rect((x0 + w * 0.22, cy, x1 - w * 0.22, y1 - h * 0.1), fill=colour)
    elif k == 1:  # bell / circle with dot
        c.ellipse(
            (x0 + w * 0.15, y0 + h * 0.15, x1 - w * 0.15, y1 - h * 0.15), outline=colour, width=lw
        )
        c.ellipse((cx - w * 0.1, cy - h * 0.1, cx + w * 0.1, cy + h * 0.1), fill=colour)
    elif k == 2:  # star
        pts = []
        for j in range(10):
            r = (0.45 if j % 2 == 0 else 0.2) * min(w, h)
            a = -math.pi / 2 + j * math.pi / 5
            pts.append((cx + r * math.cos(a), cy + r * math.sin(a)))
        c.polygon(pts, fill=colour)
    elif k == 3:  # hamburger
        for j in range(3):
            yy = y0 + h * (0.25 + 0.25 * j)
            c.rect((x0 + w * 0.15, yy - lw / 2, x1 - w * 0.15, yy + lw / 2), fill=colour)
    elif k == 4:  # magnifier
        r = min(w, h) * 0.25
        c.ellipse(
            (cx - r * 1.3, cy - r * 1.3, cx + r * 0.5, cy + r * 0.5), outline=colour, width=lw
        )
        c.line([(cx + r * 0.4, cy + r * 0.4), (x1 - w * 0.12, y1 - h * 0.12)], colour, lw * 1.5)
    elif k == 5:  # check
        c.line(
            [(x0 + w * 0.18, cy), (x0 + w * 0.42, y1 - h * 0.22), (x1 - w * 0.15, y0 + h * 0.22)],
            colour,
            lw * 1.5,
        )
    elif k == 6:  # gear-ish: ring with teeth
        r = min(w, h) * 0.3
        for j in range(8):
            a = j * math.pi / 4
            c.line(
                [(cx, cy), (cx + r * 1.35 * math.cos(a), cy + r * 1.35 * math.sin(a))],
                colour,
                lw * 1.6,
            )
        c.ellipse((cx - r, cy - r, cx + r, cy + r), fill=colour)
        c.ellipse((cx - r / 2.5, cy - r / 2.5, cx + r / 2.5, cy + r / 2.5), fill=bg or (255,) * 3)
    elif k == 7:  # person
        c.ellipse((cx - w * 0.16, y0 + h * 0.1, cx + w * 0.16, y0 + h * 0.42), fill=colour)
        c.pieslice((x0 + w * 0.15, y0 + h * 0.5, x1 - w * 0.15, y1 + h * 0.3), 180, 360, colour)
    else:  # chat bubble
        c.rect(
            (x0 + w * 0.1, y0 + h * 0.15, x1 - w * 0.1, y1 - h * 0.3),
            fill=colour,
            radius=max(1, round(min(w, h) * 0.12)),
        )
        c.polygon(
            [
                (x0 + w * 0.3, y1 - h * 0.31),
                (x0 + w * 0.25, y1 - h * 0.1),
                (x0 + w * 0.48, y1 - h * 0.31),
            ],
            fill=colour,
        )


def paragraph(c: Canvas, rng, x, y, width, size, colour, lines, leading=1.45) -> float:
    """Ragged lines of words from (x, y) within `width`; returns the y below the last line."""
    for j in range(lines):
        text = ""
        target = width * (rng.uniform(0.45, 0.8) if j == lines - 1 else rng.uniform(0.88, 1.0))
        while True:
            w = rng.choice(WORDS)
            nxt = (text + " " + w).strip()
            if c.text_len(nxt, size) > target:
                break
            text = nxt
        if j == 0:
            text = text.capitalize()
        c.text((x, y), text, size, colour)
        y += size * leading
    return y


# --- the kinds ---------------------------------------------------------------------------------


def ui_dashboard(rng, size):
    t = Theme(rng)
    w, h = size
    c = Canvas(size, t.bg, rng.choice((1, 1, 2)))
    side = rng.randint(140, 190)
    c.rect((0, 0, side, h), fill=t.surface if not t.dark else mix(t.bg, (0, 0, 0), 0.3))
    c.text((18, 18), words(rng, 1, title=True), 20, t.accent)
    for j in range(rng.randint(5, 9)):
        yy = 64 + j * 34
        if j == 1:
            c.rect((8, yy - 6, side - 8, yy + 24), fill=mix(t.accent, t.surface, 0.85), radius=6)
        icon(c, rng, (16, yy - 2, 34, yy + 16), t.accent if j == 1 else t.muted, t.surface)
        c.text((44, yy), words(rng, 1, title=True), 13, t.text if j == 1 else t.muted)
    c.line([(side, 0), (side, h)], t.line)
    c.text((side + 24, 18), words(rng, 2, title=True), 22, t.text)
    c.rect((w - 200, 16, w - 24, 44), fill=t.surface, outline=t.line, radius=14)
    c.text((w - 186, 23), "Search", 13, t.muted)
    ncards = rng.randint(2, 4)
    gap = 16
    cw = (w - side - 48 - gap * (ncards - 1)) / ncards
    for k in range(ncards):
        x0 = side + 24 + k * (cw + gap)
        if rng.random() < 0.5:
            c.shadow((x0, 64, x0 + cw, 160), radius=10, blur=6, opacity=0.15)
        c.rect((x0, 64, x0 + cw, 160), fill=t.surface, outline=t.line, radius=10)
        c.text((x0 + 14, 78), words(rng, 2), 12, t.muted)
        c.text((x0 + 14, 100), number(rng), 26, t.text)
        pts = [(x0 + 14 + i * (cw - 28) / 11, 150 - rng.uniform(0, 18)) for i in range(12)]
        c.line(pts, t.series[k % 8], 2)
    top = 180
    c.rect((side + 24, top, w - 24, h - 20), fill=t.surface, outline=t.line, radius=10)
    cols = rng.randint(3, 5)
    colw = (w - side - 80) / cols
    for j in range(int((h - 20 - top - 50) / 30)):
        yy = top + 20 + j * 30
        for k in range(cols):
            txt = words(rng, rng.randint(1, 2)) if k == 0 else number(rng)
            if j == 0:
                txt = words(rng, 1, title=True)
            c.text((side + 44 + k * colw, yy), txt, 12, t.text if j else t.muted)
        if j == 0 or rng.random() < 0.7:
            c.line([(side + 36, yy + 22), (w - 36, yy + 22)], t.line)
        if j and rng.random() < 0.3:
            x0 = side + 44 + (cols - 1) * colw + 60
            c.rect(
                (x0, yy - 2, x0 + 56, yy + 16), fill=mix(t.series[j % 8], t.surface, 0.7), radius=9
            )
    return c.finish()


def ui_mobile(rng, size):
    w, h = min(size), max(size)  # portrait
    t = Theme(rng)
    c = Canvas((w, h), t.bg, rng.choice((1, 2)))
    c.rect((0, 0, w, 28), fill=t.accent if rng.random() < 0.5 else t.bg)
    c.text((16, 7), number(rng) if rng.random() < 0.3 else "9:41", 13, t.text)
    for k in range(3):
        c.rect((w - 70 + k * 16, 10, w - 60 + k * 16, 20), fill=t.text)
    c.rect((0, 28, w, 90), fill=t.accent)
    c.text((20, 46), words(rng, 2, title=True), 24, t.on_accent)
    y = 104
    while y < h - 110:
        kind = rng.random()
        if kind < 0.6:  # list row with avatar
            col = t.series[rng.randrange(8)]
            c.ellipse((20, y, 68, y + 48), fill=col)
            c.text((44, y + 24), words(rng, 1)[0].upper(), 20, (255, 255, 255), anchor="mm")
            c.text((84, y + 4), words(rng, 2, title=True), 17, t.text)
            c.text((84, y + 28), words(rng, 5), 13, t.muted)
            c.text((w - 20, y + 4), number(rng), 12, t.muted, anchor="ra")
            y += 64
            c.line([(84, y - 8), (w, y - 8)], t.line)
        elif kind < 0.8:  # toggle row
            c.text((20, y + 8), words(rng, 3), 16, t.text)
            on = rng.random() < 0.5
            c.rect((w - 76, y + 4, w - 24, y + 32), fill=t.accent if on else t.line, radius=14)
            cx = w - 38 if on else w - 62
            c.ellipse((cx - 12, y + 6, cx + 12, y + 30), fill=(255, 255, 255))
            y += 48
        else:  # image card
            ch = rng.randint(110, 170)
            g = gradient((w - 40, ch), [t.series[0], t.series[3]], angle=rng.uniform(0, 180))
            c.paste(g, (20, y))
            c.text(
                (34, y + ch - 34),
                words(rng, 3, title=True),
                18,
                (255, 255, 255),
                stroke=1,
                stroke_fill=(0, 0, 0, 90),
            )
            y += ch + 16
    c.rect((0, h - 64, w, h), fill=t.surface)
    c.line([(0, h - 64), (w, h - 64)], t.line)
    for k in range(4):
        cx = w * (k + 0.5) / 4
        icon(c, rng, (cx - 12, h - 54, cx + 12, h - 30), t.accent if k == 0 else t.muted, t.surface)
        c.text((cx, h - 22), words(rng, 1, title=True), 10, t.muted, anchor="ma")
    if rng.random() < 0.5:  # floating action button
        c.shadow((w - 84, h - 140, w - 28, h - 84), radius=28, blur=6, opacity=0.3)
        c.ellipse((w - 84, h - 140, w - 28, h - 84), fill=t.accent)
        c.text((w - 56, h - 112), "+", 30, t.on_accent, anchor="mm")
    return c.finish()


def ui_form(rng, size):
    t = Theme(rng)
    w, h = size
    back = gradient(size, [t.series[0], t.series[2]], angle=rng.uniform(0, 360))
    c = Canvas(size, None, rng.choice((1, 2)), base=back)
    if rng.random() < 0.6:  # page behind a modal, dimmed
        c.rect((0, 0, w, h), fill=(0, 0, 0, rng.randint(60, 140)))
    fw, fh = rng.randint(340, min(460, w - 60)), min(h - 40, rng.randint(380, 470))
    x0, y0 = (w - fw) / 2, (h - fh) / 2
    c.shadow((x0, y0, x0 + fw, y0 + fh), radius=12, blur=12, opacity=0.35)
    c.rect((x0, y0, x0 + fw, y0 + fh), fill=t.surface, radius=12)
    c.text((x0 + 24, y0 + 22), words(rng, 2, title=True), 22, t.text)
    c.text((x0 + fw - 28, y0 + 24), "x", 18, t.muted)
    y = y0 + 66
    while y < y0 + fh - 120:
        r = rng.random()
        if r < 0.55:
            c.text((x0 + 24, y), words(rng, 2), 13, t.muted)
            focus = rng.random() < 0.25
            c.rect(
                (x0 + 24, y + 20, x0 + fw - 24, y + 52),
                fill=t.bg,
                outline=t.accent if focus else t.line,
                width=2 if focus else 1,
                radius=6,
            )
            if rng.random() < 0.7:
                c.text((x0 + 36, y + 28), words(rng, 2), 14, t.text)
            y += 66
        elif r < 0.8:
            for k in range(rng.randint(1, 2)):
                on = rng.random() < 0.5
                xx = x0 + 24 + k * fw / 2
                if rng.random() < 0.5:
                    c.rect(
                        (xx, y, xx + 18, y + 18),
                        fill=t.accent if on else t.surface,
                        outline=t.accent if on else t.muted,
                        radius=3,
                    )
                    if on:
                        c.line(
                            [(xx + 4, y + 9), (xx + 8, y + 13), (xx + 14, y + 5)], t.on_accent, 2
                        )
                else:
                    c.ellipse(
                        (xx, y, xx + 18, y + 18), outline=t.accent if on else t.muted, width=2
                    )
                    if on:
                        c.ellipse((xx + 5, y + 5, xx + 13, y + 13), fill=t.accent)
                c.text((xx + 28, y + 2), words(rng, 2), 13, t.text)
            y += 34
        else:
            y = paragraph(c, rng, x0 + 24, y, fw - 48, 12, t.muted, rng.randint(2, 3)) + 10
    by = y0 + fh - 64
    c.rect((x0 + fw - 150, by, x0 + fw - 24, by + 40), fill=t.accent, radius=8)
    c.text((x0 + fw - 87, by + 20), words(rng, 1, title=True), 15, t.on_accent, anchor="mm")
    c.rect((x0 + fw - 270, by, x0 + fw - 164, by + 40), outline=t.line, radius=8)
    c.text((x0 + fw - 217, by + 20), "Cancel", 15, t.text, anchor="mm")
    return c.finish()


def code_editor(rng, size):
    w, h = size
    dark = rng.random() < 0.7
    t = Theme(rng, dark=dark)
    c = Canvas(size, t.bg, 1)
    tab_bg = mix(t.bg, (0, 0, 0) if dark else (255, 255, 255), 0.25)
    c.rect((0, 0, w, 32), fill=tab_bg)
    x = 0
    for k in range(rng.randint(2, 4)):
        name = rng.choice(WORDS) + rng.choice((".py", ".ts", ".rs", ".go", ".css"))
        tw = c.text_len(name, 12) + 32
        if k == 0:
            c.rect((x, 0, x + tw, 32), fill=t.bg)
            c.line([(x, 0), (x + tw, 0)], t.accent, 2)
        c.text((x + 16, 10), name, 12, t.text if k == 0 else t.muted)
        x += tw
    palette = {
        "kw": hsv(t.hue + 0.75, 0.5, 0.9 if dark else 0.6),
        "fn": hsv(t.hue + 0.15, 0.55, 0.9 if dark else 0.55),
        "str": hsv(0.08, 0.6, 0.9 if dark else 0.6),
        "num": hsv(0.35, 0.5, 0.85 if dark else 0.5),
        "com": (110, 125, 110) if dark else (100, 140, 100),
        "id": t.text,
    }
    size_ = rng.choice((12, 13, 14, 15))
    lh = round(size_ * 1.5)
    gutter = 44
    c.rect((0, 32, gutter, h), fill=mix(t.bg, tab_bg, 0.5))
    y, indent, line_no = 42, 0, rng.randint(1, 200)
    hl = rng.randint(3, 10)
    while y < h - lh:
        if line_no % 17 == hl:
            c.rect((gutter, y - 2, w, y + lh - 4), fill=mix(t.bg, t.accent, 0.15))
        c.text((gutter - 8, y), str(line_no), size_ - 1, t.muted, anchor="ra")
        x = gutter + 12 + indent * 4 * c.text_len(" ", size_)
        r = rng.random()
        if r < 0.12:
            toks = [("com", "# " + words(rng, rng.randint(3, 7)).lower())]
        elif r < 0.25:
            toks = [
                ("kw", "def "),
                ("fn", rng.choice(WORDS) + "_" + rng.choice(WORDS)),
                ("id", "(self, " + rng.choice(WORDS) + "):"),
            ]
        elif r < 0.35:
            toks = []
        else:
            toks = [
                ("id", rng.choice(WORDS) + " = "),
                rng.choice(
                    [
                        ("str", f'"{words(rng, 2).lower()}"'),
                        ("num", str(rng.randint(0, 4096))),
                        ("fn", f"{rng.choice(WORDS)}({rng.choice(WORDS)})"),
                    ]
                ),
            ]
            if rng.random() < 0.3:
                toks.append(("kw", " if "))
                toks.append(("id", rng.choice(WORDS) + " else None"))
        for kind, text in toks:
            c.text((x, y), text, size_, palette[kind])
            x += c.text_len(text, size_)
        if toks and toks[0][0] == "kw":
            indent = min(indent + 1, 4)
        elif rng.random() < 0.2:
            indent = max(indent - 1, 0)
        y += lh
        line_no += 1
    c.rect((0, h - 22, w, h), fill=t.accent)
    c.text(
        (10, h - 17),
        f"Ln {line_no}, Col {rng.randint(1, 80)}  UTF-8  {words(rng, 1)}",
        11,
        t.on_accent,
    )
    return c.finish()


def document(rng, size):
    t = Theme(rng, dark=rng.random() < 0.15)
    w, h = size
    c = Canvas(size, t.bg, 1)
    c.rect((0, 0, w, 48), fill=t.surface)
    c.line([(0, 48), (w, 48)], t.line)
    c.text((24, 15), words(rng, 1, title=True), 18, t.accent)
    for k in range(4):
        c.text((w - 90 * (4 - k), 17), words(rng, 1, title=True), 13, t.muted)
    col = rng.randint(420, min(560, w - 80))
    x0 = (w - col) / 2 if rng.random() < 0.5 else 40
    y = 70
    c.text((x0, y), words(rng, rng.randint(3, 6), title=True), rng.choice((24, 28, 32)), t.text)
    y += 48
    c.text((x0, y), f"{words(rng, 2, title=True)} - {rng.randint(2, 28)} min read", 12, t.muted)
    y += 28
    while y < h - 40:
        r = rng.random()
        if r < 0.55:
            y = paragraph(c, rng, x0, y, col, rng.choice((12, 13, 14)), t.text, rng.randint(3, 6))
            y += 12
        elif r < 0.7:
            c.rect((x0, y, x0 + 4, y + 50), fill=t.accent)
            y = paragraph(c, rng, x0 + 16, y + 4, col - 16, 15, t.muted, 2) + 16
        elif r < 0.85:
            ih = rng.randint(90, 150)
            g = gradient(
                (col, ih), [t.series[1], t.series[4], t.series[2]], angle=rng.uniform(0, 360)
            )
            c.paste(g, (x0, y))
            for _ in range(rng.randint(2, 5)):
                cx, cy, r_ = rng.uniform(x0, x0 + col), rng.uniform(y, y + ih), rng.uniform(8, 40)
                c.ellipse((cx - r_, cy - r_, cx + r_, cy + r_), fill=(255, 255, 255, 70))
            y += ih + 20
        else:
            c.text((x0, y), words(rng, 3, title=True), 18, t.text)
            y += 32
    return c.finish()


def _axes(c: Canvas, t: Theme, rng, box, ymax, *, gridlines=True):
    x0, y0, x1, y1 = box
    ticks = rng.choice((4, 5, 6))
    for k in range(ticks + 1):
        yy = y1 - (y1 - y0) * k / ticks
        if gridlines and k:
            c.line([(x0, yy), (x1, yy)], t.line, 1)
        c.text((x0 - 8, yy), f"{ymax * k / ticks:,.0f}", 11, t.muted, anchor="rm")
    c.line([(x0, y1), (x1, y1)], t.text, 1)
    c.line([(x0, y0), (x0, y1)], t.text, 1)


def _legend(c: Canvas, t: Theme, rng, x, y, n, *, vertical=False):
    for k in range(n):
        label = words(rng, 1, title=True)
        c.rect((x, y + 2, x + 12, y + 14), fill=t.series[k])
        c.text((x + 18, y), label, 12, t.text)
        if vertical:
            y += 22
        else:
            x += c.text_len(label, 12) + 40


def bar_chart(rng, size):
    t = Theme(rng, dark=rng.random() < 0.2)
    w, h = size
    c = Canvas(size, t.surface if not t.dark else t.bg, rng.choice((1, 2)))
    c.text((w / 2, 20), words(rng, rng.randint(2, 5), title=True), 20, t.text, anchor="ma")
    series = rng.randint(1, 4)
    cats = rng.randint(4, 10)
    stacked = series > 1 and rng.random() < 0.4
    box = (70, 70, w - 30, h - 70)
    data = [[rng.uniform(5, 100) for _ in range(series)] for _ in range(cats)]
    ymax = max(sum(d) if stacked else max(d) for d in data) * 1.1
    _axes(c, t, rng, box, ymax)
    x0, y0, x1, y1 = box
    slot = (x1 - x0) / cats
    bw = slot * rng.uniform(0.5, 0.8) / (1 if stacked else series)
    for i, d in enumerate(data):
        base = y1
        for k, v in enumerate(d):
            bh = (y1 - y0) * v / ymax
            if stacked:
                bx = x0 + slot * i + (slot - bw) / 2
                c.rect((bx, base - bh, bx + bw, base), fill=t.series[k])
                base -= bh
            else:
                bx = x0 + slot * i + (slot - bw * series) / 2 + bw * k
                c.rect((bx, y1 - bh, bx + bw - 1, y1), fill=t.series[k])
                if series == 1 and rng.random() < 0.5:
                    c.text((bx + bw / 2, y1 - bh - 4), f"{v:.0f}", 11, t.text, anchor="md")
        c.text((x0 + slot * (i + 0.5), y1 + 8), words(rng, 1)[:8], 11, t.muted, anchor="ma")
    if series > 1:
        _legend(c, t, rng, x0, h - 30, series)
    return c.finish()


def line_chart(rng, size):
    t = Theme(rng, dark=rng.random() < 0.3)
    w, h = size
    c = Canvas(size, t.surface if not t.dark else t.bg, rng.choice((1, 2, 3)))
    c.text((24, 18), words(rng, rng.randint(2, 4), title=True), 20, t.text)
    c.text((24, 44), words(rng, 5), 12, t.muted)
    box = (70, 80, w - 150, h - 50)
    x0, y0, x1, y1 = box
    series = rng.randint(1, 4)
    n = rng.randint(8, 40)
    ymax = 100
    _axes(c, t, rng, box, ymax, gridlines=rng.random() < 0.7)
    for k in range(series):
        v = rng.uniform(20, 70)
        pts = []
        for i in range(n):
            v = min(95, max(5, v + rng.gauss(0, 8)))
            pts.append((x0 + (x1 - x0) * i / (n - 1), y1 - (y1 - y0) * v / ymax))
        if k == 0 and rng.random() < 0.5:
            fill = (*t.series[k], 60)
            c.polygon([(x0, y1), *pts, (x1, y1)], fill=fill)
        c.line(pts, t.series[k], rng.choice((1.5, 2, 3)))
        if n <= 16:
            for px, py in pts:
                c.ellipse(
                    (px - 3.5, py - 3.5, px + 3.5, py + 3.5),
                    fill=t.surface,
                    outline=t.series[k],
                    width=2,
                )
    for i in range(0, n, max(1, n // 6)):
        c.text(
            (x0 + (x1 - x0) * i / (n - 1), y1 + 8),
            f"{rng.choice(WORDS)[:3].title()} {i + 1}",
            10,
            t.muted,
            anchor="ma",
        )
    _legend(c, t, rng, x1 + 24, y0, series, vertical=True)
    return c.finish()


def pie_chart(rng, size):
    t = Theme(rng, dark=rng.random() < 0.25)
    w, h = size
    c = Canvas(size, t.bg, rng.choice((2, 3)))
    c.text((24, 20), words(rng, 3, title=True), 20, t.text)
    n = rng.randint(3, 7)
    vals = [rng.uniform(1, 10) for _ in range(n)]
    tot = sum(vals)
    r = min(w * 0.3, h * 0.36)
    cx, cy = w * 0.34, h * 0.55
    a = rng.uniform(0, 360)
    for k, v in enumerate(vals):
        span = 360 * v / tot
        c.pieslice(
            (cx - r, cy - r, cx + r, cy + r), a, a + span, fill=t.series[k], outline=t.bg, width=2
        )
        mid = math.radians(a + span / 2)
        if span > 25:
            c.text(
                (cx + r * 0.7 * math.cos(mid), cy + r * 0.7 * math.sin(mid)),
                f"{100 * v / tot:.0f}%",
                13,
                (255, 255, 255),
                anchor="mm",
            )
        a += span
    if rng.random() < 0.5:  # donut
        c.ellipse((cx - r * 0.45, cy - r * 0.45, cx + r * 0.45, cy + r * 0.45), fill=t.bg)
        c.text((cx, cy), number(rng), 22, t.text, anchor="mm")
    _legend(c, t, rng, w * 0.68, h * 0.3, n, vertical=True)
    return c.finish()


def diagram(rng, size):
    t = Theme(rng, dark=rng.random() < 0.2)
    w, h = size
    c = Canvas(size, t.bg, rng.choice((1, 2)))
    cols, rows = rng.randint(2, 4), rng.randint(2, 3)
    bw, bh = w / cols * 0.6, h / rows * 0.35
    centres = {}
    for i in range(cols):
        for j in range(rows):
            if rng.random() < 0.2:
                continue
            cx, cy = w * (i + 0.5) / cols, h * (j + 0.5) / rows
            centres[(i, j)] = (cx, cy)
            col = t.series[(i + j) % 8] if rng.random() < 0.6 else t.surface
            shape = rng.random()
            box = (cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2)
            if shape < 0.6:
                c.rect(
                    box,
                    fill=col,
                    outline=t.text,
                    width=rng.choice((1, 2)),
                    radius=rng.choice((0, 6, 12)),
                )
            elif shape < 0.8:
                c.polygon(
                    [(cx, box[1]), (box[2], cy), (cx, box[3]), (box[0], cy)],
                    fill=col,
                    outline=t.text,
                )
            else:
                c.ellipse(box, fill=col, outline=t.text, width=2)
            txt = t.text if col == t.surface or sum(col) > 450 else (255, 255, 255)
            c.text((cx, cy), words(rng, rng.randint(1, 2), title=True), 13, txt, anchor="mm")
    keys = list(centres)
    for a, b in zip(keys, keys[1:], strict=False):
        (ax, ay), (bx, by) = centres[a], centres[b]
        if a[0] == b[0]:
            p0, p1 = (ax, ay + bh / 2), (bx, by - bh / 2)
            pts = [p0, p1]
        else:
            p0, p1 = (ax + bw / 2, ay), (bx - bw / 2, by)
            midx = (p0[0] + p1[0]) / 2
            pts = [p0, (midx, p0[1]), (midx, p1[1]), p1]
        c.line(pts, t.muted, 2, joint=None)
        ex, ey = pts[-1]
        px, py = pts[-2]
        ang = math.atan2(ey - py, ex - px)
        c.polygon(
            [
                (ex, ey),
                (ex - 10 * math.cos(ang - 0.4), ey - 10 * math.sin(ang - 0.4)),
                (ex - 10 * math.cos(ang + 0.4), ey - 10 * math.sin(ang + 0.4)),
            ],
            fill=t.muted,
        )
        if rng.random() < 0.3:
            c.text(((px + ex) / 2, (py + ey) / 2 - 14), words(rng, 1), 11, t.muted, anchor="mm")
    return c.finish()


def logo(rng, size):
    w, h = size
    hue = rng.random()
    bg = rng.choice([(255, 255, 255), hsv(hue, 0.9, 0.5), hsv(hue + 0.5, 0.1, 0.97), (18, 18, 22)])
    fg = hsv(hue, rng.uniform(0.6, 1), rng.uniform(0.7, 1))
    fg2 = hsv(hue + rng.choice((0.1, 0.5, 0.6)), rng.uniform(0.5, 1), rng.uniform(0.6, 1))
    ink = (20, 20, 28) if sum(bg) > 400 else (250, 250, 250)
    c = Canvas(size, bg, rng.choice((1, 3, 4)))
    r = min(w, h) * rng.uniform(0.18, 0.3)
    cx, cy = (w * 0.5, h * 0.38) if rng.random() < 0.5 else (w * 0.28, h * 0.5)
    k = rng.randrange(5)
    if k == 0:
        c.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fg)
        c.ellipse((cx - r * 0.55, cy - r * 0.55, cx + r * 0.55, cy + r * 0.55), fill=bg)
        c.pieslice((cx - r, cy - r, cx + r, cy + r), -30, 30, fill=fg2)
    elif k == 1:
        n = rng.choice((3, 5, 6, 8))
        pts = [
            (
                cx + r * math.cos(2 * math.pi * j / n - math.pi / 2),
                cy + r * math.sin(2 * math.pi * j / n - math.pi / 2),
            )
            for j in range(n)
        ]
        c.polygon(pts, fill=fg)
        c.polygon([(x * 0.5 + cx * 0.5, y * 0.5 + cy * 0.5) for x, y in pts], fill=fg2)
    elif k == 2:
        c.rect((cx - r, cy - r, cx + r, cy + r), fill=fg, radius=r * 0.3)
        c.text((cx, cy), words(rng, 1)[0].upper(), r * 1.3, bg, anchor="mm")
    elif k == 3:
        for j in range(3):
            off = (j - 1) * r * 0.55
            c.ellipse(
                (cx + off - r * 0.5, cy - r * 0.5, cx + off + r * 0.5, cy + r * 0.5),
                fill=(*(fg, fg2, ink)[j], 200),
            )
    else:
        for j in range(5):
            c.rect(
                (
                    cx - r + j * r * 0.42,
                    cy + r - r * 0.4 * (j + 1),
                    cx - r + j * r * 0.42 + r * 0.3,
                    cy + r,
                ),
                fill=fg if j % 2 else fg2,
            )
    name = rng.choice(WORDS) + rng.choice(WORDS)
    size_ = rng.randint(36, 64)
    name = name.upper() if rng.random() < 0.4 else name.capitalize()
    stroke = rng.choice((0, 0, 1))
    if cx < w * 0.4:
        c.text((cx + r + 30, cy), name, size_, ink, anchor="lm", stroke=stroke, stroke_fill=ink)
        c.text((cx + r + 32, cy + size_ * 0.75), words(rng, 3).lower(), 16, fg, anchor="lm")
    else:
        c.text((w / 2, cy + r + 24), name, size_, ink, anchor="ma", stroke=stroke, stroke_fill=ink)
        c.text((w / 2, cy + r + 34 + size_), words(rng, 3).lower(), 16, fg, anchor="ma")
    return c.finish()


def icon_grid(rng, size):
    t = Theme(rng)
    w, h = size
    c = Canvas(size, t.bg, rng.choice((1, 2, 4)))
    cols, rows = rng.choice(((6, 4), (5, 3), (8, 5), (4, 3)))
    cell = min(w / cols, (h - 40) / rows)
    ox, oy = (w - cell * cols) / 2, 40 + (h - 40 - cell * rows) / 2
    c.text((w / 2, 10), words(rng, 2, title=True), 18, t.text, anchor="ma")
    style = rng.randrange(3)
    for j in range(rows):
        for i in range(cols):
            x0, y0 = ox + i * cell + cell * 0.15, oy + j * cell + cell * 0.1
            s = cell * 0.7
            col = t.series[(i + j * cols) % 8]
            if style == 0:  # app icons: filled rounded squares, white glyph
                c.rect((x0, y0, x0 + s, y0 + s * 0.8), fill=col, radius=s * 0.2)
                icon(
                    c,
                    rng,
                    (x0 + s * 0.2, y0 + s * 0.1, x0 + s * 0.8, y0 + s * 0.7),
                    (255, 255, 255),
                    col,
                )
            elif style == 1:  # line icons, one colour
                icon(c, rng, (x0 + s * 0.1, y0, x0 + s * 0.9, y0 + s * 0.8), t.text, t.bg)
            else:  # circle badges
                c.ellipse((x0 + s * 0.1, y0, x0 + s * 0.9, y0 + s * 0.8), fill=mix(col, t.bg, 0.75))
                icon(
                    c,
                    rng,
                    (x0 + s * 0.3, y0 + s * 0.2, x0 + s * 0.7, y0 + s * 0.6),
                    col,
                    mix(col, t.bg, 0.75),
                )
            if cell > 80:
                c.text((x0 + s / 2, y0 + s * 0.85), rng.choice(WORDS), 11, t.muted, anchor="ma")
    return c.finish()


def gradient_banner(rng, size):
    w, h = size
    hue = rng.random()
    stops = [
        hsv(hue + k * rng.uniform(0.05, 0.2), rng.uniform(0.4, 0.9), rng.uniform(0.35, 1))
        for k in range(rng.randint(2, 4))
    ]
    radial = rng.random() < 0.35
    back = gradient(
        size,
        stops,
        angle=rng.uniform(0, 360),
        radial=radial,
        center=(rng.random(), rng.random()),
        dither=rng.random() < 0.4,
        rng=rng,
    )
    c = Canvas(size, None, rng.choice((1, 2)), base=back)
    if rng.random() < 0.6:  # soft blobs
        layer = Image.new("RGBA", c.im.size, (0, 0, 0, 0))
        d = ImageDraw.Draw(layer)
        for _ in range(rng.randint(3, 8)):
            r = rng.uniform(30, 160) * c.s
            x, y = rng.uniform(0, c.im.width), rng.uniform(0, c.im.height)
            d.ellipse((x - r, y - r, x + r, y + r), fill=(*hsv(hue + 0.5, 0.3, 1), 70))
        layer = layer.filter(ImageFilter.GaussianBlur(rng.uniform(4, 30) * c.s))
        c.im.paste(layer, (0, 0), layer)
    ink = (255, 255, 255) if sum(stops[0]) < 500 else (25, 25, 35)
    align = rng.choice(("left", "centre"))
    x, anchor = (48, "la") if align == "left" else (w / 2, "ma")
    y = h * rng.uniform(0.22, 0.35)
    c.text(
        (x, y), words(rng, rng.randint(2, 4), title=True), rng.randint(34, 52), ink, anchor=anchor
    )
    c.text((x, y + 66), words(rng, rng.randint(6, 10)), 18, ink, anchor=anchor)
    bx = x if align == "left" else w / 2 - 80
    c.rect((bx, y + 120, bx + 160, y + 166), fill=ink, radius=23)
    c.text((bx + 80, y + 143), words(rng, 2, title=True), 16, stops[0], anchor="mm")
    return c.finish()


def _photos(seed: int) -> list[Path]:
    for folder in PHOTO_DIRS:
        if folder.is_dir():
            found = sorted(
                p for p in folder.iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg")
            )
            found = [p for p in found if "alpha" not in p.name and "graphic" not in p.name]
            if found:
                return found[seed % 2 :: 2] or found
    return []


def photo_overlay(rng, size, seed=0):
    w, h = size
    photos = _photos(seed)
    if photos:
        with Image.open(rng.choice(photos)) as im:
            photo = im.convert("RGB")
        scale = max(w / photo.width, h / photo.height) * rng.uniform(1.0, 1.4)
        photo = photo.resize(
            (math.ceil(photo.width * scale), math.ceil(photo.height * scale)),
            Image.Resampling.LANCZOS,
        )
        x0 = rng.randint(0, photo.width - w)
        y0 = rng.randint(0, photo.height - h)
        photo = photo.crop((x0, y0, x0 + w, y0 + h))
    else:  # no photo at hand: a smooth noise field stands in
        noise = np.random.default_rng(rng.randrange(1 << 30)).random((h // 16 + 1, w // 16 + 1, 3))
        photo = Image.fromarray((noise * 255).astype(np.uint8)).resize(
            size, Image.Resampling.BICUBIC
        )
    c = Canvas(size, None, 1, base=photo)
    style = rng.randrange(3)
    hue = rng.random()
    if style == 0:  # dark band at the bottom
        bh = rng.randint(90, 150)
        c.rect((0, h - bh, w, h), fill=(0, 0, 0, rng.randint(110, 190)))
        c.text((28, h - bh + 18), words(rng, rng.randint(3, 6), title=True), 28, (255, 255, 255))
        c.text((28, h - bh + 58), words(rng, 8), 15, (220, 220, 220))
    elif style == 1:  # caption box and a badge
        bw = rng.randint(260, 380)
        c.rect((24, 24, 24 + bw, 150), fill=(*hsv(hue, 0.7, 0.6), 220), radius=8)
        paragraph(c, rng, 40, 40, bw - 32, 20, (255, 255, 255), 2)
        c.text((40, 110), words(rng, 3), 13, (235, 235, 235))
        c.ellipse((w - 120, h - 120, w - 24, h - 24), fill=hsv(hue + 0.5, 0.9, 0.95))
        c.text((w - 72, h - 72), f"-{rng.randint(10, 70)}%", 24, (255, 255, 255), anchor="mm")
    else:  # meme-style outlined text
        for y, anchor in ((20, "ma"), (h - 20, "md")):
            c.text(
                (w / 2, y),
                words(rng, rng.randint(2, 4)).upper(),
                rng.randint(30, 44),
                (255, 255, 255),
                anchor=anchor,
                stroke=3,
                stroke_fill=(0, 0, 0),
            )
    if rng.random() < 0.5:  # a watermark
        c.text((w - 16, 16), rng.choice(WORDS) + ".example", 12, (255, 255, 255, 160), anchor="ra")
    return c.finish()


def line_art(rng, size):
    w, h = size
    paper = rng.choice([(255, 255, 255), (250, 248, 240), (236, 242, 250)])
    ink = rng.choice([(0, 0, 0), (30, 40, 90), (60, 60, 60)])
    c = Canvas(size, paper, rng.choice((1, 1, 2)))
    k = rng.randrange(3)
    if k == 0:  # technical drawing: a part with holes, hatching and dimension lines
        if rng.random() < 0.5:  # blueprint grid
            for x in range(0, w, 20):
                c.line([(x, 0), (x, h)], mix(paper, ink, 0.12))
            for y in range(0, h, 20):
                c.line([(0, y), (w, y)], mix(paper, ink, 0.12))
        x0, y0, x1, y1 = w * 0.15, h * 0.2, w * 0.75, h * 0.7
        c.rect((x0, y0, x1, y1), outline=ink, width=2)
        for _ in range(rng.randint(2, 5)):
            cx, cy, r = (
                rng.uniform(x0 + 40, x1 - 40),
                rng.uniform(y0 + 40, y1 - 40),
                rng.uniform(8, 30),
            )
            c.ellipse((cx - r, cy - r, cx + r, cy + r), outline=ink, width=2)
            c.line([(cx - r - 6, cy), (cx + r + 6, cy)], ink, 1)
            c.line([(cx, cy - r - 6), (cx, cy + r + 6)], ink, 1)
        hx = rng.uniform(x0, x1 - 80)
        for j in range(0, 80, 8):  # hatching
            c.line([(hx + j, y1), (hx + j + 20, y1 - 20)], ink, 1)
        for yy, a, b in ((y1 + 30, x0, x1), (y0 - 24, x0, x0 + (x1 - x0) / 2)):
            c.line([(a, yy), (b, yy)], ink, 1)
            c.line([(a, yy - 6), (a, yy + 6)], ink, 1)
            c.line([(b, yy - 6), (b, yy + 6)], ink, 1)
            c.text(((a + b) / 2, yy - 4), f"{(b - a) / 4:.1f} mm", 12, ink, anchor="md")
        c.rect((w - 230, h - 90, w - 20, h - 20), outline=ink, width=2)
        c.text((w - 220, h - 80), words(rng, 2, title=True), 14, ink)
        c.text(
            (w - 220, h - 52), f"REV {rng.choice('ABCD')}  SCALE 1:{rng.randint(1, 20)}", 11, ink
        )
    elif k == 1:  # doodle: smooth random curves, some filled shapes
        for _ in range(rng.randint(6, 14)):
            pts = []
            x, y, a = rng.uniform(0, w), rng.uniform(0, h), rng.uniform(0, 2 * math.pi)
            for _ in range(rng.randint(20, 80)):
                a += rng.gauss(0, 0.25)
                x, y = x + 6 * math.cos(a), y + 6 * math.sin(a)
                pts.append((x, y))
            c.line(pts, ink, rng.choice((1, 2, 3, 5)))
        for _ in range(rng.randint(0, 4)):
            cx, cy, r = rng.uniform(0, w), rng.uniform(0, h), rng.uniform(10, 60)
            c.ellipse(
                (cx - r, cy - r, cx + r, cy + r),
                fill=hsv(rng.random(), 0.6, 0.95),
                outline=ink,
                width=2,
            )
    else:  # floor plan
        x0, y0, x1, y1 = 30, 30, w - 30, h - 30
        c.rect((x0, y0, x1, y1), outline=ink, width=6)
        xs = sorted(rng.uniform(x0 + 80, x1 - 80) for _ in range(rng.randint(1, 3)))
        ys = sorted(rng.uniform(y0 + 80, y1 - 80) for _ in range(rng.randint(1, 2)))
        for x in xs:
            c.line([(x, y0), (x, y1)], ink, 3)
        for y in ys:
            c.line([(x0, y), (x1, y)], ink, 3)
        for x in xs:  # doors: a gap and a swing arc
            for y in ys:
                dy = rng.choice((-1, 1)) * 40
                c.rect((x - 3, y + dy - 16, x + 3, y + dy + 16), fill=paper)
                c.arc((x - 32, y + dy - 16, x + 32, y + dy + 48), 180, 270, ink, 1)
        bounds_x = [x0, *xs, x1]
        bounds_y = [y0, *ys, y1]
        for i in range(len(bounds_x) - 1):
            for j in range(len(bounds_y) - 1):
                cx = (bounds_x[i] + bounds_x[i + 1]) / 2
                cy = (bounds_y[j] + bounds_y[j + 1]) / 2
                c.text((cx, cy), words(rng, 1, title=True), 13, ink, anchor="mm")
                area = (bounds_x[i + 1] - bounds_x[i]) * (bounds_y[j + 1] - bounds_y[j]) / 2500
                c.text((cx, cy + 16), f"{area:.1f} m2", 10, ink, anchor="mm")
    return c.finish()


def pixel_art(rng, size):
    w, h = size
    px = rng.choice((4, 6, 8, 16))
    gw, gh = w // px, h // px
    pal = [
        hsv(rng.random(), rng.uniform(0.4, 1), rng.uniform(0.3, 1))
        for _ in range(rng.randint(4, 12))
    ]
    a = np.zeros((gh, gw, 3), np.uint8)
    a[:] = pal[0]
    sky = gh * rng.uniform(0.4, 0.7)
    ground = np.array(pal[1], np.uint8)
    heights = np.cumsum(np.array([rng.choice((-1, 0, 0, 1)) for _ in range(gw)]))
    for x in range(gw):
        top = int(sky + heights[x] % max(1, gh // 5))
        a[top:, x] = ground
        a[top, x] = pal[2]
    for _ in range(rng.randint(3, 10)):  # blocks and sprites
        bw, bh = rng.randint(2, 6), rng.randint(2, 6)
        x, y = rng.randrange(gw - bw), rng.randrange(gh - bh)
        col = np.array(pal[rng.randrange(len(pal))], np.uint8)
        a[y : y + bh, x : x + bw] = col
        a[y, x : x + bw] = np.minimum(col.astype(int) + 60, 255)
    if rng.random() < 0.5:  # dithered sky band
        yy = int(sky * 0.5)
        a[yy : yy + 4][(np.indices((4, gw)).sum(0) % 2) == 0] = pal[3 % len(pal)]
    im = Image.fromarray(a).resize((gw * px, gh * px), Image.Resampling.NEAREST)
    out = Image.new("RGB", size, pal[0])
    out.paste(im, (0, 0))
    bf = _bitmap_font()
    label = Image.new("RGB", (120, 14), pal[0])
    ImageDraw.Draw(label).text(
        (2, 1), f"SCORE {rng.randint(0, 99999):05d}", fill=(255, 255, 255), font=bf
    )
    scale = rng.choice((2, 3))
    out.paste(label.resize((120 * scale, 14 * scale), Image.Resampling.NEAREST), (8, 8))
    return out


def map_view(rng, size):
    w, h = size
    n = rng.randint(12, 40)
    sx = np.array([rng.uniform(0, w) for _ in range(n)])
    sy = np.array([rng.uniform(0, h) for _ in range(n)])
    y, x = np.mgrid[0:h, 0:w]
    idx = np.argmin((x[..., None] - sx) ** 2 + (y[..., None] - sy) ** 2, axis=2)
    hue = rng.random()
    cols = np.array(
        [
            hsv(hue + rng.uniform(-0.08, 0.08), rng.uniform(0.08, 0.3), rng.uniform(0.88, 0.98))
            for _ in range(n)
        ],
        np.uint8,
    )
    base = Image.fromarray(cols[idx])
    c = Canvas(size, None, rng.choice((1, 2)), base=base)
    water = (170, 205, 235)
    pts = [(rng.uniform(0, w * 0.4), rng.uniform(0, h))]
    for _ in range(12):
        pts.append((pts[-1][0] + rng.uniform(10, 70), pts[-1][1] + rng.uniform(-40, 40)))
    c.line(pts, water, rng.uniform(10, 24))
    if rng.random() < 0.6:
        cx, cy, r = rng.uniform(0, w), rng.uniform(0, h), rng.uniform(40, 100)
        c.polygon(
            [
                (
                    cx + r * rng.uniform(0.6, 1) * math.cos(a),
                    cy + r * rng.uniform(0.6, 1) * math.sin(a),
                )
                for a in np.linspace(0, 2 * math.pi, 14)[:-1]
            ],
            fill=water,
        )
    road = rng.choice([(255, 255, 255), (250, 220, 120)])
    for _ in range(rng.randint(3, 8)):
        if rng.random() < 0.5:
            yy = rng.uniform(0, h)
            p = [(0, yy), (w * 0.5, yy + rng.uniform(-60, 60)), (w, yy + rng.uniform(-60, 60))]
        else:
            xx = rng.uniform(0, w)
            p = [(xx, 0), (xx + rng.uniform(-60, 60), h * 0.5), (xx + rng.uniform(-60, 60), h)]
        width = rng.choice((4, 6, 9))
        c.line(p, (180, 180, 180), width + 2)
        c.line(p, road, width)
    for _ in range(rng.randint(4, 9)):
        x0, y0 = rng.uniform(40, w - 40), rng.uniform(40, h - 40)
        c.text(
            (x0, y0),
            words(rng, 1, title=True),
            rng.choice((11, 12, 14)),
            (60, 60, 70),
            anchor="mm",
            stroke=2,
            stroke_fill=(255, 255, 255),
        )
    px, py = rng.uniform(80, w - 80), rng.uniform(80, h - 80)
    pin = hsv(rng.random(), 0.85, 0.9)
    c.ellipse((px - 12, py - 34, px + 12, py - 10), fill=pin)
    c.polygon([(px - 10, py - 18), (px + 10, py - 18), (px, py)], fill=pin)
    c.ellipse((px - 4, py - 26, px + 4, py - 18), fill=(255, 255, 255))
    c.rect((w - 44, 16, w - 16, 72), fill=(255, 255, 255), outline=(200, 200, 200), radius=4)
    c.text((w - 30, 30), "+", 18, (60, 60, 60), anchor="mm")
    c.text((w - 30, 58), "-", 18, (60, 60, 60), anchor="mm")
    return c.finish()


def table_sheet(rng, size):
    w, h = size
    t = Theme(rng, dark=False)
    c = Canvas(size, (255, 255, 255), 1)
    c.rect((0, 0, w, 30), fill=(243, 243, 243))
    for k in range(rng.randint(4, 7)):
        c.text((10 + k * 70, 8), words(rng, 1, title=True), 12, (60, 60, 60))
    top = 56
    c.rect((0, 30, w, top), fill=(250, 250, 250))
    c.text(
        (10, 36),
        f"fx  ={rng.choice(('SUM', 'AVERAGE', 'MAX'))}(B2:B{rng.randint(9, 40)})",
        12,
        (60, 60, 60),
    )
    rh = rng.choice((20, 22, 24))
    cols = [40] + [rng.randint(70, 130) for _ in range(12)]
    xs = np.cumsum([0, *cols])
    shade = rng.random() < 0.5
    hi_row, hi_col = rng.randint(2, 10), rng.randint(1, 4)
    for j in range((h - top) // rh + 1):
        y = top + j * rh
        if j == 0:
            c.rect((0, y, w, y + rh), fill=(238, 238, 238))
        elif shade and j % 2 == 0:
            c.rect((xs[1], y, w, y + rh), fill=mix(t.accent, (255, 255, 255), 0.9))
        c.rect((0, y, 40, y + rh), fill=(238, 238, 238))
        if j:
            c.text((20, y + rh / 2), str(j), 11, (90, 90, 90), anchor="mm")
        for i in range(1, len(cols)):
            x = xs[i]
            if x > w:
                break
            if j == hi_row and i == hi_col:
                c.rect((x, y, xs[i + 1], y + rh), outline=t.accent, width=2)
            if j == 0:
                c.text(
                    ((x + xs[i + 1]) / 2, y + rh / 2), chr(64 + i), 11, (90, 90, 90), anchor="mm"
                )
            elif i == 1:
                c.text(
                    (x + 5, y + rh / 2),
                    words(rng, rng.randint(1, 2)),
                    12,
                    (30, 30, 30),
                    anchor="lm",
                )
            elif rng.random() < 0.85:
                v = rng.gauss(0, 1) * 10 ** rng.randint(0, 4)
                col = (200, 30, 30) if v < 0 and rng.random() < 0.6 else (30, 30, 30)
                c.text((xs[i + 1] - 5, y + rh / 2), f"{v:,.2f}", 12, col, anchor="rm")
    for x in xs:
        c.line([(x, top), (x, h)], (218, 218, 218))
    for j in range((h - top) // rh + 1):
        c.line([(0, top + j * rh), (w, top + j * rh)], (218, 218, 218))
    return c.finish()


def poster(rng, size):
    w, h = size
    hue = rng.random()
    bg = hsv(hue, rng.uniform(0.5, 1), rng.uniform(0.7, 1))
    c = Canvas(size, bg, rng.choice((1, 2)))
    ink = hsv(hue + 0.5, 0.9, 0.25)
    k = rng.randrange(3)
    if k == 0:  # halftone dots
        step = rng.choice((8, 10, 14))
        cx, cy = rng.uniform(0, w), rng.uniform(0, h)
        for y in range(0, h + step, step):
            for x in range(0, w + step, step):
                r = step * 0.5 * (1 - min(1, math.hypot(x - cx, y - cy) / (w * 0.7)))
                if r > 0.6:
                    c.ellipse((x - r, y - r, x + r, y + r), fill=ink)
    elif k == 1:  # stripes
        step = rng.choice((6, 12, 20, 32))
        col = hsv(hue + 0.1, 0.7, 0.95)
        for x in range(-h, w, step * 2):
            c.polygon([(x, h), (x + step, h), (x + step + h, 0), (x + h, 0)], fill=col)
    else:  # checkerboard patch with big shapes
        step = rng.choice((8, 16, 24))
        for y in range(0, h // 2, step):
            for x in range(0, w, step):
                if (x // step + y // step) % 2:
                    c.rect((x, y, x + step - 1, y + step - 1), fill=ink)
        c.ellipse((w * 0.55, h * 0.3, w * 0.95, h * 0.9), fill=hsv(hue + 0.33, 0.8, 0.9))
    band = hsv(hue + 0.5, 0.2, 0.98)
    c.rect((0, h * 0.62, w, h * 0.88), fill=band)
    c.text(
        (28, h * 0.64),
        words(rng, rng.randint(1, 3)).upper(),
        rng.randint(44, 64),
        ink,
        stroke=rng.choice((0, 1)),
        stroke_fill=ink,
    )
    c.text((30, h * 0.8), f"{words(rng, 4)}  {rng.randint(1, 31)}.{rng.randint(1, 12)}.", 16, ink)
    return c.finish()


KINDS: dict[str, Callable] = {
    "ui_dashboard": ui_dashboard,
    "ui_mobile": ui_mobile,
    "ui_form": ui_form,
    "code_editor": code_editor,
    "document": document,
    "bar_chart": bar_chart,
    "line_chart": line_chart,
    "pie_chart": pie_chart,
    "diagram": diagram,
    "logo": logo,
    "icon_grid": icon_grid,
    "gradient_banner": gradient_banner,
    "photo_overlay": photo_overlay,
    "line_art": line_art,
    "pixel_art": pixel_art,
    "map_view": map_view,
    "table_sheet": table_sheet,
    "poster": poster,
}
#: kinds that are sometimes drawn in portrait (the others keep `size`'s orientation)
PORTRAIT_OK = {"document", "bar_chart", "logo", "poster", "line_art", "photo_overlay", "diagram"}


def render(kind: str, seed: int, index: int, size=(768, 512)) -> Image.Image:
    """Image `index` of set `seed`, of the given kind (deterministic)."""
    rng = random.Random(f"imgtune-graphics/{seed}/{index}/{kind}")
    if kind in PORTRAIT_OK and rng.random() < 0.25:
        size = (size[1], size[0])
    if kind == "photo_overlay":
        return photo_overlay(rng, size, seed)
    return KINDS[kind](rng, size)


def make_graphics(
    dest: Path, count: int = 24, seed: int = 0, size: tuple[int, int] = (768, 512)
) -> list[Path]:
    """Write `count` PNGs of set `seed` into `dest` (created) and return their paths. Kinds
    cycle in a seed-shuffled order, so any 18 consecutive images hold every kind once."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    order = list(KINDS)
    random.Random(f"imgtune-graphics/{seed}/order").shuffle(order)
    out = []
    for i in range(count):
        kind = order[i % len(order)]
        path = dest / f"s{seed}_{i:02d}_{kind}.png"
        render(kind, seed, i, size).save(path)
        out.append(path)
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, help="folder to write the PNGs into")
    ap.add_argument("--seed", type=int, default=0, help="0: training set, 1: held-out set")
    ap.add_argument("--count", type=int, default=24)
    ap.add_argument("--size", default="768x512", help="WxH (the portrait kinds may swap it)")
    args = ap.parse_args(argv)
    w, h = (int(v) for v in args.size.lower().split("x"))
    paths = make_graphics(Path(args.out), args.count, args.seed, (w, h))
    print(f"wrote {len(paths)} images to {args.out}")


if __name__ == "__main__":
    main()

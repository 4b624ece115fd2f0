"""The loss curve as a small PNG for a model card, drawn with Pillow.

Why Pillow: the Hub renders a PNG next to the card everywhere, and Pillow is already installed (Streamlit needs it)
with FreeType and a built-in font, so the image is drawn offline in milliseconds. plotly's static export would need
kaleido plus a headless Chrome (neither is a dependency here); matplotlib is not in the stack.
"""

from __future__ import annotations

import math
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

WIDTH, HEIGHT = 720, 360
MARGIN = {"left": 70, "right": 20, "top": 40, "bottom": 50}
TRAIN_COLOR, EVAL_COLOR, AXIS_COLOR, GRID_COLOR = (31, 119, 180), (255, 127, 14), (60, 60, 60), (225, 225, 225)


def nice_ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    """About `count` round tick values covering [lo, hi] (steps of 1, 2 or 5 times a power of ten)."""
    if hi <= lo:
        hi = lo + 1.0
    raw = (hi - lo) / max(count - 1, 1)
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 5, 10) if m * power >= raw)
    first = math.floor(lo / step) * step
    ticks, t = [], first
    while t <= hi + step * 1e-9:
        ticks.append(round(t, 10))
        t += step
    return ticks if ticks[-1] >= hi else [*ticks, round(t, 10)]


def _fmt(v: float) -> str:
    return f"{v:g}" if abs(v) >= 0.01 or v == 0 else f"{v:.1e}"


def draw_loss_curve(path: Path, train: list[tuple[float, float]], eval_: list[tuple[float, float]] | None = None,
                    title: str = "Training loss") -> Path:
    """Write a PNG of (step, loss) points: train loss as a line, eval loss as a line with larger dots."""
    eval_ = eval_ or []
    points = train + eval_
    if not points:
        raise ValueError("no loss values to draw")
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    xticks = nice_ticks(min(xs), max(xs) if max(xs) > min(xs) else min(xs) + 1)
    yticks = nice_ticks(min(ys), max(ys))
    x0, x1, y0, y1 = xticks[0], xticks[-1], yticks[0], yticks[-1]
    left, top = MARGIN["left"], MARGIN["top"]
    right, bottom = WIDTH - MARGIN["right"], HEIGHT - MARGIN["bottom"]

    def to_px(x: float, y: float) -> tuple[float, float]:
        return (left + (x - x0) / (x1 - x0) * (right - left), bottom - (y - y0) / (y1 - y0) * (bottom - top))

    img = Image.new("RGB", (WIDTH, HEIGHT), "white")
    d = ImageDraw.Draw(img)
    font, small = ImageFont.load_default(size=16), ImageFont.load_default(size=12)
    for y in yticks:
        py = to_px(x0, y)[1]
        d.line([(left, py), (right, py)], fill=GRID_COLOR)
        d.text((left - 8, py), _fmt(y), fill=AXIS_COLOR, font=small, anchor="rm")
    for x in xticks:
        px = to_px(x, y0)[0]
        d.line([(px, bottom), (px, bottom + 5)], fill=AXIS_COLOR)
        d.text((px, bottom + 8), _fmt(x), fill=AXIS_COLOR, font=small, anchor="mt")
    d.rectangle([left, top, right, bottom], outline=AXIS_COLOR)
    d.text((WIDTH / 2, 12), title, fill=AXIS_COLOR, font=font, anchor="mt")
    d.text(((left + right) / 2, HEIGHT - 6), "step", fill=AXIS_COLOR, font=small, anchor="mb")
    d.text((14, (top + bottom) / 2), "loss", fill=AXIS_COLOR, font=small, anchor="mm")
    legend_x = right - 10
    for series, color, label, dot in ((eval_, EVAL_COLOR, "eval loss", 4), (train, TRAIN_COLOR, "train loss", 2)):
        if not series:
            continue
        pts = [to_px(x, y) for x, y in series]
        if len(pts) > 1:
            d.line(pts, fill=color, width=2, joint="curve")
        for px, py in pts:
            d.ellipse([px - dot, py - dot, px + dot, py + dot], fill=color)
        d.text((legend_x, top + 8), label, fill=color, font=small, anchor="ra")
        legend_x -= d.textlength(label, font=small) + 18
    path = Path(path)
    img.save(path, format="PNG", optimize=True)
    return path

"""Loss-curve PNGs drawn with Pillow (a core dependency), so training needs no plotting library."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence

COLORS = [(31, 119, 180), (214, 39, 40), (44, 160, 44), (148, 103, 189)]


def _ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    """About `count` round tick values covering [lo, hi]."""
    span = max(hi - lo, 1e-12)
    raw = span / count
    step = 10 ** math.floor(math.log10(raw))
    for mult in (1, 2, 5, 10):
        if raw <= mult * step:
            step *= mult
            break
    first = math.ceil(lo / step) * step
    return [first + i * step for i in range(int((hi - first) / step + 1e-9) + 1)]


def save_curves(path: str | os.PathLike, series: dict[str, Sequence[float]], *, title: str = "",
                xlabel: str = "epoch", ylabel: str = "", size: tuple[int, int] = (640, 400)) -> None:
    """Draw each named series (values at x = 1, 2, ...) as a line with dots, with axes, ticks and a legend,
    and write it as a PNG. NaN values are skipped."""
    from PIL import Image, ImageDraw, ImageFont

    if not series or not any(len(v) for v in series.values()):
        raise ValueError("save_curves: need at least one non-empty series")
    width, height = size
    left, right, top, bottom = 70, 20, 30, 50
    img = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(img)
    font = ImageFont.load_default()
    values = [v for s in series.values() for v in s if math.isfinite(v)]
    lo, hi = min(values), max(values)
    pad = 0.05 * (hi - lo or 1.0)
    lo, hi = lo - pad, hi + pad
    n = max(len(s) for s in series.values())
    x0, x1 = 1, max(n, 2)

    def px(x: float, y: float) -> tuple[float, float]:
        return (left + (x - x0) / (x1 - x0) * (width - left - right),
                top + (hi - y) / (hi - lo) * (height - top - bottom))

    draw.rectangle([left, top, width - right, height - bottom], outline="black")
    for y in _ticks(lo, hi):
        _, yy = px(x0, y)
        draw.line([left - 4, yy, left, yy], fill="black")
        draw.line([left + 1, yy, width - right - 1, yy], fill=(230, 230, 230))
        draw.text((4, yy - 6), f"{y:g}", fill="black", font=font)
    for x in _ticks(x0, x1):
        if x != int(x):
            continue
        xx, _ = px(x, lo)
        draw.line([xx, height - bottom, xx, height - bottom + 4], fill="black")
        draw.text((xx - 6, height - bottom + 8), f"{int(x)}", fill="black", font=font)
    draw.text((width / 2 - 20, height - 18), xlabel, fill="black", font=font)
    draw.text((4, 8), ylabel, fill="black", font=font)
    draw.text((left + 150, 8), title, fill="black", font=font)
    for k, (name, ys) in enumerate(series.items()):
        color = COLORS[k % len(COLORS)]
        points = [px(i + 1, y) for i, y in enumerate(ys) if math.isfinite(y)]
        if len(points) > 1:
            draw.line(points, fill=color, width=2)
        for x, y in points:
            draw.ellipse([x - 3, y - 3, x + 3, y + 3], fill=color)
        ly = top + 10 + 16 * k
        draw.line([width - right - 150, ly + 6, width - right - 130, ly + 6], fill=color, width=2)
        draw.text((width - right - 125, ly), name, fill="black", font=font)
    os.makedirs(os.path.dirname(os.fspath(path)) or ".", exist_ok=True)
    img.save(path, format="PNG")

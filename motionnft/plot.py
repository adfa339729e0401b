"""Line charts drawn with PIL (no plotting library needed): training curves."""

from __future__ import annotations

import math

import numpy as np
import torch
from PIL import Image, ImageDraw

from .flow.viz import label_font

_COLOURS = [(31, 119, 180), (214, 39, 40), (44, 160, 44), (255, 127, 14), (148, 103, 189), (23, 190, 207)]


def _ticks(low: float, high: float, count: int = 5) -> list[float]:
    span = high - low
    if span <= 0:
        return [low]
    raw = span / count
    magnitude = 10 ** math.floor(math.log10(raw))
    step = min((m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw), default=raw)
    first = math.ceil(low / step) * step
    return [first + i * step for i in range(int((high - first) / step + 1e-9) + 1)]


def render_curves(series: dict[str, list[tuple[float, float]]], title: str = "", x_label: str = "",
                  y_range: tuple[float, float] | None = None, size: tuple[int, int] = (900, 520)) -> torch.Tensor:
    """A line chart of named ``(x, y)`` series with axes, ticks and a legend to the right of the axes.

    Non-finite points are skipped. Returns ``(3, H, W)`` float32 in [0, 1].
    """
    width, height = size
    image = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(image)
    font, small = label_font(18), label_font(14)
    left, right, top, bottom = 70, width - 250, 50, height - 60  # the legend's column right of the axes
    points = {name: [(x, y) for x, y in values if math.isfinite(x) and math.isfinite(y)] for name, values in series.items()}
    xs = [x for values in points.values() for x, _ in values] or [0.0, 1.0]
    ys = [y for values in points.values() for _, y in values] or [0.0, 1.0]
    x_low, x_high = min(xs), max(xs)
    if x_high == x_low:
        x_high = x_low + 1
    y_low, y_high = y_range if y_range is not None else (min(ys), max(ys))
    if y_high == y_low:
        y_high = y_low + 1

    def to_pixel(x: float, y: float) -> tuple[float, float]:
        return (left + (x - x_low) / (x_high - x_low) * (right - left),
                bottom - (y - y_low) / (y_high - y_low) * (bottom - top))

    draw.text((left, 12), title, fill=(20, 20, 20), font=font)
    for y in _ticks(y_low, y_high):
        _, py = to_pixel(x_low, y)
        draw.line([(left, py), (right, py)], fill=(230, 230, 230))
        draw.text((8, py - 8), f"{y:.3g}", fill=(80, 80, 80), font=small)
    for x in _ticks(x_low, x_high, 8):
        px, _ = to_pixel(x, y_low)
        draw.line([(px, bottom), (px, bottom + 5)], fill=(80, 80, 80))
        draw.text((px - 10, bottom + 8), f"{x:g}", fill=(80, 80, 80), font=small)
    draw.rectangle([left, top, right, bottom], outline=(60, 60, 60))
    draw.text(((left + right) // 2 - 60, height - 28), x_label, fill=(40, 40, 40), font=small)
    for index, (name, values) in enumerate(points.items()):
        colour = _COLOURS[index % len(_COLOURS)]
        pixels = [to_pixel(x, min(max(y, y_low), y_high)) for x, y in values]
        if len(pixels) > 1:
            draw.line(pixels, fill=colour, width=2)
        for px, py in pixels:
            draw.ellipse([px - 2.5, py - 2.5, px + 2.5, py + 2.5], fill=colour)
        legend_y = top + 8 + 20 * index
        draw.line([(right + 10, legend_y + 8), (right + 35, legend_y + 8)], fill=colour, width=3)
        draw.text((right + 42, legend_y), name, fill=(30, 30, 30), font=small)
    return torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1)

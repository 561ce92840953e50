"""A ROC curve as PNG, drawn with Pillow (the service does not depend on matplotlib)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from service.evaluation import roc_curve


def draw_roc(
    curves: dict[str, tuple[np.ndarray, np.ndarray]], path: Path, *, min_far: float = 1e-4
) -> None:
    """TAR against FAR on a log axis, one line per named (scores, same) pair."""
    width, height, margin = 640, 480, 60
    img = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(img)
    left, top, right, bottom = margin, 20, width - 20, height - margin
    lo = math.log10(min_far)

    def xy(far: float, tar: float) -> tuple[float, float]:
        x = left + (math.log10(max(far, min_far)) - lo) / -lo * (right - left)
        return x, bottom - tar * (bottom - top)

    draw.rectangle([left, top, right, bottom], outline="black")
    for exp in range(int(lo), 1):
        x, _ = xy(10.0**exp, 0)
        draw.line([x, bottom, x, bottom + 5], fill="black")
        draw.text((x - 12, bottom + 8), f"1e{exp}", fill="black")
    for tick in np.linspace(0, 1, 6):
        _, y = xy(1, tick)
        draw.line([left - 5, y, left, y], fill="black")
        draw.text((left - 40, y - 6), f"{tick:.1f}", fill="black")
    draw.text(((left + right) / 2 - 40, height - 25), "false accept rate", fill="black")
    draw.text((5, top), "TAR", fill="black")
    colours = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b"]
    for i, (name, (scores, same)) in enumerate(curves.items()):
        far, tar, _ = roc_curve(scores, same)
        points = [xy(f, t) for f, t in zip(far, tar, strict=True) if f >= min_far]
        colour = colours[i % len(colours)]
        if len(points) > 1:
            draw.line(points, fill=colour, width=2)
        draw.text((left + 10, bottom - 20 - 15 * i), name, fill=colour)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)

"""A loss curve drawn with PIL (matplotlib is not a dependency): raw points in grey, a running mean in blue."""

from __future__ import annotations

import json
import math
from pathlib import Path

from PIL import Image, ImageDraw

from mirage3d.io import atomic_save_image


def read_loss_log(path: Path) -> list[dict]:
    """Records of ``loss.jsonl`` (one JSON object per line; a torn last line from a kill is skipped)."""
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out


def draw_loss_curve(steps: list[int], losses: list[float], path: Path, size: tuple[int, int] = (720, 400)) -> None:
    """Loss (log scale) against step, with axis labels; written atomically to ``path``."""
    w, h = size
    img = Image.new("RGB", size, "white")
    d = ImageDraw.Draw(img)
    left, right, top, bottom = 64, w - 16, 16, h - 36
    d.rectangle([left, top, right, bottom], outline=(160, 160, 160))
    pts = [(s, v) for s, v in zip(steps, losses) if v > 0 and math.isfinite(v)]
    if len(pts) >= 1:
        s0, s1 = pts[0][0], max(pts[-1][0], pts[0][0] + 1)
        ly = [math.log10(v) for _, v in pts]
        y0, y1 = min(ly), max(ly)
        if y1 - y0 < 1e-6:
            y0, y1 = y0 - 0.5, y1 + 0.5

        def xy(s: float, lv: float) -> tuple[float, float]:
            return left + (s - s0) / (s1 - s0) * (right - left), bottom - (lv - y0) / (y1 - y0) * (bottom - top)

        raw = [xy(s, v) for (s, _), v in zip(pts, ly)]
        if len(raw) > 1:
            d.line(raw, fill=(190, 190, 190), width=1)
        k = max(1, len(pts) // 50)
        smooth = [xy(pts[i][0], sum(ly[max(0, i - k + 1) : i + 1]) / len(ly[max(0, i - k + 1) : i + 1])) for i in range(len(pts))]
        if len(smooth) > 1:
            d.line(smooth, fill=(30, 80, 200), width=2)
        d.text((4, top), f"{10**y1:.3g}", fill="black")
        d.text((4, bottom - 10), f"{10**y0:.3g}", fill="black")
        d.text((left, bottom + 6), f"step {s0}", fill="black")
        d.text((right - 90, bottom + 6), f"step {pts[-1][0]}", fill="black")
    d.text((w // 2 - 60, h - 16), "training loss (log)", fill="black")
    atomic_save_image(path, img)

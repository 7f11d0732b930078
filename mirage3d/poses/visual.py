"""Pictures of a pose discovery: a contact sheet with a row per pose and the parts coloured on examples."""

from __future__ import annotations

import colorsys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from mirage3d.data.collection import load_model_image


def palette(n: int) -> np.ndarray:
    """(n, 3) distinct colours in [0, 1] (golden-ratio hues, alternating lightness)."""
    return np.array([colorsys.hls_to_rgb((i * 0.618034) % 1.0, 0.45 if i % 2 else 0.6, 0.85) for i in range(n)])


def _thumb(path: Path, res: int) -> np.ndarray:
    rgb, _ = load_model_image(path, res)
    return rgb


def pose_sheet(
    files: list[Path], labels: np.ndarray, confidence: np.ndarray, azimuth_deg: np.ndarray, per_row: int = 12, res: int = 64
) -> Image.Image:
    """One row per pose: its ``per_row`` most confident images, labelled with pose, azimuth and size."""
    k = len(azimuth_deg)
    margin = 96
    sheet = Image.new("RGB", (margin + per_row * res, k * res), "white")
    draw = ImageDraw.Draw(sheet)
    for p in range(k):
        members = np.flatnonzero(labels == p)
        members = members[np.argsort(-confidence[members], kind="stable")][:per_row]
        draw.text((4, p * res + 4), f"pose {p}\naz {azimuth_deg[p]:.0f}\nn={int((labels == p).sum())}", fill="black")
        for j, i in enumerate(members):
            sheet.paste(Image.fromarray((_thumb(files[i], res) * 255 + 0.5).astype(np.uint8)), (margin + j * res, p * res))
    return sheet


def parts_sheet(files: list[Path], part_maps: np.ndarray, fg: np.ndarray, num_parts: int, res: int = 96) -> Image.Image:
    """Each example twice: the image, then its foreground patches coloured by part (nearest upsampling)."""
    colours = palette(num_parts)
    n = len(files)
    sheet = Image.new("RGB", (2 * res * min(n, 6), res * ((n + 5) // 6)), "white")
    for e, path in enumerate(files):
        rgb = _thumb(path, res)
        h, w = part_maps[e].shape
        up = np.repeat(np.repeat(part_maps[e], -(-res // h), 0), -(-res // w), 1)[:res, :res]
        m = np.repeat(np.repeat(fg[e] >= 0.5, -(-res // h), 0), -(-res // w), 1)[:res, :res, None]
        overlay = np.where(m, 0.35 * rgb + 0.65 * colours[up], rgb)
        x, y = 2 * res * (e % 6), res * (e // 6)
        sheet.paste(Image.fromarray((rgb * 255 + 0.5).astype(np.uint8)), (x, y))
        sheet.paste(Image.fromarray((overlay * 255 + 0.5).astype(np.uint8)), (x + res, y))
    return sheet

"""Input photo → the model's framing: find the object, crop, pad, composite on white, resize.

Object mask (:func:`mirage3d.foreground.find_object`), in order of preference:
1. the image's alpha channel, when it is non-trivial (some pixels transparent, some opaque);
2. GrabCut from the object's box, when one is given (``--box x0,y0,x1,y1``);
3. a plain background: the border strip (2 % of the short side) is nearly one colour (≥ 95 % of its pixels
   within ``tolerance`` of the median border colour, per channel max-abs in [0, 1]); object = pixels
   further than ``tolerance`` from that colour, specks removed and holes filled;
4. ``rembg`` when it is importable (``pip install mirage3d[rembg]``);
5. otherwise GrabCut from an automatic prior (OpenCV, offline; measured on real photos in docs/photos.md).

Framing: training renders show the object centred at a fixed camera distance, so its bounding box spans a
roughly constant fraction of the frame. We crop a square around the mask's bounding box so that its longer
side is ``fill`` of the square (``fill`` from ``MODEL/framing.json`` {"bbox_fraction": f} when present —
the median over the training collection, see :func:`bbox_fraction` — else :data:`DEFAULT_FILL`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from mirage3d.errors import InputError
from mirage3d.foreground import Box, ForegroundConfig, find_object
from mirage3d.io import rgba_to_array

DEFAULT_FILL = 0.85
"""Longer bbox side / frame side when the model folder has no framing.json: what a bounding sphere filling
90 % of the field of view (the renderer's default) gives for car-like objects seen from the side."""
DEFAULT_TOLERANCE = 0.1


@dataclass
class PreparedImage:
    """A reference image in the model's framing."""

    image: np.ndarray  # (R, R, 3) float32 in [0, 1], object composited on white
    mask: np.ndarray  # (R, R) float32 in [0, 1], object alpha
    bbox: tuple[int, int, int, int]  # object bbox in the input image: x0, y0, x1, y1 (exclusive)
    mask_source: str  # mirage3d.foreground.SOURCES: "alpha" | "grabcut-box" | "plain-background" | "rembg" | "grabcut-auto"

    def to_tensor(self) -> torch.Tensor:
        """(1, 3, R, R) float32 in [-1, 1], the model's input range."""
        return torch.from_numpy(self.image).permute(2, 0, 1)[None].float() * 2 - 1


def object_mask(rgba: np.ndarray, tolerance: float = DEFAULT_TOLERANCE, name: str = "image", box: Box | None = None) -> tuple[np.ndarray, str]:
    """(H, W, 4) float RGBA in [0, 1] → soft object mask (H, W) and where it came from (module doc);
    ``box`` (x0, y0, x1, y1 in the image's pixels): the object's box, for GrabCut."""
    cut = find_object(rgba, box, ForegroundConfig(tolerance=tolerance), name)
    return cut.mask, cut.source


def bbox_fraction(mask: np.ndarray) -> float:
    """Longer side of the object's bounding box (mask > 0.5) over the image's longer side."""
    ys, xs = np.nonzero(mask > 0.5)
    if len(xs) == 0:
        return 0.0
    return max(xs.max() - xs.min() + 1, ys.max() - ys.min() + 1) / max(mask.shape)


def load_fill(model_dir: str | Path) -> float | None:
    """``bbox_fraction`` from ``MODEL/framing.json`` if the model folder has one."""
    framing = load_framing(model_dir)
    return None if framing is None else framing[0]


def load_framing(model_dir: str | Path) -> tuple[float, tuple[float, float] | None] | None:
    """(``bbox_fraction``, ``range`` or None) from ``MODEL/framing.json`` if the model folder has one."""
    path = Path(model_dir) / "framing.json"
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text())
        value = float(data["bbox_fraction"])
        rng = None if data.get("range") is None else (float(data["range"][0]), float(data["range"][1]))
    except (ValueError, KeyError, TypeError, IndexError, json.JSONDecodeError):
        raise InputError(f"{path} must be JSON with a number 'bbox_fraction' in (0, 1] (and optionally 'range': [low, high])") from None
    if not 0 < value <= 1 or (rng is not None and not 0 < rng[0] <= rng[1] <= 1):
        raise InputError(f"{path}: bbox_fraction and range must lie in (0, 1], got {value} and {rng}")
    return value, rng


def fill_for_mask(mask: np.ndarray, fill: float, fill_range: tuple[float, float] | None) -> float:
    """The framing for an input with object ``mask``: its own bbox fraction when that lies in ``fill_range``
    (the training images' 5-95 % range: the object already has a scale the model saw, and the pose model
    reads scale), else ``fill``.

    Why: a render's bbox fraction depends on the pose (a car seen from the front is narrower than from the
    side), so bringing every input to one fraction rescales some poses away from how they were seen in
    training. Measured on held-out orbit renders with the default car model: re-framed to 0.85 the input's
    pose was wrong for 3 of 5 cars at 22.5°, at its own scale for none (``docs/asset.md``).
    """
    if fill_range is None:
        return fill
    own = bbox_fraction(mask)
    return own if fill_range[0] <= own <= fill_range[1] else fill


def choose_fill(
    image: Image.Image | np.ndarray,
    fill: float,
    fill_range: tuple[float, float] | None,
    tolerance: float = DEFAULT_TOLERANCE,
    name: str = "image",
    box: Box | None = None,
) -> float:
    """:func:`fill_for_mask` of an image (its object mask found as :func:`prepare_reference` finds it)."""
    if fill_range is None:
        return fill
    return fill_for_mask(object_mask(_to_rgba(image, name), tolerance, name, box)[0], fill, fill_range)


def _to_rgba(image: Image.Image | np.ndarray, name: str) -> np.ndarray:
    """PIL (any mode) or array (H, W, 3|4), uint8 or float in [0, 1] → float32 (H, W, 4) in [0, 1]."""
    if isinstance(image, Image.Image):
        return rgba_to_array(image)
    arr = np.asarray(image)
    arr = arr.astype(np.float32) / 255.0 if arr.dtype == np.uint8 else arr.astype(np.float32)
    if arr.ndim != 3 or arr.shape[2] not in (3, 4):
        raise InputError(f"{name}: expected an (H, W, 3) or (H, W, 4) image array, got shape {arr.shape}")
    return arr if arr.shape[2] == 4 else np.concatenate([arr, np.ones_like(arr[..., :1])], axis=2)


def prepare_reference(
    image: Image.Image | np.ndarray,
    resolution: int,
    fill: float | None = DEFAULT_FILL,
    tolerance: float = DEFAULT_TOLERANCE,
    name: str = "image",
    fill_range: tuple[float, float] | None = None,
    box: Box | None = None,
) -> PreparedImage:
    """Find the object, crop a square so its bbox spans ``fill`` of it, composite on white, resize.

    ``fill=None`` keeps the input's framing (for inputs already framed like the training renders, e.g.
    an orbit render): the whole image is used, only padded to a square and resized.
    ``fill_range``: an object whose bbox fraction already lies in it keeps that scale (:func:`fill_for_mask`).
    ``image``: PIL (any mode) or array (H, W, 3|4), uint8 or float in [0, 1].
    ``box``: the object's box (x0, y0, x1, y1) in the image's pixels, for a photo with a background.
    """
    rgba = _to_rgba(image, name)
    if fill is not None and not 0 < fill <= 1:
        raise InputError(f"fill must be in (0, 1], got {fill}")
    mask, source = object_mask(rgba, tolerance, name, box)
    if fill is not None:
        fill = fill_for_mask(mask, fill, fill_range)
    ys, xs = np.nonzero(mask > 0.5)
    if len(xs) < 4:
        hint = "give its box with --box x0,y0,x1,y1 or an RGBA cut-out" if source == "grabcut-auto" else "give a photo of one object"
        raise InputError(f"{name}: no object found ({source} mask is empty); {hint}")
    x0, x1, y0, y1 = int(xs.min()), int(xs.max()) + 1, int(ys.min()), int(ys.max()) + 1
    h, w = mask.shape
    if fill is None:
        cx, cy, side = w / 2, h / 2, max(h, w)
    else:
        cx, cy, side = (x0 + x1) / 2, (y0 + y1) / 2, max(x1 - x0, y1 - y0) / fill
    rgb = rgba[..., :3] * mask[..., None] + (1 - mask[..., None])  # on white
    # Crop box in input pixels (may reach outside the image: that part is white / transparent).
    left, top = round(cx - side / 2), round(cy - side / 2)
    side_px = max(1, round(side))
    canvas = np.ones((side_px, side_px, 4), dtype=np.float32)
    canvas[..., 3] = 0
    sx0, sy0 = max(0, left), max(0, top)
    sx1, sy1 = min(w, left + side_px), min(h, top + side_px)
    canvas[sy0 - top : sy1 - top, sx0 - left : sx1 - left, :3] = rgb[sy0:sy1, sx0:sx1]
    canvas[sy0 - top : sy1 - top, sx0 - left : sx1 - left, 3] = mask[sy0:sy1, sx0:sx1]
    # RGB (already on white) and mask resized separately: PIL's RGBA resize premultiplies by alpha.
    size = (resolution, resolution)
    u8 = (canvas * 255 + 0.5).astype(np.uint8)
    out_rgb = np.asarray(Image.fromarray(u8[..., :3], "RGB").resize(size, Image.Resampling.LANCZOS), dtype=np.float32) / 255.0
    out_mask = np.asarray(Image.fromarray(u8[..., 3], "L").resize(size, Image.Resampling.LANCZOS), dtype=np.float32) / 255.0
    return PreparedImage(image=out_rgb, mask=out_mask, bbox=(x0, y0, x1, y1), mask_source=source)

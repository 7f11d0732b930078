"""Offline foreground: find the one object in a photo and cut it out, with no downloaded weights.

Where the object mask comes from, in order (:func:`find_object`):
1. the image's own alpha channel, when it is non-trivial (an RGBA cut-out or a render);
2. a **box** around the object, when one is given: OpenCV GrabCut initialised with the box (outside =
   background, inside = probable foreground);
3. a plain background: the border strip (2 % of the short side) is nearly one colour; object = the pixels
   that differ from it (renders on white, product shots);
4. ``rembg`` when it is importable (``pip install mirage3d[rembg]``; it downloads its weights at first use);
5. otherwise GrabCut from an **automatic prior**: a band along the image border is background, an ellipse
   in the middle probable foreground, the rest probable background (photos of one object are framed
   around it). Then the largest connected region is kept and GrabCut runs again from that region's box, so
   the second pass is the box pass above.

GrabCut (Rother et al. 2004, ``cv2.grabCut``) fits two colour Gaussian mixtures (object, background) and
cuts the image graph between them; it runs on the photo scaled so its longer side is at most
``ForegroundConfig.work_side`` (speed), and the mask is scaled back up. What it is worth on real photos,
with and without a box, is measured in ``docs/photos.md`` (``benchmarks/bench_import.py``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image
from scipy import ndimage

from mirage3d.errors import InputError

Box = tuple[int, int, int, int]
"""x0, y0, x1, y1 in pixels, x1 and y1 exclusive."""

SOURCES = ("alpha", "plain-background", "grabcut-box", "rembg", "grabcut-auto")


@dataclass
class ForegroundConfig:
    """How the object is found and cut out (saved with every collection or asset made from photos)."""

    tolerance: float = 0.1
    """Plain background: per-channel max-abs distance in [0, 1] within which a pixel is background."""
    plain_fraction: float = 0.95
    """Plain background: share of the border strip that must lie within ``tolerance`` of its median colour."""
    iterations: int = 5
    """GrabCut iterations per pass."""
    work_side: int = 320
    """GrabCut runs on the photo scaled so its longer side is at most this (pixels)."""
    border: float = 0.04
    """Automatic prior: width of the background band along the image border (fraction of the short side)."""
    centre: float = 0.5
    """Automatic prior: semi-axes of the probable-foreground ellipse (fraction of the image's width and height)."""
    box_margin: float = 0.03
    """Automatic prior, second pass: the first pass's region box grown by this fraction of its size on each side."""
    use_rembg: bool = True
    """Use rembg (when importable) for photos with a busy background and no box."""

    def __post_init__(self) -> None:
        if not 0 < self.tolerance < 1 or not 0 < self.plain_fraction <= 1:
            raise InputError(f"foreground tolerance {self.tolerance} and plain fraction {self.plain_fraction} must lie in (0, 1)")
        if self.iterations < 1 or self.work_side < 32:
            raise InputError(f"GrabCut needs iterations >= 1 and work_side >= 32, got {self.iterations} and {self.work_side}")
        if not 0 < self.border < 0.25 or not 0 < self.centre <= 1 or not 0 <= self.box_margin < 0.5:
            raise InputError(
                f"automatic prior: border {self.border} in (0, 0.25), centre {self.centre} in (0, 1], box_margin {self.box_margin} in [0, 0.5)"
            )


@dataclass
class Cutout:
    """The object found in a photo."""

    mask: np.ndarray  # (H, W) float32 in [0, 1], the object's alpha
    source: str  # one of SOURCES

    @property
    def box(self) -> Box | None:
        """The mask's bounding box (alpha > 0.5), or None for an empty mask."""
        return mask_box(self.mask)


def mask_box(mask: np.ndarray, threshold: float = 0.5) -> Box | None:
    """Bounding box (x0, y0, x1, y1), exclusive ends, of ``mask > threshold``; None if empty."""
    ys, xs = np.nonzero(mask > threshold)
    if len(xs) == 0:
        return None
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


def box_iou(a: Box, b: Box) -> float:
    """Intersection over union of two boxes (x0, y0, x1, y1)."""
    iw = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def parse_box(text: str) -> Box:
    """``"x0,y0,x1,y1"`` (pixels; the ``--box`` option) → a box; its fit to the image is checked later (:func:`check_box`)."""
    try:
        values = [float(v) for v in text.replace(" ", "").split(",")]
    except ValueError:
        values = []
    if len(values) != 4:
        raise InputError(f"--box {text!r} must be four numbers x0,y0,x1,y1 (pixels of the photo, e.g. --box 120,30,280,175)")
    return tuple(round(v) for v in values)  # type: ignore[return-value]


def check_box(box: Box, width: int, height: int, name: str = "image") -> Box:
    """A box as ints, refused (InputError) when empty or outside the ``width`` x ``height`` image."""
    try:
        x0, y0, x1, y1 = (round(float(v)) for v in box)
    except (TypeError, ValueError):
        raise InputError(f"{name}: box {box!r} must be four numbers x0,y0,x1,y1") from None
    if not (x1 > x0 and y1 > y0):
        raise InputError(f"{name}: box {x0},{y0},{x1},{y1} is empty; give x0,y0,x1,y1 with x1 > x0 and y1 > y0")
    if x0 < 0 or y0 < 0 or x1 > width or y1 > height:
        raise InputError(f"{name}: box {x0},{y0},{x1},{y1} lies outside the {width}x{height} image; give pixel coordinates inside it")
    if (x1 - x0) < 4 or (y1 - y0) < 4:
        raise InputError(f"{name}: box {x0},{y0},{x1},{y1} is smaller than 4 pixels; give the box around the whole object")
    return x0, y0, x1, y1


# --------------------------------------------------------------------------------------------------
# Alpha and plain backgrounds
# --------------------------------------------------------------------------------------------------
def has_alpha(alpha: np.ndarray) -> bool:
    """Whether an alpha channel (H, W) in [0, 1] is a mask (some pixels transparent, some opaque)."""
    transparent = float((alpha < 0.5).mean())
    return 0.001 < transparent < 0.999


def plain_background_mask(rgb: np.ndarray, tolerance: float, plain_fraction: float = 0.95) -> np.ndarray | None:
    """Soft object mask (H, W) if the border of ``rgb`` (H, W, 3) in [0, 1] is one plain colour, else None."""
    h, w, _ = rgb.shape
    b = max(1, round(0.02 * min(h, w)))
    border = np.concatenate([rgb[:b].reshape(-1, 3), rgb[-b:].reshape(-1, 3), rgb[:, :b].reshape(-1, 3), rgb[:, -b:].reshape(-1, 3)])
    bg = np.median(border, axis=0)
    if (np.abs(border - bg).max(axis=1) <= tolerance).mean() < plain_fraction:
        return None
    dist = np.abs(rgb - bg).max(axis=2)  # (H, W)
    hard = ndimage.binary_opening(dist > tolerance, iterations=1)
    hard = ndimage.binary_fill_holes(hard)
    # Soft edge: ramp over [tol/2, 3·tol/2], solid inside the (eroded) filled object, nothing far outside.
    soft = np.clip((dist - 0.5 * tolerance) / tolerance, 0.0, 1.0)
    inner = ndimage.binary_erosion(hard, iterations=1)
    outer = ndimage.binary_dilation(hard, iterations=1)
    return np.where(inner, 1.0, soft * outer).astype(np.float32)


def rembg_mask(rgb: np.ndarray) -> np.ndarray | None:
    """rembg's alpha (H, W) for ``rgb`` (H, W, 3) in [0, 1], or None when rembg is not installed."""
    try:
        import rembg  # type: ignore[import-not-found]
    except ImportError:
        return None
    out = rembg.remove(Image.fromarray((rgb * 255).astype(np.uint8)))
    return np.asarray(out.convert("RGBA"), dtype=np.float32)[..., 3] / 255.0


# --------------------------------------------------------------------------------------------------
# GrabCut
# --------------------------------------------------------------------------------------------------
def _work_scale(h: int, w: int, cfg: ForegroundConfig) -> float:
    return min(1.0, cfg.work_side / max(h, w))


def _resize_u8(rgb: np.ndarray, scale: float) -> np.ndarray:
    """(H, W, 3) float in [0, 1] → uint8, scaled by ``scale`` (area filter)."""
    import cv2

    u8 = (np.clip(rgb, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    if scale >= 1.0:
        return np.ascontiguousarray(u8)
    h, w = u8.shape[:2]
    return cv2.resize(u8, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)


def _grabcut(img: np.ndarray, init: np.ndarray, iterations: int, seed: int = 0) -> np.ndarray:
    """cv2.grabCut from a label map ``init`` (GC_BGD / GC_FGD / GC_PR_BGD / GC_PR_FGD) → bool (h, w) object.

    OpenCV's GMM initialisation uses k-means with its global RNG; it is seeded so results repeat."""
    import cv2

    cv2.setRNGSeed(seed)
    mask = init.astype(np.uint8).copy()
    bgd, fgd = np.zeros((1, 65), np.float64), np.zeros((1, 65), np.float64)
    if not ((mask == cv2.GC_BGD) | (mask == cv2.GC_PR_BGD)).any() or not ((mask == cv2.GC_FGD) | (mask == cv2.GC_PR_FGD)).any():
        return (mask == cv2.GC_FGD) | (mask == cv2.GC_PR_FGD)
    cv2.grabCut(img, mask, None, bgd, fgd, iterations, cv2.GC_INIT_WITH_MASK)
    return (mask == cv2.GC_FGD) | (mask == cv2.GC_PR_FGD)


def _clean(obj: np.ndarray) -> np.ndarray:
    """Keep the largest connected region of a bool mask and fill its holes (windows, shadows under a car)."""
    labels, n = ndimage.label(obj)
    if n == 0:
        return obj
    sizes = ndimage.sum_labels(obj, labels, index=np.arange(1, n + 1))
    return ndimage.binary_fill_holes(labels == 1 + int(np.argmax(sizes)))


def _upscale_mask(obj: np.ndarray, h: int, w: int) -> np.ndarray:
    """bool (h', w') → soft float32 (h, w): the mask resized with a bilinear filter (a one-pixel soft edge)."""
    import cv2

    if obj.shape == (h, w):
        return obj.astype(np.float32)
    soft = cv2.resize(obj.astype(np.float32), (w, h), interpolation=cv2.INTER_LINEAR)
    return np.clip(soft, 0.0, 1.0)


def grabcut_box(rgb: np.ndarray, box: Box, cfg: ForegroundConfig | None = None, seed: int = 0) -> np.ndarray:
    """Object mask (H, W) float32 of ``rgb`` (H, W, 3) in [0, 1] by GrabCut inside ``box`` (outside = background)."""
    import cv2

    cfg = cfg or ForegroundConfig()
    h, w = rgb.shape[:2]
    s = _work_scale(h, w, cfg)
    img = _resize_u8(rgb, s)
    hs, ws = img.shape[:2]
    x0, y0 = int(np.floor(box[0] * s)), int(np.floor(box[1] * s))
    x1, y1 = max(x0 + 1, int(np.ceil(box[2] * s))), max(y0 + 1, int(np.ceil(box[3] * s)))
    init = np.full((hs, ws), cv2.GC_BGD, np.uint8)
    init[y0:y1, x0:x1] = cv2.GC_PR_FGD
    return _upscale_mask(_clean(_grabcut(img, init, cfg.iterations, seed)), h, w)


def auto_prior(h: int, w: int, cfg: ForegroundConfig) -> np.ndarray:
    """GrabCut labels (h, w) of the automatic prior: border band background, centre ellipse probable object."""
    import cv2

    b = max(1, round(cfg.border * min(h, w)))
    yy, xx = np.mgrid[0:h, 0:w]
    ell = ((xx + 0.5 - w / 2) / (cfg.centre * w / 2)) ** 2 + ((yy + 0.5 - h / 2) / (cfg.centre * h / 2)) ** 2 <= 1.0
    init = np.where(ell, cv2.GC_PR_FGD, cv2.GC_PR_BGD).astype(np.uint8)
    init[:b], init[-b:], init[:, :b], init[:, -b:] = cv2.GC_BGD, cv2.GC_BGD, cv2.GC_BGD, cv2.GC_BGD
    return init


def grabcut_auto(rgb: np.ndarray, cfg: ForegroundConfig | None = None, seed: int = 0) -> np.ndarray:
    """Object mask (H, W) float32 of ``rgb`` (H, W, 3) in [0, 1] with no box: GrabCut from :func:`auto_prior`,
    the largest region kept, then GrabCut again from that region's box (grown by ``box_margin``)."""
    cfg = cfg or ForegroundConfig()
    h, w = rgb.shape[:2]
    s = _work_scale(h, w, cfg)
    img = _resize_u8(rgb, s)
    hs, ws = img.shape[:2]
    first = _clean(_grabcut(img, auto_prior(hs, ws, cfg), cfg.iterations, seed))
    box = mask_box(first.astype(np.float32))
    if box is None:
        return np.zeros((h, w), np.float32)
    mx, my = cfg.box_margin * (box[2] - box[0]), cfg.box_margin * (box[3] - box[1])
    grown = (box[0] - mx, box[1] - my, box[2] + mx, box[3] + my)
    # Back to full-resolution pixels, clipped to the image (the box pass rescales it).
    full = (max(0, grown[0] / s), max(0, grown[1] / s), min(w, grown[2] / s), min(h, grown[3] / s))
    return grabcut_box(rgb, tuple(round(v) for v in full), cfg, seed)  # type: ignore[arg-type]


def find_object(rgba: np.ndarray, box: Box | None = None, cfg: ForegroundConfig | None = None, name: str = "image", seed: int = 0) -> Cutout:
    """The object's mask in ``rgba`` (H, W, 4) float in [0, 1] (module docstring for the order tried);
    ``seed``: of GrabCut's colour-model initialisation (OpenCV's k-means)."""
    cfg = cfg or ForegroundConfig()
    h, w = rgba.shape[:2]
    alpha = rgba[..., 3]
    if has_alpha(alpha):
        return Cutout(alpha.astype(np.float32), "alpha")
    rgb = rgba[..., :3]
    if box is not None:
        return Cutout(grabcut_box(rgb, check_box(box, w, h, name), cfg, seed), "grabcut-box")
    mask = plain_background_mask(rgb, cfg.tolerance, cfg.plain_fraction)
    if mask is not None:
        return Cutout(mask, "plain-background")
    if cfg.use_rembg:
        mask = rembg_mask(rgb)
        if mask is not None:
            return Cutout(mask, "rembg")
    return Cutout(grabcut_auto(rgb, cfg, seed), "grabcut-auto")

"""Loading a views folder (nerfstudio ``transforms.json`` + RGBA images) into tensors for fitting.

Conventions (``docs/conventions.md``): camera-to-world matrices with OpenGL camera axes (+X right, +Y up,
looking down -Z), world +Z up, pixel centres at +0.5, alpha is the object mask.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from mirage3d.errors import InputError
from mirage3d.io import load_image, read_transforms, rgba_to_array


@dataclass
class ViewSet:
    """Training views: RGBA images, camera-to-world matrices and shared pinhole intrinsics."""

    rgba: np.ndarray  # (N, H, W, 4) float32 in [0, 1]; alpha = object mask
    c2w: np.ndarray  # (N, 4, 4) float64, OpenGL camera axes
    K: np.ndarray  # (3, 3) float64 intrinsics in pixels (for the images as loaded)
    files: list[Path] = field(default_factory=list)  # source image of each view (empty for views made in memory)
    reference: int | None = None
    """Index of the input view: refinement holds its camera fixed and its colours win in the texture."""

    def __post_init__(self) -> None:
        if not self.files:
            self.files = [Path(f"view_{i:04d}") for i in range(self.rgba.shape[0])]
        if self.reference is not None and not 0 <= self.reference < self.rgba.shape[0]:
            raise InputError(f"reference view {self.reference} is not one of the {self.rgba.shape[0]} views")

    @property
    def n(self) -> int:
        return self.rgba.shape[0]

    @property
    def hw(self) -> tuple[int, int]:
        return self.rgba.shape[1], self.rgba.shape[2]

    def rgb_on_white(self) -> np.ndarray:
        """(N, H, W, 3) colours composited on the white background the field renders against."""
        a = self.rgba[..., 3:4]
        return self.rgba[..., :3] * a + (1.0 - a)

    def subset(self, idx: list[int] | np.ndarray) -> ViewSet:
        idx = list(np.asarray(idx).tolist())
        ref = idx.index(self.reference) if self.reference in idx else None
        return ViewSet(self.rgba[idx], self.c2w[idx], self.K.copy(), [self.files[i] for i in idx], ref)


def load_views(folder: str | Path, white_threshold: float = 0.97) -> ViewSet:
    """Read a views folder; all images must share one size. Raises :class:`InputError` on bad input.

    The frame marked ``"is_reference": true`` (the input photo's view) becomes ``ViewSet.reference``.
    Images whose size differs from the ``w``/``h`` in ``transforms.json`` (same aspect) have their
    intrinsics rescaled. Fully opaque images (no alpha) get a mask from "not near-white" pixels, since
    mirage3d views are rendered or generated on white.
    """
    folder = Path(folder)
    t = read_transforms(folder, check_images=True)
    root = folder if folder.is_dir() else folder.parent
    files = [root / f.file_path for f in t.frames]
    images = [load_image(p) for p in files]
    sizes = {im.size for im in images}
    if len(sizes) > 1:
        (w0, h0), i = images[0].size, next(i for i, im in enumerate(images) if im.size != images[0].size)
        w1, h1 = images[i].size
        raise InputError(f"images have different sizes ({w0}x{h0} for {files[0].name}, {w1}x{h1} for {files[i].name}); all views must share one size")
    w, h = images[0].size
    if (w, h) != (t.w, t.h) and abs(w / h - t.w / t.h) > 1e-3:
        raise InputError(f"images are {w}x{h} but transforms.json says {t.w}x{t.h} (another aspect ratio); fix w/h in transforms.json")
    K = t.intrinsics.resized(w, h).K  # the cameras of transforms.json, for the images as loaded
    rgba = np.stack([rgba_to_array(im) for im in images])  # (N, H, W, 4)
    if np.all(rgba[..., 3] > 0.999):
        # No alpha channel: the background is white by the views convention.
        rgba[..., 3] = (rgba[..., :3].min(-1) < white_threshold).astype(np.float32)
    fg = rgba[..., 3] > 0.5
    if not fg.any():
        raise InputError(f"no foreground in {folder}: every image's alpha is zero (views need an object mask)")
    empty = [files[i].name for i in range(len(files)) if not fg[i].any()]
    if empty:
        raise InputError(f"no foreground in {len(empty)} view(s) of {folder} (e.g. {empty[0]}); remove them or fix their alpha")
    refs = [i for i, f in enumerate(t.frames) if f.extra.get("is_reference")]  # written by ``mirage3d views``
    return ViewSet(rgba.astype(np.float32), t.c2w(), K, files, refs[0] if len(refs) == 1 else None)


# --------------------------------------------------------------------------------------------------
# Rays
# --------------------------------------------------------------------------------------------------
def pixel_centres(h: int, w: int) -> torch.Tensor:
    """(H*W, 2) pixel centres (u right, v down), row-major."""
    v, u = torch.meshgrid(torch.arange(h, dtype=torch.float32) + 0.5, torch.arange(w, dtype=torch.float32) + 0.5, indexing="ij")
    return torch.stack([u.reshape(-1), v.reshape(-1)], -1)


def generate_rays(c2w: torch.Tensor, uv: torch.Tensor, K: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """World-space rays through pixels: origins (B, 3) and unit directions (B, 3).

    ``c2w`` is (B, 4, 4) (one camera per ray, or (1, 4, 4) broadcast), ``uv`` (B, 2) pixel coordinates,
    ``K`` (3, 3). A camera-space direction is ((u - cx)/fx, -(v - cy)/fy, -1) (OpenGL axes).
    """
    x = (uv[:, 0] - K[0, 2]) / K[0, 0]
    y = -(uv[:, 1] - K[1, 2]) / K[1, 1]
    d_cam = torch.stack([x, y, -torch.ones_like(x)], -1)  # (B, 3)
    d = torch.einsum("bij,bj->bi", c2w[:, :3, :3], d_cam)
    d = d / d.norm(dim=-1, keepdim=True)
    o = c2w[:, :3, 3].expand_as(d)
    return o, d


def ray_aabb(o: torch.Tensor, d: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Slab test: entry and exit distances (B,) of rays against the box [lo, hi]; a miss has near >= far."""
    inv = 1.0 / torch.where(d.abs() < 1e-9, torch.full_like(d, 1e-9), d)
    t0, t1 = (lo - o) * inv, (hi - o) * inv
    near = torch.minimum(t0, t1).amax(-1).clamp_min(0.0)
    far = torch.maximum(t0, t1).amin(-1)
    return near, far

"""Per-image pose descriptors from part assignments.

For P parts the descriptor has three blocks:

- **visibility** (P): the fraction of the object's foreground covered by each part (sums to 1);
- **location** (2P): each part's centroid relative to the object's bounding box, x and y in [-1, 1]
  (box centre = 0), multiplied by sqrt(visibility) so a part that is barely seen contributes little and an
  unseen part contributes 0 instead of an arbitrary position;
- **box** (1): log aspect ratio (width / height) of the foreground's bounding box;
- **layout** (``LAYOUT_DIMS``, when ``w_layout`` > 0): the unit patch features pooled over a ``LAYOUT_GRID`` x
  ``LAYOUT_GRID`` split of the object's box (``mirage3d.poses.facing.box_pool``), projected on their first
  principal components (``mirage3d.poses.model.LayoutModel``): where in the box which features lie, with no parts.

Each block is scaled by one number so that its total variance over the collection is 1, then multiplied by
its weight (``DescriptorConfig``); Euclidean distance between descriptors then weighs the blocks as asked.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from mirage3d.poses.config import DescriptorConfig

BLOCKS = ("visibility", "location", "box", "layout")
LAYOUT_GRID = 4
LAYOUT_DIMS = 64


def part_descriptors(parts: torch.Tensor, fg: torch.Tensor, num_parts: int, fg_threshold: float = 0.5) -> torch.Tensor:
    """Raw descriptors (N, 3P + 1) from part indices (N, h, w) and foreground weights (N, h, w) in [0, 1]."""
    n, h, w = parts.shape
    fg = fg.float()
    onehot = F.one_hot(parts.long(), num_parts).float() * fg[..., None]  # (N, h, w, P) foreground-weighted
    mass = onehot.sum(dim=(1, 2))  # (N, P)
    total = mass.sum(1, keepdim=True).clamp_min(1e-6)
    vis = mass / total  # (N, P)

    ys = (torch.arange(h, dtype=torch.float32, device=parts.device) + 0.5) / h
    xs = (torch.arange(w, dtype=torch.float32, device=parts.device) + 0.5) / w
    solid = fg >= fg_threshold  # (N, h, w)
    solid = torch.where(solid.flatten(1).any(1)[:, None, None], solid, torch.ones_like(solid))  # empty → whole image
    big = 2.0
    x0 = torch.where(solid, xs[None, None, :], big).flatten(1).min(1).values - 0.5 / w  # (N,) box in [0, 1]
    x1 = torch.where(solid, xs[None, None, :], -big).flatten(1).max(1).values + 0.5 / w
    y0 = torch.where(solid, ys[None, :, None], big).flatten(1).min(1).values - 0.5 / h
    y1 = torch.where(solid, ys[None, :, None], -big).flatten(1).max(1).values + 0.5 / h

    cx = torch.einsum("nhwp,w->np", onehot, xs) / mass.clamp_min(1e-6)  # (N, P) part centroids
    cy = torch.einsum("nhwp,h->np", onehot, ys) / mass.clamp_min(1e-6)
    lx = (2 * (cx - ((x0 + x1) / 2)[:, None]) / (x1 - x0)[:, None]).clamp(-1, 1)
    ly = (2 * (cy - ((y0 + y1) / 2)[:, None]) / (y1 - y0)[:, None]).clamp(-1, 1)
    s = vis.sqrt()
    loc = torch.stack([lx * s, ly * s], dim=-1).flatten(1)  # (N, 2P): x0, y0, x1, y1, ...
    box = torch.log((x1 - x0) / (y1 - y0))[:, None]  # (N, 1)
    return torch.cat([vis, loc, box], dim=1)


def block_slices(num_parts: int, layout_dims: int = 0) -> dict[str, slice]:
    p = num_parts
    out = {"visibility": slice(0, p), "location": slice(p, 3 * p), "box": slice(3 * p, 3 * p + 1)}
    if layout_dims:
        out["layout"] = slice(3 * p + 1, 3 * p + 1 + layout_dims)
    return out


def fit_block_scales(raw: torch.Tensor, num_parts: int, cfg: DescriptorConfig, layout_dims: int = 0) -> torch.Tensor:
    """Per-dimension multipliers (D,) = weight / sqrt(total variance of its block) over ``raw`` (N, D)."""
    var = raw.double().var(0, unbiased=False)
    scales = torch.zeros(raw.shape[1], dtype=torch.float64)
    weights = {"visibility": cfg.w_visibility, "location": cfg.w_location, "box": cfg.w_box, "layout": cfg.w_layout}
    for name, sl in block_slices(num_parts, layout_dims).items():
        scales[sl] = weights[name] / float(var[sl].sum().clamp_min(1e-12).sqrt())
    return scales.float()

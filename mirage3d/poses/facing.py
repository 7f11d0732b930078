"""Facing direction: which way along its axis the object points in the image, from an image and its mirror.

Pose descriptors built from parts find the object's *axis* in the image well but often not its direction: a
car seen from azimuth φ and from φ + 180° gives nearly the same parts in nearly the same places
(`docs/poses.md`, "Where it goes wrong"). The two views differ in which end is the front, and that end swaps
sides when the image is mirrored. So the direction lives in the *flip difference*

    c(x) = b(x) - b(flip x),

where b pools unit patch features over the object's bounding box on a g x g grid (b(flip x) is pooled from
the flipped image's features with the flipped mask). c is exactly antisymmetric under the flip:
c(flip x) = -c(x). Its principal components hold several left/right differences (the light direction of a
render, for one) besides the facing. The facing component is the one that the first-pass pose labels
explain best: images of one pose mostly face the same way, while the light does not depend on the pose.
The first-pass poses hold views φ and φ + 180° together. So they explain well the left/right differences
that are the same for both views (which end of the object is nearer the camera, for one), and only partly
the facing. The axis is therefore the largest-variance component that the poses explain less than half of
(η² < 0.5). This rule was chosen on one collection (`docs/poses.md`).
Measured on car renders, the third component tells the facing of views more than 22° from front/back 87-90 %
of the time, against 57-60 % for the first (`benchmarks/pose_direction_probe.py`).

The facing score s(x) = c(x) · axis is appended to the image's descriptor and -s(x) to its flip's, and the
poses are clustered again.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from mirage3d.poses.parts import fit_pca

SUBSAMPLES = 4  # bilinear samples per grid cell and axis when pooling over the box


def foreground_boxes(fg: torch.Tensor, threshold: float = 0.5) -> torch.Tensor:
    """(N, h, w) foreground weights → (N, 4) boxes (x0, y0, x1, y1) in patch units (x1, y1 exclusive).

    An image with no foreground gets the whole frame.
    """
    n, h, w = fg.shape
    solid = fg >= threshold
    cols, rows = solid.any(1), solid.any(2)  # (N, w), (N, h)
    ar_w = torch.arange(w, device=fg.device)
    ar_h = torch.arange(h, device=fg.device)
    x0 = torch.where(cols, ar_w, w).min(1).values
    x1 = torch.where(cols, ar_w + 1, 0).max(1).values
    y0 = torch.where(rows, ar_h, h).min(1).values
    y1 = torch.where(rows, ar_h + 1, 0).max(1).values
    empty = ~cols.any(1)
    x0, y0 = torch.where(empty, 0, x0), torch.where(empty, 0, y0)
    x1, y1 = torch.where(empty, w, x1), torch.where(empty, h, y1)
    return torch.stack([x0, y0, x1, y1], 1).float()


def box_pool(feats: torch.Tensor, fg: torch.Tensor, grid: int) -> torch.Tensor:
    """(N, h, w, C) features → (N, C·grid·grid): unit patch features inside the foreground, averaged over
    ``grid`` x ``grid`` cells of each image's foreground box (bilinear samples, so any box size works)."""
    n, h, w, c = feats.shape
    u = (F.normalize(feats.float(), dim=-1) * (fg >= 0.5)[..., None]).permute(0, 3, 1, 2)  # (N, C, h, w)
    box = foreground_boxes(fg)
    m = grid * SUBSAMPLES
    t = (torch.arange(m, device=feats.device, dtype=torch.float32) + 0.5) / m  # (m,) in (0, 1)
    # Samples span the centres of the box's first and last patches (patch i is centred at i + 0.5), so no
    # sample blends in a patch outside the box.
    px = box[:, 0:1] + 0.5 + t[None] * (box[:, 2:3] - box[:, 0:1] - 1)  # (N, m) continuous patch coordinates
    py = box[:, 1:2] + 0.5 + t[None] * (box[:, 3:4] - box[:, 1:2] - 1)
    gx, gy = 2 * px / w - 1, 2 * py / h - 1  # grid_sample's normalised coordinates (align_corners=False)
    sample = torch.stack([gx[:, None, :].expand(n, m, m), gy[:, :, None].expand(n, m, m)], dim=-1)
    s = F.grid_sample(u, sample, mode="bilinear", padding_mode="zeros", align_corners=False)  # (N, C, m, m)
    return F.avg_pool2d(s, SUBSAMPLES).flatten(1)


def flip_difference(feats: torch.Tensor, feats_flip: torch.Tensor, fg: torch.Tensor, grid: int) -> torch.Tensor:
    """c(x) = b(x) − b(flip x) (N, C·grid²); ``fg`` is the image's (unflipped) foreground."""
    return box_pool(feats, fg, grid) - box_pool(feats_flip, fg.flip(-1), grid)


def eta_squared(score: np.ndarray, labels: np.ndarray) -> float:
    """Share of the variance of ``score`` explained by the group means of ``labels`` (0..1)."""
    total = float(((score - score.mean()) ** 2).sum())
    if total <= 0:
        return 0.0
    between = 0.0
    for k in np.unique(labels):
        sel = score[labels == k]
        between += len(sel) * float((sel.mean() - score.mean()) ** 2)
    return between / total


@dataclass
class FacingModel:
    axis: torch.Tensor  # (C·grid²,) unit direction in flip-difference space
    grid: int = 2

    def score(self, feats: torch.Tensor, feats_flip: torch.Tensor, fg: torch.Tensor) -> torch.Tensor:
        """(N,) facing score of the images; their flips score exactly the negative."""
        return flip_difference(feats, feats_flip, fg, self.grid) @ self.axis.to(feats.device)

    def to(self, device: torch.device | str) -> FacingModel:
        return FacingModel(self.axis.to(device), self.grid)


def fit_facing(c: torch.Tensor, labels: np.ndarray, components: int = 10, grid: int = 2, max_eta2: float = 0.5,
               component: int | None = None) -> tuple[FacingModel, list[float]]:  # fmt: skip
    """Facing axis from flip differences ``c`` (N, D) and first-pass pose ``labels`` (N,).

    Principal components of {c, −c} (centred at 0 by construction), by decreasing variance. The first-pass
    poses hold views φ and φ + 180° together, so they explain well (η² > ``max_eta2``) the left/right
    differences that are the same for both (which end of the object is nearer, for one) and only partly the
    facing, which is opposite for the two. The axis is the first component the poses explain less than that
    (``component``: a fixed choice instead). Returns the model and every component's η² (for the record).
    """
    _, comps = fit_pca(torch.cat([c, -c]).float(), components)
    scores = (c.float() @ comps).cpu().numpy()  # (N, components)
    etas = [eta_squared(scores[:, j], labels) for j in range(scores.shape[1])]
    if component is None:
        below = [j for j, e in enumerate(etas) if e < max_eta2]
        component = below[0] if below else int(np.argmin(etas))
    return FacingModel(comps[:, int(component)].contiguous(), grid), etas

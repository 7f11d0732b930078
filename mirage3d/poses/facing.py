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
explain in part. The first-pass poses hold views φ and φ + 180° together, so they explain well the left/right
differences that are the same for both views (which end of the object is nearer the camera, for one), and only
partly the facing. The automatic rule therefore takes the largest-variance component that the poses explain
less than half of (η² < 0.5). On car renders the facing is the third component (index 2) on every feature set
measured, and the rule picks another one on the longer-trained backbones, so the default is that component,
fixed (``FacingConfig.component``; ``None`` = the rule; `docs/poses.md`).

The chosen component is then refined by self-training: a ridge regression on c (no intercept, so the score
stays exactly antisymmetric) is fitted to the sign of the current score on the images where it is clear
(|s| > 0.5 standard deviations), three times. On car renders this raised the facing accuracy from 0.88-0.89
to 0.92-0.93 on three collections (900, 900 and 6,000 images; `docs/poses.md`).

The facing score s(x) = c(x) · axis is appended to the image's descriptor and -s(x) to its flip's, and the
poses are clustered again.

**Front or back.** The facing score is ≈ 0 for views from the front and from the back, so after the
second pass those two stay merged: a mirror pair of poses, each holding front and back views (measured:
`docs/poses.md`). What tells them apart is which end of the object is seen, and that does not change
under the flip, so it lives in the *flip sum* g(x) = b(x) + b(flip x). ``FrontModel`` scores it by a
vote among the nearest neighbours (cosine, in whitened principal components of g) in two groups of
reference images with known ends: the two mirror orbits of poses whose mean |s| is lowest after the
front/back orbit itself. Those are the oblique views nearest to front and to back, one on each side by the
symmetry |sin φ| = |sin(180° − φ)|; which one is called "front" is arbitrary (the global rotation of the
frame). The front/back orbit is split at the median score, the score is appended to the descriptor, and the
split is kept as found (clustering again from it was measured worse, docs/poses.md). A nearest-neighbour
vote rather than a linear classifier: a ridge
regression fitted on the oblique groups separates them perfectly but tells front from back views no better
than chance (0.50), while the vote, being local, reaches 0.82 (6,000 renders).
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

    def score_pooled(self, b: torch.Tensor, b_flip: torch.Tensor) -> torch.Tensor:
        """:meth:`score` from the box-pooled features of the images and of their flips (``box_pool``)."""
        return (b - b_flip) @ self.axis.to(b.device)

    def to(self, device: torch.device | str) -> FacingModel:
        return FacingModel(self.axis.to(device), self.grid)


def refine_axis(c: torch.Tensor, axis: torch.Tensor, iters: int = 3, min_abs: float = 0.5, ridge: float = 1e-3) -> torch.Tensor:
    """Self-training of the facing axis: ``iters`` times, a ridge regression (no intercept) on the flip
    differences ``c`` (N, D) to the sign of the current score, on images scoring beyond ``min_abs``
    standard deviations. Returns a unit axis (D,) with the same orientation as ``axis``."""
    x = c.double()
    w = axis.double().to(x.device)
    for _ in range(iters):
        s = x @ w
        clear = s.abs() > min_abs * s.std().clamp_min(1e-12)
        if int(clear.sum()) < 2:
            break
        xc = x[clear]
        a = xc.T @ xc + ridge * len(xc) * torch.eye(x.shape[1], dtype=x.dtype, device=x.device) * float((xc * xc).sum(1).mean())
        w_new = torch.linalg.solve(a, xc.T @ torch.sign(s[clear]))
        w = w_new / w_new.norm().clamp_min(1e-12)
    w = w if float(w @ axis.double().to(w.device)) >= 0 else -w
    return w.float()


def fit_facing(
    c: torch.Tensor, labels: np.ndarray, components: int = 10, grid: int = 2, max_eta2: float = 0.5, component: int | None = None, refine: int = 3
) -> tuple[FacingModel, list[float]]:
    """Facing axis from flip differences ``c`` (N, D) and first-pass pose ``labels`` (N,).

    Principal components of {c, −c} (centred at 0 by construction), by decreasing variance. The first-pass
    poses hold views φ and φ + 180° together, so they explain well (η² > ``max_eta2``) the left/right
    differences that are the same for both (which end of the object is nearer, for one) and only partly the
    facing, which is opposite for the two. The axis is the first component the poses explain less than that
    (``component``: a fixed choice instead), refined by ``refine`` rounds of :func:`refine_axis`. Returns
    the model and every component's η² (for the record).
    """
    _, comps = fit_pca(torch.cat([c, -c]).float(), components)
    scores = (c.float() @ comps).cpu().numpy()  # (N, components)
    etas = [eta_squared(scores[:, j], labels) for j in range(scores.shape[1])]
    if component is None:
        below = [j for j, e in enumerate(etas) if e < max_eta2]
        component = below[0] if below else int(np.argmin(etas))
    axis = comps[:, int(component)].contiguous()
    if refine > 0:
        axis = refine_axis(c, axis, refine)
    return FacingModel(axis, grid), etas


def flip_sum(feats: torch.Tensor, feats_flip: torch.Tensor, fg: torch.Tensor, grid: int) -> torch.Tensor:
    """g(x) = b(x) + b(flip x) (N, C·grid²): the same for an image and its flip."""
    return box_pool(feats, fg, grid) + box_pool(feats_flip, fg.flip(-1), grid)


@dataclass
class FrontModel:
    """Front/back score: nearest-neighbour vote among reference images of known end (module docstring)."""

    mean: torch.Tensor  # (D,) of the flip sums
    proj: torch.Tensor  # (D, q) principal directions
    scale: torch.Tensor  # (q,) standard deviation along each (whitening)
    refs: torch.Tensor  # (R, q) unit whitened reference embeddings
    votes: torch.Tensor  # (R,) +1 / -1
    k: int = 10
    grid: int = 2

    def embed(self, g: torch.Tensor) -> torch.Tensor:
        dev = g.device
        z = (g.float() - self.mean.to(dev)) @ self.proj.to(dev) / self.scale.to(dev).clamp_min(1e-12)
        return F.normalize(z, dim=1)

    def score_sums(self, g: torch.Tensor, exclude: torch.Tensor | None = None, chunk: int = 4096) -> torch.Tensor:
        """(N,) mean vote of the ``k`` most similar references; ``exclude`` (N,): a reference index each row
        must not vote for (itself, at discovery), or -1."""
        z = self.embed(g)
        refs, votes = self.refs.to(g.device).float(), self.votes.to(g.device).float()
        k = min(self.k, len(refs) - (0 if exclude is None else 1))
        out = []
        for s in range(0, len(z), chunk):
            sim = z[s : s + chunk] @ refs.T
            if exclude is not None:
                ex = exclude[s : s + chunk].to(g.device)
                rows = torch.nonzero(ex >= 0)[:, 0]
                sim[rows, ex[rows]] = -2.0
            out.append(votes[sim.topk(k, dim=1).indices].mean(1))
        return torch.cat(out)

    def score(self, feats: torch.Tensor, feats_flip: torch.Tensor, fg: torch.Tensor) -> torch.Tensor:
        """(N,) front score of the images (their flips score the same)."""
        return self.score_sums(flip_sum(feats, feats_flip, fg, self.grid))

    def tensors(self) -> dict[str, torch.Tensor]:
        return {
            "front_mean": self.mean,
            "front_proj": self.proj,
            "front_scale": self.scale,
            "front_refs": self.refs.half(),
            "front_votes": self.votes,
        }

    @classmethod
    def from_tensors(cls, t: dict[str, torch.Tensor], k: int, grid: int) -> FrontModel:
        return cls(
            t["front_mean"].float(), t["front_proj"].float(), t["front_scale"].float(), t["front_refs"].float(), t["front_votes"].float(), k, grid
        )

    def to(self, device: torch.device | str) -> FrontModel:
        return FrontModel(
            self.mean.to(device), self.proj.to(device), self.scale.to(device), self.refs.to(device), self.votes.to(device), self.k, self.grid
        )


def mirror_orbits(labels: np.ndarray, mirror: np.ndarray, s: np.ndarray) -> list[tuple[int, ...]]:
    """The poses grouped with their mirror poses ({k, m[k]}), by increasing mean |facing score| of their images."""
    k = len(mirror)
    orbits = sorted({tuple(sorted({j, int(mirror[j])})) for j in range(k)})
    orbits = [o for o in orbits if np.isin(labels, o).any()]
    return sorted(orbits, key=lambda o: float(np.abs(s[np.isin(labels, o)]).mean()))


def fit_front(g: torch.Tensor, votes: torch.Tensor, ref_index: torch.Tensor, dim: int = 128, k: int = 10, grid: int = 2) -> FrontModel:
    """Front model from flip sums ``g`` (N, D) of all images (the whitening), with images ``ref_index`` voting ``votes`` (±1)."""
    mean, proj = fit_pca(g.float(), min(dim, g.shape[1], g.shape[0] - 1))
    z = (g.float() - mean) @ proj
    scale = z.std(0).clamp_min(1e-12)
    m = FrontModel(mean, proj, scale, torch.zeros(0, proj.shape[1]), votes.float(), k, grid)
    m.refs = m.embed(g[ref_index])
    return m

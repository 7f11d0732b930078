"""Reconstruction metrics: Chamfer-L1 and F-score between meshes, PSNR and SSIM between images.

Used by ``benchmarks/bench_recon.py`` and by any evaluation that compares a generated asset with the
true mesh and renders (both meshes in the same frame and units).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
import trimesh
from scipy.spatial import cKDTree


@dataclass
class GeometryScores:
    """Chamfer-L1 (mean of both directions' mean nearest distances) and F-scores at distances ``taus``."""

    chamfer_l1: float
    fscore: dict[float, float]  # relative threshold (fraction of the true bbox diagonal) → F-score in [0, 1]
    scale: float  # the true mesh's bounding-box diagonal (thresholds are fractions of it)


def sample_surface(mesh: trimesh.Trimesh | trimesh.Scene, n: int, seed: int = 0) -> np.ndarray:
    """(n, 3) points uniformly on the surface (area-weighted), reproducible by ``seed``."""
    if isinstance(mesh, trimesh.Scene):
        mesh = mesh.to_geometry() if hasattr(mesh, "to_geometry") else mesh.dump(concatenate=True)
    pts, _ = trimesh.sample.sample_surface(mesh, n, seed=seed)
    return np.asarray(pts)


def point_distances(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Nearest-neighbour distances a→b (len a) and b→a (len b)."""
    return cKDTree(b).query(a)[0], cKDTree(a).query(b)[0]


def fscore(d_pred: np.ndarray, d_true: np.ndarray, dist: float) -> float:
    """F-score 2PR/(P+R) at distance ``dist`` from nearest distances pred → true (precision) and true → pred (recall)."""
    prec, rec = float((d_pred < dist).mean()), float((d_true < dist).mean())
    return 0.0 if prec + rec == 0 else 2 * prec * rec / (prec + rec)


def geometry_scores(
    pred: trimesh.Trimesh | trimesh.Scene,
    true: trimesh.Trimesh | trimesh.Scene,
    n: int = 30000,
    taus: tuple[float, ...] = (0.01, 0.02),
    seed: int = 0,
) -> GeometryScores:
    """Chamfer-L1 and F-score@τ of ``pred`` against ``true`` from ``n`` surface samples each.

    F-score@τ = 2PR/(P+R), precision P = share of predicted points within τ·diag of the true surface
    samples, recall R = the converse; diag = bounding-box diagonal of ``true``.
    """
    p, t = sample_surface(pred, n, seed), sample_surface(true, n, seed + 1)
    d_pt, d_tp = point_distances(p, t)
    scale = float(np.linalg.norm(np.ptp(t, axis=0)))
    fs = {tau: fscore(d_pt, d_tp, tau * scale) for tau in taus}
    return GeometryScores(chamfer_l1=float(0.5 * (d_pt.mean() + d_tp.mean())), fscore=fs, scale=scale)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR in dB between float images in [0, 1] (any matching shape)."""
    mse = float(np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2))
    return float(10.0 * np.log10(1.0 / max(mse, 1e-12)))


def ssim(a: np.ndarray, b: np.ndarray, window: int = 11, sigma: float = 1.5) -> float:
    """Mean SSIM (Wang et al. 2004: Gaussian window 11, σ 1.5, K1 0.01, K2 0.03) of images (..., H, W, C) in [0, 1]."""
    x = torch.from_numpy(np.asarray(a, np.float64)).reshape(-1, *np.shape(a)[-3:]).permute(0, 3, 1, 2)
    y = torch.from_numpy(np.asarray(b, np.float64)).reshape(-1, *np.shape(b)[-3:]).permute(0, 3, 1, 2)
    c = x.shape[1]
    g = torch.exp(-((torch.arange(window, dtype=torch.float64) - window // 2) ** 2) / (2 * sigma**2))
    g = g / g.sum()
    k = (g[:, None] * g[None, :]).expand(c, 1, window, window)

    def blur(z: torch.Tensor) -> torch.Tensor:
        return F.conv2d(z, k, groups=c)  # valid padding, as in the reference implementation

    mx, my = blur(x), blur(y)
    sxx, syy, sxy = blur(x * x) - mx**2, blur(y * y) - my**2, blur(x * y) - mx * my
    c1, c2 = 0.01**2, 0.03**2
    s = ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx**2 + my**2 + c1) * (sxx + syy + c2))
    return float(s.mean())

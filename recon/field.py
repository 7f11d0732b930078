"""A signed-distance field on a dense voxel grid, rendered NeuS-style, in plain torch.

Two grids over an axis-aligned box with cubic voxels: the signed distance to the surface (1 channel, world
units, negative inside) and colour logits (3 channels, view-independent: the texture is too). Both are
sampled trilinearly with ``grid_sample`` (``align_corners=True``: grid point k sits at ``lo + k * voxel``).

Rendering a ray (``render``) has two passes. A gradient-free search steps one voxel at a time from the box
entry and finds where the ray first crosses the zero level (or, for a ray that misses, where it passes
closest to the surface). Then ``n_samples + 1`` points spaced ``step`` apart around that place are composited
with NeuS's unbiased opacity (Wang et al. 2021, eq. 13): for consecutive samples with distances f_k, f_{k+1},
α_k = max((Φ_s(f_k) - Φ_s(f_{k+1})) / Φ_s(f_k), 0), Φ_s = sigmoid(s·), colour at the midpoints. Every ray has
the same number of samples, so a batch is one dense (B, S) tensor: no packing, no host syncs, and the work
is a few large kernels on a GPU. The surface is always a closed level set, so the mesh is watertight.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


def neus_alpha(sdf: torch.Tensor, inv_s: float | torch.Tensor) -> torch.Tensor:
    """Distances at S+1 consecutive samples (B, S+1) → opacity of the S intervals between them (B, S)."""
    cdf = torch.sigmoid(sdf * inv_s)
    prev, nxt = cdf[:, :-1], cdf[:, 1:]
    return ((prev - nxt) / prev.clamp_min(1e-6)).clamp(0.0, 1.0)


def composite(alpha: torch.Tensor) -> torch.Tensor:
    """Opacities (B, S) front to back → weights w_k = α_k Π_{j<k} (1 - α_j) (B, S)."""
    trans = torch.cumprod(torch.cat([torch.ones_like(alpha[:, :1]), 1.0 - alpha[:, :-1] + 1e-10], 1), 1)
    return alpha * trans


class SDFField(nn.Module):
    """Signed distance + RGB grids over the box [lo, lo + (n - 1) * voxel] (grids stored (1, C, Z, Y, X))."""

    def __init__(self, lo: np.ndarray, voxel: float, shape_xyz: tuple[int, int, int], sdf_init: torch.Tensor | None = None):
        super().__init__()
        nx, ny, nz = (int(v) for v in shape_xyz)
        self.register_buffer("lo", torch.as_tensor(np.asarray(lo, dtype=np.float32)))
        self.voxel = float(voxel)
        sdf = torch.full((1, 1, nz, ny, nx), 4.0 * voxel) if sdf_init is None else sdf_init.reshape(1, 1, nz, ny, nx).float()
        self.sdf = nn.Parameter(sdf)
        self.rgb = nn.Parameter(torch.zeros(1, 3, nz, ny, nx))

    # ---------------------------------------------------------------- geometry of the grid
    @property
    def shape_xyz(self) -> tuple[int, int, int]:
        z, y, x = self.sdf.shape[2:]
        return x, y, z

    @property
    def hi(self) -> torch.Tensor:
        n = torch.tensor(self.shape_xyz, dtype=self.lo.dtype, device=self.lo.device)
        return self.lo + (n - 1) * self.voxel

    def grid_points(self) -> torch.Tensor:
        """(Z, Y, X, 3) world coordinates of every grid point."""
        x, y, z = self.shape_xyz
        axes = [self.lo[i] + torch.arange(n, device=self.lo.device, dtype=self.lo.dtype) * self.voxel for i, n in enumerate((x, y, z))]
        gz, gy, gx = torch.meshgrid(axes[2], axes[1], axes[0], indexing="ij")
        return torch.stack([gx, gy, gz], -1)

    def _sample(self, grid: torch.Tensor, pts: torch.Tensor) -> torch.Tensor:
        """Trilinear samples (P, C) of a (1, C, Z, Y, X) grid at world points (P, 3); outside: border value."""
        g = ((pts - self.lo) / (self.hi - self.lo) * 2.0 - 1.0).reshape(1, 1, 1, -1, 3).to(grid.dtype)
        out = F.grid_sample(grid, g, mode="bilinear", padding_mode="border", align_corners=True)  # (1, C, 1, 1, P)
        return out.reshape(grid.shape[1], -1).t()

    def distance(self, pts: torch.Tensor) -> torch.Tensor:
        """(P,) signed distance at world points (P, 3)."""
        return self._sample(self.sdf, pts)[:, 0]

    def color(self, pts: torch.Tensor) -> torch.Tensor:
        """(P, 3) RGB in [0, 1]."""
        return torch.sigmoid(self._sample(self.rgb, pts))

    # ---------------------------------------------------------------- rendering
    @torch.no_grad()
    def first_crossing(self, o: torch.Tensor, d: torch.Tensor, near: torch.Tensor, far: torch.Tensor, n_steps: int = 40) -> torch.Tensor:
        """Distance t (B,) along each ray to its first zero crossing, else to where it passed closest to
        the surface. Sphere tracing from the box entry (steps of the distance, at least half a voxel), the
        crossing then placed linearly between the last two samples."""
        min_step = 0.5 * self.voxel
        t, t_prev = near.clone(), near.clone()
        f_prev = torch.full_like(near, 1e9)
        best_t, best_f = near.clone(), torch.full_like(near, 1e9)
        hit = torch.zeros_like(near, dtype=torch.bool)
        for k in range(n_steps):
            if k % 8 == 7 and o.device.type == "cpu" and not bool((~hit & (t <= far)).any()):
                break  # every ray has crossed or left the box (tested on the CPU only: on a GPU it would sync)
            f = self.distance(o + d * t[:, None])
            active = ~hit & (t <= far)
            closer = active & (f < best_f)
            best_f, best_t = torch.where(closer, f, best_f), torch.where(closer, t, best_t)
            crossed = active & (f < 0)
            frac = (f_prev / (f_prev - f).clamp_min(1e-12)).clamp(0.0, 1.0)
            best_t = torch.where(crossed, t_prev + frac * (t - t_prev), best_t)
            hit |= crossed
            move = active & ~crossed
            t_prev, f_prev = torch.where(move, t, t_prev), torch.where(move, f, f_prev)
            t = torch.where(move, t + f.clamp_min(min_step), t)
        return best_t

    def render(
        self,
        o: torch.Tensor,
        d: torch.Tensor,
        inv_s: float | torch.Tensor,
        step: float,
        n_samples: int,
        before: float,
        bg: float = 1.0,
        jitter: bool = False,
        frozen: bool = False,
    ) -> dict[str, torch.Tensor]:
        """Render rays (B, 3) against a background of grey level ``bg``.

        ``n_samples`` intervals of length ``step`` starting ``before`` world units ahead of the first zero
        crossing (clamped to the box entry). Returns rgb (B, 3), acc (B,), depth (B,) (expected distance of
        the weights; the crossing where there is no weight), weights (B, S), sdf (B, S+1), t (B, S+1).
        ``frozen``: no gradient reaches the grids (only the rays, for camera refinement).
        """
        from mirage3d.recon.views import ray_aabb

        near, far = ray_aabb(o, d, self.lo, self.hi)
        t_c = self.first_crossing(o, d, near, far)
        start = torch.maximum(t_c - before, near)
        off = (
            torch.rand(o.shape[0], 1, device=o.device, dtype=o.dtype) if jitter else torch.full((o.shape[0], 1), 0.5, device=o.device, dtype=o.dtype)
        )
        t = start[:, None] + (torch.arange(n_samples + 1, device=o.device, dtype=o.dtype)[None] + off) * step  # (B, S+1)
        pts = o[:, None] + d[:, None] * t[..., None]
        grid = torch.cat([self.sdf, self.rgb], 1)
        both = self._sample(grid.detach() if frozen else grid, pts.reshape(-1, 3)).reshape(*t.shape, 4)  # one lookup
        sdf = both[..., 0]
        alpha = neus_alpha(sdf, inv_s)
        w = composite(alpha)  # (B, S)
        rgb_pt = torch.sigmoid(both[..., 1:])
        col = 0.5 * (rgb_pt[:, 1:] + rgb_pt[:, :-1])  # interval colour: mean of its two ends
        acc = w.sum(1)
        rgb = (w[..., None] * col).sum(1) + (1.0 - acc)[:, None] * bg
        tm = 0.5 * (t[:, 1:] + t[:, :-1])
        depth = torch.where(acc > 1e-4, (w * tm).sum(1) / acc.clamp_min(1e-4), t_c)
        return {"rgb": rgb, "acc": acc, "depth": depth, "weights": w, "sdf": sdf, "t": t}

    # ------------------------------------------------------------------ regularisers and resolution changes
    @torch.no_grad()
    def update_band(self, band: float) -> None:
        """Remember the grid points within ``band`` of the surface (not on the grid's border) for the regularisers."""
        g = self.sdf[0, 0]
        inner = torch.zeros_like(g, dtype=torch.bool)
        inner[1:-1, 1:-1, 1:-1] = g[1:-1, 1:-1, 1:-1].abs() < band
        self._band = torch.nonzero(inner.reshape(-1)).squeeze(1)

    def regularisers(self, max_points: int = 1 << 15) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Over (at most ``max_points`` random ones of) the grid points of the last ``update_band``: eikonal ``(|∇f| - 1)²``, squared Laplacian of
        f (in voxels) and colour total variation (squared forward differences of the logits).

        Central differences gathered at those points only: a smooth, valid distance near the surface keeps
        the level set smooth, sphere tracing safe and NeuS opacity calibrated.
        """
        idx = self._band
        if idx.numel() > max_points:  # a random subset each step: an unbiased estimate at a fraction of the cost
            idx = idx[torch.randint(0, idx.numel(), (max_points,), device=idx.device)]
        if idx.numel() == 0:
            zero = self.sdf.sum() * 0.0
            return zero, zero, zero
        _, _, _nz, ny, nx = self.sdf.shape
        offs = torch.tensor([0, 1, -1, nx, -nx, nx * ny, -nx * ny], device=idx.device)
        g = self.sdf.reshape(-1)[(idx[None] + offs[:, None]).reshape(-1)].reshape(7, -1)  # one gather: one gradient buffer
        c, xp, xm, yp, ym, zp, zm = g
        grad = torch.sqrt((xp - xm) ** 2 + (yp - ym) ** 2 + (zp - zm) ** 2 + 1e-12) / (2.0 * self.voxel)
        lap = (xp + xm + yp + ym + zp + zm - 6.0 * c) / self.voxel
        r = self.rgb.reshape(3, -1)[:, (idx[None] + offs[[0, 1, 3, 5], None]).reshape(-1)].reshape(3, 4, -1)
        tv = ((r[:, 1:] - r[:, :1]) ** 2).sum(1).mean()
        return ((grad - 1.0) ** 2).mean(), (lap * lap).mean(), tv

    @torch.no_grad()
    def resample(self, voxel: float) -> SDFField:
        """A new field on the same box with voxel size ``voxel``, both grids trilinearly resampled."""
        extent = (self.hi - self.lo).cpu().numpy()
        shape = tuple(int(round(e / voxel)) + 1 for e in extent)
        new = SDFField(self.lo.cpu().numpy(), voxel, shape).to(self.lo.device)
        pts = new.grid_points().reshape(-1, 3)
        new.sdf.copy_(self._sample(self.sdf, pts).t().reshape(new.sdf.shape))
        new.rgb.copy_(self._sample(self.rgb, pts).t().reshape(new.rgb.shape))
        return new

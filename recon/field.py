"""A dense voxel radiance field (DVGO / Plenoxels style) in plain torch, with volume rendering.

Two grids over an axis-aligned box with cubic voxels: raw density (1 channel) and colour logits
(3 channels, view-independent: the baked texture is view-independent anyway, and it halves the cost).
Both are sampled trilinearly with ``grid_sample`` (``align_corners=True``: grid point k sits at
``lo + k * voxel``). A boolean occupancy grid (from the visual hull, then pruned) skips empty space.

Density: σ = softplus(raw + shift) in units of "per voxel length", so a step of δ world units has
α = 1 - exp(-σ δ / voxel). ``shift`` makes raw = 0 mean α = ``alpha_init`` for a one-voxel step.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


def render_weights(tau: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Optical depths τ_i = σ_i δ_i (R, S) → weights w_i = T_i (1 - e^{-τ_i}) and transmittance T_i (R, S)."""
    excl = torch.cumsum(tau, dim=-1) - tau  # Σ_{j<i} τ_j
    trans = torch.exp(-excl)
    return trans * (1.0 - torch.exp(-tau)), trans


def segment_exclusive_cumsum(x: torch.Tensor, ray_id: torch.Tensor, n_rays: int) -> torch.Tensor:
    """Σ of the earlier entries of the same ray, for packed samples (P,) sorted by ray (then by t).

    One global cumsum in float64 minus the value at each ray's first sample: exact enough for the
    optical depths of a whole batch, and differentiable.
    """
    xd = x.double()
    excl = torch.cumsum(xd, 0) - xd
    counts = torch.bincount(ray_id, minlength=n_rays)
    first = torch.cumsum(counts, 0) - counts  # index of each ray's first sample
    return (excl - excl[first[ray_id]]).to(x.dtype)


def packed_weights(tau: torch.Tensor, ray_id: torch.Tensor, n_rays: int) -> torch.Tensor:
    """Packed version of :func:`render_weights`: (P,) optical depths → (P,) weights."""
    trans = torch.exp(-segment_exclusive_cumsum(tau, ray_id, n_rays))
    return trans * (1.0 - torch.exp(-tau))


def distortion_loss(w: torch.Tensor, t: torch.Tensor, delta: float | torch.Tensor, ray_id: torch.Tensor, n_rays: int) -> torch.Tensor:
    """mip-NeRF 360 distortion Σ_ij w_i w_j |t_i - t_j| + ⅓ Σ w_i² δ_i per ray, in O(P), averaged over rays.

    Packed samples (P,) sorted by ray then t; with t sorted, Σ_ij w_i w_j |t_i - t_j| =
    2 Σ_i w_i (t_i W_<i - S_<i) where W_<i = Σ_{j<i} w_j and S_<i = Σ_{j<i} w_j t_j.
    """
    w_before = segment_exclusive_cumsum(w, ray_id, n_rays)
    wt_before = segment_exclusive_cumsum(w * t, ray_id, n_rays)
    bi = 2.0 * (w * (t * w_before - wt_before)).sum()
    uni = (w * w * delta).sum() / 3.0
    return (bi + uni) / n_rays


class VoxelField(nn.Module):
    """Density + RGB voxel grids over the box [lo, lo + (n - 1) * voxel] (grids stored (1, C, Z, Y, X))."""

    def __init__(self, lo: np.ndarray, voxel: float, shape_xyz: tuple[int, int, int], occupancy: torch.Tensor | None = None,
                 alpha_init: float = 1e-2, density_init: torch.Tensor | None = None):
        super().__init__()
        nx, ny, nz = (int(v) for v in shape_xyz)
        self.register_buffer("lo", torch.as_tensor(np.asarray(lo, dtype=np.float32)))
        self.voxel = float(voxel)
        self.shift = math.log(1.0 / (1.0 - alpha_init) - 1.0)  # softplus(shift) = -log(1 - alpha_init)
        raw = torch.zeros(1, 1, nz, ny, nx) if density_init is None else density_init.reshape(1, 1, nz, ny, nx).float()
        self.density = nn.Parameter(raw)
        self.rgb = nn.Parameter(torch.zeros(1, 3, nz, ny, nx))
        occ = torch.ones(nz, ny, nx, dtype=torch.bool) if occupancy is None else occupancy.reshape(nz, ny, nx).bool()
        self.register_buffer("occupancy", occ)

    # ---------------------------------------------------------------- geometry of the grid
    @property
    def shape_xyz(self) -> tuple[int, int, int]:
        z, y, x = self.density.shape[2:]
        return x, y, z

    @property
    def hi(self) -> torch.Tensor:
        n = torch.tensor(self.shape_xyz, dtype=torch.float32, device=self.lo.device)
        return self.lo + (n - 1) * self.voxel

    def grid_points(self) -> torch.Tensor:
        """(Z, Y, X, 3) world coordinates of every grid point."""
        x, y, z = self.shape_xyz
        axes = [self.lo[i] + torch.arange(n, device=self.lo.device, dtype=torch.float32) * self.voxel for i, n in enumerate((x, y, z))]
        gz, gy, gx = torch.meshgrid(axes[2], axes[1], axes[0], indexing="ij")
        return torch.stack([gx, gy, gz], -1)

    def _normalise(self, pts: torch.Tensor) -> torch.Tensor:
        """World points (P, 3) → grid_sample coordinates in [-1, 1] (x, y, z order)."""
        return (pts - self.lo) / (self.hi - self.lo) * 2.0 - 1.0

    def _sample(self, grid: torch.Tensor, pts: torch.Tensor) -> torch.Tensor:
        g = self._normalise(pts).reshape(1, 1, 1, -1, 3)
        out = F.grid_sample(grid, g, mode="bilinear", padding_mode="border", align_corners=True)  # (1, C, 1, 1, P)
        return out.reshape(grid.shape[1], -1).t()  # (P, C)

    def occupied(self, pts: torch.Tensor, occupancy: torch.Tensor | None = None, return_index: bool = False):
        """(P,) bool: the point lies in the box and its nearest grid point is occupied (and that point's flat index)."""
        occupancy = self.occupancy if occupancy is None else occupancy
        idx = torch.round((pts - self.lo) / self.voxel).long()  # (P, 3) x, y, z
        x, y, z = self.shape_xyz
        inside = (idx >= 0).all(-1) & (idx[:, 0] < x) & (idx[:, 1] < y) & (idx[:, 2] < z)
        idx = torch.where(inside[:, None], idx, torch.zeros_like(idx))
        flat = (idx[:, 2] * y + idx[:, 1]) * x + idx[:, 0]
        hit = inside & occupancy.reshape(-1)[flat]
        return (hit, flat) if return_index else hit

    # ---------------------------------------------------------------- field queries
    def sigma(self, pts: torch.Tensor) -> torch.Tensor:
        """(P,) density per voxel length at world points."""
        return F.softplus(self._sample(self.density, pts)[:, 0] + self.shift)

    def color(self, pts: torch.Tensor) -> torch.Tensor:
        """(P, 3) RGB in [0, 1]."""
        return torch.sigmoid(self._sample(self.rgb, pts))

    def voxel_alpha(self) -> torch.Tensor:
        """(Z, Y, X) opacity of a one-voxel step at each grid point, zero where unoccupied."""
        a = 1.0 - torch.exp(-F.softplus(self.density[0, 0] + self.shift))
        return a * self.occupancy

    # ---------------------------------------------------------------- rendering
    def render(self, o: torch.Tensor, d: torch.Tensor, step: float, bg: float = 1.0, jitter: bool = False,
               weight_eps: float = 1e-4, cull_eps: float = 1e-3, max_t: float | None = None) -> dict[str, torch.Tensor]:
        """Volume-render rays (B, 3) against a background of grey level ``bg``.

        Samples every ``step`` world units between the ray's entry and exit of the box (jittered when
        training) and keeps only samples in occupied voxels, packed as (P,) sorted by ray then t.
        Samples behind surfaces (transmittance below ``cull_eps``) are dropped, and colour is evaluated
        only where the weight exceeds ``weight_eps``; ``max_t`` cuts rays short. Returns rgb (B, 3), acc (B,),
        depth (B,), and the packed weights / t / ray_id (P,) for ray losses.
        """
        from mirage3d.recon.views import ray_aabb

        n_rays = o.shape[0]
        near, far = ray_aabb(o, d, self.lo, self.hi)
        if max_t is not None:
            far = far.clamp_max(max_t)
        ray_id, ts, vox_id = self._march(o, d, near, far, step, jitter)
        if cull_eps > 0:
            # Early termination without sequential marching: the density at each sample's nearest grid
            # point (a gather, no interpolation, no gradient) finds samples hidden behind opaque
            # surfaces (T < cull_eps); they skip the expensive differentiable pass.
            with torch.no_grad():
                tau0 = F.softplus(self.density.detach().reshape(-1)[vox_id] + self.shift) * (step / self.voxel)
                visible = torch.exp(-segment_exclusive_cumsum(tau0, ray_id, n_rays)) > cull_eps
            ray_id, ts, vox_id = ray_id[visible], ts[visible], vox_id[visible]
        p = o[ray_id] + d[ray_id] * ts[:, None]  # (P, 3)
        tau = self.sigma(p) * (step / self.voxel)
        w = packed_weights(tau, ray_id, n_rays)
        acc = torch.zeros(n_rays, device=o.device, dtype=o.dtype).index_add(0, ray_id, w)
        sel = torch.nonzero(w.detach() > weight_eps).squeeze(1)
        rgb = torch.zeros(n_rays, 3, device=o.device, dtype=o.dtype).index_add(0, ray_id[sel], w[sel, None] * self.color(p[sel]))
        rgb = rgb + (1.0 - acc)[:, None] * bg
        depth = torch.zeros(n_rays, device=o.device, dtype=o.dtype).index_add(0, ray_id, w * ts)
        depth = depth + (1.0 - acc) * far.clamp_min(near)
        return {"rgb": rgb, "acc": acc, "depth": depth, "weights": w, "t": ts, "ray_id": ray_id, "vox_id": vox_id}

    @torch.no_grad()
    def _march(self, o: torch.Tensor, d: torch.Tensor, near: torch.Tensor, far: torch.Tensor, step: float, jitter: bool,
               k: int = 4) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Occupied samples along rays, packed and sorted: ray index, distance t, nearest grid point (P,).

        Two levels, to avoid testing every fine sample: segments of ``k`` steps are tested at their
        midpoints against the occupancy dilated by ``ceil(k * step / (2 voxel)) + 1`` voxels (so no
        occupied fine sample is missed), and only kept segments are split into fine samples.
        """
        n_rays = o.shape[0]
        diag = float((self.hi - self.lo).norm())
        seg = k * step
        n_seg = max(1, int(math.ceil(diag / seg)))
        j = torch.arange(n_seg, device=o.device, dtype=o.dtype)
        tc = near[:, None] + (j[None] + 0.5) * seg  # (B, n_seg) segment midpoints
        live = (tc - 0.5 * seg) < far[:, None]
        r = int(math.ceil(0.5 * seg / self.voxel)) + 1
        pts = o[:, None] + d[:, None] * tc[..., None]
        live &= self.occupied(pts.reshape(-1, 3), self.dilated(r)).reshape(tc.shape)
        seg_ray, seg_j = torch.nonzero(live, as_tuple=True)  # sorted by ray, then segment
        offs = torch.rand(n_rays, device=o.device)[seg_ray] if jitter else torch.full_like(seg_ray, 0.5, dtype=o.dtype)
        m = torch.arange(k, device=o.device, dtype=o.dtype)
        t = near[seg_ray, None] + (seg_j[:, None].to(o.dtype) * k + m[None] + offs[:, None]) * step  # (Q, k)
        ray = seg_ray[:, None].expand(-1, k)
        pts = o[ray] + d[ray] * t[..., None]
        occ, flat = self.occupied(pts.reshape(-1, 3), return_index=True)
        keep = (t < far[ray]) & occ.reshape(t.shape)
        return ray[keep], t[keep], flat.reshape(t.shape)[keep]

    def dilated(self, r: int) -> torch.Tensor:
        """Occupancy dilated by ``r`` voxels (L∞), cached until the occupancy changes."""
        key = (r, self.occupancy.data_ptr(), int(self.occupancy.sum()))
        if getattr(self, "_dil_key", None) != key:
            occ = self.occupancy[None, None].float()
            self._dil = F.max_pool3d(occ, 2 * r + 1, stride=1, padding=r)[0, 0] > 0.5
            self._dil_key = key
        return self._dil

    # ------------------------------------------------------------------ regularisers and resolution changes
    def total_variation(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean squared differences between neighbouring grid points: (density TV, colour TV)."""

        def tv(g: torch.Tensor) -> torch.Tensor:
            return ((g[:, :, 1:] - g[:, :, :-1]).pow(2).mean() + (g[:, :, :, 1:] - g[:, :, :, :-1]).pow(2).mean()
                    + (g[..., 1:] - g[..., :-1]).pow(2).mean())

        return tv(self.density), tv(self.rgb)

    @torch.no_grad()
    def resample(self, voxel: float, occupancy_fn) -> VoxelField:
        """A new field on the same box with voxel size ``voxel``, grids trilinearly resampled.

        ``occupancy_fn(points (Z, Y, X, 3)) -> bool (Z, Y, X)`` gives the new occupancy (e.g. the hull).
        """
        extent = (self.hi - self.lo).cpu().numpy()
        shape = tuple(int(round(e / voxel)) + 1 for e in extent)
        new = VoxelField(self.lo.cpu().numpy(), voxel, shape, None).to(self.lo.device)
        new.shift = self.shift
        pts = new.grid_points().reshape(-1, 3)
        new.density.copy_(self._sample(self.density, pts).t().reshape(new.density.shape))
        new.rgb.copy_(self._sample(self.rgb, pts).t().reshape(new.rgb.shape))
        new.occupancy = occupancy_fn(new.grid_points()).to(self.lo.device)
        return new

"""Fitting the voxel radiance field to the views: visual hull, coarse-to-fine grids, camera refinement."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from mirage3d.errors import InputError
from mirage3d.devices import resolve_device
from mirage3d.recon.config import ReconConfig
from mirage3d.recon.field import VoxelField, distortion_loss
from mirage3d.recon.views import ViewSet, generate_rays, pixel_centres, ray_aabb, se3_exp

Progress = Callable[[int, int, dict[str, float]], None]


@dataclass
class FitResult:
    """A fitted field, the per-view camera corrections (camera-to-world, refined) and training numbers."""

    field: VoxelField
    c2w: np.ndarray  # (N, 4, 4) cameras used at the end (refined if asked)
    psnr: float  # on the training views, over pixels whose ray meets the box
    history: list[dict[str, float]] = field(default_factory=list)
    step_ratio: float = 0.5

    def render(self, c2w: np.ndarray, K: np.ndarray, h: int, w: int) -> np.ndarray:
        """RGBA (N, h, w, 4) float32 in [0, 1] of the fitted field at cameras ``c2w`` (N, 4, 4) with intrinsics ``K``;
        colour on white, alpha = opacity."""
        rgb, acc = render_views(self.field, torch.as_tensor(np.asarray(c2w)), torch.as_tensor(np.asarray(K)), h, w, self.step_ratio)
        return torch.cat([rgb, acc[..., None]], dim=-1).numpy().astype(np.float32)


# --------------------------------------------------------------------------------------------------
# Visual hull
# --------------------------------------------------------------------------------------------------
def carve(views: ViewSet, pts: torch.Tensor, dilate_px: int = 2, misses: int = 0, c2w: np.ndarray | None = None) -> torch.Tensor:
    """(P,) bool: points whose projection falls inside the (dilated) mask of all but ``misses`` views.

    A point projecting outside a view's image counts as outside that view's mask.
    """
    c2w = views.c2w if c2w is None else c2w
    h, w = views.hw
    mask = torch.from_numpy(views.rgba[..., 3] > 0.5).float()[:, None]  # (N, 1, H, W)
    if dilate_px > 0:
        mask = F.max_pool2d(mask, 2 * dilate_px + 1, stride=1, padding=dilate_px)
    mask = (mask[:, 0] > 0.5).reshape(views.n, -1)  # (N, H*W)
    p = pts.detach().cpu().float()
    # World → pixel for all views at once: (N, 3, 4) projection = K · w2c (OpenGL: z_cam = -depth).
    w2c = torch.from_numpy(np.linalg.inv(c2w)[:, :3]).float()  # (N, 3, 4)
    flip = torch.tensor([1.0, -1.0, -1.0])  # OpenGL → OpenCV camera axes
    P = torch.from_numpy(views.K).float() @ (flip[:, None] * w2c)  # (N, 3, 4)
    outside = torch.zeros(p.shape[0], dtype=torch.int32)
    for i in range(views.n):
        q = p @ P[i, :, :3].T + P[i, :, 3]  # (P, 3): (u z, v z, z)
        z = q[:, 2]
        zs = z.clamp_min(1e-9)
        u, v = torch.floor(q[:, 0] / zs).long(), torch.floor(q[:, 1] / zs).long()
        ok = (z > 1e-6) & (u >= 0) & (u < w) & (v >= 0) & (v < h)
        flat = torch.where(ok, v * w + u, torch.zeros_like(u))
        outside += (~(ok & mask[i][flat])).int()
    return outside <= misses


def scene_box(views: ViewSet, cfg: ReconConfig, probe_res: int = 48) -> tuple[np.ndarray, np.ndarray]:
    """Axis-aligned box (lo, hi) around the object: the visual hull carved on a coarse probe grid.

    The probe region is a cube around the point nearest to all optical axes, sized so that a sphere of
    that radius is seen whole by the closest camera.
    """
    centres = views.c2w[:, :3, 3]
    axes = -views.c2w[:, :3, 2]
    # Least squares point nearest to all optical axes: Σ (I - a aᵀ) x = Σ (I - a aᵀ) c.
    A = sum(np.eye(3) - np.outer(a, a) for a in axes)
    b = sum((np.eye(3) - np.outer(a, a)) @ c for a, c in zip(axes, centres))
    centre = np.linalg.lstsq(A, b, rcond=None)[0] if np.linalg.matrix_rank(A) == 3 else centres.mean(0)
    h, w = views.hw
    half_fov = min(math.atan(0.5 * w / views.K[0, 0]), math.atan(0.5 * h / views.K[1, 1]))
    dist = np.linalg.norm(centres - centre, axis=1).min()
    r0 = dist * math.sin(half_fov)
    lin = torch.linspace(-r0, r0, probe_res, dtype=torch.float64)
    gx, gy, gz = torch.meshgrid(lin, lin, lin, indexing="ij")
    pts = torch.stack([gx, gy, gz], -1).reshape(-1, 3) + torch.from_numpy(centre)
    keep = carve(views, pts, cfg.hull_dilate_px, cfg.hull_misses) if cfg.hull else torch.ones(pts.shape[0], dtype=torch.bool)
    if not keep.any():
        raise InputError("the visual hull of the views is empty: the cameras in transforms.json do not agree with the masks "
                         "(try --refine-cameras with a larger hull tolerance, or check the camera convention)")
    kept = pts[keep].numpy()
    cell = 2 * r0 / (probe_res - 1)
    lo, hi = kept.min(0) - 2 * cell, kept.max(0) + 2 * cell
    return lo, hi


def hull_occupancy(views: ViewSet, cfg: ReconConfig) -> Callable[[torch.Tensor], torch.Tensor]:
    """A function grid points (Z, Y, X, 3) → occupancy (Z, Y, X): hull dilated by one voxel (or all True)."""

    def occ(grid_pts: torch.Tensor) -> torch.Tensor:
        shape = grid_pts.shape[:3]
        if not cfg.hull:
            return torch.ones(shape, dtype=torch.bool)
        keep = carve(views, grid_pts.reshape(-1, 3), cfg.hull_dilate_px, cfg.hull_misses).reshape(shape)
        return F.max_pool3d(keep[None, None].float(), 3, stride=1, padding=1)[0, 0] > 0.5

    return occ


# --------------------------------------------------------------------------------------------------
# Fitting
# --------------------------------------------------------------------------------------------------
def _level_voxel(extent: np.ndarray, res: int, frac: float) -> float:
    n = max(4, int(round(res * frac)))
    return float(extent.max() / (n - 1))


def fit_field(views: ViewSet, cfg: ReconConfig, progress: Progress | None = None) -> FitResult:
    """Fit a :class:`VoxelField` to ``views`` (white background, alpha as mask) and return it."""
    cfg.validate()
    device = resolve_device(cfg.device)
    threads = torch.get_num_threads()
    if device.type == "cpu" and cfg.cpu_threads > 0:
        torch.set_num_threads(cfg.cpu_threads)
    try:
        return _fit(views, cfg, device, progress)
    finally:
        torch.set_num_threads(threads)


def _fit(views: ViewSet, cfg: ReconConfig, device: torch.device, progress: Progress | None) -> FitResult:
    gen = torch.Generator().manual_seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    lo, hi = scene_box(views, cfg)
    extent = hi - lo
    occ_fn = hull_occupancy(views, cfg)

    # Pixel pool: every pixel whose (initial) ray meets the box. Others are background by construction.
    h, w = views.hw
    K = torch.from_numpy(views.K).float().to(device)
    uv_all = pixel_centres(h, w)  # (H*W, 2)
    c2w0 = torch.from_numpy(views.c2w).float()
    rgb_t = torch.from_numpy(views.rgb_on_white()).reshape(views.n, -1, 3)
    alpha_t = torch.from_numpy(views.rgba[..., 3]).reshape(views.n, -1)
    pool_view, pool_pix = [], []
    lo_t, hi_t = torch.from_numpy(lo).float(), torch.from_numpy(hi).float()
    for i in range(views.n):
        o, d = generate_rays(c2w0[i : i + 1].expand(uv_all.shape[0], 4, 4), uv_all, K.cpu())
        near, far = ray_aabb(o, d, lo_t, hi_t)
        pix = torch.nonzero(far > near).squeeze(1)
        pool_view.append(torch.full_like(pix, i))
        pool_pix.append(pix)
    pv, pp = torch.cat(pool_view), torch.cat(pool_pix)
    pool_uv = uv_all[pp].to(device)
    pool_rgb = rgb_t[pv, pp].to(device)
    pool_alpha = alpha_t[pv, pp].to(device)
    pool_view = pv.to(device)
    c2w0 = c2w0.to(device)

    def pool_rays(every: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
        c2w = c2w0[pool_view[::every]]
        if cfg.refine_cameras:
            c2w = c2w @ se3_exp(xi.detach()[pool_view[::every]])
        return generate_rays(c2w, pool_uv[::every], K)

    xi = torch.zeros(views.n, 6, device=device, requires_grad=True)
    cam_opt = torch.optim.Adam([xi], lr=cfg.lr_camera) if cfg.refine_cameras else None

    starts = [int(round(s * cfg.iters)) for s in cfg.level_starts]
    field: VoxelField | None = None
    opt: torch.optim.Optimizer | None = None
    history: list[dict[str, float]] = []
    for it in range(cfg.iters):
        if it in starts or field is None:
            level = max(i for i, s in enumerate(starts) if s <= it)
            voxel = _level_voxel(extent, cfg.res, cfg.res_levels[level])
            if field is None:
                shape = tuple(int(round(e / voxel)) + 1 for e in extent)
                field = VoxelField(lo, voxel, shape, None, cfg.alpha_init).to(device)
                occ = occ_fn(field.grid_points().cpu()).to(device)
                field.occupancy = occ
                with torch.no_grad():  # outside the hull: empty, so trilinear samples near its boundary fade out
                    field.density.masked_fill_(~occ[None, None], -10.0)
            else:
                # Keep only voxels some training ray saw (interior and floaters go), then refine the grid.
                prune_by_weights(field, *pool_rays(), cfg.step_ratio)
                old = field
                field = field.resample(voxel, lambda g: occ_fn(g) & old.occupied(g.reshape(-1, 3).to(old.lo.device), old.dilated(1)).reshape(g.shape[:3]).cpu())
            opt = torch.optim.Adam([{"params": [field.density], "lr": cfg.lr_density},
                                    {"params": [field.rgb], "lr": cfg.lr_color}], betas=(0.9, 0.99))
        assert field is not None and opt is not None
        decay = 0.1 ** (it / max(1, cfg.iters))
        opt.param_groups[0]["lr"] = cfg.lr_density * decay
        opt.param_groups[1]["lr"] = cfg.lr_color * decay

        idx = torch.randint(0, pool_uv.shape[0], (cfg.batch_rays,), generator=gen).to(device)
        vi = pool_view[idx]
        c2w = c2w0[vi]
        if cam_opt is not None:
            c2w = c2w @ se3_exp(xi[vi])
        o, d = generate_rays(c2w, pool_uv[idx], K)
        out = field.render(o, d, step=cfg.step_ratio * field.voxel, jitter=True)
        mse = F.mse_loss(out["rgb"], pool_rgb[idx])
        loss = mse + cfg.w_mask * F.mse_loss(out["acc"], pool_alpha[idx])
        if cfg.w_distortion > 0:
            span = float(np.linalg.norm(extent))
            step_n = cfg.step_ratio * field.voxel / span
            loss = loss + cfg.w_distortion * distortion_loss(out["weights"], out["t"] / span, step_n, out["ray_id"], o.shape[0])
        if cfg.w_tv_density > 0 or cfg.w_tv_color > 0:
            tv_d, tv_c = field.total_variation()
            loss = loss + cfg.w_tv_density * tv_d + cfg.w_tv_color * tv_c
        if cam_opt is not None:
            loss = loss + 1e-3 * xi.pow(2).sum()  # keep corrections small: the masks pin the gauge only loosely
        opt.zero_grad(set_to_none=True)
        if cam_opt is not None:
            cam_opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if cam_opt is not None and it >= cfg.camera_start * cfg.iters:
            cam_opt.step()

        if cfg.prune_every > 0 and it > 0 and it % cfg.prune_every == 0:
            with torch.no_grad():
                keep = F.max_pool3d((field.voxel_alpha() > cfg.prune_alpha)[None, None].float(), 3, stride=1, padding=1)[0, 0] > 0.5
                field.occupancy &= keep
        rec = {"loss": float(loss.detach()), "psnr": float(-10.0 * torch.log10(mse.detach().clamp_min(1e-10)))}
        history.append(rec)
        if progress is not None:
            progress(it + 1, cfg.iters, rec)

    assert field is not None
    c2w_final = c2w0 @ se3_exp(xi.detach()) if cfg.refine_cameras else c2w0
    psnr = training_psnr(field, views, c2w_final, K, cfg.step_ratio)
    return FitResult(field=field, c2w=c2w_final.cpu().double().numpy(), psnr=psnr, history=history, step_ratio=cfg.step_ratio)


@torch.no_grad()
def prune_by_weights(field: VoxelField, o: torch.Tensor, d: torch.Tensor, step_ratio: float, thresh: float = 1e-2,
                     chunk: int = 16384) -> None:
    """Keep (dilated by one voxel) only grid points that carry a weight above ``thresh`` on some ray.

    Plenoxels-style: removes the object's hidden interior and floaters that no view needs, so later
    rays march through far fewer samples. Mesh extraction fills the interior back (``extract_mesh``).
    """
    max_w = torch.zeros(field.occupancy.numel(), device=field.lo.device)
    for s in range(0, o.shape[0], chunk):
        out = field.render(o[s : s + chunk], d[s : s + chunk], step=step_ratio * field.voxel, cull_eps=1e-4)
        max_w.scatter_reduce_(0, out["vox_id"], out["weights"], reduce="amax")
    # Early in a short run every weight is small: then keep what carries a tenth of the largest weight.
    seen = (max_w > min(thresh, 0.1 * float(max_w.max()))).reshape(field.occupancy.shape)
    field.occupancy &= F.max_pool3d(seen[None, None].float(), 3, stride=1, padding=1)[0, 0] > 0.5


@torch.no_grad()
def render_views(field: VoxelField, c2w: torch.Tensor, K: torch.Tensor, h: int, w: int, step_ratio: float = 0.5,
                 chunk: int = 16384) -> tuple[torch.Tensor, torch.Tensor]:
    """Render full images (V, H, W, 3) on white and opacity (V, H, W) from the field."""
    device = field.lo.device
    uv = pixel_centres(h, w).to(device)
    rgbs, accs = [], []
    for i in range(c2w.shape[0]):
        o, d = generate_rays(c2w[i : i + 1].to(device).float().expand(uv.shape[0], 4, 4), uv, K.to(device).float())
        near, far = ray_aabb(o, d, field.lo, field.hi)
        hit = torch.nonzero(far > near).squeeze(1)
        rgb = torch.ones(uv.shape[0], 3, device=device)
        acc = torch.zeros(uv.shape[0], device=device)
        for s in range(0, hit.shape[0], chunk):
            j = hit[s : s + chunk]
            out = field.render(o[j], d[j], step=step_ratio * field.voxel)
            rgb[j], acc[j] = out["rgb"], out["acc"]
        rgbs.append(rgb.reshape(h, w, 3))
        accs.append(acc.reshape(h, w))
    return torch.stack(rgbs).cpu(), torch.stack(accs).cpu()


def training_psnr(field: VoxelField, views: ViewSet, c2w: torch.Tensor, K: torch.Tensor, step_ratio: float) -> float:
    """PSNR (dB) of field renders vs the training views on white, over whole images."""
    h, w = views.hw
    rgb, _ = render_views(field, c2w, K, h, w, step_ratio)
    mse = float(((rgb - torch.from_numpy(views.rgb_on_white())) ** 2).mean())
    return -10.0 * math.log10(max(mse, 1e-10))

"""Fitting the signed-distance field (and, if asked, the cameras) to the views.

Start: the visual hull of the masks (each point inside all but ``hull_misses`` views' dilated masks) as a
signed distance (Euclidean distance transform). Then coarse to fine (grid and image resolution rise
together), random batches of pixels, NeuS rendering (``field.SDFField.render``) on white, losses: colour,
opacity vs the views' alpha, eikonal and Laplacian on the grid, colour total variation. With
``refine_cameras`` the per-view corrections of ``cameras.CameraModel`` learn from the first step, and each
view's pixels are weighted by how well that view agrees with the others (robust to inconsistent views).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from mirage3d.devices import resolve_device
from mirage3d.errors import InputError
from mirage3d.recon.cameras import CameraModel
from mirage3d.recon.config import ReconConfig
from mirage3d.recon.field import SDFField
from mirage3d.recon.views import ViewSet, generate_rays, pixel_centres, ray_aabb

Progress = Callable[[int, int, dict[str, float]], None]


@dataclass
class FitResult:
    """A fitted field, the refined cameras and intrinsics, and training numbers."""

    field: SDFField
    c2w: np.ndarray  # (N, 4, 4) float64 cameras at the end (refined if asked)
    K: np.ndarray  # (3, 3) float64 intrinsics at the end (focal refined if asked)
    psnr: float  # field renders vs the training views on white, whole images (dB)
    config: ReconConfig
    history: list[dict[str, float]] = field(default_factory=list)

    def render(self, c2w: np.ndarray, K: np.ndarray, h: int, w: int, chunk: int = 1 << 15) -> np.ndarray:
        """Render the fitted surface at cameras ``c2w`` (N, 4, 4) with intrinsics ``K`` (3, 3).

        Returns (N, h, w, 4) float32 RGBA in [0, 1] (straight colour, alpha = opacity). Any number of calls.
        """
        rgb, acc = render_views(self.field, torch.as_tensor(np.asarray(c2w)), torch.as_tensor(np.asarray(K)), h, w, self.config, chunk)
        a = acc[..., None]
        straight = torch.where(a > 1e-4, (rgb - (1.0 - a)) / a.clamp_min(1e-4), torch.ones_like(rgb))
        return torch.cat([straight.clamp(0, 1), a.clamp(0, 1)], -1).numpy().astype(np.float32)


# --------------------------------------------------------------------------------------------------
# Visual hull and box
# --------------------------------------------------------------------------------------------------
def carve(views: ViewSet, pts: torch.Tensor, dilate_px: int = 2, misses: int = 0, c2w: np.ndarray | None = None,
          K: np.ndarray | None = None) -> torch.Tensor:
    """(P,) bool: points whose projection falls inside the (dilated) mask of all but ``misses`` views.

    A point projecting outside a view's image counts as outside that view's mask.
    """
    c2w = views.c2w if c2w is None else c2w
    K = views.K if K is None else K
    h, w = views.hw
    mask = torch.from_numpy(views.rgba[..., 3] > 0.5).float()[:, None]  # (N, 1, H, W)
    if dilate_px > 0:
        mask = F.max_pool2d(mask, 2 * dilate_px + 1, stride=1, padding=dilate_px)
    mask = (mask[:, 0] > 0.5).reshape(views.n, -1)  # (N, H*W)
    p = pts.detach().cpu().float()
    # World → pixel for all views at once: (N, 3, 4) projection = K · w2c (OpenGL: z_cam = -depth).
    w2c = torch.from_numpy(np.linalg.inv(c2w)[:, :3]).float()  # (N, 3, 4)
    flip = torch.tensor([1.0, -1.0, -1.0])  # OpenGL → OpenCV camera axes
    P = torch.from_numpy(np.asarray(K)).float() @ (flip[:, None] * w2c)  # (N, 3, 4)
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


def axes_centre(c2w: np.ndarray) -> np.ndarray:
    """The point nearest to all optical axes (least squares), or the mean camera centre if degenerate."""
    centres, axes = c2w[:, :3, 3], -c2w[:, :3, 2]
    A = sum(np.eye(3) - np.outer(a, a) for a in axes)
    b = sum((np.eye(3) - np.outer(a, a)) @ c for a, c in zip(axes, centres))
    return np.linalg.lstsq(A, b, rcond=None)[0] if np.linalg.matrix_rank(A) == 3 else centres.mean(0)


def scene_box(views: ViewSet, cfg: ReconConfig, probe_res: int = 48, margin: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Axis-aligned box (lo, hi) around the object: the visual hull carved on a coarse probe grid.

    The probe region is a cube around the point nearest to all optical axes, sized so that a sphere of
    that radius is seen whole by the closest camera. ``margin``: extra border, a fraction of the box size.
    """
    centre = axes_centre(views.c2w)
    centres = views.c2w[:, :3, 3]
    h, w = views.hw
    half_fov = min(math.atan(0.5 * w / views.K[0, 0]), math.atan(0.5 * h / views.K[1, 1]))
    r0 = np.linalg.norm(centres - centre, axis=1).min() * math.sin(half_fov)
    lin = torch.linspace(-r0, r0, probe_res, dtype=torch.float64)
    gx, gy, gz = torch.meshgrid(lin, lin, lin, indexing="ij")
    pts = torch.stack([gx, gy, gz], -1).reshape(-1, 3) + torch.from_numpy(centre)
    keep = carve(views, pts, cfg.hull_dilate_px, cfg.hull_misses) if cfg.hull else torch.ones(pts.shape[0], dtype=torch.bool)
    if not keep.any():
        raise InputError("the visual hull of the views is empty: the cameras in transforms.json do not agree with the masks "
                         "(try --refine-cameras with a larger --hull-misses, or check the camera convention)")
    kept = pts[keep].numpy()
    cell = 2 * r0 / (probe_res - 1)
    lo, hi = kept.min(0) - 2 * cell, kept.max(0) + 2 * cell
    pad = margin * (hi - lo)
    return lo - pad, hi + pad


def hull_sdf(field: SDFField, views: ViewSet, cfg: ReconConfig) -> torch.Tensor:
    """Signed distance (1, 1, Z, Y, X) to the visual hull sampled on the field's grid, lightly smoothed."""
    pts = field.grid_points().cpu().reshape(-1, 3)
    x, y, z = field.shape_xyz
    inside = carve(views, pts, cfg.hull_dilate_px, cfg.hull_misses).reshape(z, y, x).numpy() if cfg.hull else np.ones((z, y, x), bool)
    inside[[0, -1]] = False
    inside[:, [0, -1]] = False
    inside[:, :, [0, -1]] = False
    if not inside.any():
        raise InputError("the visual hull of the views is empty on the grid; check the cameras or raise --hull-misses")
    dist = ndimage.distance_transform_edt(~inside) - ndimage.distance_transform_edt(inside) + 0.5
    dist = ndimage.gaussian_filter(dist.astype(np.float32), 1.0)
    return torch.from_numpy(dist * field.voxel)[None, None]


# --------------------------------------------------------------------------------------------------
# Fitting
# --------------------------------------------------------------------------------------------------
def fit_field(views: ViewSet, cfg: ReconConfig, progress: Progress | None = None) -> FitResult:
    """Fit an :class:`SDFField` (and the cameras, with ``cfg.refine_cameras``) to ``views``."""
    cfg.validate()
    device = resolve_device(cfg.device)
    threads = torch.get_num_threads()
    if device.type == "cpu" and cfg.cpu_threads > 0:
        torch.set_num_threads(cfg.cpu_threads)
    try:
        return _fit(views, cfg, device, progress)
    finally:
        torch.set_num_threads(threads)


class PixelPool:
    """The training pixels at one image scale: every pixel whose initial ray meets the box (others are
    background by construction), with colours on white, alpha and view index, on ``device``."""

    def __init__(self, views: ViewSet, scale: float, lo: np.ndarray, hi: np.ndarray, margin: float, device: torch.device):
        h, w = views.hw
        hs, ws = max(4, int(round(h * scale))), max(4, int(round(w * scale)))
        rgba = torch.from_numpy(views.rgba).permute(0, 3, 1, 2)  # (N, 4, H, W)
        prem = torch.cat([rgba[:, :3] * rgba[:, 3:], rgba[:, 3:]], 1)
        if (hs, ws) != (h, w):
            prem = F.interpolate(prem, size=(hs, ws), mode="area")
        a = prem[:, 3]
        rgb = prem[:, :3] + (1.0 - a[:, None])  # on white
        self.K = views.K.copy()
        self.K[0] *= ws / w
        self.K[1] *= hs / h
        self.hw = (hs, ws)
        uv_all = pixel_centres(hs, ws)
        K_t = torch.from_numpy(self.K).float()
        c2w = torch.from_numpy(views.c2w).float()
        pad = torch.from_numpy(margin * (hi - lo)).float()
        lo_t, hi_t = torch.from_numpy(lo).float() - pad, torch.from_numpy(hi).float() + pad
        vs, ps = [], []
        for i in range(views.n):
            o, d = generate_rays(c2w[i : i + 1].expand(uv_all.shape[0], 4, 4), uv_all, K_t)
            near, far = ray_aabb(o, d, lo_t, hi_t)
            pix = torch.nonzero(far > near).squeeze(1)
            vs.append(torch.full_like(pix, i))
            ps.append(pix)
        v, p = torch.cat(vs), torch.cat(ps)
        self.view = v.to(device)
        self.uv = uv_all[p].to(device)
        self.rgb = rgb.permute(0, 2, 3, 1).reshape(views.n, -1, 3)[v, p].to(device)
        self.alpha = a.reshape(views.n, -1)[v, p].to(device)
        self.size = int(v.shape[0])


def _levels(cfg: ReconConfig) -> list[int]:
    return [int(round(s * cfg.iters)) for s in cfg.level_starts]


def level_voxel(extent: np.ndarray, res: int, frac: float) -> float:
    n = max(8, int(round(res * frac)))
    return float(extent.max() / (n - 1))


def sharpness(cfg: ReconConfig, it: int, voxel: float, final_voxel: float) -> float:
    """NeuS inverse standard deviation s at step ``it``: the surface's transition width goes geometrically
    from ``width_start`` voxels of the current level to ``width_end`` voxels of the finest level."""
    f = it / max(1, cfg.iters - 1)
    width = (cfg.width_start * voxel) ** (1 - f) * (cfg.width_end * final_voxel) ** f
    return 1.0 / width


def _fit(views: ViewSet, cfg: ReconConfig, device: torch.device, progress: Progress | None) -> FitResult:
    gen = torch.Generator().manual_seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    lo, hi = scene_box(views, cfg, margin=cfg.box_margin)
    extent = hi - lo
    final_voxel = level_voxel(extent, cfg.res, cfg.res_levels[-1])
    cams = CameraModel(views.c2w, views.K, 0.5 * (lo + hi), views.reference if cfg.refine_cameras else None,
                       cfg.refine_cameras and cfg.shared_elevation, cfg.refine_cameras and cfg.shared_focal).to(device)
    cam_opt = torch.optim.Adam(cams.parameters_to_learn(), lr=cfg.lr_camera) if cfg.refine_cameras else None
    pools: dict[float, PixelPool] = {}
    starts = _levels(cfg)
    view_err = torch.ones(views.n, device=device)  # running mean squared error per view (robust weights)
    fld: SDFField | None = None
    opt: torch.optim.Optimizer | None = None
    history: list[dict[str, float]] = []
    rec: dict[str, float] = {}
    for it in range(cfg.iters):
        if it in starts or fld is None:
            level = max(i for i, s in enumerate(starts) if s <= it)
            voxel = level_voxel(extent, cfg.res, cfg.res_levels[level])
            scale = cfg.image_scales[level]
            if scale not in pools:
                pools[scale] = PixelPool(views, scale, lo, hi, 0.0, device)
            pool = pools[scale]
            if fld is None:
                shape = tuple(int(round(e / voxel)) + 1 for e in extent)
                fld = SDFField(lo, voxel, shape).to(device)
                with torch.no_grad():
                    fld.sdf.copy_(hull_sdf(fld, views, cfg).to(device))
            else:
                fld = fld.resample(voxel)
            opt = torch.optim.Adam([{"params": [fld.sdf], "lr": cfg.lr_sdf * voxel},
                                    {"params": [fld.rgb], "lr": cfg.lr_color}], betas=(0.9, 0.99))
            lr0 = [cfg.lr_sdf * voxel, cfg.lr_color]
        assert fld is not None and opt is not None
        decay = 0.1 ** (it / max(1, cfg.iters))
        for g, l0 in zip(opt.param_groups, lr0):
            g["lr"] = l0 * decay
        inv_s = sharpness(cfg, it, fld.voxel, final_voxel)

        idx = torch.randint(0, pool.size, (cfg.batch_rays,), generator=gen).to(device)
        vi = pool.view[idx]
        c2w_all, K = cams()
        K_lvl = K * torch.tensor([[pool.hw[1] / views.hw[1]], [pool.hw[0] / views.hw[0]], [1.0]], device=device)
        o, d = generate_rays(c2w_all[vi], pool.uv[idx], K_lvl)
        out = fld.render(o, d, inv_s, cfg.step_ratio * fld.voxel, cfg.n_samples, cfg.window_before * fld.voxel, jitter=True)
        err_rgb = (out["rgb"] - pool.rgb[idx]).pow(2).mean(-1)
        err_a = (out["acc"] - pool.alpha[idx]).pow(2)
        per_px = err_rgb + cfg.w_mask * err_a  # (B,)
        if cfg.refine_cameras and cfg.robust:
            with torch.no_grad():  # views the others contradict (high error) count less: w = 1 / (1 + e / median e)
                e = torch.zeros(views.n, device=device).index_add_(0, vi, per_px.detach())
                cnt = torch.bincount(vi, minlength=views.n).clamp_min(1)
                view_err.mul_(0.9).add_(0.1 * e / cnt)
                wv = 1.0 / (1.0 + view_err / view_err.median().clamp_min(1e-8))
                wv = wv / wv.mean()
            data = (per_px * wv[vi]).mean()
        else:
            data = per_px.mean()
        eik, lap = fld.regularisers(cfg.reg_band * fld.voxel)
        loss = data + cfg.w_eikonal * eik + cfg.w_laplacian * lap + cfg.w_tv_color * fld.color_tv()
        opt.zero_grad(set_to_none=True)
        if cam_opt is not None:
            cam_opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if cam_opt is not None and it >= cfg.camera_start * cfg.iters:
            for g in cam_opt.param_groups:
                g["lr"] = cfg.lr_camera * g["scale"] * (0.1 ** (it / max(1, cfg.iters)))
            cam_opt.step()
            cams.fix_gauge()
        if it % 20 == 0 or it == cfg.iters - 1:
            mse = float(err_rgb.detach().mean())
            rec = {"step": float(it), "loss": float(loss.detach()), "psnr": -10.0 * math.log10(max(mse, 1e-10)),
                   "eikonal": float(eik.detach())}
            if cam_opt is not None:
                rec.update(rot_deg=float(cams.omega.detach().norm(dim=-1).mean()) * 180 / math.pi,
                           shift=float(cams.rho.detach().norm(dim=-1).mean()), elev_deg=float(cams.d_elev) * 180 / math.pi,
                           focal=float(cams.log_f.exp()))
            history.append(rec)
        if progress is not None:
            progress(it + 1, cfg.iters, rec)

    assert fld is not None
    with torch.no_grad():
        c2w_final, K_final = cams()
    result = FitResult(field=fld, c2w=c2w_final.cpu().double().numpy(), K=K_final.cpu().double().numpy(), psnr=float("nan"),
                       config=cfg, history=history)
    result.psnr = training_psnr(result, views)
    return result


@torch.no_grad()
def render_views(fld: SDFField, c2w: torch.Tensor, K: torch.Tensor, h: int, w: int, cfg: ReconConfig,
                 chunk: int = 1 << 15) -> tuple[torch.Tensor, torch.Tensor]:
    """Render full images: colour on white (V, H, W, 3) and opacity (V, H, W), on the CPU."""
    device = fld.lo.device
    uv = pixel_centres(h, w).to(device)
    inv_s = 1.0 / (cfg.width_end * fld.voxel)
    rgbs, accs = [], []
    for i in range(c2w.shape[0]):
        o, d = generate_rays(c2w[i : i + 1].to(device).float().expand(uv.shape[0], 4, 4), uv, K.to(device).float())
        near, far = ray_aabb(o, d, fld.lo, fld.hi)
        hit = torch.nonzero(far > near).squeeze(1)
        rgb = torch.ones(uv.shape[0], 3, device=device)
        acc = torch.zeros(uv.shape[0], device=device)
        for s in range(0, hit.shape[0], chunk):
            j = hit[s : s + chunk]
            out = fld.render(o[j], d[j], inv_s, cfg.step_ratio * fld.voxel, cfg.n_samples, cfg.window_before * fld.voxel)
            rgb[j], acc[j] = out["rgb"], out["acc"]
        rgbs.append(rgb.reshape(h, w, 3))
        accs.append(acc.reshape(h, w))
    return torch.stack(rgbs).cpu(), torch.stack(accs).cpu()


def training_psnr(fit: FitResult, views: ViewSet) -> float:
    """PSNR (dB) of field renders at the (refined) training cameras vs the views on white, whole images."""
    h, w = views.hw
    rgb, _ = render_views(fit.field, torch.from_numpy(fit.c2w), torch.from_numpy(fit.K), h, w, fit.config)
    mse = float(((rgb - torch.from_numpy(views.rgb_on_white())) ** 2).mean())
    return -10.0 * math.log10(max(mse, 1e-10))

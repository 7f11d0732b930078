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
from dataclasses import dataclass, field, replace

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from mirage3d.devices import resolve_device
from mirage3d.errors import InputError
from mirage3d.recon.cameras import CameraModel, GroupAdam, aim_at_silhouettes, silhouette_agreement, silhouette_coherence
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

    def align(self, views: ViewSet, iters: int = 150, lr: float = 3e-3, batch_rays: int = 4096, seed: int = 0) -> np.ndarray:
        """Cameras (N, 4, 4) of ``views`` (their ``c2w`` as the starting guess) registered to the fitted surface.

        The field is held fixed and only the cameras learn (rotation about the object, shift; not the shared
        elevation and focal length), so views that did not shape the field, e.g. new views of the same
        object, are placed by the surface alone; ``views.reference`` stays where it is.
        """
        fld, device = self.field, self.field.lo.device
        lo, hi = fld.lo.cpu().numpy(), fld.hi.cpu().numpy()
        cams = CameraModel(views.c2w, views.K, 0.5 * (lo + hi), views.reference).to(device)
        opt = GroupAdam(cams.parameters_to_learn(), lr=lr)
        pool = PixelPool(views, 1.0, lo, hi, 0.0, device)
        gen = torch.Generator().manual_seed(seed)
        inv_s = 1.0 / (self.config.width_end * fld.voxel)
        for it in range(iters):
            idx = pool.sample(batch_rays, gen)
            c2w, K = cams()
            o, d = generate_rays(c2w[pool.view[idx]], pool.uv[idx], K)
            out = fld.render(
                o,
                d,
                inv_s,
                self.config.step_ratio * fld.voxel,
                self.config.n_samples,
                self.config.window_before * fld.voxel,
                jitter=True,
                frozen=True,
            )
            loss = (out["rgb"] - pool.rgb[idx]).pow(2).mean() + self.config.w_mask * (out["acc"] - pool.alpha[idx]).pow(2).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            for g in opt.param_groups:
                g["lr"] = lr * g["scale"] * 0.1 ** (it / max(1, iters))
            opt.step()
        with torch.no_grad():
            return cams()[0].cpu().double().numpy()


# --------------------------------------------------------------------------------------------------
# Visual hull and box
# --------------------------------------------------------------------------------------------------
def carve(
    views: ViewSet,
    pts: torch.Tensor,
    dilate_px: int = 2,
    misses: int = 0,
    c2w: np.ndarray | None = None,
    K: np.ndarray | None = None,
    chunk: int = 1 << 20,
) -> torch.Tensor:
    """(P,) bool: points whose projection falls inside the (dilated) mask of all but ``misses`` views
    (``misses`` < 0: 0 when ``views`` has a reference view, else chosen by :func:`auto_misses`).

    The mask is the views' alpha sampled bilinearly at the projection (> 0.5: the silhouette to a fraction
    of a pixel); a point projecting outside a view's image counts as outside that view's mask.
    """
    outside = outside_counts(views, pts, dilate_px, c2w, K, chunk)
    if misses < 0:  # generated views (they have a reference): every silhouette carves; else the volume rule
        misses = 0 if views.reference is not None else auto_misses(outside, views.n)
    return outside <= misses


def auto_misses(outside: torch.Tensor, n_views: int, ratio: float = 0.85) -> int:
    """The fewest misses m whose hull holds at least ``ratio`` of the volume of the m + 1 hull (at most n/3).

    With consistent views the hull barely grows when one more miss is allowed (m = 0); when cameras are
    off, each view cuts a slice off the others' hull and allowing misses restores much of it.
    """
    vol = torch.bincount(outside.clamp_max(n_views).long(), minlength=n_views + 2).cumsum(0).double()
    for m in range(max(1, n_views // 3)):
        if vol[m] >= ratio * vol[m + 1]:
            return m
    return max(1, n_views // 3)


def outside_counts(
    views: ViewSet, pts: torch.Tensor, dilate_px: int = 2, c2w: np.ndarray | None = None, K: np.ndarray | None = None, chunk: int = 1 << 20
) -> torch.Tensor:
    """(P,) int: for each point, the number of views whose (dilated) mask it falls outside of."""
    c2w = views.c2w if c2w is None else c2w
    K = views.K if K is None else K
    h, w = views.hw
    dev = pts.device
    alpha = torch.from_numpy(views.rgba[..., 3]).float()[:, None].to(dev)  # (N, 1, H, W)
    if dilate_px > 0:
        alpha = F.max_pool2d(alpha, 2 * dilate_px + 1, stride=1, padding=dilate_px)
    p = pts.detach().float()
    # World → pixel for all views at once: (N, 3, 4) projection = K · w2c (OpenGL: z_cam = -depth).
    w2c = torch.from_numpy(np.linalg.inv(c2w)[:, :3]).float()  # (N, 3, 4)
    flip = torch.tensor([1.0, -1.0, -1.0])  # OpenGL → OpenCV camera axes
    P = (torch.from_numpy(np.asarray(K)).float() @ (flip[:, None] * w2c)).to(dev)  # (N, 3, 4)
    outside = torch.zeros(p.shape[0], dtype=torch.int32, device=dev)
    for s in range(0, p.shape[0], chunk):
        q = torch.einsum("pk,nik->npi", p[s : s + chunk], P[:, :, :3]) + P[:, None, :, 3]  # (N, P, 3): (u z, v z, z)
        z = q[..., 2].clamp_min(1e-9)
        g = torch.stack([q[..., 0] / z / w * 2 - 1, q[..., 1] / z / h * 2 - 1], -1)[:, :, None]  # (N, P, 1, 2)
        a = F.grid_sample(alpha, g, mode="bilinear", padding_mode="zeros", align_corners=False)[:, 0, :, 0]  # (N, P)
        outside[s : s + chunk] = ((a <= 0.5) | (q[..., 2] <= 1e-6)).sum(0).int()
    return outside


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
        raise InputError(
            "the visual hull of the views is empty: the cameras in transforms.json do not agree with the masks "
            "(try --refine-cameras with a larger --hull-misses, or check the camera convention)"
        )
    kept = pts[keep.cpu()].numpy()
    cell = 2 * r0 / (probe_res - 1)
    lo, hi = kept.min(0) - 2 * cell, kept.max(0) + 2 * cell
    pad = margin * (hi - lo)
    return lo - pad, hi + pad


def hull_sdf(field: SDFField, views: ViewSet, cfg: ReconConfig) -> torch.Tensor:
    """Signed distance (1, 1, Z, Y, X) to the visual hull sampled on the field's grid, lightly smoothed."""
    pts = field.grid_points().reshape(-1, 3)  # on the field's device
    x, y, z = field.shape_xyz
    inside = carve(views, pts, cfg.hull_dilate_px, cfg.hull_misses).reshape(z, y, x).cpu().numpy() if cfg.hull else np.ones((z, y, x), bool)
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
    if views.n < 2:  # one view bounds nothing along its rays: the probe box would have no size
        raise InputError(f"reconstruction needs at least 2 views, got {views.n}")
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

    def sample(self, n: int, gen: torch.Generator) -> torch.Tensor:
        """``n`` random pool indices (drawn on the CPU generator, so a seed gives the same batches anywhere)."""
        return torch.randint(0, self.size, (n,), generator=gen).to(self.view.device)


def level_voxel(extent: np.ndarray, res: int, frac: float) -> float:
    n = max(8, int(round(res * frac)))
    return float(extent.max() / (n - 1))


@dataclass
class Stage:
    """One phase of the fit: steps, grid levels (fraction of ``res``, image scale, start fraction), the hull
    the distance starts from, the camera learning rate (0: cameras fixed) and the surface's widths."""

    iters: int
    batch_rays: int
    levels: list[tuple[float, float, float]]
    hull_dilate_px: int
    hull_misses: int
    lr_camera: float
    width_start: float
    width_end: float


def loose_hull(cfg: ReconConfig, n_views: int) -> tuple[int, int]:
    """(dilation px, misses) of the hull that camera refinement starts from: wide enough for wrong cameras."""
    return cfg.hull_dilate_px + cfg.pose_dilate_px, max(cfg.hull_misses, int(cfg.pose_misses * n_views))


def stages(cfg: ReconConfig, n_views: int, hw: tuple[int, int]) -> list[Stage]:
    """The pose stage (with ``refine_cameras``) then the surface stage."""
    out = []
    if cfg.refine_cameras and cfg.pose_iters > 0:
        # Coarse grids and images (a wide basin for the cameras), but never below 32 grid points or 32 pixels.
        g0 = min(1.0, max(cfg.pose_res, 32 / cfg.res))
        s0 = min(1.0, max(cfg.pose_image_scale, 32 / min(hw)))
        levels = [(g0, s0, 0.0), (min(1.0, 2 * g0), min(1.0, 2 * s0), 0.5)]
        out.append(
            Stage(
                cfg.pose_iters,
                cfg.pose_batch_rays,
                levels,
                *loose_hull(cfg, n_views),
                cfg.lr_camera,
                cfg.width_start,
                cfg.pose_width_end,
            )
        )
    out.append(
        Stage(
            cfg.iters,
            cfg.batch_rays,
            [(1.0, 1.0, 0.0)],
            cfg.hull_dilate_px,
            cfg.hull_misses,
            cfg.lr_camera * cfg.camera_fine if cfg.refine_cameras else 0.0,
            cfg.width_start,
            cfg.width_end,
        )
    )
    return out


def _fit(views: ViewSet, cfg: ReconConfig, device: torch.device, progress: Progress | None) -> FitResult:
    gen = torch.Generator().manual_seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    if cfg.refine_cameras and cfg.aim_cameras:
        views = replace(views, c2w=aim_at_silhouettes(views))
    plan = stages(cfg, views.n, views.hw)
    if cfg.refine_cameras and cfg.coherence_iters > 0:
        dilate, misses = loose_hull(cfg, views.n)
        lo, hi = scene_box(views, replace(cfg, hull_dilate_px=dilate, hull_misses=misses), margin=cfg.box_margin)
        c2w = silhouette_coherence(views, lo, hi, cfg.coherence_iters, shared_elevation=cfg.shared_elevation, seed=cfg.seed, device=device)
        # Kept only if the masks agree better with the new cameras: with few views that already agree, the
        # loose hull of the others biases the coherence loss and it moves exact cameras (docs/recon.md).
        before = silhouette_agreement(views, lo, hi, device=device).mean()
        if silhouette_agreement(replace(views, c2w=c2w), lo, hi, device=device).mean() > before:
            views = replace(views, c2w=c2w)
    lo, hi = scene_box(views, replace(cfg, hull_dilate_px=plan[0].hull_dilate_px, hull_misses=plan[0].hull_misses), margin=cfg.box_margin)
    extent = hi - lo
    cams = CameraModel(
        views.c2w,
        views.K,
        0.5 * (lo + hi),
        views.reference if cfg.refine_cameras else None,
        cfg.refine_cameras and cfg.shared_elevation,
        cfg.refine_cameras and cfg.shared_focal,
    ).to(device)
    pools: dict[float, PixelPool] = {}
    view_err = torch.ones(views.n, device=device)  # running mean squared error per view (robust weights)
    history: list[dict[str, float]] = []
    total = sum(st.iters for st in plan)
    done = 0
    fld: SDFField | None = None
    for st in plan:
        cam_opt = GroupAdam(cams.parameters_to_learn(), lr=st.lr_camera) if st.lr_camera > 0 else None
        starts = [int(round(s * st.iters)) for _, _, s in st.levels]
        fld = None
        for it in range(st.iters):
            if it in starts or fld is None:
                level = max(i for i, s in enumerate(starts) if s <= it)
                frac, scale, _ = st.levels[level]
                voxel = level_voxel(extent, cfg.res, frac)
                if scale not in pools:
                    pools[scale] = PixelPool(views, scale, lo, hi, 0.0, device)
                pool = pools[scale]
                if fld is None:  # each stage starts from the visual hull seen by the current cameras
                    shape = tuple(int(round(e / voxel)) + 1 for e in extent)
                    with torch.no_grad():
                        c2w_now, K_now = (x.detach().double().cpu().numpy() for x in cams())
                        hull = hull_sdf(
                            SDFField(lo, voxel, shape).to(device),
                            replace(views, c2w=c2w_now, K=K_now),
                            replace(cfg, hull_dilate_px=st.hull_dilate_px, hull_misses=st.hull_misses),
                        )
                        w_lap = cfg.w_laplacian
                        if st is plan[-1] and cfg.w_laplacian_disagree != cfg.w_laplacian:
                            # Views that disagree (cameras off, generated views) get the stronger smoothing.
                            agree = silhouette_agreement(replace(views, c2w=c2w_now, K=K_now), lo, hi, device=device)
                            w_lap = cfg.w_laplacian if agree.mean() >= cfg.agreement else cfg.w_laplacian_disagree
                    fld = SDFField(lo, voxel, shape, hull).to(device)
                else:
                    fld = fld.resample(voxel)
                groups = [{"params": [fld.sdf], "lr": cfg.lr_sdf * voxel}, {"params": [fld.rgb], "lr": cfg.lr_color}]
                opt = torch.optim.Adam(groups, betas=(0.9, 0.99), fused=True)
                lr0 = [g["lr"] for g in groups]
                fld.update_band(cfg.reg_band * fld.voxel)
            fr = it / max(1, st.iters - 1)
            for g, l0 in zip(opt.param_groups, lr0):
                g["lr"] = l0 * 0.1**fr
            inv_s = 1.0 / ((st.width_start * level_voxel(extent, cfg.res, st.levels[0][0])) ** (1 - fr) * (st.width_end * fld.voxel) ** fr)
            if it % 10 == 0:
                fld.update_band(cfg.reg_band * fld.voxel)
            loss, mse = _step(
                fld, opt, cams, cam_opt, pool, views, cfg, st.batch_rays, inv_s, gen, view_err, it >= cfg.camera_start * st.iters, fr, w_lap
            )
            done += 1
            if it % 20 == 0 or it == st.iters - 1:
                rec = {"step": float(done), "loss": float(loss), "psnr": -10.0 * math.log10(max(float(mse), 1e-10))}
                if cam_opt is not None:
                    rec.update(
                        rot_deg=float(cams.omega.detach().norm(dim=-1).mean()) * 180 / math.pi,
                        shift=float(cams.rho.detach().norm(dim=-1).mean()),
                        elev_deg=float(cams.d_elev.detach()) * 180 / math.pi,
                        focal=float(cams.log_f.detach().exp()),
                    )
                history.append(rec)
            if progress is not None:
                progress(done, total, history[-1] if history else {})

    assert fld is not None
    with torch.no_grad():
        c2w_final, K_final = cams()
    result = FitResult(
        field=fld, c2w=c2w_final.cpu().double().numpy(), K=K_final.cpu().double().numpy(), psnr=float("nan"), config=cfg, history=history
    )
    result.psnr = training_psnr(result, views)
    return result


def _step(
    fld: SDFField,
    opt: torch.optim.Optimizer,
    cams: CameraModel,
    cam_opt: GroupAdam | None,
    pool: PixelPool,
    views: ViewSet,
    cfg: ReconConfig,
    batch_rays: int,
    inv_s: float,
    gen: torch.Generator,
    view_err: torch.Tensor,
    cameras_learn: bool,
    frac: float,
    w_lap: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One optimisation step on a random batch of pixels (``w_lap``: this stage's Laplacian weight); returns
    (loss, colour MSE), detached."""
    device = fld.lo.device
    idx = pool.sample(batch_rays, gen)
    vi = pool.view[idx]
    c2w_all, K = cams()
    K_lvl = K * torch.tensor([[pool.hw[1] / views.hw[1]], [pool.hw[0] / views.hw[0]], [1.0]], device=device)
    step, before = cfg.step_ratio * fld.voxel, cfg.window_before * fld.voxel

    def errors(out):
        e_rgb = (out["rgb"] - pool.rgb[idx]).pow(2).mean(-1)
        return e_rgb, e_rgb + cfg.w_mask * (out["acc"] - pool.alpha[idx]).pow(2)

    wv = None
    if cam_opt is not None and cfg.robust:
        with torch.no_grad():
            wv = 1.0 / (1.0 + (view_err / (1.5 * view_err.median().clamp_min(1e-8))) ** 2)
            wv = wv / wv.mean()
    o, d = generate_rays(c2w_all[vi], pool.uv[idx], K_lvl)
    err_rgb, per_px = errors(fld.render(o, d, inv_s, step, cfg.n_samples, before, jitter=True))
    data = (per_px * wv[vi]).mean() if wv is not None else per_px.mean()
    if cam_opt is not None and cfg.robust:
        with torch.no_grad():  # running error per view: views the others contradict count less in the field
            e = torch.zeros(views.n, device=device).index_add_(0, vi, per_px.detach())
            cnt = torch.bincount(vi, minlength=views.n).clamp_min(1)
            view_err.mul_(0.9).add_(0.1 * e / cnt)
    eik, lap, tv = fld.regularisers()
    loss = data + cfg.w_eikonal * eik + w_lap * lap + cfg.w_tv_color * tv
    opt.zero_grad(set_to_none=True)
    if cam_opt is not None:
        cam_opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    if cam_opt is not None and cameras_learn:
        if wv is not None:  # a view's own camera follows its whole error: undo its weight on its gradient
            for p in (cams.omega, cams.rho):
                if p.grad is not None:
                    p.grad.div_(wv[:, None])
        for g in cam_opt.param_groups:
            g["lr"] = cam_opt.defaults["lr"] * g["scale"] * 0.1**frac
        cam_opt.step()
        cams.fix_gauge()
    return loss.detach(), err_rgb.detach().mean()


@torch.no_grad()
def render_views(
    fld: SDFField, c2w: torch.Tensor, K: torch.Tensor, h: int, w: int, cfg: ReconConfig, chunk: int = 1 << 15
) -> tuple[torch.Tensor, torch.Tensor]:
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


def training_psnr(fit: FitResult, views: ViewSet, every: int = 4) -> float:
    """PSNR (dB) of field renders at the (refined) cameras of every ``every``-th training view vs those
    views on white, whole images (a few views: rendering all of them would cost seconds on a CPU)."""
    h, w = views.hw
    idx = list(range(0, views.n, every))
    rgb, _ = render_views(fit.field, torch.from_numpy(fit.c2w[idx]), torch.from_numpy(fit.K), h, w, fit.config)
    mse = float(((rgb - torch.from_numpy(views.rgb_on_white()[idx])) ** 2).mean())
    return -10.0 * math.log10(max(mse, 1e-10))

"""Camera refinement: per-view corrections learned jointly with the field, and shared unknowns.

Views of one object from generated pose clusters are taken from cameras that look at the object from a
guessed azimuth, elevation and distance with a guessed focal length. Their errors are mostly the
camera *turning about the object* (a wrong azimuth or elevation) and a shift of the object in the image,
so a view's correction is parametrised that way, which keeps the unknowns decoupled and well scaled:

    c2w_i = T(c) · R(ω_i) · E_i(Δe) · T(-c) · c2w⁰_i · T_cam(ρ_i · r_i)

* ω_i (3): a rotation about the object's centre c (world axes, radians); an azimuth error is ω_z alone.
* ρ_i (3): a translation in the camera's own axes, in units of its distance r_i to c (ρ_x, ρ_y shift the
  object in the image by about f·ρ pixels, ρ_z scales it).
* Δe (shared, optional): an elevation offset common to all views (rotation about each view's horizontal
  axis through c), for views whose elevation was guessed once for the whole set.
* φ (shared, optional): log focal-length scale common to all views.

The reference view (``ViewSet.reference``: the input photo) keeps ω = ρ = 0; without one, the means of ω and ρ
over the views are held at zero after every step (the gauge: moving every camera together is invisible).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mirage3d.recon.raster import project
from mirage3d.recon.views import ViewSet, generate_rays, pixel_centres, ray_aabb


def so3_exp(w: torch.Tensor) -> torch.Tensor:
    """Rotation vectors (N, 3) → rotation matrices (N, 3, 3) (Rodrigues; exact and smooth at zero)."""
    th2 = (w * w).sum(-1)[:, None, None]  # (N, 1, 1)
    small = th2 < 1e-8
    th = torch.sqrt(th2.clamp_min(1e-8))
    a = torch.where(small, 1.0 - th2 / 6.0, torch.sin(th) / th)
    b = torch.where(small, 0.5 - th2 / 24.0, (1.0 - torch.cos(th)) / th2.clamp_min(1e-8))
    zero = torch.zeros_like(w[:, 0])
    kx = torch.stack([zero, -w[:, 2], w[:, 1], w[:, 2], zero, -w[:, 0], -w[:, 1], w[:, 0], zero], -1).reshape(-1, 3, 3)
    eye = torch.eye(3, dtype=w.dtype, device=w.device)
    return eye + a * kx + b * (kx @ kx)


class CameraModel(nn.Module):
    """Refined cameras c2w (N, 4, 4) and intrinsics K (3, 3) from the initial ones and learned corrections."""

    def __init__(
        self,
        c2w: np.ndarray,
        K: np.ndarray,
        centre: np.ndarray,
        reference: int | None = None,
        shared_elevation: bool = False,
        shared_focal: bool = False,
    ):
        super().__init__()
        c2w_t = torch.as_tensor(np.asarray(c2w), dtype=torch.float32)
        n = c2w_t.shape[0]
        self.register_buffer("c2w0", c2w_t)
        self.register_buffer("K0", torch.as_tensor(np.asarray(K), dtype=torch.float32))
        self.register_buffer("centre", torch.as_tensor(np.asarray(centre), dtype=torch.float32))
        rel = c2w_t[:, :3, 3] - self.centre
        self.register_buffer("dist", rel.norm(dim=-1))  # (N,)
        up = torch.tensor([0.0, 0.0, 1.0])
        axis = torch.linalg.cross(rel, up.expand_as(rel))  # raising the camera: rotation about v × up
        norm = axis.norm(dim=-1, keepdim=True)
        self.register_buffer("elev_axis", torch.where(norm > 1e-6, axis / norm.clamp_min(1e-6), torch.zeros_like(axis)))
        self.omega = nn.Parameter(torch.zeros(n, 3))
        self.rho = nn.Parameter(torch.zeros(n, 3))
        self.d_elev = nn.Parameter(torch.zeros(1), requires_grad=shared_elevation)
        self.log_f = nn.Parameter(torch.zeros(1), requires_grad=shared_focal)
        free = torch.ones(n, 1)
        if reference is not None:
            free[reference] = 0.0
        self.register_buffer("free", free)
        self.reference = reference

    @property
    def n(self) -> int:
        return self.c2w0.shape[0]

    def forward(self, idx: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Refined (c2w (n, 4, 4) of views ``idx`` (all if None), K (3, 3))."""
        idx = torch.arange(self.n, device=self.c2w0.device) if idx is None else idx
        omega, rho = self.omega[idx] * self.free[idx], self.rho[idx] * self.free[idx]
        R = so3_exp(omega) @ so3_exp(self.elev_axis[idx] * self.d_elev)  # (n, 3, 3) about the centre
        c2w0 = self.c2w0[idx]
        c = self.centre
        pos = c2w0[:, :3, 3] + torch.einsum("nij,nj->ni", c2w0[:, :3, :3], rho * self.dist[idx, None])
        rot = R @ c2w0[:, :3, :3]
        pos = torch.einsum("nij,nj->ni", R, pos - c) + c
        bottom = c2w0[:, 3:, :]
        c2w = torch.cat([torch.cat([rot, pos[..., None]], -1), bottom], 1)
        K = self.K0.clone()
        scale = torch.exp(self.log_f)[0]
        K[0, 0] = self.K0[0, 0] * scale
        K[1, 1] = self.K0[1, 1] * scale
        return c2w, K

    @torch.no_grad()
    def fix_gauge(self) -> None:
        """Without a reference view, hold the mean rotation about the centre and the mean shift at zero
        (turning, moving or scaling every camera together is invisible in the images)."""
        if self.reference is None and self.n > 1:
            self.omega.sub_(self.omega.mean(0, keepdim=True))
            self.rho.sub_(self.rho.mean(0, keepdim=True))

    shift_lr_scale = 0.3
    """Learning-rate factor of ρ against ω: ρ = 0.01 moves the image about 3× as far as ω = 0.01 does."""

    def parameters_to_learn(self) -> list[dict]:
        """Adam parameter groups (per-view corrections, and the shared unknowns when they are learned)."""
        groups: list[dict] = [
            {"params": [self.omega], "name": "rotation", "scale": 1.0},
            {"params": [self.rho], "name": "shift", "scale": self.shift_lr_scale},
        ]
        shared = [p for p in (self.d_elev, self.log_f) if p.requires_grad]
        if shared:
            groups.append({"params": shared, "name": "shared", "scale": 1.0})
        return groups


class GroupAdam(torch.optim.Optimizer):
    """Adam whose second moment is one number per parameter group (the mean of g² over the group).

    Per-coordinate Adam moves every coordinate by about ``lr`` per step whatever its gradient's size, so
    a view the images barely constrain (or a direction they do not see at all) random-walks on noise. With
    one scale per group, a view moves in proportion to the evidence against its pose, relative to the
    other views. A hand-written optimizer because torch has none with a shared second moment.
    """

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.99), eps: float = 1e-12):
        super().__init__(params, {"lr": lr, "betas": betas, "eps": eps})

    @torch.no_grad()
    def step(self, closure=None):  # torch.optim.Optimizer.step
        for g in self.param_groups:
            b1, b2 = g["betas"]
            ps = [p for p in g["params"] if p.grad is not None]
            if not ps:
                continue
            st = g.setdefault("shared_state", {"t": 0, "v": torch.zeros((), device=ps[0].device)})
            st["t"] += 1
            sq = torch.stack([(p.grad * p.grad).mean() for p in ps]).mean()
            st["v"].mul_(b2).add_((1 - b2) * sq)
            v_hat = st["v"] / (1 - b2 ** st["t"])
            for p in ps:
                m = self.state[p].setdefault("m", torch.zeros_like(p))
                m.mul_(b1).add_((1 - b1) * p.grad)
                p.sub_(g["lr"] * (m / (1 - b1 ** st["t"])) / (v_hat.sqrt() + g["eps"]))


def aim_at_silhouettes(views: ViewSet, min_deg: float = 3.0) -> np.ndarray:
    """Cameras (N, 4, 4) re-aimed so that the object's centre projects onto each silhouette's centre.

    The centre is the point nearest (least squares) to the rays through the silhouettes' centroids. A view
    whose centroid ray misses it by more than ``min_deg`` is turned about its own centre (the smallest
    rotation) so that its centroid ray passes through it; the others, and the reference view, are kept.
    A camera rotated about its own centre shifts the object across the image by f·θ pixels (15 px for
    5° at 128²): a larger offset than the pose stage's coarse images recover, and one this removes at once.
    Views whose centroids agree to within ``min_deg`` (exact or generated, centred views) are untouched: the
    silhouette centre is not exactly the projection of one 3-D point, and for exact views of the shared cars
    and the toy scene it misses the consensus centre by up to 2.2°.
    """
    c2w = views.c2w.copy()
    a = views.rgba[..., 3].astype(np.float64)  # (N, H, W)
    h, w = views.hw
    vv, uu = np.mgrid[0:h, 0:w] + 0.5
    mass = a.sum((1, 2)).clip(1e-9)
    u, v = (a * uu).sum((1, 2)) / mass, (a * vv).sum((1, 2)) / mass
    K = views.K
    d_cam = np.stack([(u - K[0, 2]) / K[0, 0], -(v - K[1, 2]) / K[1, 1], -np.ones_like(u)], -1)
    d = np.einsum("nij,nj->ni", c2w[:, :3, :3], d_cam)
    d /= np.linalg.norm(d, axis=-1, keepdims=True)
    o = c2w[:, :3, 3]
    A = sum(np.eye(3) - np.outer(x, x) for x in d)
    if np.linalg.matrix_rank(A) < 3:
        return c2w
    X = np.linalg.solve(A, sum((np.eye(3) - np.outer(x, x)) @ p for x, p in zip(d, o)))
    for i in range(views.n):
        if i == views.reference:
            continue
        to_x = (X - o[i]) / np.linalg.norm(X - o[i])
        axis = np.cross(d[i], to_x)
        ang = np.arctan2(np.linalg.norm(axis), float(d[i] @ to_x))
        if np.degrees(ang) > min_deg:
            R = so3_exp(torch.from_numpy(axis / np.linalg.norm(axis) * ang)[None])[0].numpy()
            c2w[i, :3, :3] = R @ c2w[i, :3, :3]
    return c2w


def _gaussian_blur(img: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of (N, 1, H, W) images (zero padding)."""
    r = int(math.ceil(3 * sigma))
    g = torch.exp(-((torch.arange(-r, r + 1, dtype=img.dtype, device=img.device)) ** 2) / (2 * sigma**2))
    g = g / g.sum()
    img = F.conv2d(img, g.view(1, 1, 1, -1), padding=(0, r))
    return F.conv2d(img, g.view(1, 1, -1, 1), padding=(r, 0))


def _mask_images(views: ViewSet, scale: float, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The views' masks at ``scale`` (at least 64 px; coarser lost the toy scene's views) for the silhouette
    measures: alpha (N, 1, hs, ws), pixel centres (hs·ws, 2), the intrinsics' scale to those pixels (3, 1), pixels
    → grid_sample's [-1, 1] (2,), and the pixels inside or within 4 px of each mask (N, hs·ws)."""
    n, (h, w) = views.n, views.hw
    hs, ws = (min(x, max(64, int(round(x * scale)))) for x in (h, w))
    alpha = F.interpolate(torch.from_numpy(views.rgba[..., 3]).float()[:, None], size=(hs, ws), mode="area").to(device)
    near_mask = F.max_pool2d(alpha, 9, stride=1, padding=4).reshape(n, -1) > 0.01
    to_pixels = torch.tensor([[ws / w], [hs / h], [1.0]], device=device)
    to_grid = torch.tensor([2.0 / ws, 2.0 / hs], device=device)
    return alpha, pixel_centres(hs, ws).to(device), to_pixels, to_grid, near_mask


def _hull_of_others(
    alpha: torch.Tensor,
    c2w: torch.Tensor,
    Ks: torch.Tensor,
    vi: torch.Tensor,
    px: torch.Tensor,
    lo: torch.Tensor,
    hi: torch.Tensor,
    steps: torch.Tensor,
    to_grid: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """For rays of views ``vi`` through pixels ``px``, sampled at ``steps`` inside the box (lo, hi): (B, S) the
    smallest alpha of the *other* views at each sample's projections (bilinear; a ray's own view does not carve
    it), and (B,) whether the ray meets the box."""
    n = alpha.shape[0]
    o, d = generate_rays(c2w[vi], px, Ks)
    near, far = ray_aabb(o, d, lo, hi)
    t = near[:, None] + (far - near).clamp_min(0)[:, None] * steps[None]
    x = (o[:, None] + t[..., None] * d[:, None]).reshape(-1, 3)  # (B·S, 3)
    grid = project(x, c2w, Ks)[0] * to_grid - 1  # (N, B·S, 2): every sample in every view
    occ = F.grid_sample(alpha, grid[:, :, None], mode="bilinear", padding_mode="zeros", align_corners=False)[:, 0, :, 0]
    occ = occ.reshape(n, vi.shape[0], -1)
    own = F.one_hot(vi, n).T.bool()[:, :, None]
    return torch.where(own, torch.ones_like(occ), occ).amin(0), far > near


def silhouette_coherence(
    views: ViewSet,
    lo: np.ndarray,
    hi: np.ndarray,
    iters: int = 300,
    lr: float = 1e-2,
    scale: float = 0.5,
    batch_rays: int = 1024,
    samples: int = 32,
    blur_px: tuple[float, float] = (2.0, 0.5),
    shared_elevation: bool = True,
    seed: int = 0,
    device: torch.device | str = "cpu",
) -> np.ndarray:
    """Cameras (N, 4, 4) refined so that the visual hull of the other views projects onto each view's mask.

    Silhouette coherence (Hernández, Schmitt and Cipolla 2007): with exact cameras, the hull carved by the
    other views covers each silhouette exactly where the silhouette is (a little more where few views carve),
    and a wrong camera makes the hull miss part of every mask it disagrees with. For a batch of pixels near
    the silhouettes, a ray of view i is sampled inside the box (lo, hi); a sample's occupancy is the smallest
    (Gaussian-blurred, bilinear) alpha of the other views at its projections; the ray's coverage is its
    largest occupancy, fitted to view i's own alpha (squared error). The masks are all it uses: no field is
    fitted, so there is nothing that can bend to explain a wrong camera, which is where the joint fit of
    field and cameras stalls (``docs/recon.md``). The blur shrinks coarse to fine (``blur_px``, in pixels of
    the images at ``scale``, at least 64 pixels) for a wide basin. The corrections are those of :class:`CameraModel` (rotation
    about the box's centre, shift and distance, the shared elevation), with its gauge and reference view.
    """
    device = torch.device(device)
    gen = torch.Generator().manual_seed(seed)
    n = views.n
    cams = CameraModel(views.c2w, views.K, 0.5 * (lo + hi), views.reference, shared_elevation, False).to(device)
    opt = GroupAdam(cams.parameters_to_learn(), lr=lr)
    alpha, uv, to_pixels, to_grid, near_mask = _mask_images(views, scale, device)
    view_idx, pix_idx = (t.to(device) for t in torch.nonzero(near_mask.cpu(), as_tuple=True))
    lo_t, hi_t = (torch.as_tensor(np.asarray(x), dtype=torch.float32, device=device) for x in (lo, hi))
    steps = (torch.arange(samples, dtype=torch.float32) + 0.5).to(device) / samples
    for it in range(iters):
        frac = it / max(1, iters - 1)
        a = _gaussian_blur(alpha, blur_px[0] ** (1 - frac) * blur_px[1] ** frac)
        c2w, K = cams()
        Ks = K * to_pixels
        pick = torch.randint(0, view_idx.shape[0], (batch_rays,), generator=gen).to(device)
        vi, pix = view_idx[pick], pix_idx[pick]
        cover = _hull_of_others(a, c2w, Ks, vi, uv[pix], lo_t, hi_t, steps, to_grid)[0].amax(1)
        loss = (cover - a.reshape(n, -1)[vi, pix]).pow(2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        for g in opt.param_groups:
            g["lr"] = lr * g["scale"] * 0.1**frac
        opt.step()
        cams.fix_gauge()
    with torch.no_grad():
        return cams()[0].cpu().double().numpy()


@torch.no_grad()
def silhouette_agreement(
    views: ViewSet, lo: np.ndarray, hi: np.ndarray, scale: float = 0.5, samples: int = 32, chunk: int = 4096, device: torch.device | str = "cpu"
) -> np.ndarray:
    """(N,) per view: the share of its mask (alpha > 0.5) that the visual hull of the *other* views covers.

    With exact cameras the hull of the other views contains the object, so it covers every mask whatever the
    number of views (it may cover more where few views carve, which this share ignores); a wrong camera, or a
    view of a different shape, leaves part of the masks uncovered. The measure :func:`silhouette_coherence`
    optimises, hard-thresholded: a pixel is covered when one of ``samples`` points of its ray inside the box
    (lo, hi) projects inside every other view's mask (alpha > 0.5). Images at ``scale`` (at least 64 px); only
    pixels within 4 px of the mask are cast (the hull of the others, carved by views of the same object, does
    not reach further). Exact cameras score 0.987-1.000 (five cars, 4 to 32 views at 128²), cameras turned by
    up to ±10° plus 3° 0.886-0.942, make-asset's generated views 0.77-0.82 (docs/recon.md).
    """
    device = torch.device(device)
    alpha, uv, to_pixels, to_grid, near_mask = _mask_images(views, scale, device)
    c2w = torch.from_numpy(views.c2w).float().to(device)
    Ks = torch.from_numpy(views.K).float().to(device) * to_pixels
    lo_t, hi_t = (torch.as_tensor(np.asarray(x), dtype=torch.float32, device=device) for x in (lo, hi))
    steps = (torch.arange(samples, dtype=torch.float32, device=device) + 0.5) / samples
    out = np.zeros(views.n)
    for i in range(views.n):
        pix = torch.nonzero(near_mask[i]).squeeze(1)
        cover = torch.zeros(pix.shape[0], dtype=torch.bool, device=device)
        for s in range(0, pix.shape[0], chunk):
            px = pix[s : s + chunk]
            occ, hit = _hull_of_others(alpha, c2w, Ks, torch.full_like(px, i), uv[px], lo_t, hi_t, steps, to_grid)
            cover[s : s + chunk] = (occ.amax(1) > 0.5) & hit
        mask = alpha[i, 0].reshape(-1)[pix] > 0.5
        out[i] = float((cover & mask).sum() / mask.sum().clamp_min(1))
    return out

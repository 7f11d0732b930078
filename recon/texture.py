"""Texture by projecting the views onto the mesh: visibility-aware, weighted by viewing angle, reference first.

Each texel's surface point is projected into every view. A view counts where the point is visible in it
(its depth is within ``tol`` of the view's depth buffer of the mesh) and faces it; its weight is
cos(θ)^p (θ between the surface normal and the direction to the camera) times the view's alpha there
(eroded, so silhouette pixels mixed with the background count little). The colour is the weighted mean,
with a high power p so a texel takes the colours of the views that see it most squarely rather than a
blur of all of them, then taken again with views far from that mean down-weighted (robust). The
reference view (the input photo), where it sees the surface at θ < 70°, wins. Texels no view sees take
the field's colour. The texture is then grown into the gutters between charts.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
import trimesh
from scipy import ndimage

from mirage3d.recon.atlas import build_atlas
from mirage3d.recon.field import SDFField
from mirage3d.recon.raster import depth_buffer, project, rasterize_uv


def sample_image(img: torch.Tensor, px: torch.Tensor) -> torch.Tensor:
    """Bilinear samples (P, C) of an image (C, H, W) at pixel coordinates (P, 2) (x right, y down, centres +0.5)."""
    h, w = img.shape[1:]
    g = torch.stack([px[:, 0] / w * 2 - 1, px[:, 1] / h * 2 - 1], -1).reshape(1, 1, -1, 2).to(img.dtype)
    return F.grid_sample(img[None], g, mode="bilinear", padding_mode="border", align_corners=False)[0, :, 0].t()


def project_colors(
    points: torch.Tensor,
    normals: torch.Tensor,
    rgba: torch.Tensor,
    c2w: torch.Tensor,
    K: torch.Tensor,
    verts: torch.Tensor,
    faces: torch.Tensor,
    reference: int | None,
    power: float = 6.0,
    tol: float = 0.01,
    erode_px: int = 1,
    sigma: float = 0.15,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Colours (P, 3) at surface points (P, 3) with unit normals from views ``rgba`` (N, H, W, 4), and the
    total weight (P,) (0 where no view sees the point). ``tol``: depth tolerance, a fraction of the depth.

    Robust: after the weighted mean, each view's weight is multiplied by exp(-|c - mean|² / 2σ²) and the
    mean taken again, so a view whose colour the others contradict (where the surface is not quite where
    the views put it, it shows the neighbouring part) counts little.
    """
    n, h, w = rgba.shape[:3]
    img = rgba.permute(0, 3, 1, 2)  # (N, 4, H, W)
    alpha = img[:, 3:]
    if erode_px > 0:
        alpha = -F.max_pool2d(-alpha, 2 * erode_px + 1, stride=1, padding=erode_px)
    cols, wts = [], []
    ref_w = torch.zeros(points.shape[0], device=points.device, dtype=points.dtype)
    for i in range(n):
        # Depth buffer at twice the view's resolution: a texel is compared with the surface right at its spot.
        K2 = K.clone()
        K2[:2] *= 2.0
        zbuf = depth_buffer(verts, faces, c2w[i], K2, 2 * h, 2 * w)
        px, depth = project(points, c2w[i], K)
        col = (px[:, 0] * 2).long().clamp(0, 2 * w - 1)
        row = (px[:, 1] * 2).long().clamp(0, 2 * h - 1)
        inside = (px[:, 0] >= 0) & (px[:, 0] < w) & (px[:, 1] >= 0) & (px[:, 1] < h) & (depth > 0)
        visible = inside & (depth <= zbuf[row, col] * (1.0 + tol))
        to_cam = c2w[i, :3, 3] - points
        cos = (normals * to_cam).sum(-1) / to_cam.norm(dim=-1).clamp_min(1e-9)
        wt = visible * cos.clamp_min(0.0) ** power * sample_image(alpha[i], px)[:, 0]
        cols.append(sample_image(img[i, :3], px))
        wts.append(wt)
        if i == reference:
            ref_w = wt * (cos > 0.34)  # θ < 70°
    C, W = torch.stack(cols), torch.stack(wts)  # (N, P, 3), (N, P)
    wsum = W.sum(0)
    mean = (W[..., None] * C).sum(0) / wsum.clamp_min(1e-12)[:, None]
    W2 = W * torch.exp(-((C - mean) ** 2).sum(-1) / (2 * sigma**2))
    blend = torch.where((W2.sum(0) > 1e-12)[:, None], (W2[..., None] * C).sum(0) / W2.sum(0).clamp_min(1e-12)[:, None], mean)
    if reference is not None:
        blend = torch.where((ref_w > 1e-6)[:, None], C[reference], blend)
    return blend, wsum


def fill_gutters(tex: np.ndarray, filled: np.ndarray) -> np.ndarray:
    """Every unfilled texel takes the colour of the nearest filled one (clean bilinear lookups at chart seams)."""
    if not filled.any():
        return tex
    _, (r, c) = ndimage.distance_transform_edt(~filled, return_indices=True)
    return tex[r, c]


def bake_texture(
    mesh: trimesh.Trimesh,
    field: SDFField,
    rgba: np.ndarray,
    c2w: np.ndarray,
    K: np.ndarray,
    reference: int | None = None,
    size: int = 1024,
    power: float = 6.0,
):
    """UV atlas (``atlas.build_atlas``) and a (size, size) base-colour texture projected from the views
    (``rgba`` (N, H, W, 4) at cameras ``c2w`` (N, 4, 4), ``K``), the field's colour where no view sees."""
    from mirage3d.recon.mesh import TexturedMesh

    dev = field.lo.device
    vmap, faces, uv = build_atlas(mesh, size)
    verts = np.asarray(mesh.vertices)[vmap]
    vnormals = np.asarray(mesh.vertex_normals)[vmap]
    f_t = torch.from_numpy(faces).to(dev)
    rc, fid, bary = rasterize_uv(torch.from_numpy(uv).to(dev), f_t, size)
    tri = f_t[fid]  # (M, 3)
    v_t = torch.from_numpy(verts).to(dev, torch.float32)
    pts = (bary[..., None].float() * v_t[tri]).sum(1)
    nrm = (bary[..., None].float() * torch.from_numpy(vnormals).to(dev, torch.float32)[tri]).sum(1)
    nrm = nrm / nrm.norm(dim=-1, keepdim=True).clamp_min(1e-9)
    mesh_v = torch.from_numpy(np.asarray(mesh.vertices)).to(dev, torch.float32)
    mesh_f = torch.from_numpy(np.asarray(mesh.faces)).to(dev)
    with torch.no_grad():
        col, wsum = project_colors(
            pts,
            nrm,
            torch.from_numpy(rgba).to(dev),
            torch.from_numpy(c2w).to(dev, torch.float32),
            torch.from_numpy(K).to(dev, torch.float32),
            mesh_v,
            mesh_f,
            reference,
            power,
        )
        unseen = wsum < 1e-6
        if unseen.any():
            col[unseen] = field.color(pts[unseen])
    tex = np.zeros((size, size, 3), dtype=np.float32)
    filled = np.zeros((size, size), dtype=bool)
    rc_np = rc.cpu().numpy()
    tex[rc_np[:, 0], rc_np[:, 1]] = col.clamp(0, 1).cpu().numpy()
    filled[rc_np[:, 0], rc_np[:, 1]] = True
    tex = fill_gutters(tex, filled)
    return TexturedMesh(verts.astype(np.float64), faces, uv, (np.clip(tex, 0, 1) * 255 + 0.5).astype(np.uint8))

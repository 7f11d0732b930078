"""Rasterisation in plain torch: depth buffers of a mesh seen by pinhole cameras, and UV-space texel coverage.

Both enumerate, for every triangle at once, the pixel (texel) centres in its bounding box and keep those
inside it. That is fast for the small triangles of a decimated mesh at 128–512 px (a few pixels each), runs
on the CPU and the GPU alike, and needs no OpenGL context (pyrender cannot be used on every machine, and
the texture step needs visibility on the device the field lives on).
"""

from __future__ import annotations

import torch


def _covered(tri: torch.Tensor, h: int, w: int, max_candidates: int = 1 << 26) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Pixel centres (x + 0.5, y + 0.5) inside 2-D triangles (T, 3, 2) in pixel units (x right, y down).

    Returns the triangle index (M,), flat pixel index y * w + x (M,) and barycentric coordinates (M, 3).
    """
    dev = tri.device
    lo = torch.floor(tri.amin(1) - 0.5).long()
    hi = torch.ceil(tri.amax(1) - 0.5).long()
    lo[:, 0].clamp_(0, w - 1), lo[:, 1].clamp_(0, h - 1)
    hi[:, 0].clamp_(-1, w - 1), hi[:, 1].clamp_(-1, h - 1)
    wh = (hi - lo + 1).clamp_min(0)  # (T, 2)
    counts = wh[:, 0] * wh[:, 1]
    total = int(counts.sum())
    if total > max_candidates:
        raise ValueError(f"rasterisation would test {total} pixels; the triangles are too large for this resolution")
    tid = torch.repeat_interleave(torch.arange(tri.shape[0], device=dev), counts)
    local = torch.arange(total, device=dev) - torch.repeat_interleave(torch.cumsum(counts, 0) - counts, counts)
    x = lo[tid, 0] + local % wh[tid, 0]
    y = lo[tid, 1] + local // wh[tid, 0]
    p = torch.stack([x, y], -1).to(tri.dtype) + 0.5
    a, b, c = tri[tid, 0], tri[tid, 1], tri[tid, 2]
    v0, v1, v2 = b - a, c - a, p - a
    den = v0[:, 0] * v1[:, 1] - v1[:, 0] * v0[:, 1]
    den = torch.where(den.abs() < 1e-12, torch.full_like(den, 1e-12), den)
    l1 = (v2[:, 0] * v1[:, 1] - v1[:, 0] * v2[:, 1]) / den
    l2 = (v0[:, 0] * v2[:, 1] - v2[:, 0] * v0[:, 1]) / den
    bary = torch.stack([1.0 - l1 - l2, l1, l2], -1)
    inside = (bary >= -1e-6).all(-1)
    return tid[inside], (y * w + x)[inside], bary[inside]


def project(points: torch.Tensor, c2w: torch.Tensor, K: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """World points (P, 3) → pixel coordinates (P, 2) (x right, y down, centres at +0.5) and depth (P,)
    along the optical axis, for one camera (OpenGL axes: it looks down its -Z). With cameras ``c2w`` (N, 4, 4)
    the results are (N, P, 2) and (N, P), one row per camera."""
    R, t = c2w[..., :3, :3], c2w[..., :3, 3]
    cam = (points - t[..., None, :]) @ R  # (P, 3) or (N, P, 3) = Rᵀ (p - t)
    depth = -cam[..., 2]
    z = depth.clamp_min(1e-9)
    u = K[0, 0] * cam[..., 0] / z + K[0, 2]
    v = -K[1, 1] * cam[..., 1] / z + K[1, 2]
    return torch.stack([u, v], -1), depth


def depth_buffer(verts: torch.Tensor, faces: torch.Tensor, c2w: torch.Tensor, K: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """(h, w) depth of the nearest surface at each pixel centre (inf where the mesh is not seen).

    Depth is interpolated perspective-correctly (1/depth is linear in screen space).
    """
    uv, depth = project(verts, c2w, K)
    front = (depth[faces] > 1e-6).all(1)
    f = faces[front]
    tid, pix, bary = _covered(uv[f], h, w)
    inv = (bary / depth[f[tid]]).sum(-1)
    zbuf = torch.full((h * w,), float("inf"), device=verts.device, dtype=verts.dtype)
    zbuf.scatter_reduce_(0, pix, 1.0 / inv, reduce="amin")
    return zbuf.reshape(h, w)


def rasterize_uv(uv: torch.Tensor, faces: torch.Tensor, size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Texels covered by UV triangles: (row, col) (M, 2), face index (M,) and barycentrics (M, 3).

    Texel centres are at ((col + 0.5) / size, 1 - (row + 0.5) / size) in uv (origin bottom-left).
    """
    tri = uv[faces] * size  # (F, 3, 2): x = col, y = size - row
    tri = torch.stack([tri[..., 0], size - tri[..., 1]], -1)
    tid, pix, bary = _covered(tri, size, size)
    return torch.stack([pix // size, pix % size], -1), tid, bary

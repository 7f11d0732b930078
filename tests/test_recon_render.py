"""Rays, rotations, NeuS rendering and rasterisation against slow float64 references."""

from __future__ import annotations

import math

import numpy as np
import torch

from mirage3d.cameras import orbit_c2w
from mirage3d.recon.cameras import so3_exp
from mirage3d.recon.field import SDFField, composite, neus_alpha
from mirage3d.recon.raster import depth_buffer, rasterize_uv
from mirage3d.recon.views import generate_rays, ray_aabb


def _ref_ray(c2w: np.ndarray, K: np.ndarray, u: float, v: float) -> tuple[np.ndarray, np.ndarray]:
    # Pinhole in OpenGL axes: the camera looks down -Z, v grows downwards in the image.
    d_cam = np.array([(u - K[0, 2]) / K[0, 0], -(v - K[1, 2]) / K[1, 1], -1.0])
    d = c2w[:3, :3] @ d_cam
    return c2w[:3, 3], d / np.linalg.norm(d)


def test_generate_rays_matches_reference_and_projects_back():
    rng = np.random.default_rng(0)
    K = np.array([[60.0, 0, 31.0], [0, 55.0, 33.0], [0, 0, 1]])
    for az, el in [(0.0, 10.0), (359.9, -20.0), (123.0, 89.0), (270.0, 90.0)]:  # wrap-around and straight-down cameras
        c2w = orbit_c2w(az, el, 2.5, rng.normal(size=3) * 0.1)
        uv = rng.uniform(0, 64, size=(50, 2))
        o, d = generate_rays(torch.tensor(c2w)[None].expand(50, 4, 4), torch.tensor(uv), torch.tensor(K))
        for k in range(50):
            ro, rd = _ref_ray(c2w, K, *uv[k])
            np.testing.assert_allclose(o[k].numpy(), ro, atol=1e-9)
            np.testing.assert_allclose(d[k].numpy(), rd, atol=1e-9)
        # A point along the ray projects back onto its pixel.
        from mirage3d.cameras import project_points

        px, depth = project_points((o + 1.7 * d).numpy(), c2w, K)
        np.testing.assert_allclose(px, uv, atol=1e-6)
        assert (depth > 0).all()


def test_ray_aabb_entry_exit():
    o = torch.tensor([[-2.0, 0.1, 0.2], [0.0, 0.0, 0.0], [-2.0, 3.0, 0.0]], dtype=torch.float64)
    d = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [1.0, 0.0, 0.0]], dtype=torch.float64)
    near, far = ray_aabb(o, d, torch.full((3,), -1.0, dtype=torch.float64), torch.ones(3, dtype=torch.float64))
    np.testing.assert_allclose(near[:2].numpy(), [1.0, 0.0])  # inside → near clamps to 0
    np.testing.assert_allclose(far[:2].numpy(), [3.0, 1.0])
    assert near[2] >= far[2]  # misses


def test_so3_exp_matches_scipy_and_is_smooth_at_zero():
    from scipy.spatial.transform import Rotation

    w = torch.tensor([[0.3, -0.2, 0.1], [0.0, 0.0, 0.0], [1e-6, -2e-6, 0.0], [0.0, 0.0, math.pi - 1e-3]], dtype=torch.float64)
    R = so3_exp(w)
    for k in range(len(w)):
        np.testing.assert_allclose(R[k].numpy(), Rotation.from_rotvec(w[k].numpy()).as_matrix(), atol=1e-12)
    z = torch.zeros(1, 3, dtype=torch.float64, requires_grad=True)
    so3_exp(z)[0, 1, 0].backward()  # d R_10 / d w_z = 1 at the identity; no NaN from the zero angle
    np.testing.assert_allclose(z.grad.numpy(), [[0.0, 0.0, 1.0]], atol=1e-12)


def _ref_neus(sdf: np.ndarray, inv_s: float, col: np.ndarray, bg: float) -> tuple[np.ndarray, np.ndarray]:
    # The obvious sequential loop of NeuS's discrete opacity and front-to-back compositing.
    sig = lambda x: 1.0 / (1.0 + math.exp(-x))
    R, S1 = sdf.shape
    out, acc = np.zeros((R, 3)), np.zeros(R)
    for r in range(R):
        trans = 1.0
        for k in range(S1 - 1):
            p, n = sig(sdf[r, k] * inv_s), sig(sdf[r, k + 1] * inv_s)
            a = min(max((p - n) / max(p, 1e-6), 0.0), 1.0)
            out[r] += trans * a * col[r, k]
            acc[r] += trans * a
            trans *= 1.0 - a + 1e-10
        out[r] += (1.0 - acc[r]) * bg
    return out, acc


def test_neus_compositing_matches_loop():
    g = torch.Generator().manual_seed(1)
    sdf = (torch.rand(6, 12, generator=g, dtype=torch.float64) - 0.5).cumsum(1) * -0.3  # mostly entering surfaces
    col = torch.rand(6, 11, 3, generator=g, dtype=torch.float64)
    w = composite(neus_alpha(sdf, 7.0))
    rgb = (w[..., None] * col).sum(1) + (1 - w.sum(1))[:, None]
    ref_rgb, ref_acc = _ref_neus(sdf.numpy(), 7.0, col.numpy(), 1.0)
    np.testing.assert_allclose(w.sum(1).numpy(), ref_acc, atol=1e-12)
    np.testing.assert_allclose(rgb.numpy(), ref_rgb, atol=1e-12)
    assert (ref_acc > 0.9).any() and (ref_acc < 0.5).any()  # the test sees opaque and transparent rays


def _sphere_field(radius: float = 0.6, n: int = 33) -> SDFField:
    f = SDFField(np.array([-1.0, -1.0, -1.0]), 2.0 / (n - 1), (n, n, n)).double()
    with torch.no_grad():
        p = f.grid_points()
        f.sdf.copy_((p.norm(dim=-1) - radius)[None, None])
        f.rgb.copy_(p.permute(3, 0, 1, 2)[None] * 2.0)  # colour varies in space
    return f


def test_field_render_matches_float64_reference():
    f = _sphere_field()
    c2w = orbit_c2w(30.0, 25.0, 3.0)
    K = np.array([[40.0, 0, 16], [0, 40.0, 16], [0, 0, 1]])
    uv = torch.rand(64, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(3)) * 32
    o, d = generate_rays(torch.tensor(c2w)[None].expand(64, 4, 4), uv, torch.tensor(K))
    step, n_s, inv_s = 0.02, 16, 40.0
    with torch.no_grad():
        out = f.render(o, d, inv_s, step, n_s, before=0.1)
        # Reference: the samples at the returned distances, looked up one by one, composited in a loop.
        t = out["t"]
        pts = o[:, None] + d[:, None] * t[..., None]
        sdf = np.array([[float(f.distance(pts[r, k][None])[0]) for k in range(n_s + 1)] for r in range(64)])
        rgb_pt = np.array([[f.color(pts[r, k][None])[0].numpy() for k in range(n_s + 1)] for r in range(64)])
    ref_rgb, ref_acc = _ref_neus(sdf, inv_s, 0.5 * (rgb_pt[:, 1:] + rgb_pt[:, :-1]), 1.0)
    np.testing.assert_allclose(out["acc"].numpy(), ref_acc, atol=1e-9)
    np.testing.assert_allclose(out["rgb"].numpy(), ref_rgb, atol=1e-9)
    assert (ref_acc > 0.99).any() and (ref_acc < 0.01).any()  # rays that hit and rays that miss


def test_first_crossing_finds_the_sphere():
    f = _sphere_field(0.6)
    rng = np.random.default_rng(4)
    o = torch.tensor(rng.normal(size=(200, 3)), dtype=torch.float64)
    o = o / o.norm(dim=-1, keepdim=True) * 2.5
    d = -o + torch.tensor(rng.normal(size=(200, 3)) * 0.3, dtype=torch.float64)
    d = d / d.norm(dim=-1, keepdim=True)
    near, far = ray_aabb(o, d, f.lo, f.hi)
    t = f.first_crossing(o, d, near, far)
    b = (o * d).sum(-1)
    disc = b * b - ((o * o).sum(-1) - 0.36)
    hit = disc > 0
    t_ref = -b - torch.sqrt(disc.clamp_min(0))
    assert hit.sum() > 50 and (~hit).sum() > 10
    # Trilinear distance on a 33³ grid: the crossing is found to a small fraction of a voxel (1/16).
    assert (t[hit] - t_ref[hit]).abs().max() < 0.02
    # A miss ends about where the ray passes closest to the surface inside the box (dense float64 search).
    m = ~hit
    ts = near[m, None] + (far - near)[m, None] * torch.linspace(0, 1, 2001, dtype=torch.float64)
    f_min = (o[m, None] + d[m, None] * ts[..., None]).norm(dim=-1).amin(1) - 0.6
    f_got = (o[m] + d[m] * t[m, None]).norm(dim=-1) - 0.6
    assert (f_got <= 1.25 * f_min + 0.5 * f.voxel).all(), (f_got - f_min).max()


def test_depth_buffer_matches_ray_casting():
    import trimesh

    box = trimesh.creation.box(extents=(1.0, 0.6, 0.4))
    c2w = orbit_c2w(35.0, 20.0, 3.0)
    K = np.array([[50.0, 0, 16], [0, 50.0, 16], [0, 0, 1]])
    z = depth_buffer(torch.tensor(box.vertices), torch.tensor(box.faces), torch.tensor(c2w), torch.tensor(K), 32, 32).numpy()
    uv = np.stack(np.meshgrid(np.arange(32) + 0.5, np.arange(32) + 0.5), -1).reshape(-1, 2)
    o, d = generate_rays(torch.tensor(c2w)[None].expand(len(uv), 4, 4), torch.tensor(uv), torch.tensor(K))
    # Möller–Trumbore against every triangle, nearest hit per ray, in float64.
    ref = np.full(len(uv), np.inf)
    axis = -c2w[:3, 2]
    for a, b, c in box.vertices[box.faces]:
        e1, e2 = b - a, c - a
        p = np.cross(d.numpy(), e2)
        det = p @ e1
        s = o.numpy() - a
        u = (s * p).sum(1) / det
        q = np.cross(s, e1)
        v = (d.numpy() * q).sum(1) / det
        tt = (q @ e2) / det
        ok = (np.abs(det) > 1e-12) & (u >= 0) & (v >= 0) & (u + v <= 1) & (tt > 0)
        depth = tt * (d.numpy() @ axis)  # depth along the optical axis
        ref = np.where(ok, np.minimum(ref, depth), ref)
    hit = np.isfinite(ref)
    assert hit.sum() > 100
    np.testing.assert_array_equal(np.isfinite(z.reshape(-1)), hit)
    np.testing.assert_allclose(z.reshape(-1)[hit], ref[hit], atol=1e-9)


def test_rasterize_uv_covers_unit_square_once():
    uv = torch.tensor([[0.0, 0.0], [1.0, 0.0], [1.0, 1.0], [0.0, 1.0]], dtype=torch.float64)
    faces = torch.tensor([[0, 1, 2], [0, 2, 3]])
    rc, fid, bary = rasterize_uv(uv, faces, 16)
    covered = np.zeros((16, 16), int)
    np.add.at(covered, (rc[:, 0].numpy(), rc[:, 1].numpy()), 1)
    assert (covered >= 1).all()
    np.testing.assert_allclose(bary.sum(1).numpy(), 1.0)
    # Texel (row 15, col 15) is at uv (15.5/16, 0.5/16), where u > v: in face 0 only (uv origin bottom-left).
    k = np.nonzero((rc[:, 0] == 15).numpy() & (rc[:, 1] == 15).numpy())[0]
    assert fid[k].tolist() == [0]

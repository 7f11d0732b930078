"""Ray generation and volume rendering against slow float64 references."""

from __future__ import annotations

import math

import numpy as np
import torch

from mirage3d.cameras import orbit_c2w
from mirage3d.recon.field import VoxelField, distortion_loss, packed_weights, render_weights
from mirage3d.recon.views import generate_rays, ray_aabb, se3_exp


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


def test_se3_exp_is_rigid_and_matches_rodrigues():
    xi = torch.tensor([[0.3, -0.2, 0.1, 0.5, 0.0, -0.1], [0.0, 0.0, 0.0, 0.0, 0.0, 0.0]], dtype=torch.float64)
    T = se3_exp(xi)
    R = T[0, :3, :3]
    np.testing.assert_allclose((R.T @ R).numpy(), np.eye(3), atol=1e-12)
    np.testing.assert_allclose(T[1].numpy(), np.eye(4), atol=1e-12)
    from scipy.spatial.transform import Rotation

    np.testing.assert_allclose(R.numpy(), Rotation.from_rotvec(xi[0, :3].numpy()).as_matrix(), atol=1e-12)


def _ref_composite(tau: np.ndarray, rgb: np.ndarray, bg: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    # The obvious sequential loop: light passes sample after sample.
    R, S = tau.shape
    w = np.zeros((R, S))
    out = np.zeros((R, 3))
    for r in range(R):
        trans = 1.0
        for s in range(S):
            a = 1.0 - math.exp(-tau[r, s])
            w[r, s] = trans * a
            out[r] += w[r, s] * rgb[r, s]
            trans *= 1.0 - a
        out[r] += trans * bg
    return w, out, w.sum(1)


def test_render_weights_dense_and_packed_match_loop():
    g = torch.Generator().manual_seed(1)
    tau = torch.rand(7, 13, generator=g, dtype=torch.float64) * torch.rand(7, 1, generator=g, dtype=torch.float64) * 3
    rgb = torch.rand(7, 13, 3, generator=g, dtype=torch.float64)
    w_ref, c_ref, acc_ref = _ref_composite(tau.numpy(), rgb.numpy(), 1.0)
    w, _ = render_weights(tau)
    np.testing.assert_allclose(w.numpy(), w_ref, atol=1e-12)
    # Packed: drop some samples (empty space) and keep the order; weights of the rest are unchanged.
    keep = torch.rand(7, 13, generator=g) > 0.3
    tau_k = torch.where(keep, tau, torch.zeros_like(tau))
    w_ref_k, _, _ = _ref_composite(tau_k.numpy(), rgb.numpy(), 1.0)
    ray, s = torch.nonzero(keep, as_tuple=True)
    wp = packed_weights(tau[ray, s], ray, 7)
    np.testing.assert_allclose(wp.numpy(), w_ref_k[ray.numpy(), s.numpy()], atol=1e-12)


def test_distortion_loss_matches_quadratic_form():
    g = torch.Generator().manual_seed(2)
    t = torch.sort(torch.rand(5, 9, generator=g, dtype=torch.float64), dim=1).values
    w = torch.rand(5, 9, generator=g, dtype=torch.float64) / 9
    ray = torch.arange(5).repeat_interleave(9)
    got = distortion_loss(w.reshape(-1), t.reshape(-1), 0.05, ray, 5)
    ref = 0.0
    for r in range(5):
        ref += sum(w[r, i] * w[r, j] * abs(t[r, i] - t[r, j]) for i in range(9) for j in range(9))
        ref += sum(w[r, i] ** 2 * 0.05 for i in range(9)) / 3
    assert abs(float(got) - float(ref) / 5) < 1e-10


def test_field_render_matches_float64_reference():
    torch.manual_seed(0)
    f = VoxelField(np.array([-1.0, -0.8, -0.6]), 0.1, (21, 17, 13)).double()
    with torch.no_grad():
        f.density.normal_(0.0, 2.0)
        f.rgb.normal_(0.0, 1.0)
        f.occupancy[:, :, :4] = False  # an empty slab to skip
    c2w = orbit_c2w(30.0, 25.0, 3.0)
    K = np.array([[40.0, 0, 16], [0, 40.0, 16], [0, 0, 1]])
    uv = torch.rand(64, 2, dtype=torch.float64) * 32
    o, d = generate_rays(torch.tensor(c2w)[None].expand(64, 4, 4), uv, torch.tensor(K))
    step = 0.05
    out = f.render(o, d, step, bg=1.0, cull_eps=0.0, weight_eps=0.0)
    # Reference: every sample at near + (i + 1/2) step before far, density zero where unoccupied.
    near, far = ray_aabb(o, d, f.lo.double(), f.hi.double())
    n_s = int(math.ceil(float((f.hi - f.lo).norm()) / step)) + 1
    t = near[:, None] + (torch.arange(n_s, dtype=torch.float64) + 0.5) * step
    pts = (o[:, None] + d[:, None] * t[..., None]).reshape(-1, 3)
    with torch.no_grad():
        valid = (t < far[:, None]).reshape(-1) & f.occupied(pts)
        tau = torch.where(valid, f.sigma(pts) * step / f.voxel, torch.zeros(())).reshape(64, n_s).numpy()
        rgb = f.color(pts).reshape(64, n_s, 3).numpy()
    _, c_ref, acc_ref = _ref_composite(tau, rgb, 1.0)
    np.testing.assert_allclose(out["acc"].detach().numpy(), acc_ref, atol=1e-9)
    np.testing.assert_allclose(out["rgb"].detach().numpy(), c_ref, atol=1e-9)
    assert (acc_ref > 0.2).any() and (acc_ref < 0.99).any()  # the test sees partial and full opacity

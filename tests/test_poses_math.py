"""Pose discovery maths on synthetic inputs where the answer is known."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
import torch
from sklearn.metrics import adjusted_rand_score

from mirage3d.cameras import circular_difference, orbit_c2w, position_to_spherical
from mirage3d.poses.cameras import CameraConfig, load_cameras, make_cameras, write_cameras
from mirage3d.poses.cluster import best_involution, mirror_kmeans
from mirage3d.poses.descriptors import DescriptorConfig, fit_block_scales, part_descriptors
from mirage3d.poses.evaluate import azimuth_bins, best_alignment
from mirage3d.poses.facing import box_pool
from mirage3d.poses.model import LayoutModel
from mirage3d.poses.parts import fit_foreground_axis, fit_parts, fit_pca, kmeans
from mirage3d.poses.ring import cyclic_order, mirror_axis, ring_azimuths, tour_length


def test_kmeans_recovers_separated_blobs():
    g = torch.Generator().manual_seed(0)
    centres = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0], [10.0, 10.0]])
    truth = torch.arange(4).repeat_interleave(30)
    x = centres[truth] + 0.5 * torch.randn(120, 2, generator=g)
    c, labels, inertia = kmeans(x, 4, seed=1)
    assert adjusted_rand_score(truth.numpy(), labels.numpy()) == pytest.approx(1.0)
    assert inertia < 120 * 2 * 0.5**2 * 1.5


def test_fit_pca_matches_svd_reference():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 5)) @ np.diag([5.0, 3.0, 1.0, 0.5, 0.1]) @ np.linalg.qr(rng.normal(size=(5, 5)))[0]
    mean, comps = fit_pca(torch.as_tensor(x, dtype=torch.float32), 2)
    _, _, vt = np.linalg.svd(x - x.mean(0), full_matrices=False)
    np.testing.assert_allclose(mean.numpy(), x.mean(0), atol=1e-5)
    for i in range(2):
        assert abs(float(np.dot(comps[:, i].numpy(), vt[i]))) == pytest.approx(1.0, abs=1e-4)


def test_part_descriptor_known_values_and_flip():
    # 4x4 grid; object covers rows 1-2, all columns; part 0 on the left half, part 1 on the right half.
    parts = torch.zeros(1, 4, 4, dtype=torch.long)
    parts[0, :, 2:] = 1
    fg = torch.zeros(1, 4, 4)
    fg[0, 1:3, :] = 1.0
    d = part_descriptors(parts, fg, 2)[0]
    vis, loc, box = d[:2], d[2:6].view(2, 2), d[6]
    np.testing.assert_allclose(vis.numpy(), [0.5, 0.5], atol=1e-6)
    s = np.sqrt(0.5)
    # part 0 centroid x = 0.25 of a box spanning [0, 1] → 2·(0.25 − 0.5) = −0.5; y at the box centre → 0
    np.testing.assert_allclose(loc.numpy(), [[-0.5 * s, 0.0], [0.5 * s, 0.0]], atol=1e-6)
    assert float(box) == pytest.approx(np.log(1.0 / 0.5), abs=1e-6)  # box 4 wide, 2 high
    # Mirror: flipping the part map and mask keeps visibility and negates every x location.
    df = part_descriptors(parts.flip(2), fg.flip(2), 2)[0]
    np.testing.assert_allclose(df[:2].numpy(), vis.numpy(), atol=1e-6)
    np.testing.assert_allclose(df[2:6].view(2, 2)[:, 0].numpy(), -loc[:, 0].numpy(), atol=1e-6)
    np.testing.assert_allclose(df[2:6].view(2, 2)[:, 1].numpy(), loc[:, 1].numpy(), atol=1e-6)


def test_unseen_part_contributes_zero_location():
    parts = torch.zeros(1, 3, 3, dtype=torch.long)
    d = part_descriptors(parts, torch.ones(1, 3, 3), 3)[0]
    np.testing.assert_allclose(d[:3].numpy(), [1.0, 0.0, 0.0])
    np.testing.assert_allclose(d[3:9].numpy(), 0.0, atol=1e-6)  # part 0 centred, parts 1-2 unseen


def test_block_scales_balance_blocks():
    rng = np.random.default_rng(0)
    raw = torch.as_tensor(rng.normal(size=(500, 7)) * np.array([10, 10, 1, 1, 1, 1, 0.01]), dtype=torch.float32)
    scales = fit_block_scales(raw, 2, DescriptorConfig(w_visibility=1.0, w_location=2.0, w_box=0.5))
    z = raw * scales
    var = z.double().var(0, unbiased=False)
    assert float(var[:2].sum()) == pytest.approx(1.0, rel=1e-3)
    assert float(var[2:6].sum()) == pytest.approx(4.0, rel=1e-3)
    assert float(var[6:].sum()) == pytest.approx(0.25, rel=1e-3)


def test_layout_block_is_scaled_and_projects_on_principal_components():
    rng = np.random.default_rng(1)
    raw = torch.as_tensor(rng.normal(size=(400, 10)) * np.array([1, 1, 1, 1, 1, 1, 1, 50, 5, 0.5]), dtype=torch.float32)
    z = raw * fit_block_scales(raw, 2, DescriptorConfig(w_layout=2.0), layout_dims=3)
    assert float(z[:, 7:].double().var(0, unbiased=False).sum()) == pytest.approx(4.0, rel=1e-3)  # weight², whatever the spread
    pooled = torch.as_tensor(rng.normal(size=(60, 12)) * np.linspace(3, 0.1, 12), dtype=torch.float32)
    lm = LayoutModel.fit(pooled, 3, grid=2)
    torch.testing.assert_close(lm.components.T @ lm.components, torch.eye(3), atol=1e-5, rtol=0)
    # the first component is the direction of the largest spread (the first coordinate here)
    assert abs(float(lm.components[0, 0])) > 0.9
    feats, fg = torch.randn(3, 4, 4, 3), torch.ones(3, 4, 4)
    torch.testing.assert_close(lm.project(feats, fg), (box_pool(feats, fg, 2) - lm.mean) @ lm.components)


def _synthetic_patches(n=40, h=6, w=6, c=16, seed=0):
    """Features: background vector on a 1-patch border, object interior split into 3 parts by column."""
    g = torch.Generator().manual_seed(seed)
    protos = torch.randn(4, c, generator=g) * 3  # 0 = background, 1..3 = parts
    truth = torch.zeros(h, w, dtype=torch.long)
    truth[1:-1, 1:3], truth[1:-1, 3:4], truth[1:-1, 4:-1] = 1, 2, 3
    feats = protos[truth][None].repeat(n, 1, 1, 1) + 0.3 * torch.randn(n, h, w, c, generator=g)
    return feats, truth


def test_fit_parts_recovers_parts_and_feature_foreground():
    feats, truth = _synthetic_patches()
    fg_alpha = (truth > 0).float()[None].repeat(feats.shape[0], 1, 1)
    pm = fit_parts(feats, fg_alpha, torch.ones(feats.shape[0], dtype=torch.bool), 3, pca_dim=8, seed=0)
    assigned = pm.assign(feats)[:, truth > 0]  # (N, M) foreground patches
    assert adjusted_rand_score(truth[truth > 0].repeat(feats.shape[0]).numpy(), assigned.flatten().numpy()) == pytest.approx(1.0)
    # Without masks, the first principal component (border = background) recovers the object.
    fg = pm.feature_foreground(feats)
    assert float((fg == (truth > 0).float()).float().mean()) > 0.97
    mean, axis = fit_foreground_axis(feats)
    assert float(((torch.nn.functional.normalize(feats[:, 0, 0], dim=-1) - mean) @ axis).max()) < 0


def _all_involutions(k):
    for perm in itertools.permutations(range(k)):
        if all(perm[perm[i]] == i for i in range(k)):
            yield np.array(perm)


def test_best_involution_matches_brute_force():
    rng = np.random.default_rng(3)
    for _ in range(5):
        w = rng.normal(size=(6, 6))
        m = best_involution(w)
        assert all(m[m[i]] == i for i in range(6))
        best = max(sum(w[i, p[i]] for i in range(6)) for p in _all_involutions(6))
        assert sum(w[i, m[i]] for i in range(6)) == pytest.approx(best)


def test_best_involution_with_limited_fixed_points_matches_brute_force():
    rng = np.random.default_rng(4)
    for k, limit in [(6, 2), (6, 0), (7, 1), (7, 0), (8, 2)]:
        for _ in range(3):
            w = rng.normal(size=(k, k)) + 3 * np.eye(k)  # fixed points attractive: the limit must bind
            m = best_involution(w, max_fixed=limit)
            allowed = limit + (k - limit) % 2  # an odd remainder forces one more fixed point
            assert all(m[m[i]] == i for i in range(k)) and int((m == np.arange(k)).sum()) <= allowed
            best = max(sum(w[i, p[i]] for i in range(k)) for p in _all_involutions(k) if int((p == np.arange(k)).sum()) <= allowed)
            assert sum(w[i, m[i]] for i in range(k)) == pytest.approx(best)
    # Beyond the exact size the greedy fallback still honours the limit.
    w = rng.normal(size=(14, 14)) + 3 * np.eye(14)
    m = best_involution(w, max_fixed=2)
    assert all(m[m[i]] == i for i in range(14)) and int((m == np.arange(14)).sum()) <= 2


def _ring_data(n=800, seed=0, noise=0.05):
    rng = np.random.default_rng(seed)
    az = rng.uniform(0, 360, n)
    a = np.deg2rad(az)
    d = np.stack([np.cos(a), np.sin(a)], 1) + noise * rng.normal(size=(n, 2))
    f = np.stack([np.cos(-a), np.sin(-a)], 1) + noise * rng.normal(size=(n, 2))  # the flip is the view from −az
    return az, torch.as_tensor(d, dtype=torch.float32), torch.as_tensor(f, dtype=torch.float32)


def test_mirror_kmeans_finds_mirror_pairs():
    az, d, f = _ring_data()
    mc = mirror_kmeans(d, f, 8, seed=0, n_init=4)
    labels = mc.labels.numpy()
    # A mirror-symmetric partition of the circle has bins centred on 0° or bin edges on 0°: either is right.
    assert max(adjusted_rand_score(azimuth_bins(az + off, 8), labels) for off in (0.0, 22.5)) > 0.8
    assert all(mc.mirror[mc.mirror[k]] == k for k in range(8))
    # The mirror of a cluster holds the mirrored azimuths: compare circular means.
    mean_az = np.array([np.rad2deg(np.angle(np.exp(1j * np.deg2rad(az[labels == k])).mean())) for k in range(8)])
    assert np.max(circular_difference(mean_az[mc.mirror], -mean_az)) < 15.0
    assert mc.flip_agreement > 0.9


def test_cyclic_order_recovers_ring_with_wraparound():
    rng = np.random.default_rng(0)
    for k in (8, 15):  # exact (Held-Karp) and heuristic (2-opt)
        ang = np.sort(rng.uniform(0, 2 * np.pi, k))
        pts = np.stack([np.cos(ang), np.sin(ang)], 1)
        perm = rng.permutation(k)  # node i is point perm[i]
        dist = np.linalg.norm(pts[perm][:, None] - pts[perm][None], axis=-1)
        order = cyclic_order(dist)
        ring_pos = np.argsort(perm)[order[0]]
        seq = [int(perm[o]) for o in order]  # point indices visited: must be consecutive mod k, either way round
        steps = {(b - a) % k for a, b in zip(seq, seq[1:] + seq[:1], strict=True)}
        assert steps in ({1}, {k - 1}), (k, seq, ring_pos)


def test_held_karp_is_optimal_on_random_distances():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(7, 3))
    dist = np.linalg.norm(x[:, None] - x[None], axis=-1)
    order = cyclic_order(dist)
    best = min(tour_length([0, *p], dist) for p in itertools.permutations(range(1, 7)))
    assert tour_length(order, dist) == pytest.approx(best)
    assert sorted(order) == list(range(7))


@pytest.mark.parametrize("offset", [0.0, 45.0, 350.0])
def test_ring_azimuths_put_mirror_pairs_at_plus_minus(offset):
    k = 8
    true = np.mod(np.arange(k) * 45.0 + offset, 360)  # pose k's true azimuth; wraps around 360
    rng = np.random.default_rng(0)
    perm = rng.permutation(k)
    true = true[perm]
    pts = np.stack([np.cos(np.deg2rad(true)), np.sin(np.deg2rad(true))], 1)
    dist = np.linalg.norm(pts[:, None] - pts[None], axis=-1)
    # mirror pose: the one at −azimuth
    mirror = np.array([int(np.argmin(circular_difference(true, -t - 2 * offset))) for t in true])
    ring = ring_azimuths(dist, mirror)
    az = ring.azimuth_deg
    assert ring.mirror_residual_deg < 1e-6
    np.testing.assert_allclose(circular_difference(az[mirror], -az), 0.0, atol=1e-6)
    # Equal to the truth up to the documented ambiguity: reflection and front/back (a global rotation).
    ok = False
    for s in (1, -1):
        for rot in np.arange(0, 360, 0.25):
            if np.max(circular_difference(s * az + rot, true)) < 1e-6:
                ok = True
    assert ok


def test_mirror_axis_known():
    theta = np.array([10.0, 50.0, 90.0, 130.0])  # symmetric about 70° (and 250°)
    mirror = np.array([3, 2, 1, 0])
    alpha, resid = mirror_axis(theta, mirror)
    assert alpha == pytest.approx(70.0)
    assert resid == pytest.approx(0.0, abs=1e-9)


def test_azimuth_bins_wraparound():
    np.testing.assert_array_equal(azimuth_bins(np.array([0.0, 359.9, 22.4, 22.6, 337.4, 337.6, 180.0]), 8), [0, 0, 0, 1, 7, 0, 4])


@pytest.mark.parametrize("reflect", [False, True])
def test_best_alignment_recovers_rotation_and_reflection(reflect):
    rng = np.random.default_rng(0)
    true = rng.uniform(0, 360, 300)
    pred = np.mod((-true if reflect else true) + 123.0 + rng.normal(0, 5, 300), 360)
    med, rot, refl = best_alignment(pred, true)
    assert refl == reflect
    assert med < 5.0
    err = circular_difference((-pred if refl else pred) + rot, true)
    assert np.median(err) == pytest.approx(med)


def test_cameras_roundtrip_and_geometry(tmp_path):
    cams = make_cameras(np.array([0.0, 90.0, 200.0]), 64, CameraConfig())
    write_cameras(tmp_path, cams)
    back = load_cameras(tmp_path)
    assert [c.pose for c in back] == [0, 1, 2]
    for c, b in zip(cams, back, strict=True):
        np.testing.assert_allclose(b.c2w, orbit_c2w(c.azimuth_deg, c.elevation_deg, c.radius))
        az, el, r = position_to_spherical(b.c2w[:3, 3])
        assert float(circular_difference(az, c.azimuth_deg)) < 1e-6 and el == pytest.approx(17.5)
    data = json.loads((tmp_path / "cameras.json").read_text())
    assert data["num_poses"] == 3 and "assumptions" in data and len(data["cameras"][0]["transform_matrix"]) == 4


def test_score_order_runs_around_the_ring_from_facing_and_front_scores():
    from mirage3d.poses.ring import ring_azimuths, score_order

    rng = np.random.default_rng(0)
    k, per = 8, 50
    true_az = np.arange(k) * 45.0  # pose j sits at 45·j°
    perm = rng.permutation(k)  # pose ids shuffled against the ring
    labels = np.repeat(perm, per)
    phi = np.deg2rad(np.repeat(true_az, per) + rng.normal(0, 8, k * per))
    s = 3.0 * np.sin(phi) + rng.normal(0, 0.2, k * per)  # facing ~ sin φ, any scale
    r = -0.5 * np.cos(phi) + rng.normal(0, 0.05, k * per)  # front ~ cos φ, any scale and sign (a reflection)
    order = score_order(labels, s, r, k)
    ring_ids = [int(perm[j]) for j in range(k)]  # pose at 0°, 45°, ...
    i = order.index(ring_ids[0])
    rolled = order[i:] + order[:i]
    assert rolled in (ring_ids, [ring_ids[0], *ring_ids[:0:-1]])  # the ring, either way round (wrap-around included)
    mirror = np.empty(k, dtype=int)
    for j in range(k):
        mirror[perm[j]] = perm[(k - j) % k]  # φ → −φ
    ring = ring_azimuths(np.zeros((k, k)), mirror, order=order)
    az = ring.azimuth_deg[perm]  # azimuth of the poses at 0°, 45°, ...
    assert best_alignment(az, true_az)[0] < 0.1 and ring.mirror_residual_deg < 1e-6  # exact up to rotation/reflection
    assert np.isclose(az[0], 0.0) or np.isclose(az[0], 180.0)  # the self-mirror poses sit on the mirror axis
    with pytest.raises(ValueError, match="permutation"):
        ring_azimuths(np.zeros((k, k)), mirror, order=[0, 1, 2])


def test_clusters_from_labels_keeps_the_labels_and_scores_them():
    from mirage3d.poses.cluster import clusters_from_labels, joint_cost

    g = torch.Generator().manual_seed(0)
    d, f = torch.randn(40, 5, generator=g), torch.randn(40, 5, generator=g)
    labels = np.arange(40) % 4
    mirror = np.array([1, 0, 2, 3])
    mc = clusters_from_labels(d, f, labels, mirror)
    assert np.array_equal(mc.labels.numpy(), labels) and np.array_equal(mc.mirror, mirror)
    assert torch.allclose(mc.centres[2], d[labels == 2].mean(0), atol=1e-6)
    cost = joint_cost(d, f, mc.centres, mirror)
    assert torch.allclose(mc.cost, cost) and abs(mc.objective - float(cost[torch.arange(40), torch.as_tensor(labels)].sum())) < 1e-3

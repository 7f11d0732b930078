"""Fitting tiny analytic scenes: the surface, rendering at new cameras, camera refinement, metrics."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
import trimesh
from scipy.spatial.transform import Rotation

from mirage3d.cameras import orbit_c2w
from mirage3d.errors import InputError
from mirage3d.recon import ReconConfig, ViewSet, extract_mesh, fit_field, load_views
from mirage3d.recon.metrics import geometry_scores, psnr, ssim
from mirage3d.recon.synthetic import toy_car_views, write_sphere_views

CENTRE = np.array([0.1, -0.05, 0.0])


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def sphere_fit(tmp_path_factory):
    views = load_views(write_sphere_views(tmp_path_factory.mktemp("sphere"), n_views=8, res=48, radius=0.5, centre=tuple(CENTRE)))
    cfg = ReconConfig(iters=100, res=32, batch_rays=1024, faces=2000, seed=0)
    return views, cfg, fit_field(views, cfg)


def test_fit_recovers_sphere_radius_and_colour(sphere_fit):
    _views, cfg, fit = sphere_fit
    assert fit.psnr > 26.0
    mesh = extract_mesh(fit.field, replace(cfg, fair_unseen=False))  # the surface as fitted (no membrane below)
    r = np.linalg.norm(mesh.vertices - CENTRE, axis=1)
    assert abs(r.mean() - 0.5) < 0.02, r.mean()  # radius within 4 %
    assert r.std() < 0.02
    assert mesh.is_watertight and len(mesh.split(only_watertight=False)) == 1 and len(mesh.faces) <= 2000
    # The colour grid at the top of the sphere is the analytic colour there (normal +Z → (0.5, 0.5, 0.8)).
    top = torch.tensor([[*CENTRE[:2], 0.49]], dtype=torch.float32)
    np.testing.assert_allclose(fit.field.color(top).detach().numpy()[0], [0.5, 0.5, 0.8], atol=0.1)


def test_one_view_is_a_one_line_error(sphere_fit):
    views, cfg, _ = sphere_fit
    with pytest.raises(InputError, match="at least 2 views, got 1"):
        fit_field(views.subset([0]), cfg)


def test_fit_result_renders_new_cameras(sphere_fit):
    views, _, fit = sphere_fit
    c2w = np.stack([orbit_c2w(a, -30.0, 3.0, CENTRE) for a in (10.0, 200.0)])  # from below: never a training view
    out = fit.render(c2w, views.K, 40, 48)
    assert out.shape == (2, 40, 48, 4) and out.dtype == np.float32
    assert out.min() >= 0.0 and out.max() <= 1.0
    assert (out[:, 18:22, 22:26, 3] > 0.95).all() and (out[:, :3, :3, 3] < 0.05).all()  # the sphere in the middle, empty corners
    again = fit.render(views.c2w[:1], views.K, *views.hw)  # usable again; at a training camera it looks like the view
    a = again[0, ..., 3:]
    assert psnr(again[0, ..., :3] * a + 1 - a, views.rgb_on_white()[0]) > 24.0


@pytest.fixture(scope="module")
def toy_fit():
    views = toy_car_views(n_views=12, res=64)
    # The eikonal and Laplacian weights of the earlier defaults (0.1, 1e-3): with today's (0.01, 1e-2) at this
    # coarse grid, FitResult.align ends at 0.9-1.1° rather than under 0.95° (docs/recon.md)
    return views, fit_field(views, ReconConfig(iters=150, res=32, batch_rays=2048, seed=0, w_eikonal=0.1, w_laplacian=1e-3))


TURN_CENTRE = np.array([0.0, 0.0, 0.3])


def _turned(c2w: np.ndarray, deg_z: float, deg_tilt: float, centre: np.ndarray = TURN_CENTRE) -> np.ndarray:
    R = Rotation.from_euler("z", deg_z, degrees=True) * Rotation.from_rotvec(np.deg2rad(deg_tilt) * np.array([0.6, 0.0, 0.8]))
    out = c2w.copy()
    out[:3, :3] = R.as_matrix() @ c2w[:3, :3]
    out[:3, 3] = R.apply(c2w[:3, 3] - centre) + centre
    return out


def _rot_err(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.rad2deg(Rotation.from_matrix(np.einsum("nij,nkj->nik", a[:, :3, :3], b[:, :3, :3])).magnitude())


def test_align_recovers_known_camera_errors(toy_fit):
    """Cameras turned 3-5° about the object (and 2° about a tilted axis) are registered back to the fitted
    surface to within 1°; the reference view does not move."""
    views, fit = toy_fit
    bad = views.c2w.copy()
    for i, deg in ((3, 5.0), (5, -4.0), (8, 3.0)):
        bad[i] = _turned(views.c2w[i], deg, 2.0)
    moved = ViewSet(views.rgba, bad, views.K, reference=0)
    assert _rot_err(bad, views.c2w).max() > 4.0
    got = fit.align(moved)
    assert _rot_err(got, views.c2w).max() < 1.0, _rot_err(got, views.c2w)
    np.testing.assert_allclose(got[0], views.c2w[0], atol=1e-6)


def test_auto_hull_misses_is_zero_for_generated_views():
    """hull_misses -1: for views with a reference (an input photo among generated views) every mask carves;
    for views without one, the volume rule allows a miss, so one view with half its mask gone removes nothing."""
    from mirage3d.recon.fit import carve

    views = toy_car_views(n_views=8, res=32)
    rgba = views.rgba.copy()
    rgba[2, :, 16:, 3] = 0.0  # view 2 loses the right half of its silhouette
    lin = torch.linspace(-1.2, 1.2, 25, dtype=torch.float64)
    pts = torch.stack(torch.meshgrid(lin, lin, lin, indexing="ij"), -1).reshape(-1, 3)
    exact = carve(ViewSet(views.rgba, views.c2w, views.K), pts, dilate_px=0, misses=0)  # the hull of all 8 masks
    only_cut = carve(ViewSet(rgba[2:3], views.c2w[2:3], views.K), pts, dilate_px=0, misses=0)
    cut = exact & ~only_cut
    assert int(cut.sum()) > 0  # the cut mask removes part of the true hull
    plain = carve(ViewSet(rgba, views.c2w, views.K), pts, dilate_px=0, misses=-1)
    generated = carve(ViewSet(rgba, views.c2w, views.K, reference=0), pts, dilate_px=0, misses=-1)
    assert bool(plain[cut].all())  # no reference: the volume rule lets view 2 miss
    assert torch.equal(generated, exact & only_cut)  # a reference: no misses, view 2's cut carves


def test_silhouette_coherence_turns_cameras_back():
    """16 views of the toy car on one ring, every camera but the reference turned up to 8° about the object
    (and 2° about a tilted axis): the masks alone bring the mean error from 5.4° under half of it (1.4° here)."""
    from mirage3d.recon.cameras import silhouette_coherence
    from mirage3d.recon.fit import scene_box

    views = toy_car_views(n_views=16, res=96, elevations=(20.0,))
    rng = np.random.default_rng(0)
    bad = np.stack([m if i == 0 else _turned(m, rng.uniform(-8, 8), 2.0) for i, m in enumerate(views.c2w)])
    moved = ViewSet(views.rgba, bad, views.K, reference=0)
    lo, hi = scene_box(moved, ReconConfig(hull_misses=4, hull_dilate_px=1), margin=0.05)
    got = silhouette_coherence(moved, lo, hi, iters=150, shared_elevation=False)
    before, after = _rot_err(bad, views.c2w), _rot_err(got, views.c2w)
    assert before.mean() > 5.0 and after.mean() < 0.5 * before.mean(), (before.mean(), after)
    np.testing.assert_allclose(got[0], views.c2w[0], atol=1e-6)  # the reference does not move


def test_silhouette_agreement_separates_exact_from_turned_cameras():
    """The share of each mask covered by the hull of the other views: (almost) all of it with exact cameras,
    for 6 or 16 views alike; with 16 views, cameras turned by up to ±10° leave part of the masks uncovered
    (with 6, the hull of the other five is loose enough to cover most of a turned view's mask)."""
    from mirage3d.recon.cameras import silhouette_agreement
    from mirage3d.recon.fit import scene_box

    for n in (6, 16):
        views = toy_car_views(n_views=n, res=64, elevations=(20.0,))
        rng = np.random.default_rng(1)
        bad = np.stack([_turned(m, rng.uniform(-10, 10), 3.0) for m in views.c2w])
        lo, hi = scene_box(views, ReconConfig(hull_misses=0), margin=0.05)
        exact = silhouette_agreement(views, lo, hi)
        turned = silhouette_agreement(ViewSet(views.rgba, bad, views.K), lo, hi)
        assert exact.shape == (n,) and exact.min() > 0.97, exact
        if n == 16:
            assert turned.mean() < exact.mean() - 0.03 and turned.mean() < ReconConfig().agreement, turned


def test_refinement_in_the_fit_reduces_a_camera_error():
    """The joint stage of refinement (the pose stage, without the silhouette coherence before it) with one
    view turned 4.5° about the object: that error more than halves and no view ends beyond 1.5° (the joint
    fit is weaker than ``align``: the field partly bends to fit the wrong view; docs/recon.md)."""
    views = toy_car_views(n_views=12, res=64)
    true = views.c2w.copy()
    views.c2w = views.c2w.copy()
    views.c2w[5] = _turned(true[5], 4.0, 2.0)
    views.reference = 0
    before = _rot_err(views.c2w, true)[5]
    cfg = ReconConfig(
        iters=60,
        res=32,
        batch_rays=2048,
        pose_batch_rays=2048,
        refine_cameras=True,
        pose_iters=120,
        coherence_iters=0,
        seed=0,
        shared_elevation=False,
        shared_focal=False,
    )
    err = _rot_err(fit_field(views, cfg).c2w, true)
    assert err[5] < 0.5 * before and err.max() < 1.5 * max(1.0, err[5]), (before, err)
    assert err[0] < 1e-4  # the reference does not move


def test_refinement_keeps_exact_cameras():
    """Refinement (aim, silhouette coherence, pose stage) on exact views: the coherence step's cameras are kept
    only if the masks agree better with them, so exact cameras stay within 1° (on this low-resolution scene
    the coherence step alone moves them by 2-3°)."""
    views = toy_car_views(n_views=12, res=64)
    views.reference = 0
    cfg = ReconConfig(iters=30, res=32, batch_rays=2048, pose_batch_rays=2048, refine_cameras=True, pose_iters=60, seed=0)
    err = _rot_err(fit_field(views, cfg).c2w, views.c2w)
    assert err.max() < 1.0, err


def test_geometry_scores_identity_and_offset():
    a = trimesh.creation.icosphere(subdivisions=3, radius=1.0)
    s = geometry_scores(a, a, n=20000)  # two independent samplings of one surface: small, not zero
    assert s.chamfer_l1 < 0.02 and s.fscore[0.02] > 0.95
    b = a.copy()
    b.apply_translation([0.2, 0, 0])  # 0.2 is 5.8 % of the diagonal (2√3): fails F@1 %, F@2 %
    s2 = geometry_scores(b, a, n=20000)
    assert s2.chamfer_l1 > 0.05 and s2.fscore[0.01] < 0.5 and s2.fscore[0.02] < s.fscore[0.02]


def test_psnr_ssim():
    rng = np.random.default_rng(0)
    x = rng.uniform(size=(32, 32, 3))
    assert ssim(x, x) == pytest.approx(1.0)
    assert psnr(x, np.clip(x + 0.1, 0, 1)) == pytest.approx(20.0, abs=0.8)
    assert ssim(x, rng.uniform(size=(32, 32, 3))) < 0.2


@pytest.mark.parametrize("with_open3d", [True, False])
def test_decimate_reaches_target_with_or_without_open3d(monkeypatch, with_open3d):
    import builtins

    from mirage3d.recon.mesh import decimate

    if not with_open3d:
        real_import = builtins.__import__

        def no_open3d(name, *args, **kwargs):
            if name == "open3d":
                raise ImportError("open3d hidden by the test")
            return real_import(name, *args, **kwargs)

        monkeypatch.setattr(builtins, "__import__", no_open3d)
    sphere = trimesh.creation.icosphere(subdivisions=5)  # 20,480 faces
    small = decimate(sphere, 2000)
    assert 1500 <= len(small.faces) <= 2100
    # still a closed sphere of the same size
    assert abs(np.linalg.norm(small.vertices, axis=1).mean() - 1.0) < 0.02
    assert decimate(small, 5000) is small  # already below the target: untouched

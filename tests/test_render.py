"""Rendering: projection agrees with the intrinsics, normalisation, appearance, determinism, ground truth, orbits."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import trimesh
from PIL import Image

from mirage3d.cameras import look_at, orbit_c2w, position_to_spherical, project_points
from mirage3d.data import meshes as M
from mirage3d.data import render as R
from mirage3d.errors import InputError
from mirage3d.io import read_transforms

SHARED = Path(__file__).resolve().parents[2] / "shared" / "meshes"
needs_shared = pytest.mark.skipif(not (SHARED / "cars").is_dir(), reason="shared meshes not found beside the repo")
COP = SHARED / "cars" / "quaternius-realistic-Cop.glb"
SEDAN = SHARED / "cars" / "kenney" / "sedan.glb"
FLAT = R.Lighting((0.0, 0.0, 1.0), 0.0, 1.0)  # ambient only: every pixel of a one-colour mesh has one colour


def _sphere_at(tmp_path: Path, centre: np.ndarray, radius: float, rgb=(0.8, 0.3, 0.1)) -> M.NormalisedMesh:
    """A NormalisedMesh whose world frame is its own frame (identity normalisation): a sphere at ``centre``."""
    s = trimesh.creation.icosphere(subdivisions=3, radius=radius)
    s.apply_translation(centre)
    s.visual = trimesh.visual.TextureVisuals(material=trimesh.visual.material.PBRMaterial(baseColorFactor=[*rgb, 1.0]))
    info = M.MeshInfo("sphere", "test", "+Z", True, "synthetic")
    return M.NormalisedMesh(info, tmp_path / f"sphere_{centre.tolist()}.glb", [s], np.eye(4), None)


@pytest.mark.parametrize("az,el", [(0.0, 10.0), (137.0, 30.0), (359.5, -20.0)])
def test_small_sphere_lands_where_intrinsics_say(tmp_path: Path, az: float, el: float) -> None:
    centre = np.array([0.3, -0.25, 0.2])
    nm = _sphere_at(tmp_path, centre, 0.06)
    intr = R.Intrinsics(fl_x=70.0, fl_y=74.0, cx=30.5, cy=33.0, w=64, h=64)  # off-centre, non-square pixels
    c2w = orbit_c2w(az, el, 2.5)
    (img,) = R.render_views(nm, [c2w], intr, lighting=FLAT)
    a = img[..., 3].astype(np.float64)
    assert a.sum() > 0
    ys, xs = np.mgrid[0:64, 0:64] + 0.5  # pixel centres at +0.5
    centroid = np.array([(a * xs).sum(), (a * ys).sum()]) / a.sum()
    uv, depth = project_points(centre[None], c2w, intr.K)
    assert depth[0] > 0
    np.testing.assert_allclose(centroid, uv[0], atol=0.3)


def test_alpha_is_coverage_and_colour_is_not_premultiplied(tmp_path: Path) -> None:
    nm = _sphere_at(tmp_path, np.zeros(3), 0.5, rgb=(0.9, 0.5, 0.2))
    (img,) = R.render_views(nm, [orbit_c2w(20.0, 10.0, 3.0)], R.Intrinsics(60.0, 60.0, 16.0, 16.0, 32, 32), lighting=FLAT)
    a = img[..., 3]
    edge = (a > 40) & (a < 215)
    assert edge.sum() >= 8 and (a == 0).sum() > 0 and (a == 255).sum() > 0
    inside = img[a == 255][:, :3].astype(int).mean(axis=0)
    # Un-premultiplied edge pixels keep the object's colour (a premultiplied edge would be darker).
    assert np.abs(img[edge][:, :3].astype(int) - inside).max() <= 6


def test_normalisation_maps_mesh_front_to_world_x_and_unit_sphere() -> None:
    # A box 1 wide (x), 2 tall (y, up), 4 long (z, front), with its corner at the origin.
    v = trimesh.creation.box(extents=[1.0, 2.0, 4.0]).vertices + np.array([0.5, 1.0, 2.0]) + 3.0
    for axis, long_world in [("+Z", 0), ("-Z", 0), ("+X", 1), ("-X", 1)]:
        m = M.normalisation_matrix(v, axis)
        w = v @ m[:3, :3].T + m[:3, 3]
        ext = np.ptp(w, axis=0)
        np.testing.assert_allclose(0.5 * (w.min(0) + w.max(0)), 0.0, atol=1e-12)
        np.testing.assert_allclose(np.linalg.norm(w, axis=1).max(), 1.0)
        assert np.argmax(ext) == long_world
        assert np.isclose(ext[2], ext.max() / 2.0)  # mesh +Y (2 of 4) is world +Z
        assert np.linalg.det(m[:3, :3]) > 0  # a rotation, never a mirror
    # The front direction itself: mesh +Z goes to world +X with "+Z", and mesh -Z goes to +X with "-Z".
    for axis, front in [("+Z", [0, 0, 1]), ("-Z", [0, 0, -1]), ("+X", [1, 0, 0])]:
        r = M.normalisation_matrix(v, axis)[:3, :3]
        d = r @ np.array(front, dtype=float)
        np.testing.assert_allclose(d / np.linalg.norm(d), [1.0, 0.0, 0.0], atol=1e-12)


def test_recolour_changes_paint_keeps_black_and_canonical_is_identity() -> None:
    cols = np.array([[0.64, 0.27, 0.09], [0.56, 0.23, 0.07], [0.01, 0.01, 0.01], [0.6, 0.08, 0.06]])  # orange, dark orange, black, red
    paint = cols[0]
    canon = M.recolour_factor(cols[0], paint, M.appearance_params(0))
    np.testing.assert_allclose(canon, cols[0], atol=1e-12)
    p = M.AppearanceParams(paint_hsv=(0.6, 0.7, 0.8), hue_shift=0.0, value_scale=1.0)
    out = M._recolour(cols, paint, p)
    hsv = M.rgb_to_hsv(out)
    np.testing.assert_allclose(hsv[0], [0.6, 0.7, 0.8], atol=1e-9)  # paint → new colour
    assert np.isclose(hsv[1, 0], 0.6) and hsv[1, 2] < hsv[0, 2]  # the darker shade stays darker
    np.testing.assert_allclose(out[2], cols[2])  # black trim untouched
    np.testing.assert_allclose(out[3], cols[3], atol=1e-9)  # red tail lights are not paint


def test_mesh_table_covers_shared_cars_with_verified_fronts() -> None:  # the 15 of cars/ and the 2 of cars-more/
    table = M.load_mesh_table()
    cars = [k for k, v in table.items() if v.category == "car"]
    assert len(cars) == 17 and all(table[k].verified and table[k].front_axis == "+Z" for k in cars)
    assert table["quaternius-Public_SchoolBus"].front_axis == "-Z"


@needs_shared
def test_front_view_is_azimuth_zero_for_a_car() -> None:
    # Tail lights (saturated red) are seen from behind (azimuth 180), not from the front (azimuth 0).
    intr = R.Intrinsics(110.0, 110.0, 48.0, 48.0, 96, 96)
    car = SHARED / "cars" / "quaternius-realistic-NormalCar1.glb"  # blue body, no roof light bar
    front, back = R.render_views(car, [orbit_c2w(0.0, 10.0, 3.3), orbit_c2w(180.0, 10.0, 3.3)], intr)

    def red(img: np.ndarray) -> int:
        r, g, b = (img[..., k].astype(int) for k in range(3))
        return int(((r > 2 * g + 30) & (r > 2 * b + 30) & (img[..., 3] > 0)).sum())

    assert red(back) > 5 * max(red(front), 1)


@needs_shared
def test_ground_truth_is_consistent_and_deterministic_across_workers(tmp_path: Path) -> None:
    src = tmp_path / "meshes"
    (src / "kenney").mkdir(parents=True)
    shutil.copy(COP, src)
    shutil.copy(SEDAN, src / "kenney")
    shutil.copytree(SEDAN.parent / "Textures", src / "kenney" / "Textures")
    cfg = R.RenderConfig(n_per_mesh=3, res=32, seed=7)
    r1 = R.render_collection(src, tmp_path / "a", cfg)
    R.render_collection(src, tmp_path / "b", R.RenderConfig(n_per_mesh=3, res=32, seed=7, workers=2))
    R.render_collection(src, tmp_path / "c", R.RenderConfig(n_per_mesh=3, res=32, seed=8))
    assert r1.n_images == 6 and r1.mesh_ids == ["sedan", "quaternius-realistic-Cop"]  # sorted by path, subfolders included
    sedan_world = R._world_vertices(M.load_normalised(src / "kenney" / "sedan.glb"))
    for k in range(6):
        name = f"images/{k:06d}.png"
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    assert any((tmp_path / "a" / f"images/{k:06d}.png").read_bytes() != (tmp_path / "c" / f"images/{k:06d}.png").read_bytes() for k in range(6))
    lines = [json.loads(x) for x in (tmp_path / "a" / "ground_truth.jsonl").read_text().splitlines()]
    assert (tmp_path / "a" / "ground_truth.jsonl").read_text() == (tmp_path / "b" / "ground_truth.jsonl").read_text()
    assert [x["index"] for x in lines] == list(range(6))
    for g in lines:
        c2w = np.array(g["c2w"])
        az, el, r = position_to_spherical(c2w[:3, 3])
        assert np.isclose(az, g["azimuth_deg"]) and np.isclose(el, g["elevation_deg"]) and np.isclose(r, g["distance"])
        np.testing.assert_allclose(c2w, look_at(c2w[:3, 3]), atol=1e-12)  # looks at the centred object, +Z up
        assert 0.0 <= g["elevation_deg"] <= 35.0 and g["w"] == g["h"] == 32 and g["appearance_seed"] > 0
        img = np.asarray(Image.open(tmp_path / "a" / g["file"]))
        assert img.shape == (32, 32, 4) and img[..., 3].max() == 255 and img[0, 0, 3] == 0
        # The object is centred: its alpha centroid is near the principal point.
        a = img[..., 3].astype(float)
        ys, xs = np.mgrid[0:32, 0:32] + 0.5
        assert abs((a * xs).sum() / a.sum() - g["cx"]) < 4 and abs((a * ys).sum() / a.sum() - g["cy"]) < 4
        if g["mesh_id"] == "sedan":  # scale jitter is re-normalised: the bounding radius stays 1
            assert not np.allclose(g["scale"], 1.0) and np.isclose(np.linalg.norm(sedan_world * g["scale"], axis=1).max(), 1.0)


@needs_shared
def test_orbit_folder_reads_back_with_true_mesh(tmp_path: Path) -> None:
    cfg = R.RenderConfig(n_per_mesh=1, res=32, orbits=4, orbit_elev=20.0)
    res = R.render_collection(COP, tmp_path / "c", cfg)
    t = read_transforms(res.orbit_dirs[0])
    assert len(t.frames) == 4 and (t.w, t.h) == (32, 32) and t.extra["appearance_seed"] == 0
    az, el, _ = position_to_spherical(t.c2w()[:, :3, 3])
    np.testing.assert_allclose(az, [0.0, 90.0, 180.0, 270.0], atol=1e-9)
    np.testing.assert_allclose(el, 20.0)
    mesh = trimesh.load(res.orbit_dirs[0] / "mesh.glb", force="mesh")
    v = mesh.vertices
    np.testing.assert_allclose(0.5 * (v.min(0) + v.max(0)), 0.0, atol=1e-5)
    assert np.isclose(np.linalg.norm(v, axis=1).max(), 1.0, atol=1e-5)
    assert np.argmax(np.ptp(v, axis=0)) == 0  # the car's length is along world X (front +X)


def test_bad_inputs(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="does not exist"):
        R.render_collection(tmp_path / "nope", tmp_path / "o", R.RenderConfig())
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "README.md").write_text("no meshes here")
    with pytest.raises(InputError, match="no mesh files"):
        R.render_collection(tmp_path / "empty", tmp_path / "o", R.RenderConfig())
    with pytest.raises(InputError, match="not a mesh file"):
        R.render_collection(tmp_path / "empty" / "README.md", tmp_path / "o", R.RenderConfig())
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "broken.glb").write_bytes(b"glTF\x02\x00\x00\x00garbage")
    with pytest.raises(InputError, match="cannot read mesh"):
        R.render_collection(tmp_path / "bad", tmp_path / "o", R.RenderConfig(n_per_mesh=1, res=32))
    with pytest.raises(InputError, match="--res"):
        R.render_collection(tmp_path / "bad", tmp_path / "o", R.RenderConfig(res=8))
    with pytest.raises(InputError, match="--elev-min"):
        R.check_config(R.RenderConfig(elev_min=40.0, elev_max=10.0))
    assert not (tmp_path / "o").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".o")]  # no temporary folder left behind


@needs_shared
def test_mesh_missing_from_table_is_front_z_unverified(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    shutil.copy(COP, tmp_path / "my-new-car.glb")
    with caplog.at_level("WARNING"):
        R.render_collection(tmp_path / "my-new-car.glb", tmp_path / "c", R.RenderConfig(n_per_mesh=1, res=32))
    (g,) = [json.loads(x) for x in (tmp_path / "c" / "ground_truth.jsonl").read_text().splitlines()]
    assert g["mesh_id"] == "my-new-car" and g["front_verified"] is False
    assert "not in mirage3d/data/meshes.json" in caplog.text
    cfg = json.loads((tmp_path / "c" / "config.json").read_text())
    assert cfg["meshes"]["my-new-car"]["front_axis"] == "+Z" and cfg["meshes"]["my-new-car"]["verified"] is False


def test_deformation_keeps_mirror_symmetry_ground_and_ends() -> None:
    rng = np.random.default_rng(0)
    half = rng.uniform(-1, 1, size=(200, 3)) * [1.0, 0.5, 0.4]
    pts = np.concatenate([half, half * [1.0, -1.0, 1.0]])  # mirror-symmetric about y = 0
    coeffs = rng.uniform(-0.3, 0.3, size=R.N_DEFORM)
    out = R.deform_vertices(pts, coeffs, pts)
    np.testing.assert_allclose(out[200:], out[:200] * [1.0, -1.0, 1.0], atol=1e-12)  # still symmetric
    assert not np.allclose(out, pts)
    low = np.isclose(pts[:, 2], pts[:, 2].min())
    np.testing.assert_allclose(out[low, 2], pts[low, 2])  # the ground stays
    ends = np.isclose(np.abs(pts[:, 0]), np.abs(pts[:, 0]).max())
    np.testing.assert_allclose(out[ends, 0], pts[ends, 0], atol=1e-12)  # the length stays
    np.testing.assert_allclose(R.deform_vertices(pts, np.zeros(R.N_DEFORM), pts), pts)


def test_deformed_collection_records_its_deformation_and_keeps_radius_one(tmp_path: Path) -> None:
    box = trimesh.creation.box(extents=[0.6, 0.5, 1.6])  # glTF +Y up, long along Z (front +Z)
    box.visual = trimesh.visual.TextureVisuals(material=trimesh.visual.material.PBRMaterial(baseColorFactor=[0.8, 0.2, 0.2, 1.0]))
    box = box.subdivide().subdivide()
    box.export(tmp_path / "box.glb")
    plain = R.render_collection(tmp_path / "box.glb", tmp_path / "plain", R.RenderConfig(n_per_mesh=3, res=32, seed=1))
    bent = R.render_collection(tmp_path / "box.glb", tmp_path / "bent", R.RenderConfig(n_per_mesh=3, res=32, seed=1, deform=0.3))
    assert plain.n_images == bent.n_images == 3
    g_plain = [json.loads(x) for x in (tmp_path / "plain" / "ground_truth.jsonl").read_text().splitlines()]
    g_bent = [json.loads(x) for x in (tmp_path / "bent" / "ground_truth.jsonl").read_text().splitlines()]
    world = R._world_vertices(M.load_normalised(tmp_path / "box.glb"))
    for p, b in zip(g_plain, g_bent, strict=True):
        assert "deform" not in p and len(b["deform"]) == R.N_DEFORM
        assert p["azimuth_deg"] == b["azimuth_deg"] and p["appearance_seed"] == b["appearance_seed"]  # other draws unchanged
        dv = R.deform_vertices(world, np.array(b["deform"]), world) * b["scale"]
        assert np.isclose(np.linalg.norm(dv, axis=1).max(), 1.0)  # framing: bounding radius 1 after the deformation
    a = [np.asarray(Image.open(tmp_path / d / g["file"]))[..., 3] for d, g in (("plain", g_plain[0]), ("bent", g_bent[0]))]
    assert (a[0] > 127).sum() > 20 and np.abs(a[0].astype(int) - a[1].astype(int)).max() > 100  # the silhouette changed
    with pytest.raises(InputError, match="--deform"):
        R.check_config(R.RenderConfig(deform=0.6))

"""Poses from each object's ring of views (mirage3d.poses.rings, `poses discover --by-object`)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import trimesh
from sklearn.metrics import adjusted_rand_score
from typer.testing import CliRunner

from mirage3d.cameras import circular_difference
from mirage3d.cli.main import app
from mirage3d.errors import InputError
from mirage3d.poses.evaluate import azimuth_bins, best_alignment
from mirage3d.poses.rings import MIN_VIEWS, near_side_motion, object_ring, ring_direction, ring_poses, unfold


def _views(theta_deg: np.ndarray, identity: np.ndarray, rng: np.random.Generator, basis: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Descriptors of views at ``theta_deg`` of one object of a category, and of their mirror images: a fixed
    map of the viewpoint's harmonics (shared by the category; not symmetric under a half turn), plus the object's
    identity, plus noise. The mirror image of the view at θ is the view at −θ."""

    def feats(t: np.ndarray) -> np.ndarray:
        r = np.radians(t)[:, None]
        h = np.concatenate([np.cos(r * [1, 2, 3]), np.sin(r * [1, 2, 3])], 1)
        return h @ basis + identity + rng.normal(0, 0.02, (len(t), basis.shape[1]))

    return feats(theta_deg), feats(-theta_deg)


def _category(n_objects: int, views: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    basis = rng.normal(size=(6, 24))
    d, f, obj, true = [], [], [], []
    for o in range(n_objects):
        t = rng.uniform(0, 360, views)
        a, b = _views(t, rng.normal(0, 3.0, 24), rng, basis)  # identities far apart: clustering across objects fails
        d.append(a), f.append(b), obj.append(np.full(views, o)), true.append(t)
    return np.concatenate(d), np.concatenate(f), np.concatenate(obj), np.concatenate(true)


def test_one_objects_ring_follows_its_viewpoint() -> None:
    d, _, _, true = _category(1, 40)
    phi = np.degrees(object_ring(d))
    assert best_alignment(phi, true)[0] < 10.0  # up to a rotation and a direction, the ring is the viewpoint
    assert np.array_equal(phi, np.degrees(object_ring(d)))  # the same tour every time


def test_unfold_repairs_a_folded_tour_and_keeps_a_round_one() -> None:
    n = 40  # images k at azimuth 9k degrees; the mirror image of image k is image -k
    partner = (-np.arange(n)) % n
    true = np.arange(n) * 9.0
    folded = [*range(0, 21), *range(39, 20, -1)]  # front -> back along one side, jump to the front, the other side -> back
    round_tour = list(range(n))
    dist = np.abs(np.exp(1j * np.radians(true))[:, None] - np.exp(1j * np.radians(true))[None])  # chords of the ring
    assert unfold(round_tour, partner, dist) == round_tour
    tour = unfold(folded, partner, dist)
    assert sorted(tour) == round_tour

    def mean_error(order: list[int]) -> float:  # after the best rotation and direction (a median would hide a fold)
        phi = np.empty(n)
        phi[np.asarray(order)] = np.arange(n) * 9.0
        _, rot, reflected = best_alignment(phi, true)
        return float(np.mean(circular_difference((-phi if reflected else phi) + rot, true)))

    assert mean_error(tour) < 1.0  # every image back in its place
    assert mean_error(folded) > 20.0  # the folded tour had half of them on the wrong side


def test_ring_poses_put_every_object_in_one_frame() -> None:
    d, f, obj, true = _category(5, 40)
    rp = ring_poses(d, f, obj, 8)
    err, rot, refl = best_alignment(rp.angle_deg, true)
    aligned = np.mod((-rp.angle_deg if refl else rp.angle_deg) + rot, 360)
    per_object = [float(np.median(circular_difference(aligned[obj == o], true[obj == o]))) for o in range(5)]
    assert (
        max(per_object) < 20.0
    )  # (40 random views: evenly spaced ranks are ~10 deg off) each object's front/back and direction were found, not only its ring
    assert min(circular_difference(np.array([rot]), np.array([0.0, 180.0]))) < 20.0  # angle 0 sits on the mirror axis
    assert adjusted_rand_score(azimuth_bins(true, 8), rp.labels) > 0.4
    assert rp.mirror.tolist() == [0, 7, 6, 5, 4, 3, 2, 1] and rp.azimuth_deg.tolist() == [45.0 * k for k in range(8)]
    # the descriptors alone, clustered, follow the objects: what the ring method gets around
    from sklearn.cluster import KMeans

    km = KMeans(8, n_init=4, random_state=0).fit_predict(d)
    assert adjusted_rand_score(azimuth_bins(true, 8), km) < 0.2


def _textured_object(shift: int, size: int = 64) -> np.ndarray:
    """An RGBA image: a smooth random texture in a box (the object) on transparent, its content moved ``shift``
    pixels to the right."""
    import cv2

    rng = np.random.default_rng(0)
    tex = cv2.GaussianBlur(rng.uniform(0, 255, (size, 2 * size)).astype(np.float32), (0, 0), 2.0)
    im = np.zeros((size, size, 4), dtype=np.uint8)
    im[16:48, 12:52, :3] = tex[16:48, 12 + size // 2 - shift : 52 + size // 2 - shift, None].clip(0, 255).astype(np.uint8)
    im[16:48, 12:52, 3] = 255
    return im


def test_motion_sets_the_direction_of_a_ring() -> None:
    assert (
        near_side_motion(_textured_object(0), _textured_object(-2)) < -0.5
    )  # the texture moved left (measured -1.1: the still edges of the box pull)
    assert near_side_motion(_textured_object(0), _textured_object(2)) > 0.5
    empty = np.zeros((64, 64, 4), dtype=np.uint8)
    assert near_side_motion(empty, empty) == 0.0  # nothing in common: no vote
    views = [_textured_object(-2 * k) for k in range(10)]  # turning: the near side moves left view by view
    theta = np.radians(np.arange(10) * 36.0)
    shuffled = np.random.default_rng(1).permutation(10)
    assert ring_direction(theta[shuffled], lambda i: views[shuffled[i]]) == 1  # θ grows as the near side moves left
    assert ring_direction(-theta[shuffled], lambda i: views[shuffled[i]]) == -1


def test_ring_poses_refuse_small_objects_and_empty_poses() -> None:
    d, f, obj, _ = _category(2, MIN_VIEWS)
    with pytest.raises(InputError, match=f"at least {MIN_VIEWS} views"):
        ring_poses(d[1:], f[1:], obj[1:], 4)
    with pytest.raises(InputError, match="fewer poses"):
        ring_poses(d, f, obj, 32)


def _car_like_mesh(path: Path, length: float, rgb: list[float]) -> Path:
    """A body with its cabin towards the back and a lamp bar in front (glTF: +Y up, front +Z)."""
    body = trimesh.creation.box(extents=[0.8, 0.45, length])
    cabin = trimesh.creation.box(extents=[0.7, 0.4, 0.45 * length])
    cabin.apply_translation([0.0, 0.42, -0.18 * length])
    lamp = trimesh.creation.box(extents=[0.6, 0.12, 0.05])
    lamp.apply_translation([0.0, 0.05, length / 2 + 0.01])
    parts = []
    for m, colour in ((body, rgb), (cabin, [0.2, 0.2, 0.25]), (lamp, [0.95, 0.95, 0.7])):
        m = m.subdivide().subdivide()
        m.visual = trimesh.visual.TextureVisuals(material=trimesh.visual.material.PBRMaterial(baseColorFactor=[*colour, 1.0]))
        parts.append(m)
    trimesh.Scene(parts).export(path)
    return path


def _turntables(folder: Path, views: int = 48, res: int = 64) -> Path:
    """A collection of three car-like objects (other lengths and paints), each photographed all the way round
    as on a turntable (azimuths evenly spaced with ±3° jitter, elevation 20°); objects.json groups each object's
    views and ground_truth.jsonl gives their azimuths (evaluation only)."""
    from PIL import Image

    from mirage3d.cameras import Intrinsics, focal_from_fov, orbit_c2w
    from mirage3d.data import render as R
    from mirage3d.data.objects import write_objects

    rng = np.random.default_rng(0)
    (folder / "images").mkdir(parents=True)
    fl = focal_from_fov(40.0, res)
    intr = Intrinsics(fl, fl, res / 2, res / 2, res, res)
    groups, truth = [], []
    for o, (length, rgb) in enumerate(((2.0, [0.8, 0.2, 0.2]), (1.7, [0.2, 0.4, 0.8]), (2.3, [0.85, 0.8, 0.3]))):
        az = np.mod(np.arange(views) * 360.0 / views + rng.uniform(-3, 3, views), 360.0)
        mesh = _car_like_mesh(folder / f"car{o}.glb", length, rgb)
        images = R.render_views(mesh, [orbit_c2w(a, 20.0, 3.2) for a in az], intr)
        names = []
        for k, (a, im) in enumerate(zip(az, images, strict=True)):
            names.append(f"images/{o}_{k:03d}.png")
            Image.fromarray(im).save(folder / names[-1])
            truth.append(json.dumps({"file": names[-1], "azimuth_deg": float(a)}) + "\n")
        groups.append(names)
    write_objects(folder, groups)
    (folder / "ground_truth.jsonl").write_text("".join(truth))
    return folder


def test_discover_by_object_on_rendered_turntables(tmp_path: Path) -> None:
    coll = _turntables(tmp_path / "coll")
    runner = CliRunner()
    r = runner.invoke(app, ["poses", "discover", str(coll), "-o", str(tmp_path / "poses"), "--backbone", "hog", "--by-object", "--poses", "8"])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["eval", "poses", str(tmp_path / "poses"), "--collection", str(coll)])
    assert r.exit_code == 0, r.output
    m = json.loads((tmp_path / "poses" / "eval.json").read_text())
    assert m["ari"] > 0.6 and m["median_error_deg"] < 30.0, m  # measured: 0.82 and 11 deg (the poses 45 deg apart)
    poses = json.loads((tmp_path / "poses" / "poses.json").read_text())
    assert poses["by_object"]["objects"] == 3 and poses["mirror"] == [0, 7, 6, 5, 4, 3, 2, 1]
    # every image's own angle: measured 1.4 deg; with the tours left folded (the front and back of these boxes
    # look alike in HOG, rings.unfold) 10.6 deg and ARI 0.70
    truth = {json.loads(line)["file"]: json.loads(line)["azimuth_deg"] for line in (coll / "ground_truth.jsonl").read_text().splitlines()}
    true = np.array([truth[f] for f in poses["files"]])
    err, _, reflected = best_alignment(np.array(poses["by_object"]["angle_deg"]), true)
    assert err < 5.0
    assert not reflected  # the azimuth runs the renderer's way round: set by each object's motion (rings.ring_direction)
    # the same images clustered from their descriptors alone (the default discovery) do not find the viewpoint
    r = runner.invoke(app, ["poses", "discover", str(coll), "-o", str(tmp_path / "plain"), "--backbone", "hog", "--poses", "8"])
    assert r.exit_code == 0, r.output
    runner.invoke(app, ["eval", "poses", str(tmp_path / "plain"), "--collection", str(coll)])
    assert json.loads((tmp_path / "plain" / "eval.json").read_text())["ari"] < m["ari"]


def test_by_object_needs_objects_json(tmp_path: Path) -> None:
    from test_features import make_collection

    coll = make_collection(tmp_path / "c", n=12)
    r = CliRunner().invoke(app, ["poses", "discover", str(coll), "-o", str(tmp_path / "p"), "--backbone", "hog", "--by-object", "--poses", "4"])
    assert r.exit_code == 1 and "objects.json" in r.output.strip().splitlines()[-1]
    assert not (tmp_path / "p").exists()

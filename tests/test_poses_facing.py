"""The facing and front scores: box pooling, flip (anti)symmetry, axis selection and refinement, the
front/back split, and discovery/assign with them (CPU)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from test_features import make_collection, make_unet_folder
from typer.testing import CliRunner

from mirage3d.cli.main import app
from mirage3d.poses import PoseModel
from mirage3d.poses.config import DiscoverConfig, FacingConfig
from mirage3d.poses.discover import add_front
from mirage3d.poses.facing import (
    FrontModel,
    box_pool,
    eta_squared,
    fit_facing,
    fit_front,
    flip_difference,
    flip_sum,
    foreground_boxes,
    mirror_orbits,
    refine_axis,
)
from mirage3d.poses.model import DescriptorModel

runner = CliRunner()


def test_box_pool_follows_the_object_not_the_frame():
    g = torch.Generator().manual_seed(0)
    obj = torch.randn(4, 6, 8, generator=g)  # a 4 x 6 object with 8 feature channels
    a, b = torch.zeros(1, 12, 12, 8), torch.zeros(1, 12, 12, 8)
    fa, fb = torch.zeros(1, 12, 12), torch.zeros(1, 12, 12)
    a[0, 1:5, 2:8], fa[0, 1:5, 2:8] = obj, 1
    b[0, 7:11, 5:11], fb[0, 7:11, 5:11] = obj, 1  # same object elsewhere in the frame
    assert foreground_boxes(fa).tolist() == [[2.0, 1.0, 8.0, 5.0]]
    torch.testing.assert_close(box_pool(a, fa, 2), box_pool(b, fb, 2), rtol=1e-5, atol=1e-6)
    # A constant (unit) feature inside the box pools to that feature in every cell.
    c = torch.zeros(1, 12, 12, 8)
    c[..., 3] = 1
    pooled = box_pool(c, fa, 2).reshape(8, 2, 2)
    torch.testing.assert_close(pooled[3], torch.ones(2, 2), rtol=1e-5, atol=1e-5)
    assert float(pooled[[0, 1, 2, 4, 5, 6, 7]].abs().max()) < 1e-6


def test_flip_difference_is_antisymmetric():
    g = torch.Generator().manual_seed(1)
    feats, flipped = torch.randn(3, 8, 8, 5, generator=g), torch.randn(3, 8, 8, 5, generator=g)
    fg = (torch.rand(3, 8, 8, generator=g) > 0.3).float()
    c = flip_difference(feats, flipped, fg, 2)
    c_of_flip = flip_difference(flipped, feats, fg.flip(-1), 2)  # the flipped image's own difference
    torch.testing.assert_close(c_of_flip, -c)


def test_fit_facing_skips_what_the_poses_explain_and_takes_the_facing():
    """Poses that merge φ with φ + 180° explain an axial left/right difference (the same for both) fully and
    the facing (opposite for both) only where a pose is pure; the light explains nothing."""
    rng = np.random.default_rng(0)
    n, dim = 4000, 12
    labels = rng.integers(0, 8, n)
    axial = np.cos(labels * np.pi / 4) * 2.0 + 0.1 * rng.normal(size=n)  # a function of the pose: η² ≈ 1
    # The side-view poses (2 and 6, where the axial term is 0) each face one way; the others hold both facings.
    facing = np.select([labels == 2, labels == 6], [1.0, -1.0], rng.choice([-1.0, 1.0], n)) * (1.0 + 0.1 * rng.normal(size=n))
    light = 0.5 * rng.normal(size=n)
    u = np.linalg.qr(rng.normal(size=(dim, dim)))[0]
    c = axial[:, None] * u[:, 0] + facing[:, None] * u[:, 1] + light[:, None] * u[:, 2] + 0.02 * rng.normal(size=(n, dim))
    model, etas = fit_facing(torch.as_tensor(c, dtype=torch.float32), labels, components=4)
    assert etas[0] > 0.9 and 0.05 < etas[1] < 0.5 and etas[2] < 0.05  # components by variance: axial, facing, light
    assert abs(float(model.axis.double() @ torch.as_tensor(u[:, 1]))) > 0.99
    fixed, _ = fit_facing(torch.as_tensor(c, dtype=torch.float32), labels, components=4, component=2)
    assert abs(float(fixed.axis.double() @ torch.as_tensor(u[:, 2]))) > 0.99
    assert eta_squared(np.array([1.0, 1.0, -1.0, -1.0]), np.array([0, 0, 1, 1])) == pytest.approx(1.0)


def make_mirror_collection(folder: Path, copies: int = 4, res: int = 32) -> Path:
    """A collection whose poses are clear: two asymmetric shapes and their mirror images, ``copies`` near-copies
    each (the colour moves by a few levels). The answer is four poses, one per group, with each shape's pose
    the mirror of its mirror image's: any float details of the features cannot move an image across groups.
    ``ground_truth.jsonl`` gives the groups azimuths 90 / 270 (shape A, mirrored) and 45 / 315 (shape B)."""
    from PIL import Image, ImageDraw

    (folder / "images").mkdir(parents=True)

    def shape(kind: str, shade: int) -> Image.Image:
        im = Image.new("RGBA", (res, res), (255, 255, 255, 0))
        d = ImageDraw.Draw(im)
        u = res / 32
        if kind == "A":  # a long body with a cabin at its left end and a red lamp at the left
            d.rectangle([4 * u, 14 * u, 28 * u, 22 * u], fill=(40 + shade, 90, 200, 255))
            d.rectangle([6 * u, 8 * u, 14 * u, 14 * u], fill=(30, 40 + shade, 120, 255))
            d.ellipse([3 * u, 15 * u, 7 * u, 19 * u], fill=(230, 20, 20, 255))
        else:  # a wedge rising to the right with a yellow disc at its tip
            d.polygon([(4 * u, 24 * u), (28 * u, 24 * u), (28 * u, 6 * u)], fill=(60, 160 + shade, 60, 255))
            d.ellipse([23 * u, 5 * u, 29 * u, 11 * u], fill=(240, 220, 40, 255))
        return im

    records, i = [], 0
    for kind, mirrored, az in (("A", False, 90.0), ("A", True, 270.0), ("B", False, 45.0), ("B", True, 315.0)):
        for c in range(copies):
            im = shape(kind, 3 * c)
            if mirrored:
                im = im.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
            name = f"images/{i:06d}.png"
            im.save(folder / name)
            records.append({"file": name, "azimuth_deg": az, "group": f"{kind}{'-mirrored' if mirrored else ''}"})
            i += 1
    (folder / "ground_truth.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return folder


def tiny_discover(coll: Path, out: Path, backbone: Path, *extra: str, features: Path | None = None, poses: int = 4) -> list[str]:
    """Arguments of ``mirage3d poses discover`` on a toy collection: ``poses`` poses, 4 parts, batches of 8, no
    loader workers, on the CPU; ``features``: the feature cache; ``extra``: more options."""
    args = ["poses", "discover", str(coll), "-o", str(out), "--backbone", str(backbone), "--poses", str(poses), "--parts", "4"]
    args += ["--batch-size", "8", "--workers", "0", "--device", "cpu", *extra]
    return args + (["--features", str(features)] if features is not None else [])


def _assigned(model: PoseModel, coll: Path, n: int) -> np.ndarray:
    from mirage3d.data.collection import ImageCollection

    ds = ImageCollection(coll, 32)
    items = [ds[i] for i in range(n)]
    x, m = torch.stack([it["pixel_values"] for it in items]), torch.stack([it["mask"] for it in items])
    return model.assign(x, m)[0]


def test_discover_with_facing_saves_it_and_assign_reproduces_labels(tmp_path):
    """On a collection whose poses are clear, discovery with the facing score finds them (one pose per group,
    shapes and their mirror images in mirror poses) and the saved model, facing score included, assigns every
    image its discovered pose."""
    coll, unet = make_mirror_collection(tmp_path / "coll"), make_unet_folder(tmp_path / "bb")
    out = tmp_path / "poses"
    args = tiny_discover(coll, out, unet, "--w-facing", "1", "--w-layout", "1", features=tmp_path / "feats")
    r = runner.invoke(app, args)
    assert r.exit_code == 0, r.output
    poses = json.loads((out / "poses.json").read_text())
    labels, mirror = np.array(poses["labels"]), np.array(poses["mirror"])
    groups = labels.reshape(4, 4)  # rows: A, A mirrored, B, B mirrored
    assert (groups == groups[:, :1]).all() and len(set(groups[:, 0])) == 4, groups
    a, fa, b, fb = groups[:, 0]
    assert mirror[a] == fa and mirror[fa] == a and mirror[b] == fb and mirror[fb] == b
    assert poses["facing_used"] and len(poses["facing_eta2"]) >= 1 and all(0 <= e <= 1 for e in poses["facing_eta2"])
    meta = json.loads((out / "pose_model.json").read_text())
    assert meta["facing_grid"] == 2 and meta["layout_grid"] == 4
    model = PoseModel.load(out)
    layout = model.descriptor.layout
    assert model.descriptor.facing is not None and layout is not None and layout.components.shape[1] == 32  # 16 images + flips
    assert model.centres.shape[1] == 3 * 4 + 1 + 32 + 1  # parts block + box + layout + facing
    assert (_assigned(model, coll, 16) == labels).all()
    # Without mirror features there is no facing score: one line, exit 1, nothing written.
    bad = tmp_path / "bad"
    r = runner.invoke(app, [*args[:4], str(bad), *args[5:], "--flip", "none"])
    assert r.exit_code == 1 and "mirror features" in r.output and not bad.exists()
    r = runner.invoke(app, tiny_discover(coll, bad, unet, "--w-facing", "-1", features=tmp_path / "feats"))
    assert r.exit_code == 1 and "--w-facing" in r.output and not bad.exists()
    # With the front score: these poses make two mirror orbits, too few to split a front/back pair (it takes
    # three), so it is recorded unused and the poses are those found without it.
    front = tmp_path / "front"
    r = runner.invoke(app, [*args[:4], str(front), *args[5:], "--w-front", "1"])
    assert r.exit_code == 0, r.output
    fposes = json.loads((front / "poses.json").read_text())
    assert fposes["front_used"] is False and PoseModel.load(front).descriptor.front is None
    assert (np.array(fposes["labels"]).reshape(4, 4) == np.array(fposes["labels"]).reshape(4, 4)[:, :1]).all()
    # Refit with the front score: the fixed poses vote by their azimuth (+1 at 0 deg, -1 at 180 deg), so a front
    # model is always rebuilt, and the labels are kept.
    r = runner.invoke(
        app,
        [
            "poses",
            "refit",
            str(front),
            "--backbone",
            str(unet),
            "--collection",
            str(coll),
            "-o",
            str(tmp_path / "refit"),
            "--features",
            str(tmp_path / "feats"),
            "--device",
            "cpu",
        ],
    )
    assert r.exit_code == 0, r.output
    refit = PoseModel.load(tmp_path / "refit")
    assert refit.descriptor.front is not None
    assert refit.centres.shape[1] == 3 * 4 + 1 + refit.descriptor.layout_dims + 2  # parts, box, layout, facing, front
    assert json.loads((tmp_path / "refit" / "poses.json").read_text())["labels"] == fposes["labels"]
    # The descriptor path with a front model, through save and load: the score is appended to image and flip alike.
    dm = model.descriptor
    feats = torch.randn(5, 4, 4, 32)  # the test UNet's feature width
    fg, has = torch.ones(5, 4, 4), torch.ones(5, dtype=torch.bool)
    g = flip_sum(feats, feats.flip(2), fg, 2)
    dm.front = fit_front(torch.cat([g, torch.randn(20, g.shape[1])]), torch.tensor([1.0, -1.0] * 5), torch.arange(10), dim=4, k=3)
    dm.desc_mean, dm.desc_scale = torch.cat([dm.desc_mean, torch.zeros(1)]), torch.cat([dm.desc_scale, torch.ones(1)])
    model.centres = torch.cat([model.centres, torch.zeros(len(model.centres), 1)], 1)
    model.save(tmp_path / "with_front")
    again = PoseModel.load(tmp_path / "with_front").descriptor
    d, f = again.raw_pair(feats, feats.flip(2), fg, has)
    torch.testing.assert_close(d[:, -1], f[:, -1])
    torch.testing.assert_close(d[:, -1], dm.front.score(feats, feats.flip(2), fg))
    torch.testing.assert_close(d[:, -2], -f[:, -2])  # the facing score before it


def test_front_split_through_the_cli_keeps_its_invariants(tmp_path):
    """The front/back split on a random toy collection (whether it happens depends on the clustering, so only
    what holds either way is checked): poses.json says whether it was used, the saved model carries the front
    score exactly then."""
    coll, unet = make_collection(tmp_path / "coll", n=16), make_unet_folder(tmp_path / "bb")
    for name in ("front",):
        r = runner.invoke(app, tiny_discover(coll, tmp_path / name, unet, "--w-facing", "1", "--w-front", "1", features=tmp_path / "feats", poses=6))
        assert r.exit_code == 0, r.output
        poses = json.loads((tmp_path / name / "poses.json").read_text())
        model = PoseModel.load(tmp_path / name)
        assert poses["front_used"] == (model.descriptor.front is not None)
        assert 0 < poses["assign_agreement"] <= 1
        if poses["front_used"]:
            assert (
                model.centres.shape[1] == 3 * 4 + 1 + model.descriptor.layout_dims + 2
                and json.loads((tmp_path / name / "pose_model.json").read_text())["front_k"] == 10
            )


def test_refine_axis_moves_a_rough_axis_onto_the_facing():
    """The facing is ±1 per image, the light a continuous left/right difference: self-training on the sign of
    the score pulls an axis that mixes the two onto the facing (and keeps its orientation)."""
    rng = np.random.default_rng(1)
    n, dim = 3000, 10
    u = np.linalg.qr(rng.normal(size=(dim, dim)))[0]
    facing = rng.choice([-1.0, 1.0], n)
    c = facing[:, None] * u[:, 0] + rng.normal(size=n)[:, None] * u[:, 1] + 0.2 * rng.normal(size=(n, dim))
    c = torch.as_tensor(c, dtype=torch.float32)
    rough = torch.as_tensor(u[:, 0] + 0.9 * u[:, 1], dtype=torch.float32)
    rough = rough / rough.norm()
    acc = lambda a: float(((c @ a > 0).numpy() == (facing > 0)).mean())
    refined = refine_axis(c, rough, iters=3)
    assert float(refined.norm()) == pytest.approx(1.0, abs=1e-5)
    assert float(refined.double() @ torch.as_tensor(u[:, 0])) > 0.95 > float(rough.double() @ torch.as_tensor(u[:, 0]))
    assert acc(refined) > 0.99 and acc(rough) < 0.95
    assert torch.equal(refine_axis(c, rough, iters=0), rough)


def test_front_score_is_flip_symmetric_and_votes_by_neighbours():
    gen = torch.Generator().manual_seed(0)
    feats, flipped = torch.randn(6, 8, 8, 5, generator=gen), torch.randn(6, 8, 8, 5, generator=gen)
    fg = (torch.rand(6, 8, 8, generator=gen) > 0.3).float()
    torch.testing.assert_close(flip_sum(flipped, feats, fg.flip(-1), 2), flip_sum(feats, flipped, fg, 2))
    # Two groups of flip sums around two directions; references from each vote +1 / -1.
    rng = np.random.default_rng(0)
    centre = rng.normal(size=(2, 20)) * 3
    group = rng.integers(0, 2, 400)
    g = torch.as_tensor(centre[group] + rng.normal(size=(400, 20)), dtype=torch.float32)
    ref = torch.arange(0, 400, 2)
    votes = torch.as_tensor(np.where(group[ref.numpy()] == 0, 1.0, -1.0))
    model = fit_front(g, votes, ref, dim=8, k=5)
    score = model.score_sums(g[1::2]).numpy()
    assert ((score > 0) == (group[1::2] == 0)).mean() > 0.97
    # Saved and loaded through its tensors: the same scores.
    again = FrontModel.from_tensors(model.tensors(), model.k, model.grid)
    torch.testing.assert_close(again.score_sums(g[1::2]), model.score_sums(g[1::2]))


def test_front_split_separates_front_from_back_in_the_merged_pair():
    """Orbits by mean |facing|: the front/back pair (0, 1) holds both ends at random; the two oblique orbits
    vote; the split puts each end in its own self-mirror pose."""
    rng = np.random.default_rng(2)
    n = 1600
    view = rng.integers(0, 4, n)  # 0 front/back (merged), 1 front oblique, 2 back oblique, 3 side
    end = np.where(view == 1, 1, np.where(view == 2, -1, np.where(view == 0, rng.choice([-1, 1], n), 0)))  # which end is seen
    side = rng.choice([0, 1], n)  # which member of the mirror pair
    labels = 2 * view + side
    mirror = np.array([1, 0, 3, 2, 5, 4, 7, 6])
    s = np.select([view == 0, view == 3], [0.1, 2.0], 1.0) * np.where(side == 0, 1.0, -1.0) + 0.05 * rng.normal(size=n)
    assert [o for o in mirror_orbits(labels, mirror, s)][0] == (0, 1)
    # Descriptors: the view and the pair member, plus the facing score as the last column; flips swap members.
    base = np.stack([view == 1, view == 2, view == 3, view == 0], 1).astype(float) * 2
    d_raw = torch.as_tensor(np.concatenate([base, np.where(side == 0, 1.0, -1.0)[:, None] * 0.3, s[:, None]], 1), dtype=torch.float32)
    f_raw = torch.as_tensor(np.concatenate([base, -np.where(side == 0, 1.0, -1.0)[:, None] * 0.3, -s[:, None]], 1), dtype=torch.float32)
    # Flip sums: which end is seen, plus noise.
    direction = rng.normal(size=16)
    b = torch.as_tensor(end[:, None] * direction + 0.3 * rng.normal(size=(n, 16)) + 2.0 * base[:, :1], dtype=torch.float32)
    dm = DescriptorModel(parts=None)  # (add_front reads no part model)
    out = add_front(
        b / 2, b / 2, dm, labels, mirror, d_raw, f_raw, DiscoverConfig(facing=FacingConfig(w_facing=1.0, w_front=1.0, front_dim=2, front_k=10))
    )
    assert out is not None and dm.front is not None
    d2, f2, split, split_mirror = out
    assert split_mirror[0] == 0 and split_mirror[1] == 1 and list(split_mirror[2:]) == [3, 2, 5, 4, 7, 6]
    torch.testing.assert_close(d2[:, -1], f2[:, -1])  # the front score is the same for an image and its flip
    fb = view == 0
    agree = (split[fb] == 0) == (end[fb] == end[fb & (split == 0)][0])
    assert agree.mean() > 0.95
    # No front/back pair (the lowest orbit a single pose): nothing to split.
    no_pair = np.where(labels == 1, 0, labels)
    assert (
        add_front(
            b,
            b,
            DescriptorModel(parts=None),
            no_pair,
            np.array([0, 1, 3, 2, 5, 4, 7, 6]),
            d_raw,
            f_raw,
            DiscoverConfig(facing=FacingConfig(w_facing=1.0, w_front=1.0)),
        )
        is None
    )

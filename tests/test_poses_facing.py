"""The facing score: box pooling, flip antisymmetry, axis selection, and discovery/assign with it (CPU)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from test_features import make_collection, make_unet_folder
from typer.testing import CliRunner

from mirage3d.cli.main import app
from mirage3d.poses import PoseModel
from mirage3d.poses.facing import box_pool, eta_squared, fit_facing, flip_difference, foreground_boxes

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


def test_discover_with_facing_saves_it_and_assign_reproduces_labels(tmp_path):
    coll, unet = make_collection(tmp_path / "coll", n=16), make_unet_folder(tmp_path / "bb")
    out = tmp_path / "poses"
    args = ["poses", "discover", str(coll), "-o", str(out), "--backbone", str(unet), "--poses", "4", "--parts", "4", "--w-facing", "1",
            "--features", str(tmp_path / "feats"), "--batch-size", "8", "--workers", "0", "--device", "cpu"]  # fmt: skip
    r = runner.invoke(app, args)
    assert r.exit_code == 0, r.output
    poses = json.loads((out / "poses.json").read_text())
    assert len(poses["facing_eta2"]) >= 1 and all(0 <= e <= 1 for e in poses["facing_eta2"])
    assert json.loads((out / "pose_model.json").read_text())["facing_grid"] == 2
    model = PoseModel.load(out)
    assert model.descriptor.facing is not None and model.centres.shape[1] == 3 * 4 + 1 + 1  # parts block + box + facing
    from mirage3d.data.collection import ImageCollection

    ds = ImageCollection(coll, 32)
    items = [ds[i] for i in range(16)]
    x, m = torch.stack([it["pixel_values"] for it in items]), torch.stack([it["mask"] for it in items])
    labels, _ = model.assign(x, m)
    assert (labels == np.array(poses["labels"])).mean() >= 0.9  # fp16 cache vs fp32 here: near-ties may flip
    # Without mirror features there is no facing score: one line, exit 1, nothing written.
    bad = tmp_path / "bad"
    r = runner.invoke(app, [*args[:4], str(bad), *args[5:], "--flip", "none"])
    assert r.exit_code == 1 and "mirror features" in r.output and not bad.exists()
    r = runner.invoke(app, [*args[:4], str(bad), *args[5:12], "-1", *args[13:]])
    assert r.exit_code == 1 and "--w-facing" in r.output

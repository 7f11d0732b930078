"""End-to-end CLI: features extract, train (phase 1, the backbone), poses discover/assign/refit, eval poses (tiny models, CPU)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from test_features import make_collection, make_unet_folder
from test_poses_facing import make_mirror_collection, tiny_discover
from typer.testing import CliRunner

from mirage3d.cli.main import app
from mirage3d.io import read_transforms
from mirage3d.poses import PoseModel, load_cameras

runner = CliRunner()


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("poses")
    # Poses that are clear (two shapes and their mirror images), so what the tests compare cannot hinge on ties.
    return {"root": root, "coll": make_mirror_collection(root / "coll"), "unet": make_unet_folder(root / "bb")}


def _ok(result) -> None:
    assert result.exit_code == 0, result.output + repr(result.exception)


def test_discover_assign_eval_end_to_end(setup):
    root, coll = setup["root"], setup["coll"]
    out = root / "poses"
    r = runner.invoke(app, tiny_discover(coll, out, setup["unet"], features=root / "feats"))
    _ok(r)
    for name in (
        "poses.json",
        "cameras.json",
        "transforms.json",
        "pose_model.json",
        "pose_model.safetensors",
        "config.json",
        "poses_sheet.png",
        "parts.png",
    ):
        assert (out / name).exists(), name
    poses = json.loads((out / "poses.json").read_text())
    assert poses["num_poses"] == 4 and len(poses["files"]) == 16 and poses["files"][0] == "images/000000.png"
    assert len(poses["labels"]) == 16 and set(poses["labels"]) <= set(range(4)) and len(poses["confidence"]) == 16
    mirror = poses["mirror"]
    assert len(mirror) == 4 and all(mirror[mirror[k]] == k for k in range(4))
    assert all(0 < c <= 1 for c in poses["confidence"])
    cams = load_cameras(out)
    assert [c.pose for c in cams] == [0, 1, 2, 3] and cams[0].w == 32
    az = np.array([c.azimuth_deg for c in cams])
    assert np.all(np.diff(az) > 0)  # poses are numbered by azimuth
    t = read_transforms(out / "transforms.json", check_images=False)
    assert [f.file_path for f in t.frames] == [f"images/pose_{k:02d}.png" for k in range(4)]
    np.testing.assert_allclose(t.frames[2].transform_matrix, cams[2].c2w)
    from mirage3d.diffusion.train_data import read_pose_labels  # the training stage reads this contract

    read_pose_labels(out, [f"images/{i:06d}.png" for i in range(16)])
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["num_poses"] == 4 and cfg["backbone"]["kind"] == "unet"

    # The saved model reproduces the discovery labels on the collection's own images.
    model = PoseModel.load(out)
    assert model.num_poses == 4 and list(model.mirror) == mirror
    from mirage3d.data.collection import ImageCollection

    ds = ImageCollection(coll, 32)
    items = [ds[i] for i in range(16)]
    x, m = torch.stack([it["pixel_values"] for it in items]), torch.stack([it["mask"] for it in items])
    labels, conf = model.assign(x, m)
    assert (labels == np.array(poses["labels"])).all()  # (fp16 cache at discovery, fp32 features here: no ties to flip)
    assert conf.shape == (16,)

    # poses assign on files, JSON output
    r = runner.invoke(
        app,
        [
            "poses",
            "assign",
            str(coll / "images/000001.png"),
            str(coll / "images/000002.png"),
            "--poses",
            str(out),
            "-o",
            str(root / "a.json"),
            "--device",
            "cpu",
        ],
    )
    _ok(r)
    rows = json.loads((root / "a.json").read_text())["assignments"]
    assert [Path(r["file"]).name for r in rows] == ["000001.png", "000002.png"]
    assert rows[0]["azimuth_deg"] == pytest.approx(az[rows[0]["pose"]])

    # poses label: a poses folder for fine-tuning on a collection, from this pose model
    r = runner.invoke(app, ["poses", "label", str(coll), "--poses", str(out), "-o", str(root / "labelled"), "--device", "cpu"])
    _ok(r)
    labelled = json.loads((root / "labelled" / "poses.json").read_text())
    assert labelled["files"] == poses["files"] and labelled["labels"] == poses["labels"] and labelled["mirror"] == mirror
    read_pose_labels(root / "labelled", [f"images/{i:06d}.png" for i in range(16)])
    assert (PoseModel.load(root / "labelled").assign(x, m)[0] == labels).all()  # its pose model still finds its backbone
    assert load_cameras(root / "labelled")[2].azimuth_deg == cams[2].azimuth_deg
    (root / "empty" / "images").mkdir(parents=True)
    r = runner.invoke(app, ["poses", "label", str(root / "empty"), "--poses", str(out), "-o", str(root / "l2"), "--device", "cpu"])
    assert r.exit_code == 1 and "no images" in r.output and not (root / "l2").exists()

    # eval poses
    r = runner.invoke(app, ["eval", "poses", str(out), "--collection", str(coll)])
    _ok(r)
    metrics = json.loads((out / "eval.json").read_text())
    assert -1 <= metrics["ari"] <= 1 and 0 <= metrics["median_error_deg"] <= 180 and metrics["num_images"] == 16
    assert "ARI" in r.output

    # discovery again from the cache alone, the hog baseline, and refit for another backbone
    r = runner.invoke(
        app, ["poses", "discover", str(coll), "-o", str(root / "p2"), "--features", str(root / "feats"), "--poses", "4", "--parts", "4"]
    )
    _ok(r)
    assert json.loads((root / "p2" / "poses.json").read_text())["labels"] == poses["labels"]  # deterministic
    # Without the scores every label is the saved model's nearest centre.
    _ok(
        runner.invoke(
            app,
            [
                "poses",
                "discover",
                str(coll),
                "-o",
                str(root / "plain"),
                "--features",
                str(root / "feats"),
                "--poses",
                "4",
                "--parts",
                "4",
                "--w-facing",
                "0",
            ],
        )
    )
    plain = json.loads((root / "plain" / "poses.json").read_text())
    assert plain["assign_agreement"] == 1.0 and "facing_eta2" not in plain
    assert (PoseModel.load(root / "plain").assign(x, m)[0] == np.array(plain["labels"])).all()
    r = runner.invoke(
        app, ["poses", "discover", str(coll), "-o", str(root / "p3"), "--backbone", "hog", "--poses", "3", "--workers", "0", "--image-size", "32"]
    )
    _ok(r)
    assert (coll / ".cache" / "features").is_dir()
    r = runner.invoke(
        app,
        ["poses", "refit", str(out), "--backbone", "hog", "--collection", str(coll), "-o", str(root / "refit"), "--features", str(root / "hogfeats")],
    )
    _ok(r)
    assert json.loads((root / "refit" / "poses.json").read_text())["labels"] == poses["labels"]
    refit = PoseModel.load(root / "refit")
    assert refit.backbone_ref["kind"] == "hog" and 0 <= refit.extra["refit_agreement"] <= 1


def test_discovery_seeds_share_the_feature_cache(setup, tmp_path):
    """--seed moves sampling and clustering only: a second seed reuses the cache (it was refused: the seed reached
    the UNet's noise map, so the cache's backbone differed); --feature-seed changes the features and is refused."""
    for seed in ("0", "3"):
        _ok(runner.invoke(app, tiny_discover(setup["coll"], tmp_path / f"p{seed}", setup["unet"], "--seed", seed, features=tmp_path / "feats")))
    assert json.loads((tmp_path / "p3" / "config.json").read_text())["seed"] == 3
    assert (
        json.loads((tmp_path / "p0" / "config.json").read_text())["backbone"] == json.loads((tmp_path / "p3" / "config.json").read_text())["backbone"]
    )
    r = runner.invoke(app, tiny_discover(setup["coll"], tmp_path / "pf", setup["unet"], "--feature-seed", "1", features=tmp_path / "feats"))
    assert r.exit_code == 1 and "other settings" in r.output and not (tmp_path / "pf").exists()


def test_features_extract_cli(setup):
    out = setup["root"] / "hog_cache"
    r = runner.invoke(
        app,
        ["features", "extract", str(setup["coll"]), "-o", str(out), "--backbone", "hog", "--image-size", "32", "--shard-size", "5", "--workers", "0"],
    )
    _ok(r)
    assert len(list(out.glob("shard_*.safetensors"))) == 4 and "16 images" in r.output
    # Running again resumes (nothing to do) and succeeds.
    _ok(
        runner.invoke(
            app,
            [
                "features",
                "extract",
                str(setup["coll"]),
                "-o",
                str(out),
                "--backbone",
                "hog",
                "--image-size",
                "32",
                "--shard-size",
                "5",
                "--workers",
                "0",
            ],
        )
    )


def test_phase1_train_makes_a_backbone(setup, tmp_path):
    """The offline backbone is `mirage3d train` without --poses (phase 1); its folder is a UNet backbone."""
    coll = make_collection(tmp_path / "c", n=8)
    r = runner.invoke(
        app,
        [
            "train",
            str(coll),
            "-o",
            str(tmp_path / "bb"),
            "--model",
            "tiny",
            "--max-steps",
            "2",
            "--batch-size",
            "4",
            "--device",
            "cpu",
            "--sample-steps",
            "2",
        ],
    )
    _ok(r)
    assert (tmp_path / "bb" / "unet" / "config.json").exists()
    from mirage3d.poses.features import UNetBackbone, load_backbone

    assert isinstance(load_backbone(str(tmp_path / "bb")), UNetBackbone)


def _last_line(result) -> str:
    return [line for line in result.output.splitlines() if line.strip()][0]


def test_too_few_images_is_one_line_error(tmp_path):
    coll = make_collection(tmp_path / "c", n=3)
    r = runner.invoke(app, ["poses", "discover", str(coll), "-o", str(tmp_path / "p"), "--backbone", "hog"])
    assert r.exit_code == 1
    assert "at least 8 images" in r.output and "has 3" in r.output
    assert not (tmp_path / "p").exists()


def test_more_poses_than_images_is_one_line_error(tmp_path):
    coll = make_collection(tmp_path / "c", n=9)
    r = runner.invoke(app, ["poses", "discover", str(coll), "-o", str(tmp_path / "p"), "--backbone", "hog", "--poses", "12"])
    assert r.exit_code == 1
    assert "cannot find 12 poses in 9 images" in r.output
    assert not (tmp_path / "p").exists()


def test_bad_inputs_one_line(tmp_path):
    coll = make_collection(tmp_path / "c", n=8)
    r = runner.invoke(app, ["poses", "discover", str(coll), "-o", str(tmp_path / "p")])
    assert r.exit_code == 1 and "give --backbone" in r.output
    r = runner.invoke(app, ["features", "extract", str(coll), "-o", str(tmp_path / "f"), "--backbone", "nonsense"])
    assert r.exit_code == 1 and "neither a folder" in r.output
    r = runner.invoke(app, ["features", "extract", str(coll), "-o", str(tmp_path / "f"), "--backbone", "hog", "--flip", "sideways"])
    assert r.exit_code == 1 and "flip mode 'sideways'" in r.output
    r = runner.invoke(app, ["eval", "poses", str(tmp_path / "missing"), "--collection", str(coll)])
    assert r.exit_code == 1 and "poses discover" in r.output
    r = runner.invoke(app, ["poses", "assign", str(coll / "images/000000.png"), "--poses", str(tmp_path)])
    assert r.exit_code == 1 and "holds no pose model" in r.output
    (tmp_path / "bad.png").write_bytes(b"not a png")
    r = runner.invoke(app, ["poses", "assign", str(tmp_path / "bad.png"), "--poses", str(tmp_path)])
    assert r.exit_code == 1
    for res in (r,):
        assert "Traceback" not in res.output


def test_refit_into_the_model_folder_is_relocatable(setup, tmp_path):
    """A pose model refit into MODEL/poses refers to MODEL as "..", so the model folder can be moved."""
    import shutil

    root, coll = setup["root"], setup["coll"]
    poses = root / "poses_for_refit"
    _ok(runner.invoke(app, tiny_discover(coll, poses, setup["unet"])))
    model = tmp_path / "model"
    shutil.copytree(setup["unet"], model)
    _ok(
        runner.invoke(
            app,
            [
                "poses",
                "refit",
                str(poses),
                "--backbone",
                str(model),
                "--collection",
                str(coll),
                "-o",
                str(model / "poses"),
                "--features",
                str(tmp_path / "f"),
                "--device",
                "cpu",
            ],
        )
    )
    meta = json.loads((model / "poses" / "pose_model.json").read_text())
    assert meta["backbone"]["path"] == ".."
    moved = tmp_path / "elsewhere" / "model"
    shutil.move(str(model), moved)
    pm = PoseModel.load(moved / "poses")
    labels, _ = pm.assign(torch.zeros(2, 3, 32, 32), None)
    assert labels.shape == (2,) and set(labels.tolist()) <= set(range(4))
    # Labelling a collection with the moved model's poses: the new folder's pose model still reads that model.
    _ok(runner.invoke(app, ["poses", "label", str(coll), "--poses", str(moved / "poses"), "-o", str(tmp_path / "lab"), "--device", "cpu"]))
    assert json.loads((tmp_path / "lab" / "pose_model.json").read_text())["backbone"]["path"] == str(moved.resolve())
    x = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    assert (PoseModel.load(tmp_path / "lab").assign(x, None)[0] == pm.assign(x, None)[0]).all()

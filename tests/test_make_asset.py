"""`mirage3d make-asset` end to end on a tiny model, and its bad-input errors (no partial GLB)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pygltflib
import pytest
import trimesh
from PIL import Image
from test_views_cli import make_tiny_model
from typer.testing import CliRunner

from mirage3d.asset import AssetConfig, check_asset_config, spread_poses
from mirage3d.cli.main import app
from mirage3d.config import config_from_dict, load_config, replace_fields, save_config
from mirage3d.diffusion.config import ConsistencyConfig, ViewsConfig
from mirage3d.errors import InputError
from mirage3d.recon import ReconConfig
from mirage3d.recon.config import GENERATED_VIEWS_RES, generated_views_config

runner = CliRunner()
NUM_POSES = 4


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("asset") / "model", NUM_POSES, num_class_embeds=NUM_POSES + 1, radius=3.38, focal=22.0, size=16)


def cutout(path: Path) -> Path:
    im = np.zeros((48, 48, 4), np.uint8)
    im[14:34, 10:38] = (40, 60, 200, 255)
    Image.fromarray(im, "RGBA").save(path)
    return path


FAST = ["--steps", "2", "--iters", "60", "--faces", "2000", "--device", "cpu", "--pose", "1"]


def test_make_asset_end_to_end(tmp_path: Path, model_dir: Path) -> None:
    out = tmp_path / "out" / "car.glb"
    r = runner.invoke(
        app,
        ["make-asset", str(cutout(tmp_path / "in.png")), "-o", str(out), "--model", str(model_dir), "--keep-views", str(tmp_path / "views"), *FAST],
    )
    assert r.exit_code == 0, r.output
    mesh = trimesh.load(out, force="mesh")
    assert len(mesh.faces) > 0
    gltf = pygltflib.GLTF2().load(str(out))
    assert gltf.materials and gltf.materials[0].pbrMetallicRoughness.baseColorTexture is not None
    record = json.loads((tmp_path / "out" / "car.glb.make-asset.json").read_text())
    assert record["reference_pose"] == 1 and record["poses"] == [0, 1, 2, 3]
    # the nested config: the CLI's options in the stage configs, --seed and --device in both
    assert record["views"]["num_inference_steps"] == 2 and record["views"]["reference_pose"] == 1 and record["recon"]["iters"] == 60
    assert record["views"]["device"] == record["recon"]["device"] == "cpu" and record["views"]["seed"] == record["recon"]["seed"] == 0
    loaded = load_config(AssetConfig, tmp_path / "out" / "car.glb.make-asset.json")  # the record's extra keys are ignored
    assert loaded.model == str(model_dir) and loaded.views.num_inference_steps == 2
    assert loaded.recon == replace(generated_views_config(), device="cpu", faces=2000)
    assert set(record["timings"]) >= {"views", "recon", "total"}
    views = json.loads((tmp_path / "views" / "transforms.json").read_text())
    assert len(views["frames"]) == NUM_POSES
    # nothing temporary left beside the output
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["car.glb", "car.glb.config.json", "car.glb.make-asset.json"]


def test_views_option_spreads_poses(tmp_path: Path, model_dir: Path) -> None:
    out = tmp_path / "car.glb"
    r = runner.invoke(app, ["make-asset", str(cutout(tmp_path / "in.png")), "-o", str(out), "--model", str(model_dir), "--views", "2", *FAST])
    assert r.exit_code == 0, r.output
    record = json.loads((tmp_path / "car.glb.make-asset.json").read_text())
    assert record["poses"] == [1, 3]  # the input's pose and the one opposite


def test_asset_config_composes_the_stage_configs(tmp_path: Path) -> None:
    cfg = AssetConfig()
    # only the steps and the rounds differ, and the reconstruction's grid (finer for generated views)
    assert replace(cfg.views, num_inference_steps=50, consistency=ConsistencyConfig(rounds=2)) == ViewsConfig()
    d = ReconConfig()
    assert replace(cfg.recon, res=d.res) == d and cfg.recon.res == GENERATED_VIEWS_RES != d.res
    assert cfg.views.num_inference_steps == 20
    changed = replace_fields(cfg, {"num_views": 4, "views.consistency.rounds": 2, "recon.iters": 30})
    assert changed.views.consistency.rounds == 2 and cfg.views.consistency.rounds == 0  # a copy, nothing shared
    save_config(changed, tmp_path / "c.json", poses=[0, 1])
    assert load_config(AssetConfig, tmp_path / "c.json") == changed
    assert config_from_dict(AssetConfig, {"views": {"seed": 3}}).views.num_inference_steps == 20  # make-asset's default, not ViewsConfig's
    for bad, match in [
        ({"views.num_inference_steps": 0}, "--steps"),
        ({"views.cross_frame": "bogus"}, "--cross-frame"),
        ({"recon.faces": 2}, "--faces"),
        ({"recon.seed": -1}, "--seed"),
        ({"num_views": 1}, "--views 1"),
        ({"num_views": 3, "views.poses": "0,1"}, "not both"),
    ]:
        with pytest.raises(InputError, match=match):
            check_asset_config(replace_fields(cfg, bad))
    with pytest.raises(InputError, match="--pose 4"):
        check_asset_config(replace_fields(cfg, {"views.reference_pose": 4}), num_poses=4)


def test_spread_poses_wraps_around() -> None:
    az = [0.0, 45.0, 90.0, 135.0, 180.0, 225.0, 270.0, 315.0]
    assert spread_poses(az, 4, must_include=7) == [1, 3, 5, 7]
    assert spread_poses(az, 8) == list(range(8))
    assert spread_poses([350.0, 10.0, 170.0, 190.0], 2, must_include=0) == [0, 2]  # 170 is opposite 350
    assert spread_poses([0.0, 100.0, 200.0, 300.0, 330.0], 3, must_include=4) == [1, 2, 4]


def _error(result) -> str:
    assert result.exit_code == 1, result.output
    lines = [ln for ln in result.stderr.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in result.stderr
    return lines[0]


def test_bad_inputs_give_one_line_and_no_glb(tmp_path: Path, model_dir: Path) -> None:
    out = tmp_path / "o" / "car.glb"
    args = ["-o", str(out), "--model", str(model_dir), *FAST]
    (tmp_path / "notes.txt").write_text("not an image")
    assert "cannot read" in _error(runner.invoke(app, ["make-asset", str(tmp_path / "notes.txt"), *args]))
    Image.new("RGB", (1, 1)).save(tmp_path / "one.png")
    assert "at least" in _error(runner.invoke(app, ["make-asset", str(tmp_path / "one.png"), *args]))
    Image.new("L", (9000, 16)).save(tmp_path / "huge.png")
    assert "largest" in _error(runner.invoke(app, ["make-asset", str(tmp_path / "huge.png"), *args]))
    Image.new("RGBA", (64, 64), (0, 0, 0, 0)).save(tmp_path / "clear.png")
    assert "transparent" in _error(runner.invoke(app, ["make-asset", str(tmp_path / "clear.png"), *args])).lower()
    good = cutout(tmp_path / "in.png")
    assert "does not exist" in _error(runner.invoke(app, ["make-asset", str(good), "-o", str(out), "--model", str(tmp_path / "nope"), *FAST]))
    (tmp_path / "empty_model").mkdir()
    assert "not a mirage3d model" in _error(
        runner.invoke(app, ["make-asset", str(good), "-o", str(out), "--model", str(tmp_path / "empty_model"), *FAST])
    )
    assert ".glb" in _error(runner.invoke(app, ["make-asset", str(good), "-o", str(tmp_path / "car.txt"), "--model", str(model_dir), *FAST]))
    assert "--views" in _error(runner.invoke(app, ["make-asset", str(good), *args, "--views", "1"]))
    assert not out.exists() and (not out.parent.exists() or not any(out.parent.iterdir()))

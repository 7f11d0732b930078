"""`mirage3d views` end to end on a tiny model folder, and its one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, UNet2DModel
from PIL import Image
from typer.testing import CliRunner

from mirage3d.cameras import orbit_c2w
from mirage3d.cli.main import app
from mirage3d.diffusion.pipeline import MiragePipeline
from mirage3d.io import read_transforms

runner = CliRunner()
NUM_POSES = 4
NO_ROUNDS_CPU = ["--rounds", "0", "--seed", "1", "--device", "cpu"]  # the rounds are tested in test_consistency.py


def make_tiny_model(
    folder: Path, num_poses: int = NUM_POSES, num_class_embeds: int = 9, radius: float = 3.0, focal: float = 88.0, size: int = 64
) -> Path:
    """A tiny random MiragePipeline folder (16² UNet) with ``poses/cameras.json`` for ``num_poses`` poses on a ring."""
    torch.manual_seed(0)
    unet = UNet2DModel(
        sample_size=16,
        in_channels=3,
        out_channels=3,
        block_out_channels=(8, 16),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D"),
        num_class_embeds=num_class_embeds,
        norm_num_groups=4,
        attention_head_dim=4,
    )
    MiragePipeline(unet, DDIMScheduler(num_train_timesteps=1000)).save_pretrained(folder)
    cams = []
    for k in range(num_poses):
        az = 360.0 * k / num_poses
        cams.append(
            {
                "pose": k,
                "azimuth_deg": az,
                "elevation_deg": 17.5,
                "radius": radius,
                "fl_x": focal,
                "fl_y": focal,
                "cx": size / 2,
                "cy": size / 2,
                "w": size,
                "h": size,
                "transform_matrix": orbit_c2w(az, 17.5, radius).tolist(),
            }
        )
    (folder / "poses").mkdir()
    (folder / "poses" / "cameras.json").write_text(json.dumps({"num_poses": num_poses, "cameras": cams}))
    return folder


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("views") / "model")


def cutout(path: Path, background: tuple[int, int, int] | None = None) -> Path:
    """A red square on transparency (or on a plain background colour)."""
    im = np.zeros((40, 48, 4), np.uint8)
    im[10:30, 14:30] = (200, 30, 30, 255)
    if background is not None:
        im[im[..., 3] == 0] = (*background, 255)
    Image.fromarray(im, "RGBA").save(path)
    return path


def test_views_end_to_end(tmp_path: Path, model_dir: Path) -> None:
    out = tmp_path / "views"
    r = runner.invoke(
        app,
        [
            "views",
            str(cutout(tmp_path / "in.png")),
            "--model",
            str(model_dir),
            "-o",
            str(out),
            "--pose",
            "1",
            "--poses",
            "0,2",
            "--steps",
            "3",
            "--guidance",
            "1.5",
            *NO_ROUNDS_CPU,
        ],
    )
    assert r.exit_code == 0, r.output
    assert "wrote 3 views" in r.output
    t = read_transforms(out)
    assert [f.file_path for f in t.frames] == ["images/pose_01.png", "images/pose_00.png", "images/pose_02.png"]
    assert [f.extra["is_reference"] for f in t.frames] == [True, False, False]
    assert (t.w, t.h) == (16, 16) and t.fl_x == pytest.approx(22.0)  # intrinsics scaled from 64 px to 16 px
    np.testing.assert_allclose(t.frames[0].transform_matrix, orbit_c2w(90.0, 17.5, 3.0))
    ref = np.asarray(Image.open(out / "images" / "pose_01.png"))
    assert ref.shape == (16, 16, 4)
    assert ref[8, 8, 3] == 255 and ref[0, 0, 3] == 0  # the input's own mask
    assert abs(int(ref[8, 8, 0]) - 200) <= 3  # the reference view reproduces the input's colour
    assert Image.open(out / "turntable.gif").n_frames == 3
    assert Image.open(out / "contact_sheet.png").size == (32, 32)
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["reference_pose"] == 1 and cfg["guidance_scale"] == 1.5 and cfg["input"].endswith("in.png")


def test_views_unconditional_and_plain_background(tmp_path: Path, model_dir: Path) -> None:
    r = runner.invoke(app, ["views", "--model", str(model_dir), "-o", str(tmp_path / "u"), "--steps", "2", "--rounds", "0", "--device", "cpu"])
    assert r.exit_code == 0, r.output
    assert len(read_transforms(tmp_path / "u").frames) == NUM_POSES
    grey = cutout(tmp_path / "grey.png", background=(128, 128, 128))
    r = runner.invoke(
        app,
        [
            "views",
            str(grey),
            "--model",
            str(model_dir),
            "-o",
            str(tmp_path / "g"),
            "--pose",
            "0",
            "--poses",
            "0",
            "--steps",
            "2",
            "--device",
            "cpu",
        ],  # one view: no rounds
    )
    assert r.exit_code == 0, r.output
    ref = np.asarray(Image.open(tmp_path / "g" / "images" / "pose_00.png"))
    assert ref[0, 0, 3] == 0 and ref[8, 8, 3] == 255 and ref[0, 0, :3].min() >= 250  # grey background removed


def one_line_error(result) -> str:
    assert result.exit_code == 1, result.output
    lines = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in result.output
    return lines[0]


def test_bad_inputs(tmp_path: Path, model_dir: Path) -> None:
    good = cutout(tmp_path / "in.png")
    corrupt = tmp_path / "bad.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    busy = tmp_path / "busy.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(busy)
    (tmp_path / "empty_model").mkdir()
    cases = [
        ([str(corrupt), "--model", str(model_dir), "--pose", "0"], "cannot read"),
        ([str(tmp_path / "missing.png"), "--model", str(model_dir), "--pose", "0"], "does not exist"),
        ([str(busy), "--model", str(model_dir), "--pose", "0", "--box", "0,0,50,30"], "box 0,0,50,30 lies outside the 40x40 image"),
        ([str(busy), "--model", str(model_dir), "--pose", "0", "--box", "0,0,30"], "must be four numbers x0,y0,x1,y1"),
        ([str(good), "--model", str(tmp_path / "empty_model"), "--pose", "0"], "is not a mirage3d model"),
        ([str(good), "--model", str(model_dir)], "pass --pose K"),
        ([str(good), "--model", str(model_dir), "--pose", "7"], "--pose 7 is out of range"),
        ([str(good), "--model", str(model_dir), "--pose", "0", "--poses", "0,x"], "comma-separated"),
        ([str(good), "--model", str(model_dir), "--pose", "0", "--layers", "sideways"], "unknown attention layer group"),
    ]
    for i, (args, message) in enumerate(cases):
        out = tmp_path / f"out{i}"
        r = runner.invoke(app, ["views", *args, "-o", str(out), "--steps", "1", "--device", "cpu"])
        assert message in one_line_error(r), (args, r.output)
        assert not out.exists()  # nothing half-written


def test_views_with_test_time_tuning(tmp_path: Path, model_dir: Path) -> None:
    args = [
        str(cutout(tmp_path / "in.png")),
        "--model",
        str(model_dir),
        "--pose",
        "1",
        "--steps",
        "2",
        *NO_ROUNDS_CPU,
    ]
    assert runner.invoke(app, ["views", *args, "-o", str(tmp_path / "a")]).exit_code == 0
    r = runner.invoke(app, ["views", *args, "-o", str(tmp_path / "b"), "--tune-steps", "3"])
    assert r.exit_code == 0, r.output
    assert json.loads((tmp_path / "b" / "config.json").read_text())["tune"]["steps"] == 3
    plain, tuned = (np.asarray(Image.open(tmp_path / d / "images" / "pose_00.png")) for d in ("a", "b"))
    assert np.abs(plain.astype(int) - tuned.astype(int)).max() > 0  # the tuned model made a different view
    r = runner.invoke(app, ["views", *args, "-o", str(tmp_path / "c"), "--tune-steps", "-1"])
    assert r.exit_code == 1 and "--tune-steps" in r.output

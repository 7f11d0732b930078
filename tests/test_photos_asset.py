"""`mirage3d make-asset` / `views` on a photo with a background and no rembg: the offline cut-out, and --box."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pygltflib
import pytest
from PIL import Image
from test_make_asset import FAST, NUM_POSES
from test_views_cli import make_tiny_model
from typer.testing import CliRunner

from mirage3d.cli.main import app

runner = CliRunner()
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_model(
        tmp_path_factory.mktemp("photo_asset") / "model", NUM_POSES, num_class_embeds=NUM_POSES + 1, radius=3.38, focal=22.0, size=16
    )


def photo(path: Path) -> Path:
    """An RGB photo: an orange object (rows 20-44, columns 18-62) on grey-green noise, no alpha."""
    rng = np.random.default_rng(0)
    im = (rng.uniform(0.3, 0.7, (64, 80, 3)) * np.array([0.8, 1.0, 0.9]) * 255).astype(np.uint8)
    im[20:44, 18:62] = (240, 140, 25)
    Image.fromarray(im, "RGB").save(path)
    return path


@pytest.fixture(autouse=True)
def no_rembg(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "rembg", None)  # import fails even where rembg is installed


def reference_alpha(views: Path) -> np.ndarray:
    ref = next(f for f in json.loads((views / "transforms.json").read_text())["frames"] if f["is_reference"])
    return np.asarray(Image.open(views / ref["file_path"]))[..., 3]


def test_make_asset_from_a_photo_with_a_background(tmp_path: Path, model_dir: Path) -> None:
    out = tmp_path / "car.glb"
    r = runner.invoke(
        app,
        ["make-asset", str(photo(tmp_path / "photo.jpg")), "-o", str(out), "--model", str(model_dir), "--keep-views", str(tmp_path / "views"), *FAST],
    )
    assert r.exit_code == 0, r.output
    gltf = pygltflib.GLTF2().load(str(out))
    assert gltf.materials and gltf.materials[0].pbrMetallicRoughness.baseColorTexture is not None
    # The reference view is the cut-out: transparent around the object, opaque on it.
    alpha = reference_alpha(tmp_path / "views")
    assert alpha[0, 0] == 0 and alpha[alpha.shape[0] // 2, alpha.shape[1] // 2] > 200


def test_views_from_a_photo_with_a_box(tmp_path: Path, model_dir: Path) -> None:
    out = tmp_path / "views"
    r = runner.invoke(
        app,
        [
            "views",
            str(photo(tmp_path / "photo.jpg")),
            "--model",
            str(model_dir),
            "-o",
            str(out),
            "--box",
            "10,12,70,52",
            "--steps",
            "2",
            "--rounds",
            "0",
            "--device",
            "cpu",
            "--pose",
            "1",
        ],
    )
    assert r.exit_code == 0, r.output
    assert json.loads((out / "config.json").read_text())["box"] == [10, 12, 70, 52]
    alpha = reference_alpha(out)
    assert alpha[0, 0] == 0 and alpha[alpha.shape[0] // 2, alpha.shape[1] // 2] > 200


def test_box_errors_are_one_line(tmp_path: Path, model_dir: Path) -> None:
    src = photo(tmp_path / "photo.jpg")
    for box, message in [("0,0,100,50", "box 0,0,100,50 lies outside the 80x64 image"), ("1,2,3", "must be four numbers x0,y0,x1,y1")]:
        out = tmp_path / "car.glb"
        r = runner.invoke(app, ["make-asset", str(src), "-o", str(out), "--model", str(model_dir), *FAST, "--box", box])
        assert r.exit_code == 1 and message in r.output and r.output.count("error:") == 1, r.output
        assert not out.exists()

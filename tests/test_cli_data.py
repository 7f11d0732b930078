"""``mirage3d data render`` end to end through the real CLI, and its one-line errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

from mirage3d.cli.main import app
from mirage3d.io import read_transforms

SHARED = Path(__file__).resolve().parents[2] / "shared" / "meshes"
runner = CliRunner()


@pytest.mark.skipif(not (SHARED / "cars").is_dir(), reason="shared meshes not found beside the repo")
def test_data_render_writes_collection(tmp_path: Path) -> None:
    src = tmp_path / "meshes"
    (src / "kenney").mkdir(parents=True)
    shutil.copy(SHARED / "cars" / "quaternius-Basic_CopCar.glb", src)
    shutil.copy(SHARED / "cars" / "kenney" / "hatchback-sports.glb", src / "kenney")  # textured, in a subfolder
    shutil.copytree(SHARED / "cars" / "kenney" / "Textures", src / "kenney" / "Textures")
    (src / "notes.txt").write_text("ignored: not a mesh")
    out = tmp_path / "coll"
    r = runner.invoke(
        app, ["data", "render", str(src), "-o", str(out), "--n-per-mesh", "3", "--res", "32", "--orbits", "4", "--seed", "3", "--workers", "1"]
    )
    assert r.exit_code == 0, r.output
    assert "wrote 6 images of 2 meshes" in r.output
    images = sorted((out / "images").iterdir())
    assert [p.name for p in images] == [f"{i:06d}.png" for i in range(6)]
    assert all(Image.open(p).mode == "RGBA" and Image.open(p).size == (32, 32) for p in images)
    gt = [json.loads(x) for x in (out / "ground_truth.jsonl").read_text().splitlines()]
    assert [g["mesh_id"] for g in gt] == ["hatchback-sports"] * 3 + ["quaternius-Basic_CopCar"] * 3
    assert {"file", "appearance_seed", "azimuth_deg", "elevation_deg", "distance", "fl_x", "fl_y", "cx", "cy", "w", "h", "c2w", "scale"} <= set(gt[0])
    for mesh_id in ("hatchback-sports", "quaternius-Basic_CopCar"):
        t = read_transforms(out / "orbits" / mesh_id)
        assert len(t.frames) == 4 and (out / "orbits" / mesh_id / "mesh.glb").stat().st_size > 0
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["n_per_mesh"] == 3 and cfg["seed"] == 3 and cfg["meshes"]["quaternius-Basic_CopCar"]["verified"] is True
    assert Image.open(out / "contact_sheet.png").size[0] > 0
    # Refuses to overwrite without --overwrite, and leaves the collection as it was.
    r2 = runner.invoke(app, ["data", "render", str(src), "-o", str(out), "--n-per-mesh", "1", "--res", "32"])
    assert r2.exit_code == 1 and "--overwrite" in r2.output and len(list((out / "images").iterdir())) == 6


@pytest.mark.parametrize(
    "make,args,message",
    [
        (lambda d: None, [], "does not exist"),
        (lambda d: (d / "src").mkdir() or (d / "src" / "a.txt").write_text("x"), [], "no mesh files"),
        (lambda d: (d / "src").mkdir() or (d / "src" / "car.glb").write_bytes(b"not a mesh at all"), [], "cannot read mesh"),
        (lambda d: (d / "src").mkdir() or (d / "src" / "car.glb").write_bytes(b"x"), ["--res", "4"], "--res must be"),
    ],
)
def test_data_render_bad_input(tmp_path: Path, make, args: list[str], message: str) -> None:
    make(tmp_path)
    out = tmp_path / "coll"
    r = runner.invoke(app, ["data", "render", str(tmp_path / "src"), "-o", str(out), "--n-per-mesh", "1", "--res", "32", *args])
    assert r.exit_code == 1
    assert message in r.output and r.output.count("error:") == 1
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".coll")]


def test_data_render_non_mesh_file(tmp_path: Path) -> None:
    f = tmp_path / "photo.png"
    Image.new("RGB", (32, 32)).save(f)
    r = runner.invoke(app, ["data", "render", str(f), "-o", str(tmp_path / "coll")])
    assert r.exit_code == 1 and "is not a mesh file" in r.output

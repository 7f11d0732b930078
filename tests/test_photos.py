"""``mirage3d data import``: photos → a collection (stems kept, bad photos skipped and reported, box errors)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_foreground import composite, mask_iou
from typer.testing import CliRunner

from mirage3d.cli.main import app
from mirage3d.data.photos import ImportConfig, crop_rgba, import_photos, square_crop
from mirage3d.errors import InputError
from mirage3d.foreground import mask_box

runner = CliRunner()


def write_photos(folder: Path, tmp_path: Path) -> dict[str, np.ndarray]:
    """Three composites (a render on a textured background) as JPEG/PNG photos → their true alphas by file name."""
    folder.mkdir()
    truth = {}
    for name, az, seed in (("car_a.jpg", 40.0, 1), ("car_b.png", 100.0, 2), ("IMG 0003.jpeg", 230.0, 3)):
        rgb, alpha = composite(tmp_path, az, seed)
        Image.fromarray((rgb * 255 + 0.5).astype(np.uint8)).save(folder / name, quality=95, subsampling=0)  # (JPEG: no chroma subsampling)
        truth[name] = alpha
    return truth


def test_import_keeps_stems_cuts_out_and_skips_bad_photos(tmp_path: Path) -> None:
    photos = tmp_path / "photos"
    truth = write_photos(photos, tmp_path)
    (photos / "broken.jpg").write_bytes(b"\xff\xd8\xff not a jpeg")
    Image.new("RGB", (80, 60), (128, 128, 128)).save(photos / "blank.png")  # nothing in it
    Image.new("RGB", (8, 8)).save(photos / "tiny.png")
    Image.new("RGB", (80, 60)).save(photos / "car_a.png")  # same stem as car_a.jpg
    (photos / "notes.txt").write_text("ignored: not a photo")
    out = tmp_path / "coll"
    r = runner.invoke(app, ["data", "import", str(photos), "-o", str(out), "--res", "64", "--workers", "1"])
    assert r.exit_code == 0, r.output
    assert "imported 3 photos" in r.output and "skipped 4" in r.output
    names = sorted(p.name for p in (out / "images").iterdir())
    assert names == ["IMG 0003.png", "car_a.png", "car_b.png"]
    report = json.loads((out / "import.json").read_text())
    skipped = {s["file"]: s["reason"] for s in report["skipped"]}
    assert set(skipped) == {"broken.jpg", "blank.png", "tiny.png", "car_a.png"}
    assert "cannot read" in skipped["broken.jpg"] and "no object found" in skipped["blank.png"]
    assert "at least 16x16" in skipped["tiny.png"] and "same stem as car_a.jpg" in skipped["car_a.png"]
    for rec in report["images"]:
        im = np.asarray(Image.open(out / rec["file"]))
        assert im.shape == (64, 64, 4)
        assert rec["mask_source"] == "grabcut-auto"
        # The imported alpha is the true alpha put through the same crop: the cut-out recovered it.
        true = crop_rgba(np.zeros((*truth[rec["source"]].shape, 3), np.float32), truth[rec["source"]].astype(np.float32), tuple(rec["crop"]), 64)[
            ..., 3
        ]
        assert mask_iou(im[..., 3] / 255.0, true / 255.0) >= 0.9
        # framed as the renders are: the box's longer side is `fill` of the frame, centred
        x0, y0, x1, y1 = mask_box(im[..., 3] / 255.0)
        assert max(x1 - x0, y1 - y0) / 64 == pytest.approx(ImportConfig().fill, abs=3 / 64)
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["res"] == 64 and cfg["foreground"]["iterations"] >= 1 and cfg["n_images"] == 3
    assert Image.open(out / "contact_sheet.png").size[0] > 0


def test_import_with_boxes_and_the_same_seed_repeats(tmp_path: Path) -> None:
    photos = tmp_path / "photos"
    truth = write_photos(photos, tmp_path)
    boxes = tmp_path / "boxes.csv"
    rows = ["file,x0,y0,x1,y1"]
    for name, alpha in truth.items():
        if name != "car_b.png":  # a photo without a row is found automatically
            x0, y0, x1, y1 = mask_box(alpha)
            rows.append(f"{name},{x0 - 3.4},{y0 - 2},{x1 + 3},{y1 + 2.6}")
    boxes.write_text("\n".join(rows) + "\n")
    a, b = tmp_path / "a", tmp_path / "b"
    for out in (a, b):
        import_photos(photos, out, ImportConfig(res=48, seed=3), boxes=boxes)
    report = json.loads((a / "import.json").read_text())
    assert {r["source"]: r["mask_source"] for r in report["images"]} == {
        "car_a.jpg": "grabcut-box",
        "IMG 0003.jpeg": "grabcut-box",
        "car_b.png": "grabcut-auto",
    }
    for p in (a / "images").iterdir():
        assert np.array_equal(np.asarray(Image.open(p)), np.asarray(Image.open(b / "images" / p.name)))


@pytest.mark.parametrize(
    "row,message",
    [
        ("missing.jpg,1,1,20,20", "line 2: photo 'missing.jpg' is not in"),
        ("car_a.jpg,10,10,200,50", "line 2: box 10,10,200,50 lies outside the 160x120 photo car_a.jpg"),
        ("car_a.jpg,-20,10,50,50", "lies outside the 160x120 photo"),
        ("car_a.jpg,40,10,20,50", "is empty"),
        ("car_a.jpg,a,10,20,50", "line 2: x0,y0,x1,y1 must be numbers"),
    ],
)
def test_bad_box_rows_are_one_line_errors(tmp_path: Path, row: str, message: str) -> None:
    photos = tmp_path / "photos"
    photos.mkdir()
    Image.new("RGB", (160, 120), (90, 120, 100)).save(photos / "car_a.jpg")
    boxes = tmp_path / "boxes.csv"
    boxes.write_text(f"file,x0,y0,x1,y1\n{row}\n")
    out = tmp_path / "coll"
    r = runner.invoke(app, ["data", "import", str(photos), "-o", str(out), "--boxes", str(boxes), "--workers", "1"])
    assert r.exit_code == 1
    assert message in r.output and r.output.count("error:") == 1 and "Traceback" not in r.output
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".coll")]


def test_import_with_objects_writes_objects_json(tmp_path: Path) -> None:
    from mirage3d.data.objects import read_objects

    photos = tmp_path / "photos"
    write_photos(photos, tmp_path)
    (photos / "broken.jpg").write_bytes(b"not a jpeg")  # skipped: not in objects.json
    objects = tmp_path / "objects.csv"
    objects.write_text("file,object\ncar_a.jpg,turntable 1\ncar_b.png,turntable 1\nIMG 0003.jpeg,turntable 2\nbroken.jpg,turntable 2\n")
    out = tmp_path / "coll"
    r = runner.invoke(app, ["data", "import", str(photos), "-o", str(out), "--objects", str(objects), "--res", "32", "--workers", "1"])
    assert r.exit_code == 0, r.output
    groups = json.loads((out / "objects.json").read_text())["objects"]
    assert sorted(groups) == [["images/IMG 0003.png"], ["images/car_a.png", "images/car_b.png"]]
    with pytest.raises(InputError, match="has 1 image"):  # checked where it is read
        read_objects(out, ["images/IMG 0003.png", "images/car_a.png", "images/car_b.png"])
    for text, message in (
        ("file,object\ncar_a.jpg,1\n", "gives no object for 3 photos"),
        ("file,object\nnope.jpg,1\n", "line 2: photo 'nope.jpg' is not one of the photos"),
        ("file,object\ncar_a.jpg,1\ncar_a.jpg,2\n", "line 3: a second row for car_a.jpg"),
        ("file,group\ncar_a.jpg,1\n", "header file,object"),
    ):
        objects.write_text(text)
        r = runner.invoke(app, ["data", "import", str(photos), "-o", str(tmp_path / "bad"), "--objects", str(objects), "--workers", "1"])
        assert r.exit_code == 1 and message in r.output and "Traceback" not in r.output, r.output
        assert not (tmp_path / "bad").exists()


def test_import_input_errors(tmp_path: Path) -> None:
    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "a.txt").write_text("x")
    with pytest.raises(InputError, match="no photos"):
        import_photos(photos, tmp_path / "c")
    with pytest.raises(InputError, match="does not exist"):
        import_photos(tmp_path / "nope", tmp_path / "c")
    Image.new("RGB", (40, 40), (128, 128, 128)).save(photos / "blank.png")
    with pytest.raises(InputError, match="no photo of .* could be imported"):
        import_photos(photos, tmp_path / "c")
    boxes = tmp_path / "b.csv"
    boxes.write_text("name,left,top\nblank.png,1,2\n")
    with pytest.raises(InputError, match="header file,x0,y0,x1,y1"):
        import_photos(photos, tmp_path / "c", boxes=boxes)
    with pytest.raises(InputError, match="--res must be"):
        ImportConfig(res=4)
    assert not (tmp_path / "c").exists()


def test_square_crop_frames_the_box() -> None:
    left, top, side = square_crop((10, 20, 50, 40), 0.5)
    assert side == 80 and (left + side / 2, top + side / 2) == (30, 30)
    rgba = crop_rgba(np.ones((60, 80, 3), np.float32) * 0.2, np.ones((60, 80), np.float32), (-10, -10, 100), 50)
    assert rgba[0, 0, 3] == 0 and rgba[25, 25, 3] == 255 and rgba[0, 0, 0] == 255  # outside the photo: transparent white

"""Atomic writes, image validation and transforms.json round trip / rejection."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from mirage3d import io
from mirage3d.cameras import orbit_c2w
from mirage3d.errors import InputError


def _transforms(n=3) -> io.Transforms:
    frames = [io.Frame(f"images/{i:02d}.png", orbit_c2w(360.0 * i / n, 20.0, 2.0), {"pose": i}) for i in range(n)]
    return io.Transforms(w=32, h=32, fl_x=40.0, fl_y=40.0, cx=16.0, cy=16.0, frames=frames)


def _write_images(folder, n=3):
    (folder / "images").mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.new("RGBA", (32, 32), (255, 0, 0, 255)).save(folder / "images" / f"{i:02d}.png")


def test_transforms_round_trip(tmp_path):
    _write_images(tmp_path)
    t = _transforms()
    io.write_transforms(tmp_path / "transforms.json", t)
    back = io.read_transforms(tmp_path)
    assert (back.w, back.h, back.fl_x, back.cx) == (32, 32, 40.0, 16.0)
    np.testing.assert_allclose(back.c2w(), t.c2w(), atol=1e-12)
    assert [f.extra["pose"] for f in back.frames] == [0, 1, 2]
    data = json.loads((tmp_path / "transforms.json").read_text())
    assert data["camera_model"] == "OPENCV" and len(data["frames"]) == 3


def _bad(tmp_path, mutate):
    _write_images(tmp_path)
    io.write_transforms(tmp_path / "transforms.json", _transforms())
    data = json.loads((tmp_path / "transforms.json").read_text())
    mutate(data)
    (tmp_path / "transforms.json").write_text(json.dumps(data))
    with pytest.raises(InputError) as e:
        io.read_transforms(tmp_path)
    return str(e.value)


def test_transforms_rejects_malformed(tmp_path):
    assert "fl_x" in _bad(tmp_path, lambda d: d.pop("fl_x"))
    assert "frames" in _bad(tmp_path, lambda d: d.update(frames=[]))
    assert "4x4" in _bad(tmp_path, lambda d: d["frames"][0].update(transform_matrix=[[1, 0, 0], [0, 1, 0], [0, 0, 1]]))
    assert "orthonormal" in _bad(tmp_path, lambda d: d["frames"][1]["transform_matrix"][0].__setitem__(0, 3.0))
    assert "does not exist" in _bad(tmp_path, lambda d: d["frames"][2].update(file_path="images/missing.png"))
    assert "positive" in _bad(tmp_path, lambda d: d.update(fl_y=-1))
    assert "transform_matrix" in _bad(tmp_path, lambda d: d["frames"][0].pop("transform_matrix"))
    (tmp_path / "transforms.json").write_text("{not json")
    with pytest.raises(InputError, match="not valid JSON"):
        io.read_transforms(tmp_path)
    with pytest.raises(InputError, match="does not exist"):
        io.read_transforms(tmp_path / "nowhere")


def test_mirrored_camera_is_rejected(tmp_path):
    def mirror(d):
        m = np.array(d["frames"][0]["transform_matrix"])
        m[:3, 0] *= -1
        d["frames"][0]["transform_matrix"] = m.tolist()

    assert "mirrored" in _bad(tmp_path, mirror)


def test_load_image_rejects_bad_files(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        io.load_image(tmp_path / "nope.png")
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(InputError, match="empty"):
        io.load_image(tmp_path / "empty.png")
    (tmp_path / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\nthis is not a png")
    with pytest.raises(InputError, match="cannot read"):
        io.load_image(tmp_path / "corrupt.png")
    Image.new("RGB", (1, 1)).save(tmp_path / "tiny.png")
    with pytest.raises(InputError, match="at least"):
        io.load_image(tmp_path / "tiny.png")
    Image.new("L", (9000, 20)).save(tmp_path / "huge.png")
    with pytest.raises(InputError, match="largest"):
        io.load_image(tmp_path / "huge.png")
    Image.new("RGB", (20, 24), (1, 2, 3)).save(tmp_path / "ok.jpg")
    im = io.load_image(tmp_path / "ok.jpg")
    assert im.mode == "RGBA" and im.size == (20, 24)


def test_atomic_path_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "out.json"
    with pytest.raises(RuntimeError):
        with io.atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed")
    assert not target.exists() and list(tmp_path.iterdir()) == []
    io.atomic_write_json(target, {"a": 1})
    assert json.loads(target.read_text()) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]


def test_atomic_dir_refuses_clobber_and_cleans_up(tmp_path):
    out = tmp_path / "coll"
    with pytest.raises(ValueError):
        with io.atomic_dir(out) as tmp:
            (tmp / "a.txt").write_text("x")
            raise ValueError("boom")
    assert not out.exists() and list(tmp_path.iterdir()) == []
    with io.atomic_dir(out) as tmp:
        (tmp / "a.txt").write_text("x")
    assert (out / "a.txt").read_text() == "x"
    with pytest.raises(InputError, match="--overwrite"):
        with io.atomic_dir(out):
            pass
    with io.atomic_dir(out, overwrite=True) as tmp:
        (tmp / "b.txt").write_text("y")
    assert sorted(p.name for p in out.iterdir()) == ["b.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["coll"]


def test_list_images(tmp_path):
    with pytest.raises(InputError, match="no images"):
        io.list_images(tmp_path)
    with pytest.raises(InputError, match="does not exist"):
        io.list_images(tmp_path / "x")
    _write_images(tmp_path, 2)
    (tmp_path / "images" / "notes.txt").write_text("x")
    assert [p.name for p in io.list_images(tmp_path)] == ["00.png", "01.png"]

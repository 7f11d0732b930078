"""``mirage3d recon`` end to end, export round trips and bad input."""

from __future__ import annotations

import json

import numpy as np
import pygltflib
import pytest
import trimesh
import xatlas
from PIL import Image
from typer.testing import CliRunner

from mirage3d.cli.main import app
from mirage3d.errors import InputError
from mirage3d.recon.mesh import TexturedMesh, export
from mirage3d.recon.synthetic import write_sphere_views

runner = CliRunner()
FAST = ["--iters", "60", "--res", "24", "--faces", "600", "--texture-size", "64"]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def views(tmp_path_factory):
    return write_sphere_views(tmp_path_factory.mktemp("views"), n_views=6, res=32)


def _leftovers(folder):
    return [p.name for p in folder.iterdir() if ".tmp" in p.name]


def test_cli_end_to_end_glb_with_preview(views, tmp_path):
    out = tmp_path / "asset.glb"
    r = runner.invoke(app, ["recon", str(views), "-o", str(out), *FAST, "--preview", "--seed", "1"])
    assert r.exit_code == 0, r.output
    assert "wrote" in r.output and out.exists()
    scene = trimesh.load(out)
    geom = list(scene.geometry.values())[0]
    assert isinstance(geom.visual, trimesh.visual.TextureVisuals) and geom.visual.material.baseColorTexture is not None
    assert 0 < len(geom.faces) <= 600
    g = pygltflib.GLTF2().load(str(out))
    assert len(g.images) == 1 and g.materials[0].pbrMetallicRoughness.baseColorTexture is not None
    cfg = json.loads((tmp_path / "asset.glb.config.json").read_text())
    assert cfg["iters"] == 60 and cfg["seed"] == 1
    strip = Image.open(tmp_path / "asset.preview.png")
    assert strip.width > strip.height
    assert Image.open(tmp_path / "asset.preview.gif").n_frames == 8
    assert not _leftovers(tmp_path)


@pytest.mark.parametrize("suffix", ["obj", "ply"])
def test_cli_other_formats(views, tmp_path, suffix):
    out = tmp_path / f"asset.{suffix}"
    r = runner.invoke(app, ["recon", str(views), "-o", str(out), *FAST, "--iters", "10"])
    assert r.exit_code == 0, r.output
    m = trimesh.load(out, force="mesh")
    assert len(m.faces) > 0
    if suffix == "obj":
        assert (tmp_path / "asset.mtl").exists()


def _write_bad(views, tmp_path, mutate):
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(views, bad)
    mutate(bad)
    return bad


def _no_foreground(d):
    for p in (d / "images").glob("*.png"):
        im = np.asarray(Image.open(p)).copy()
        im[..., 3] = 0
        Image.fromarray(im).save(p)


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda d: (d / "transforms.json").write_text("{not json"), "not valid JSON"),
        (lambda d: (d / "transforms.json").write_text(json.dumps({"frames": []})), "no 'frames'"),
        (lambda d: Image.new("RGBA", (40, 40)).save(d / "images" / "0001.png"), "different sizes"),
        (lambda d: (d / "images" / "0002.png").unlink(), "does not exist"),
        (_no_foreground, "no foreground"),
    ],
    ids=["bad-json", "no-frames", "size-mismatch", "missing-image", "no-foreground"],
)
def test_cli_bad_views_one_line_error_and_no_output(views, tmp_path, mutate, message):
    bad = _write_bad(views, tmp_path, mutate)
    out = tmp_path / "out" / "asset.glb"
    r = runner.invoke(app, ["recon", str(bad), "-o", str(out), *FAST])
    assert r.exit_code == 1
    err = r.stderr if hasattr(r, "stderr") else r.output
    assert message in err and "Traceback" not in err
    assert err.strip().splitlines()[0].startswith("error:")
    assert not out.exists()
    assert not out.parent.exists() or not list(out.parent.iterdir())


@pytest.mark.parametrize(
    "args, message",
    [(["--iters", "0"], "--iters"), (["--res", "4"], "--res"), (["--format", "fbx"], "--format"), (["--device", "tpu"], "--device")],
)
def test_cli_absurd_options(views, tmp_path, args, message):
    r = runner.invoke(app, ["recon", str(views), "-o", str(tmp_path / "a.glb"), *args])
    assert r.exit_code == 1 and message in r.output
    assert not (tmp_path / "a.glb").exists()


def test_bad_output_suffix(views, tmp_path):
    r = runner.invoke(app, ["recon", str(views), "-o", str(tmp_path / "a.fbx")])
    assert r.exit_code == 1 and ".glb, .obj or .ply" in r.output


def test_export_axes_and_texture_round_trip(tmp_path):
    mesh = trimesh.creation.box(extents=(1.0, 2.0, 3.0))  # world: tallest along +Z
    vmap, faces, uv = xatlas.parametrize(mesh.vertices.astype(np.float32), mesh.faces.astype(np.uint32))
    tex = np.zeros((32, 32, 3), np.uint8)
    tex[..., 0] = 200
    tm = TexturedMesh(mesh.vertices[vmap], faces.astype(np.int64), uv.astype(np.float64), tex)
    export(tm, tmp_path / "box.glb")
    loaded = list(trimesh.load(tmp_path / "box.glb").geometry.values())[0]
    np.testing.assert_allclose(np.ptp(loaded.vertices, axis=0), [2.0, 3.0, 1.0], atol=1e-6)  # glTF: +Y up
    img = np.asarray(loaded.visual.material.baseColorTexture.convert("RGB"))
    assert img.shape == (32, 32, 3) and img[..., 0].min() == 200


def test_bad_output_suffix_is_refused_before_writing(tmp_path):
    uv = np.array([[0.0, 0.0], [1.0, 0.0], [1.0, 1.0]])
    with pytest.raises(InputError):
        export(TexturedMesh(np.c_[uv, np.zeros(3)], np.array([[0, 1, 2]]), uv, np.zeros((4, 4, 3), np.uint8)), tmp_path / "x.fbx")
    assert not (tmp_path / "x.fbx").exists()


def test_reconstruct_from_views_in_memory_with_reference(tmp_path):
    from mirage3d.recon import ReconConfig, ViewSet, reconstruct
    from mirage3d.recon.synthetic import toy_car_views

    views = toy_car_views(n_views=6, res=32)
    views = ViewSet(views.rgba, views.c2w, views.K, reference=2)  # made in memory: no files, no folder
    out = tmp_path / "toy.glb"
    res = reconstruct(views, out, ReconConfig(iters=10, res=24, faces=800, texture_size=64, batch_rays=512))
    assert out.exists() and res.fit is not None and res.fit.c2w.shape == (6, 4, 4)
    assert json.loads((tmp_path / "toy.glb.config.json").read_text())["views"] == "in memory"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["toy.glb", "toy.glb.config.json"]


def test_load_views_reads_the_reference_frame(views, tmp_path):
    import shutil

    from mirage3d.recon import load_views

    d = tmp_path / "v"
    shutil.copytree(views, d)
    data = json.loads((d / "transforms.json").read_text())
    data["frames"][3]["is_reference"] = True
    (d / "transforms.json").write_text(json.dumps(data))
    assert load_views(d).reference == 3
    assert load_views(views).reference is None

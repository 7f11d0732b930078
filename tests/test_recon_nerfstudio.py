"""``mirage3d recon --backend nerfstudio`` with stand-in ``ns-train`` / ``ns-export`` executables.

CI has no GPU and no nerfstudio, so these tests check the orchestration (commands and flags, where the files
are found, errors, cleanup) and the conversion of an export written the way nerfstudio writes it
(``nerfstudio/exporter/texture_utils.py``: ``mesh.obj`` with per-corner ``vt``, ``material_0.mtl``/``.png``).
"""

from __future__ import annotations

import json
import os
import stat
import sys

import numpy as np
import pygltflib
import pytest
import trimesh
from test_recon_cli import _write_bad
from typer.testing import CliRunner

from mirage3d.cli.main import app
from mirage3d.io import read_transforms
from mirage3d.recon.mesh import WORLD_TO_GLTF
from mirage3d.recon.nerfstudio import NerfstudioConfig, NerfstudioError, reconstruct_nerfstudio
from mirage3d.recon.synthetic import write_sphere_views

runner = CliRunner()
BOX_EXTENTS = (1.0, 2.0, 3.0)  # world frame, tallest along +Z
BOX_OFFSET = (0.1, -0.2, 0.3)  # off-centre, so a sign or axis error shows in the bounds
TEXTURE_RGB = (200, 30, 40)

FAKE_TRAIN = """
import json, os, sys
from pathlib import Path

argv = sys.argv[1:]
with open(os.environ["FAKE_NS_LOG"], "a") as f:
    f.write(json.dumps(["ns-train", *argv]) + "\\n")
if os.environ.get("FAKE_NS_FAIL") == "ns-train":
    print("Traceback (most recent call last):", file=sys.stderr)
    print('  File "train.py", line 1, in <module>', file=sys.stderr)
    print("RuntimeError: CUDA error: out of memory", file=sys.stderr)
    sys.exit(1)
opt = lambda k: argv[argv.index(k) + 1]
n = int(opt("--max-num-iterations"))
for step in (0, n // 2, n - 1):
    print(f"{step} ({100 * step / n:.2f}%)   12 ms   1 M", flush=True)
run = Path(opt("--output-dir")) / opt("--experiment-name") / argv[0] / "2025-01-01_000000"
run.mkdir(parents=True)
(run / "config.yml").write_text("method_name: " + argv[0] + "\\n")
"""

FAKE_EXPORT = (
    """
import json, os, sys
from pathlib import Path

import numpy as np
import trimesh
from PIL import Image

argv = sys.argv[1:]
with open(os.environ["FAKE_NS_LOG"], "a") as f:
    f.write(json.dumps(["ns-export", *argv]) + "\\n")
opt = lambda k: argv[argv.index(k) + 1]
if os.environ.get("FAKE_NS_FAIL") == "ns-export" or not Path(opt("--load-config")).is_file():
    print("FileNotFoundError: no config", file=sys.stderr)
    sys.exit(2)
out = Path(opt("--output-dir"))
out.mkdir(parents=True, exist_ok=True)
box = trimesh.creation.box(extents=EXTENTS)
box.apply_translation(OFFSET)
side = int(opt("--num-pixels-per-side"))
Image.fromarray(np.full((side, side, 3), RGB, np.uint8)).save(out / "material_0.png")
(out / "material_0.mtl").write_text("newmtl material_0\\nKd 1.000 1.000 1.000\\nmap_Kd material_0.png\\n")
lines = ["# Generated with nerfstudio", "mtllib material_0.mtl", "usemtl material_0"]
lines += [f"v {x} {y} {z}" for x, y, z in box.vertices]
corner_uv = [(0.1, 0.1), (0.9, 0.1), (0.5, 0.9)]
lines += [f"vt {u} {v}" for _ in box.faces for u, v in corner_uv]  # one vt per face corner, as nerfstudio writes
lines += [f"vn {x} {y} {z}" for x, y, z in box.vertex_normals]
for i, (a, b, c) in enumerate(box.faces + 1):
    lines.append(f"f {a}/{3 * i + 1}/{a} {b}/{3 * i + 2}/{b} {c}/{3 * i + 3}/{c}")
(out / "mesh.obj").write_text("\\n".join(lines) + "\\n")
""".replace("EXTENTS", repr(BOX_EXTENTS))
    .replace("OFFSET", repr(BOX_OFFSET))
    .replace("RGB", repr(TEXTURE_RGB))
)


@pytest.fixture(scope="module")
def views(tmp_path_factory):
    return write_sphere_views(tmp_path_factory.mktemp("views"), n_views=6, res=32)


@pytest.fixture
def fake_ns(tmp_path, monkeypatch):
    """Stand-in ns-train / ns-export first on PATH; returns a function reading the commands they received."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, body in (("ns-train", FAKE_TRAIN), ("ns-export", FAKE_EXPORT)):
        exe = bin_dir / name
        exe.write_text(f"#!{sys.executable}\n{body}")
        exe.chmod(exe.stat().st_mode | stat.S_IXUSR)
    log = tmp_path / "ns_calls.jsonl"
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}")
    monkeypatch.setenv("FAKE_NS_LOG", str(log))
    monkeypatch.delenv("FAKE_NS_FAIL", raising=False)
    return lambda: [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def _opt(argv, key):
    return argv[argv.index(key) + 1]


def _err(result):
    return result.stderr if hasattr(result, "stderr") else result.output


def _assert_one_line_error(result, message):
    assert result.exit_code == 1, result.output
    err = _err(result)
    lines = err.strip().splitlines()
    assert lines[0].startswith("error:") and message in lines[0], err
    assert "Traceback" not in err and len([ln for ln in lines if ln.startswith("error:")]) == 1


def _leftovers(folder):
    return [p.name for p in folder.iterdir() if ".tmp" in p.name] if folder.exists() else []


def test_glb_from_fake_nerfstudio(views, tmp_path, fake_ns):
    out = tmp_path / "out" / "asset.glb"
    r = runner.invoke(app, ["recon", str(views), "-o", str(out), "--backend", "nerfstudio", "--seed", "3", "--faces", "5000", "--texture-size", "64"])
    assert r.exit_code == 0, r.output
    assert "wrote" in r.output and "nerfstudio instant-ngp-bounded" in r.output and "PSNR" not in r.output
    for phase in ("train", "export", "convert"):
        assert f"{phase} " in r.output

    (train, exp) = fake_ns()
    assert train[:2] == ["ns-train", "instant-ngp-bounded"]
    assert _opt(train, "--data") == str(views.resolve())
    assert _opt(train, "--max-num-iterations") == str(NerfstudioConfig().iters)
    assert _opt(train, "--machine.seed") == "3"
    assert _opt(train, "--vis") == "tensorboard" and _opt(train, "--viewer.quit-on-train-completion") == "True"
    assert _opt(train, "--pipeline.model.background-color") == "white"
    assert "--pipeline.model.camera-optimizer.mode" not in train  # a nerfacto-only option
    # Trainer options come before the dataparser subcommand; the dataparser keeps the transforms.json frame.
    sub = train.index("nerfstudio-data")
    assert train[sub + 1 :: 2] == [a for a in train[sub + 1 :] if a.startswith("--")]
    dp = dict(zip(train[sub + 1 :: 2], train[sub + 2 :: 2]))
    assert dp["--orientation-method"] == "none" and dp["--center-method"] == "none"
    assert dp["--auto-scale-poses"] == "False" and dp["--scale-factor"] == "1.0" and dp["--eval-mode"] == "all"
    cam_dist = float(np.linalg.norm(read_transforms(views).c2w()[:, :3, 3], axis=1).min())
    assert 0.5 < float(dp["--scene-scale"]) < cam_dist  # holds the sphere (radius 0.5), excludes the cameras
    assert 0 < float(_opt(train, "--pipeline.model.near-plane")) < cam_dist < float(_opt(train, "--pipeline.model.far-plane"))

    assert exp[:2] == ["ns-export", "poisson"]
    assert _opt(exp, "--load-config").endswith("mirage3d/instant-ngp-bounded/2025-01-01_000000/config.yml")
    assert _opt(exp, "--target-num-faces") == "5000" and _opt(exp, "--num-pixels-per-side") == "64"
    assert _opt(exp, "--normal-method") == "open3d" and _opt(exp, "--texture-method") == "nerf"
    assert _opt(exp, "--save-point-cloud") == "False"

    # The GLB: one textured mesh, the box moved to glTF axes by the same map as the voxel backend.
    g = pygltflib.GLTF2().load(str(out))
    assert len(g.images) == 1 and g.materials[0].pbrMetallicRoughness.baseColorTexture is not None
    geom = next(iter(trimesh.load(out).geometry.values()))
    assert len(geom.faces) == 12
    tex = np.asarray(geom.visual.material.baseColorTexture.convert("RGB"))
    assert tex.shape == (64, 64, 3) and (tex == TEXTURE_RGB).all()
    world = trimesh.creation.box(extents=BOX_EXTENTS)
    world.apply_translation(BOX_OFFSET)
    expected = trimesh.transform_points(world.bounds, WORLD_TO_GLTF)
    np.testing.assert_allclose(geom.bounds, np.sort(expected, axis=0), atol=1e-6)
    np.testing.assert_allclose(geom.bounds[0], [-0.2 - 1.0, 0.3 - 1.5, 0.1 - 0.5], atol=1e-6)  # (y, z, x) of world
    uv = geom.visual.uv
    assert uv.min() >= 0.1 - 1e-6 and uv.max() <= 0.9 + 1e-6

    cfg = json.loads((tmp_path / "out" / "asset.glb.config.json").read_text())
    assert cfg["backend"] == "nerfstudio" and cfg["method"] == "instant-ngp-bounded" and cfg["seed"] == 3
    assert cfg["commands"][0].startswith("ns-train instant-ngp-bounded") and cfg["commands"][1].startswith("ns-export poisson")
    assert sorted(p.name for p in out.parent.iterdir()) == ["asset.glb", "asset.glb.config.json"]
    assert not os.path.exists(_opt(train, "--output-dir"))  # nerfstudio's working folder is gone


def test_nerfacto_obj_and_progress(views, tmp_path, fake_ns):
    steps = []
    cfg = NerfstudioConfig(method="nerfacto", iters=40, faces=100, texture_size=32)
    result = reconstruct_nerfstudio(views, tmp_path / "asset.obj", cfg, progress=lambda s, n, _: steps.append((s, n)))
    (train, _) = fake_ns()
    assert train[1] == "nerfacto" and _opt(train, "--max-num-iterations") == "40"
    assert _opt(train, "--pipeline.model.camera-optimizer.mode") == "off"
    assert _opt(train, "--pipeline.model.proposal-initial-sampler") == "uniform"
    assert steps and steps[-1] == (40, 40)
    assert set(result.timings) == {"load", "train", "export", "convert", "total"}
    assert result.files[0].name == "asset.obj" and sorted(p.name for p in result.files[1:]) == [
        "asset.mtl",
        "asset.obj.config.json",
        "material_0.png",
    ]
    m = trimesh.load(tmp_path / "asset.obj", force="mesh")
    np.testing.assert_allclose(np.ptp(m.vertices, axis=0), [2.0, 3.0, 1.0], atol=1e-6)  # glTF axes, +Y up


@pytest.mark.parametrize("tool, message", [("ns-train", "RuntimeError: CUDA error: out of memory"), ("ns-export", "FileNotFoundError")])
def test_failing_tool_one_line_error_no_output(views, tmp_path, fake_ns, monkeypatch, tool, message):
    monkeypatch.setenv("FAKE_NS_FAIL", tool)
    out = tmp_path / "out" / "asset.glb"
    r = runner.invoke(app, ["recon", str(views), "-o", str(out), "--backend", "nerfstudio"])
    _assert_one_line_error(r, f"{tool} ")
    assert "failed (exit code" in _err(r) and message in _err(r)
    assert not out.exists() and not _leftovers(out.parent)
    assert [c[0] for c in fake_ns()] == (["ns-train"] if tool == "ns-train" else ["ns-train", "ns-export"])
    assert not os.path.exists(_opt(fake_ns()[0], "--output-dir"))


def test_failure_keeps_log_tail_for_debugging(views, tmp_path, fake_ns, monkeypatch):
    monkeypatch.setenv("FAKE_NS_FAIL", "ns-train")
    with pytest.raises(NerfstudioError) as e:
        reconstruct_nerfstudio(views, tmp_path / "a.glb")
    lines = str(e.value).splitlines()
    assert lines[0] == "ns-train instant-ngp-bounded failed (exit code 1): RuntimeError: CUDA error: out of memory"
    assert lines[1] == "Traceback (most recent call last):"  # the tail, shown only with MIRAGE3D_DEBUG=1


@pytest.mark.parametrize("present", [(), ("ns-train",)], ids=["none", "no-ns-export"])
def test_missing_nerfstudio_names_the_extra(views, tmp_path, monkeypatch, present):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in present:
        (bin_dir / name).write_text("#!/bin/sh\nexit 0\n")
        (bin_dir / name).chmod(0o755)
    monkeypatch.setenv("PATH", str(bin_dir))
    out = tmp_path / "out" / "asset.glb"
    r = runner.invoke(app, ["recon", str(views), "-o", str(out), "--backend", "nerfstudio"])
    _assert_one_line_error(r, "--backend nerfstudio needs nerfstudio (ns-train, ns-export on PATH): pip install nerfstudio")
    assert "--backend voxel" in _err(r)
    assert not out.exists() and not out.parent.exists()


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda d: (d / "transforms.json").write_text("{not json"), "not valid JSON"),
        (lambda d: (d / "images" / "0002.png").unlink(), "does not exist"),
    ],
    ids=["bad-json", "missing-image"],
)
def test_bad_views_same_error_as_voxel_and_nothing_launched(views, tmp_path, fake_ns, mutate, message):
    bad = _write_bad(views, tmp_path, mutate)
    errors = []
    for backend in ("voxel", "nerfstudio"):
        out = tmp_path / backend / "asset.glb"
        r = runner.invoke(app, ["recon", str(bad), "-o", str(out), "--backend", backend])
        _assert_one_line_error(r, message)
        errors.append(_err(r).strip().splitlines()[0])
        assert not out.exists()
    assert errors[0] == errors[1]
    assert fake_ns() == []  # ns-train never started


@pytest.mark.parametrize(
    "args, message",
    [
        (["--backend", "mesh"], "--backend 'mesh' must be one of voxel, nerfstudio"),
        (["--method", "nerfacto"], "--method applies only to --backend nerfstudio"),
        (["--backend", "nerfstudio", "--method", "splatfacto"], "--method 'splatfacto' must be one of"),
        (["--backend", "nerfstudio", "--res", "96"], "--res applies only to --backend voxel"),
        (["--backend", "nerfstudio", "--device", "cpu"], "--device applies only to --backend voxel"),
        (["--backend", "nerfstudio", "--iters", "0"], "--iters 0 must be between"),
    ],
)
def test_backend_options_one_line_error(views, tmp_path, fake_ns, args, message):
    out = tmp_path / "a.glb"
    r = runner.invoke(app, ["recon", str(views), "-o", str(out), *args])
    _assert_one_line_error(r, message)
    assert not out.exists() and fake_ns() == []

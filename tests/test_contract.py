"""The command-line contract, table-driven (docs/reliability.md): every command, fed bad input through the real
CLI, exits 1, prints exactly one line (``error: ...``) and no traceback, and leaves nothing at its output path.

Fixtures are built once for the module: a tiny collection, a tiny UNet backbone, a poses folder, a tiny
MiragePipeline model, a views folder, and damaged copies of each (truncated safetensors, a header that claims
10^12 bytes, wrong types in config.json, poses.json without keys or with NaN). Each case then runs in a fresh
folder. ``CASES`` is also the table in docs/reliability.md (a test checks that every case is listed there).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import pytest
import trimesh
from test_features import make_collection, make_unet_folder
from test_views_cli import cutout, make_tiny_model
from typer.testing import CliRunner

from mirage3d.cli.main import app
from mirage3d.recon.synthetic import write_sphere_views

runner = CliRunner()
pytestmark = pytest.mark.usefixtures("one_torch_thread")
DOCS = Path(__file__).resolve().parents[1] / "docs" / "reliability.md"


# --------------------------------------------------------------------------------------------------
# Damaged copies
# --------------------------------------------------------------------------------------------------
def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _weights(folder: Path) -> Path:
    return next(p for p in sorted(folder.rglob("*.safetensors")) if "poses" not in p.parts)


def truncated(src: Path, dst: Path, pattern: str = "*.safetensors") -> Path:
    """A copy whose first safetensors file (outside poses/) ends half way."""
    _copy(src, dst)
    f = _weights(dst) if pattern == "*.safetensors" else next(dst.glob(pattern))
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    return dst


def huge_header(src: Path, dst: Path) -> Path:
    """A copy whose safetensors header says it is 10^12 bytes long."""
    _copy(src, dst)
    f = _weights(dst)
    f.write_bytes((10**12).to_bytes(8, "little") + f.read_bytes()[8:])
    return dst


def edited_json(src: Path, dst: Path, relative: str, edit: Callable[[dict], object]) -> Path:
    _copy(src, dst)
    path = dst / relative
    data = json.loads(path.read_text())
    new = edit(data)
    path.write_text(new if isinstance(new, str) else json.dumps(data if new is None else new))
    return dst


def _wrong_unet_types(cfg: dict) -> None:
    cfg["block_out_channels"] = "sixteen"
    cfg["layers_per_block"] = "one"


@pytest.fixture(scope="module")
def d(tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    root = tmp_path_factory.mktemp("contract")
    n = SimpleNamespace(root=root)
    n.coll = make_collection(root / "coll", n=8)
    n.badcoll = _copy(n.coll, root / "badcoll")
    (n.badcoll / "images" / "zzz_broken.png").write_bytes(b"this is not a png")
    n.file = root / "afile.png"
    n.file.write_bytes(b"a file, not a folder")
    n.image = cutout(root / "photo.png")
    n.unet = make_unet_folder(root / "unet")
    n.unet_trunc = truncated(n.unet, root / "unet_trunc")
    n.unet_huge = huge_header(n.unet, root / "unet_huge")
    n.unet_types = edited_json(n.unet, root / "unet_types", "unet/config.json", _wrong_unet_types)
    r = runner.invoke(
        app,
        [
            "poses",
            "discover",
            str(n.coll),
            "-o",
            str(root / "poses"),
            "-b",
            "hog",
            "--image-size",
            "32",
            "-k",
            "2",
            "-p",
            "2",
            "--workers",
            "0",
            "--features",
            str(root / "hogfeats"),
        ],
    )
    assert r.exit_code == 0, r.output
    n.poses = root / "poses"
    n.poses_trunc = truncated(n.poses, root / "poses_trunc", "pose_model.safetensors")
    n.poses_types = edited_json(n.poses, root / "poses_types", "pose_model.json", lambda m: m.update(temperature="warm", mirror="none"))
    n.poses_nokeys = edited_json(n.poses, root / "poses_nokeys", "poses.json", lambda p: {"num_poses": 2})
    n.poses_nan = edited_json(n.poses, root / "poses_nan", "poses.json", lambda p: json.dumps({**p, "azimuth_deg": [float("nan"), 90.0]}))
    n.model = make_tiny_model(root / "model", 4, num_class_embeds=5, radius=3.38, focal=22.0, size=16)
    n.model_types = edited_json(n.model, root / "model_types", "unet/config.json", _wrong_unet_types)
    n.model_trunc = truncated(n.model, root / "model_trunc")
    n.views = write_sphere_views(root / "views", n_views=4, res=24)
    (root / "outside.png").write_bytes((n.views / "images" / "0000.png").read_bytes())
    n.views_abs = edited_json(n.views, root / "views_abs", "transforms.json", lambda t: t["frames"][0].update(file_path=str(root / "outside.png")))
    n.views_up = edited_json(n.views, root / "views_up", "transforms.json", lambda t: t["frames"][0].update(file_path="../outside.png"))
    n.views_link = _copy(n.views, root / "views_link")
    (n.views_link / "images" / "0000.png").unlink()
    (n.views_link / "images" / "0000.png").symlink_to(root / "outside.png")
    n.meshes = root / "meshes"  # a mesh the table does not know (a warning) beside a broken one (the error)
    n.meshes.mkdir()
    trimesh.creation.box().export(n.meshes / "unknown_box.glb")
    (n.meshes / "zz_broken.glb").write_bytes(b"glTF but not really")
    n.exists = root / "existing"  # an output folder that holds something
    n.exists.mkdir()
    (n.exists / "keep.txt").write_text("mine")
    return n


# --------------------------------------------------------------------------------------------------
# The table
# --------------------------------------------------------------------------------------------------
@dataclass
class Case:
    id: str
    """Name of the case (listed in docs/reliability.md)."""
    argv: Callable[[SimpleNamespace, Path], list[str]]
    """The command line, from the fixtures and this case's fresh output path."""
    expect: str
    """A piece of the one error line."""
    untouched: Callable[[SimpleNamespace, Path], list[Path]] | None = None
    """Outputs that exist before and must be left as they were (default: the output path must not exist after)."""


def _below(d: SimpleNamespace, name: str = "x") -> str:
    return str(d.file / name)


HOG = ["-b", "hog", "--image-size", "32", "--workers", "0"]
UNET_FAST = ["--batch-size", "4", "--workers", "0", "--device", "cpu"]
TRAIN_FAST = ["--model", "tiny", "--max-steps", "1", "--batch-size", "2", "--sample-steps", "1", "--device", "cpu"]
VIEWS_FAST = ["--steps", "2", "--device", "cpu", "--pose", "1"]
ASSET_FAST = ["--steps", "2", "--iters", "10", "--faces", "200", "--device", "cpu"]

CASES = [
    # data render
    Case(
        "data render: output below a file",
        lambda d, o: ["data", "render", str(d.meshes), "-o", _below(d), "--workers", "1"],
        "is a file, not a folder",
    ),
    Case(
        "data render: output in /proc",
        lambda d, o: [
            "data",
            "render",
            str(d.meshes / "unknown_box.glb"),
            "-o",
            "/proc/mirage3d-out",
            "--workers",
            "1",
            "--n-per-mesh",
            "1",
            "--res",
            "16",
        ],
        "/proc/mirage3d-out",
    ),
    Case(
        "data render: unknown mesh beside a broken one",
        lambda d, o: ["data", "render", str(d.meshes), "-o", str(o), "--workers", "1"],
        "zz_broken.glb",
    ),
    Case("data render: meshes missing", lambda d, o: ["data", "render", str(d.root / "nothing"), "-o", str(o)], "does not exist"),
    Case("data render: --res out of range", lambda d, o: ["data", "render", str(d.meshes), "-o", str(o), "--res", "5"], "--res"),
    Case("data render: --elev-max nan", lambda d, o: ["data", "render", str(d.meshes), "-o", str(o), "--elev-max", "nan"], "finite"),
    Case(
        "data render: existing output",
        lambda d, o: ["data", "render", str(d.meshes), "-o", str(d.exists)],
        "--overwrite",
        lambda d, o: [d.exists / "keep.txt"],
    ),
    # features extract
    Case(
        "features extract: truncated weights",
        lambda d, o: ["features", "extract", str(d.coll), "-o", str(o), "-b", str(d.unet_trunc), *UNET_FAST],
        "cannot load the UNet",
    ),
    Case(
        "features extract: header of 10^12 bytes",
        lambda d, o: ["features", "extract", str(d.coll), "-o", str(o), "-b", str(d.unet_huge), *UNET_FAST],
        "cannot load the UNet",
    ),
    Case(
        "features extract: wrong types in config.json",
        lambda d, o: ["features", "extract", str(d.coll), "-o", str(o), "-b", str(d.unet_types), *UNET_FAST],
        "cannot load the UNet",
    ),
    Case("features extract: bad image in the collection", lambda d, o: ["features", "extract", str(d.badcoll), "-o", str(o), *HOG], "zzz_broken.png"),
    Case("features extract: output below a file", lambda d, o: ["features", "extract", str(d.coll), "-o", _below(d), *HOG], "is a file"),
    Case(
        "features extract: --device gpu",
        lambda d, o: ["features", "extract", str(d.coll), "-o", str(o), *HOG, "--device", "gpu"],
        "auto, cpu, cuda or cuda:N",
    ),
    Case(
        "features extract: dinov2 weights offline",
        lambda d, o: ["features", "extract", str(d.coll), "-o", str(o), "-b", "dinov2-small"],
        "not available here",
    ),
    # poses
    Case(
        "poses discover: output below a file",
        lambda d, o: ["poses", "discover", str(d.coll), "-o", _below(d), *HOG, "-k", "2", "-p", "2"],
        "is a file",
    ),
    Case(
        "poses discover: truncated weights",
        lambda d, o: [
            "poses",
            "discover",
            str(d.coll),
            "-o",
            str(o),
            "-b",
            str(d.unet_trunc),
            "--features",
            str(o.parent / "f"),
            "-k",
            "2",
            "-p",
            "2",
            *UNET_FAST,
        ],
        "cannot load the UNet",
    ),
    Case("poses discover: --w-facing nan", lambda d, o: ["poses", "discover", str(d.coll), "-o", str(o), *HOG, "--w-facing", "nan"], "finite"),
    Case("poses discover: --poses 1", lambda d, o: ["poses", "discover", str(d.coll), "-o", str(o), *HOG, "--poses", "1"], "at least 2 poses"),
    Case(
        "poses assign: -o below a file",
        lambda d, o: ["poses", "assign", str(d.image), "--poses", str(d.poses), "-o", _below(d, "a.json")],
        "is a file",
    ),
    Case(
        "poses assign: truncated pose_model.safetensors",
        lambda d, o: ["poses", "assign", str(d.image), "--poses", str(d.poses_trunc), "-o", str(o)],
        "cannot load the pose model",
    ),
    Case(
        "poses assign: wrong types in pose_model.json",
        lambda d, o: ["poses", "assign", str(d.image), "--poses", str(d.poses_types), "-o", str(o)],
        "cannot load the pose model",
    ),
    Case(
        "poses refit: output below a file",
        lambda d, o: ["poses", "refit", str(d.poses), *HOG[:4], "--collection", str(d.coll), "-o", _below(d)],
        "is a file",
    ),
    Case(
        "poses refit: truncated weights",
        lambda d, o: ["poses", "refit", str(d.poses), "-b", str(d.unet_trunc), "--collection", str(d.coll), "-o", str(o)],
        "cannot load the UNet",
    ),
    Case(
        "poses refit: poses.json without keys",
        lambda d, o: ["poses", "refit", str(d.poses_nokeys), *HOG[:4], "--collection", str(d.coll), "-o", str(o)],
        "must be an object with",
    ),
    Case(
        "eval poses: -o below a file",
        lambda d, o: ["eval", "poses", str(d.poses), "--collection", str(d.coll), "-o", _below(d, "e.json")],
        "is a file",
    ),
    Case(
        "eval poses: poses.json without keys",
        lambda d, o: ["eval", "poses", str(d.poses_nokeys), "--collection", str(d.coll), "-o", str(o)],
        "must be an object with",
    ),
    Case("eval poses: NaN in poses.json", lambda d, o: ["eval", "poses", str(d.poses_nan), "--collection", str(d.coll), "-o", str(o)], "finite"),
    # train
    Case("train: bad image in the collection", lambda d, o: ["train", str(d.badcoll), "-o", str(o), *TRAIN_FAST], "zzz_broken.png"),
    Case(
        "train: truncated --init",
        lambda d, o: ["train", str(d.coll), "-o", str(o), "--init", str(d.unet_trunc), *TRAIN_FAST],
        "cannot load the --init UNet",
    ),
    Case("train: output below a file", lambda d, o: ["train", str(d.coll), "-o", _below(d), *TRAIN_FAST], "is a file"),
    Case("train: --device gpu", lambda d, o: ["train", str(d.coll), "-o", str(o), *TRAIN_FAST[:-2], "--device", "gpu"], "auto, cpu, cuda or cuda:N"),
    # views
    Case("views: output below a file", lambda d, o: ["views", str(d.image), "-m", str(d.model), "-o", _below(d), *VIEWS_FAST], "is a file"),
    Case("views: --guidance nan", lambda d, o: ["views", str(d.image), "-m", str(d.model), "-o", str(o), *VIEWS_FAST, "--guidance", "nan"], "finite"),
    Case("views: --fill 0", lambda d, o: ["views", str(d.image), "-m", str(d.model), "-o", str(o), *VIEWS_FAST, "--fill", "0"], "--fill 0"),
    Case(
        "views: wrong types in unet/config.json",
        lambda d, o: ["views", str(d.image), "-m", str(d.model_types), "-o", str(o), *VIEWS_FAST],
        "cannot load the model",
    ),
    Case(
        "views: --pose 999",
        lambda d, o: ["views", str(d.image), "-m", str(d.model), "-o", str(o), "--steps", "2", "--device", "cpu", "--pose", "999"],
        "--pose 999",
    ),
    Case("views: --steps abc", lambda d, o: ["views", str(d.image), "-m", str(d.model), "-o", str(o), "--steps", "abc"], "--steps"),
    # recon
    Case("recon: output below a file", lambda d, o: ["recon", str(d.views), "-o", _below(d, "x.glb"), "--iters", "5"], "is a file"),
    Case(
        "recon: existing GLB",
        lambda d, o: ["recon", str(d.views), "-o", str(d.file.with_name("keep.glb")), "--iters", "5"],
        "--overwrite",
        lambda d, o: [d.file.with_name("keep.glb")],
    ),
    Case("recon: absolute file_path", lambda d, o: ["recon", str(d.views_abs), "-o", str(o) + ".glb", "--iters", "5"], "outside"),
    Case("recon: ../ file_path", lambda d, o: ["recon", str(d.views_up), "-o", str(o) + ".glb", "--iters", "5"], "outside"),
    Case("recon: image symlinked outside", lambda d, o: ["recon", str(d.views_link), "-o", str(o) + ".glb", "--iters", "5"], "outside"),
    # make-asset
    Case(
        "make-asset: output below a file",
        lambda d, o: ["make-asset", str(d.image), "-o", _below(d, "x.glb"), "-m", str(d.model), *ASSET_FAST],
        "is a file",
    ),
    Case(
        "make-asset: --keep-views below a file",
        lambda d, o: ["make-asset", str(d.image), "-o", str(o) + ".glb", "-m", str(d.model), "--keep-views", _below(d), *ASSET_FAST],
        "--keep-views",
    ),
    Case(
        "make-asset: --pose 999 --views 2",
        lambda d, o: ["make-asset", str(d.image), "-o", str(o) + ".glb", "-m", str(d.model), "--pose", "999", "--views", "2", *ASSET_FAST],
        "--pose 999",
    ),
    Case(
        "make-asset: --cross-frame bogus",
        lambda d, o: ["make-asset", str(d.image), "-o", str(o) + ".glb", "-m", str(d.model), "--cross-frame", "bogus", *ASSET_FAST],
        "--cross-frame 'bogus'",
    ),
    Case(
        "make-asset: --views 1000",
        lambda d, o: ["make-asset", str(d.image), "-o", str(o) + ".glb", "-m", str(d.model), "--views", "1000", *ASSET_FAST],
        "has 4 poses",
    ),
    Case(
        "make-asset: --server, output below a file",
        lambda d, o: ["make-asset", str(d.image), "-o", _below(d, "x.glb"), "--server", "http://127.0.0.1:9"],
        "is a file",
    ),
    Case(
        "make-asset: truncated model weights",
        lambda d, o: ["make-asset", str(d.image), "-o", str(o) + ".glb", "-m", str(d.model_trunc), "--pose", "1", *ASSET_FAST],
        "cannot load the model",
    ),
    # serve
    Case(
        "serve: --host that does not resolve",
        lambda d, o: ["serve", "-m", str(d.model), "--host", "bogus.invalid", "--port", "0"],
        "not a name or address",
    ),
    Case("serve: --host 0.0.0.0 without a token", lambda d, o: ["serve", "-m", str(d.model), "--host", "0.0.0.0", "--port", "0"], "access token"),
    Case("serve: --port 70000", lambda d, o: ["serve", "-m", str(d.model), "--port", "70000"], "--port"),
    Case("serve: model folder missing", lambda d, o: ["serve", "-m", str(d.root / "nothing"), "--port", "0"], "does not exist"),
    # the command line itself
    Case("mirage3d: unknown command", lambda d, o: ["nosuch"], "No such command"),
]


def _files(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_gets_one_line_and_leaves_nothing(case: Case, d: SimpleNamespace, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MIRAGE3D_DEBUG", raising=False)
    out = tmp_path / "out"
    kept = case.untouched(d, out) if case.untouched else []
    if case.id == "recon: existing GLB":
        kept[0].write_bytes(b"an earlier mesh")
    before = {p: p.read_bytes() for p in kept}
    inputs = _files(d.root)
    r = runner.invoke(app, case.argv(d, out))
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert r.exit_code == 1, f"exit {r.exit_code}: {r.output}{r.exception!r}"
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    assert "Traceback" not in r.output and case.expect in lines[0], lines[0]
    assert ".tmp" not in lines[0]  # the user's path is named, not a temporary one
    assert not [ln for ln in r.stdout.splitlines() if ln.strip()], r.stdout
    assert not out.exists() and not Path(str(out) + ".glb").exists()
    assert {p: p.read_bytes() for p in kept} == before
    assert _files(d.root) == inputs  # nothing written beside the inputs (no caches, temp files or locks)
    assert list(tmp_path.iterdir()) == []


def test_every_case_is_in_the_docs() -> None:
    text = DOCS.read_text()
    missing = [c.id for c in CASES if f"| {c.id} |" not in text]
    assert not missing, f"docs/reliability.md does not list: {missing}"
    assert f"{len(CASES)} cases" in text


# --------------------------------------------------------------------------------------------------
# Two writers, signals, permissions (subprocesses: real signals and a second process)
# --------------------------------------------------------------------------------------------------
def _slow_render(d: SimpleNamespace, out: Path) -> subprocess.Popen:
    """A `data render` that runs for a while (many images, one worker) in its own process."""
    cmd = [
        sys.executable,
        "-m",
        "mirage3d.cli",
        "data",
        "render",
        str(d.meshes / "unknown_box.glb"),
        "-o",
        str(out),
        "--n-per-mesh",
        "2000",
        "--res",
        "64",
        "--workers",
        "1",
    ]
    # (SIGINT back to its default: a shell's background job ignores it, and Python then would too)
    return subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "MIRAGE3D_DEBUG": "0"},
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )


def _wait_for_tmp(parent: Path, proc: subprocess.Popen, timeout: float = 120.0) -> Path:
    t = time.monotonic()
    while time.monotonic() - t < timeout:
        tmp = [p for p in parent.iterdir() if p.name.endswith(".tmp")]
        if tmp and any((tmp[0] / "images").glob("*.png")):
            return tmp[0]
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.2)
    raise AssertionError("the render never started writing")


@pytest.mark.parametrize("sig, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)], ids=["SIGTERM", "SIGINT"])
def test_a_signal_removes_the_partial_output(d: SimpleNamespace, tmp_path: Path, sig: int, code: int) -> None:
    out = tmp_path / "coll"
    proc = _slow_render(d, out)
    try:
        _wait_for_tmp(tmp_path, proc)
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == code, err
    assert "Traceback" not in err and "partial ones were removed" in err
    assert list(tmp_path.iterdir()) == []  # no .tmp folder, no output


def test_a_second_writer_of_one_output_is_refused(d: SimpleNamespace, tmp_path: Path) -> None:
    out = tmp_path / "coll"
    proc = _slow_render(d, out)
    try:
        _wait_for_tmp(tmp_path, proc)
        for argv in (
            ["data", "render", str(d.meshes / "unknown_box.glb"), "-o", str(out), "--workers", "1"],
            ["train", str(d.coll), "-o", str(out), *TRAIN_FAST],
        ):
            r = runner.invoke(app, argv)
            assert r.exit_code == 1 and "another run" in r.stderr and f"process {proc.pid}" in r.stderr, r.output
    finally:
        proc.terminate()
        proc.communicate(timeout=120)
    assert list(tmp_path.iterdir()) == []
    # Once the first run has gone, the output is free again (its lock died with it).
    r = runner.invoke(
        app, ["data", "render", str(d.meshes / "unknown_box.glb"), "-o", str(out), "--workers", "1", "--n-per-mesh", "1", "--res", "16"]
    )
    assert r.exit_code == 0, r.output


def test_outputs_get_the_usual_permissions(d: SimpleNamespace, tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        r = runner.invoke(
            app,
            ["data", "render", str(d.meshes / "unknown_box.glb"), "-o", str(tmp_path / "coll"), "--workers", "1", "--n-per-mesh", "1", "--res", "16"],
        )
        assert r.exit_code == 0, r.output
        r = runner.invoke(
            app, ["recon", str(d.views), "-o", str(tmp_path / "m.glb"), "--iters", "5", "--res", "16", "--faces", "100", "--texture-size", "16"]
        )
        assert r.exit_code == 0, r.output
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "coll").stat().st_mode) == 0o755
    assert stat.S_IMODE((tmp_path / "coll" / "images").stat().st_mode) == 0o755
    assert stat.S_IMODE((tmp_path / "m.glb").stat().st_mode) == 0o644


def test_warnings_are_printed_after_success_only(d: SimpleNamespace, tmp_path: Path) -> None:
    r = runner.invoke(
        app, ["data", "render", str(d.meshes / "unknown_box.glb"), "-o", str(tmp_path / "c"), "--workers", "1", "--n-per-mesh", "1", "--res", "16"]
    )
    assert r.exit_code == 0 and "warning: mesh unknown_box is not in" in r.stderr, r.output


def test_a_broken_image_in_a_loader_worker_is_named(d: SimpleNamespace, tmp_path: Path) -> None:
    """A file that decodes badly only past its header fails inside a DataLoader worker: the message is the
    worker's own (the file and what is wrong), not "Caught InputError in DataLoader worker process 0"."""
    coll = _copy(d.coll, tmp_path / "c")
    good = (coll / "images" / "000003.png").read_bytes()
    (coll / "images" / "000003.png").write_bytes(good[: len(good) // 2])  # valid header, truncated pixels
    r = runner.invoke(app, ["features", "extract", str(coll), "-o", str(tmp_path / "f"), *HOG[:-2], "--workers", "1"])
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert r.exit_code == 1 and len(lines) == 1 and "000003.png" in lines[0] and "Caught" not in lines[0], r.output


def test_training_killed_with_sigkill_resumes_to_the_same_weights(d: SimpleNamespace, tmp_path: Path) -> None:
    """A real SIGKILL (no cleanup at all) in the middle of `mirage3d train`, then the same command again: the run
    resumes from its newest complete checkpoint and ends with the weights of a run that was never killed."""
    from safetensors.torch import load_file

    args = [
        "train",
        str(d.coll),
        "--model",
        "tiny",
        "--max-steps",
        "24",
        "--batch-size",
        "2",
        "--sample-steps",
        "1",
        "--sample-every",
        "0",
        "--checkpoint-every",
        "1",
        "--device",
        "cpu",
        "--seed",
        "3",
    ]
    env = {**os.environ, "MIRAGE3D_DEBUG": "0", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}  # the same threads in every run

    def run(out: Path) -> subprocess.Popen:
        return subprocess.Popen(
            [sys.executable, "-m", "mirage3d.cli", *args, "-o", str(out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
        )

    whole, killed = run(tmp_path / "whole"), run(tmp_path / "killed")
    t = time.monotonic()
    ckpts = tmp_path / "killed" / "checkpoints"

    def mid_run() -> bool:  # a checkpoint of step 3..23 exists (each lives ~2 steps: keep_checkpoints prunes them)
        return ckpts.is_dir() and any(p.name.startswith("checkpoint-") and 3 <= int(p.name.split("-")[1]) < 24 for p in ckpts.iterdir())

    while not mid_run():
        assert killed.poll() is None and time.monotonic() - t < 300, killed.communicate()
        time.sleep(0.01)
    killed.kill()
    killed.communicate()
    assert killed.returncode == -signal.SIGKILL and whole.wait(timeout=300) == 0, whole.communicate()
    again = run(tmp_path / "killed")
    _, err = again.communicate(timeout=300)
    assert again.returncode == 0, err
    a, b = (load_file(str(tmp_path / r / "checkpoints" / "checkpoint-24" / "ema.safetensors")) for r in ("whole", "killed"))
    assert a.keys() == b.keys() and all(bool((a[k] == b[k]).all()) for k in a)
    steps = [json.loads(line)["step"] for line in (tmp_path / "killed" / "loss.jsonl").read_text().splitlines()]
    assert steps == sorted(set(steps)) and steps[-1] == 24  # the log lists each step once

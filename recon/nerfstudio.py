"""``--backend nerfstudio``: train nerfstudio's ``instant-ngp-bounded`` / ``nerfacto`` on a views folder and
convert its textured-mesh export to our GLB / OBJ / PLY.

nerfstudio runs only through its command line (``ns-train``, ``ns-export``) in child processes: it is never
imported here, so mirage3d does not depend on it. Flags were read from nerfstudio 1.1.5's source:
``nerfstudio/configs/experiment_config.py`` and ``base_config.py`` (``--output-dir``, ``--experiment-name``,
``--vis``, ``--viewer.quit-on-train-completion``, ``--machine.seed``), ``engine/trainer.py``
(``--max-num-iterations``), ``configs/method_configs.py`` (methods, their dataparser and model defaults),
``data/dataparsers/nerfstudio_dataparser.py`` (``nerfstudio-data`` options), ``models/instant_ngp.py`` and
``models/nerfacto.py`` (``--pipeline.model.*``), ``cameras/camera_optimizers.py`` (``mode off``) and
``scripts/exporter.py`` (``ns-export poisson`` options; both CLIs use tyro's ``FlagConversionOff``, so booleans
take an explicit ``True``/``False``). Commands and settings are listed in ``docs/recon.md``.

Frame: nerfstudio exports meshes in its dataparser's output frame, which is the transforms.json frame moved by
``auto_orient_and_center_poses`` and scaled by ``auto_scale_poses``/``scale_factor``. We pass
``--orientation-method none --center-method none --auto-scale-poses False --scale-factor 1.0`` so that this
transform is the identity: the exported mesh is in our world frame (+Z up, metres), and ``export`` maps it to
glTF axes exactly as it does for the voxel backend (``WORLD_TO_GLTF``).
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import trimesh

from mirage3d.errors import DependencyError, InputError, MirageError
from mirage3d.io import check_writable_parent, read_transforms
from mirage3d.recon.config import ReconConfig, output_checks, raise_failed
from mirage3d.recon.fit import Progress, scene_box
from mirage3d.recon.mesh import TexturedMesh, export
from mirage3d.recon.pipeline import ReconResult, Stages, check_output, write_records
from mirage3d.recon.views import ViewSet, load_views

METHODS = ("instant-ngp-bounded", "nerfacto")
MISSING = "--backend nerfstudio needs nerfstudio (ns-train, ns-export on PATH): pip install nerfstudio on a CUDA machine, or use --backend voxel"
SCENE_MARGIN = 1.1  # nerfstudio's box half-side = this × the largest |coordinate| of the visual hull's box
LOG_TAIL = 20  # lines of a failed command's output kept in the exception (shown with MIRAGE3D_DEBUG=1)
_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
_STEP = re.compile(r"(\d+) \((\d+(?:\.\d+)?)%\)")  # nerfstudio's LocalWriter rows start "1230 (24.60%)"


class NerfstudioError(MirageError, RuntimeError):
    """``ns-train`` or ``ns-export`` failed, or did not write what nerfstudio documents."""


@dataclass
class NerfstudioConfig:
    """Settings of ``mirage3d recon --backend nerfstudio`` (saved as ``OUT.config.json`` beside the mesh)."""

    method: str = "instant-ngp-bounded"
    """nerfstudio method: 'instant-ngp-bounded' (its recommendation for bounded synthetic scenes) or 'nerfacto'."""
    iters: int = 5000
    """``--max-num-iterations``. nerfstudio's default is 30000 (real captures); a synthetic orbit of 8-16 clean
    views needs far fewer. 5000 is a starting point, not a measured optimum (nothing was run with nerfstudio here)."""
    seed: int = 0
    """``--machine.seed``."""
    faces: int = 20000
    """``ns-export --target-num-faces`` (quadric decimation before texturing)."""
    texture_size: int = 512
    """``ns-export --num-pixels-per-side`` of the xatlas texture."""
    hull_misses: int = 0
    """Views a point may fall outside the mask of and still count as object when sizing nerfstudio's scene box."""
    format: str | None = None
    """'glb', 'obj' or 'ply'; None = from the output suffix."""
    preview: bool = False
    """Also write a turntable strip (``OUT.preview.png``) and GIF of the exported mesh."""

    def validate(self) -> None:
        """Raise :class:`InputError` (one line) for absurd settings."""
        raise_failed(
            [
                (self.method in METHODS, f"--method {self.method!r} must be one of {', '.join(METHODS)}"),
                *output_checks(self.iters, self.faces, self.texture_size, self.format),
                (self.hull_misses >= 0, f"--hull-misses {self.hull_misses} must be >= 0"),
            ]
        )


def find_nerfstudio() -> tuple[str, str]:
    """Paths of ``ns-train`` and ``ns-export``; :class:`DependencyError` (one line) if either is missing."""
    train, exp = shutil.which("ns-train"), shutil.which("ns-export")
    if train is None or exp is None:
        raise DependencyError(MISSING)
    return train, exp


# --------------------------------------------------------------------------------------------------
# Commands
# --------------------------------------------------------------------------------------------------
def scene_bounds(views: ViewSet, cfg: NerfstudioConfig) -> tuple[float, float, float]:
    """(scene_scale, near, far) for an object orbit.

    nerfstudio's scene box is the cube [-s, s]³ (``--scene-scale``), centred on the origin; ``s`` must hold the
    object, so it is taken from our visual-hull box (``fit.scene_box``). Near/far planes bracket that cube from
    the nearest and farthest camera.
    """
    try:
        lo, hi = scene_box(views, ReconConfig(hull_misses=cfg.hull_misses, hull_dilate_px=2))
    except InputError:
        raise InputError(
            "the visual hull of the views is empty: the cameras in transforms.json do not agree with the masks "
            "(raise --hull-misses, or check the camera convention)"
        ) from None
    s = SCENE_MARGIN * float(np.abs(np.stack([lo, hi])).max())
    dist = np.linalg.norm(views.c2w[:, :3, 3], axis=1)
    half_diag = s * 3**0.5
    return s, max(0.01, float(dist.min()) - half_diag), float(dist.max()) + half_diag


def train_command(data: Path, out_dir: Path, cfg: NerfstudioConfig, scene: tuple[float, float, float]) -> list[str]:
    """``ns-train METHOD [trainer and model options] nerfstudio-data [dataparser options]``."""
    s, near, far = scene
    cmd = [
        "ns-train",
        cfg.method,
        "--data",
        str(data),
        "--output-dir",
        str(out_dir),
        "--experiment-name",
        "mirage3d",
        "--max-num-iterations",
        str(cfg.iters),
        "--machine.seed",
        str(cfg.seed),
        # No viewer (it would serve a websocket and, by default, keep running after training); tensorboard is a
        # nerfstudio dependency and writes only files.
        "--vis",
        "tensorboard",
        "--viewer.quit-on-train-completion",
        "True",
        # Our views are RGBA: nerfstudio blends the ground truth onto the model's background colour
        # (renderers.py, blend_background_for_loss_computation), and mirage3d views are white-backed.
        "--pipeline.model.background-color",
        "white",
        # A bounded object inside the scene box: no contraction of far space (instant-ngp-bounded's default).
        "--pipeline.model.disable-scene-contraction",
        "True",
        "--pipeline.model.near-plane",
        f"{near:.6g}",
        "--pipeline.model.far-plane",
        f"{far:.6g}",
    ]
    if cfg.method == "nerfacto":
        # Cameras of a synthetic orbit are exact; piecewise sampling is for unbounded real scenes.
        cmd += ["--pipeline.model.camera-optimizer.mode", "off", "--pipeline.model.proposal-initial-sampler", "uniform"]
    cmd += [
        "nerfstudio-data",
        # Identity dataparser transform: the trained field, and so the exported mesh, stays in our world frame.
        "--orientation-method",
        "none",
        "--center-method",
        "none",
        "--auto-scale-poses",
        "False",
        "--scale-factor",
        "1.0",
        "--scene-scale",
        f"{s:.6g}",
        "--downscale-factor",
        "1",
        # Few views: train on all of them (nerfstudio would otherwise hold out 10 %).
        "--eval-mode",
        "all",
    ]
    return cmd


def export_command(config_yml: Path, out_dir: Path, cfg: NerfstudioConfig, scene_scale: float) -> list[str]:
    """``ns-export poisson``: points where the field is opaque (accumulation > 0.5, so the white background
    drops out), Poisson surface, decimation, xatlas UVs, texture rendered by the field. Normals come from open3d:
    neither method predicts normals, and the default ``model_output`` would exit with an error."""
    side = f"{2 * scene_scale:.6g}"
    return [
        "ns-export",
        "poisson",
        "--load-config",
        str(config_yml),
        "--output-dir",
        str(out_dir),
        "--normal-method",
        "open3d",
        "--texture-method",
        "nerf",
        "--unwrap-method",
        "xatlas",
        "--target-num-faces",
        str(cfg.faces),
        "--num-pixels-per-side",
        str(cfg.texture_size),
        "--save-point-cloud",
        "False",
        "--obb-center",
        "0",
        "0",
        "0",
        "--obb-rotation",
        "0",
        "0",
        "0",
        "--obb-scale",
        side,
        side,
        side,
    ]


def _stop(proc: subprocess.Popen) -> None:
    """End a child we started, and its own children (it leads its own process group)."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        if proc.poll() is not None:
            return
        try:
            os.killpg(proc.pid, sig)  # POSIX; nerfstudio's GPU training runs on Linux
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            continue


def _tail(path: Path, n: int) -> list[str]:
    text = _ANSI.sub("", path.read_text(errors="replace")) if path.exists() else ""
    return [ln.rstrip() for ln in text.replace("\r", "\n").splitlines() if ln.strip()][-n:]


def run_tool(cmd: list[str], exe: str, work: Path, name: str, on_output: Callable[[str], None] | None = None) -> None:
    """Run ``cmd`` (``cmd[0]`` replaced by the full path ``exe``) in ``work`` with its output in log files there.

    Non-zero exit → :class:`NerfstudioError` whose first line names the command and the last line of its stderr
    (the CLI shows that line); the next lines hold the last ``LOG_TAIL`` lines, seen with ``MIRAGE3D_DEBUG=1``.
    ``on_output`` gets new stdout text about twice a second. Interrupting kills the child's process group.
    """
    out_log, err_log = work / f"{name}.stdout.log", work / f"{name}.stderr.log"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}  # progress lines reach the log as they are printed
    with open(out_log, "wb") as out, open(err_log, "wb") as err, open(out_log, "rb") as follow:
        proc = subprocess.Popen([exe, *cmd[1:]], stdin=subprocess.DEVNULL, stdout=out, stderr=err, cwd=work, env=env, start_new_session=True)
        try:
            while True:
                try:
                    rc = proc.wait(timeout=0.5)
                except subprocess.TimeoutExpired:
                    rc = None
                if on_output is not None:
                    chunk = follow.read()
                    if chunk:
                        on_output(chunk.decode(errors="replace"))
                if rc is not None:
                    break
        except BaseException:
            _stop(proc)
            raise
    if rc != 0:
        tail = _tail(err_log, LOG_TAIL) or _tail(out_log, LOG_TAIL)
        last = tail[-1][:300] if tail else "no output"
        raise NerfstudioError("\n".join([f"{cmd[0]} {cmd[1]} failed (exit code {rc}): {last}", *tail]))


def newest_config(out_dir: Path) -> Path:
    """The newest ``config.yml`` ns-train wrote (``OUT/EXPERIMENT/METHOD/TIMESTAMP/config.yml``)."""
    found = list(out_dir.rglob("config.yml"))
    if not found:
        raise NerfstudioError(f"ns-train finished but wrote no config.yml under {out_dir}")
    return max(found, key=lambda p: p.stat().st_mtime)


def load_export(folder: Path) -> TexturedMesh:
    """Read ns-export's ``mesh.obj`` (+ ``material_0.mtl``, ``material_0.png``; nerfstudio's
    ``exporter/texture_utils.py``) as a :class:`TexturedMesh` in the world frame."""
    obj = folder / "mesh.obj"
    if not obj.exists():
        raise NerfstudioError(f"ns-export finished but wrote no mesh.obj in {folder}")
    # OBJ texture coordinates are per face corner; trimesh splits vertices so that each has one uv.
    mesh = trimesh.load(obj, force="mesh", process=False)
    uv = getattr(mesh.visual, "uv", None)
    image = getattr(getattr(mesh.visual, "material", None), "image", None)
    if len(mesh.faces) == 0 or uv is None or image is None:
        raise NerfstudioError(f"ns-export's {obj} has no faces, texture coordinates or texture image")
    texture = np.asarray(image.convert("RGB"), dtype=np.uint8)  # (T, T, 3)
    return TexturedMesh(np.asarray(mesh.vertices, np.float64), np.asarray(mesh.faces, np.int64), np.asarray(uv, np.float64), texture)


# --------------------------------------------------------------------------------------------------
# Stage
# --------------------------------------------------------------------------------------------------
def reconstruct_nerfstudio(
    views_dir: str | Path,
    output: str | Path,
    config: NerfstudioConfig | None = None,
    progress: Progress | None = None,
    phase: Callable[[str], None] | None = None,
) -> ReconResult:
    """Train nerfstudio on ``views_dir`` and write its textured mesh to ``output`` (our axes, atomically).

    Everything nerfstudio writes stays in a temporary folder that is deleted afterwards, whether it worked or
    not. Also writes ``OUTPUT.config.json`` (settings and the commands run) and, with ``config.preview``,
    ``OUTPUT.preview.png`` / ``.gif``. ``progress(step, total, {})`` follows ns-train's printed steps.
    """
    cfg = config or NerfstudioConfig()
    cfg.validate()
    output = Path(output)
    fmt = check_output(output, cfg.format)
    train_exe, export_exe = find_nerfstudio()
    check_writable_parent(output)
    stages = Stages(phase)
    stages.say("load")
    views = load_views(views_dir)  # the voxel backend's checks and messages, before anything is launched
    data = Path(views_dir).resolve()
    root = data if data.is_dir() else data.parent
    if "orientation_override" in read_transforms(data, check_images=False).extra:
        raise InputError(f"{root / 'transforms.json'} has 'orientation_override', which would move nerfstudio's frame; remove it")
    scene = scene_bounds(views, cfg)
    stages.done("load")

    def on_train_output(text: str) -> None:
        steps = _STEP.findall(text)
        if progress is not None and steps:
            progress(min(int(steps[-1][0]) + 1, cfg.iters), cfg.iters, {})

    with tempfile.TemporaryDirectory(prefix="mirage3d-nerfstudio-") as tmp:
        work = Path(tmp)
        stages.say("train")
        train = train_command(data, work / "outputs", cfg, scene)
        run_tool(train, train_exe, work, "ns-train", on_train_output)
        config_yml = newest_config(work / "outputs")
        stages.done("train")
        stages.say("export")
        exp = export_command(config_yml, work / "export", cfg, scene[0])
        run_tool(exp, export_exe, work, "ns-export")
        stages.done("export")
        stages.say("convert")
        textured = load_export(work / "export")
        files = export(textured, output, fmt)
    write_records(
        textured, output, files, cfg, stages, "convert", backend="nerfstudio", views=str(views_dir), commands=[shlex.join(train), shlex.join(exp)]
    )
    return ReconResult(
        mesh_path=output,
        files=files,
        timings=stages.total(),
        psnr=float("nan"),
        faces=len(textured.faces),
        vertices=len(textured.vertices),
        device=f"nerfstudio {cfg.method}",
    )

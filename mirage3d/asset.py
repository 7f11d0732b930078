"""``make_asset``: one photo → consistent views → radiance field → textured GLB (the product's main job).

Chains :func:`mirage3d.diffusion.views.generate_views` and :func:`mirage3d.recon.reconstruct`. Inputs are
checked before any model is loaded; the mesh is written atomically by the reconstruction, so a failed or
interrupted run leaves no partial GLB. The intermediate views live in a temporary folder unless
``keep_views`` names a folder for them.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mirage3d.cameras import circular_difference
from mirage3d.config import save_config
from mirage3d.errors import InputError, ModelError
from mirage3d.io import check_output_dir, check_writable_parent, load_image

# The shipped default model (a diffusers folder with poses/) lives in the repository's assets/.
# MIRAGE3D_MODELS overrides the folder that holds named models (for wheel installs or other locations).
DEFAULT_MODEL = "car"
MESH_SUFFIXES = (".glb", ".obj", ".ply")


def models_root() -> Path:
    env = os.environ.get("MIRAGE3D_MODELS")
    return Path(env) if env else Path(__file__).resolve().parents[1] / "assets" / "models"


def resolve_model(spec: str | Path) -> Path:
    """``default`` / a shipped model name → its folder under :func:`models_root`; anything else is a path."""
    s = str(spec)
    if s == "default":
        s = DEFAULT_MODEL
    candidate = models_root() / s
    if "/" not in s and "\\" not in s and not Path(s).exists():
        if not (candidate / "model_index.json").exists():
            raise ModelError(f"shipped model {s!r} not found in {models_root()}; pass --model PATH to a model folder (or set MIRAGE3D_MODELS)")
        return candidate
    path = Path(s)
    if not path.is_dir():
        raise InputError(f"model folder {path} does not exist; pass --model default or a folder from `mirage3d train`")
    if not (path / "model_index.json").exists() or not (path / "unet").is_dir():
        raise ModelError(f"{path} is not a mirage3d model (needs model_index.json and unet/ from `mirage3d train`)")
    return path


@dataclass
class AssetConfig:
    """Settings of ``mirage3d make-asset`` (saved beside the GLB as ``OUT.make-asset.json``)."""

    model: str = "default"
    """Model folder, or "default" for the shipped car model (assets/models/car)."""
    views: int | None = None
    """How many poses to generate (spread evenly around the ring, the input's pose included); None: all of them."""
    steps: int = 20
    """DDIM steps for inversion and generation (20 keeps the 2-core CPU under its time target; 50 on a GPU)."""
    guidance_scale: float = 1.0
    """Classifier-free guidance against the "no pose" class (1 = off)."""
    hard_guidance_scale: float = 0.0
    """Hard-attention guidance weight (docs/views.md)."""
    reference_pose: int | None = None
    """The input's pose if known; None: estimated with the model's pose model."""
    box: tuple[int, int, int, int] | None = None
    """The object's box (x0, y0, x1, y1, pixels) in a photo with a background (GrabCut from it); None: found automatically."""
    recon_iters: int = 600
    """Radiance-field optimisation steps."""
    recon_res: int = 128
    """Final voxel-grid resolution."""
    faces: int = 20000
    """Target face count of the mesh."""
    texture_size: int = 512
    """Side of the baked base-colour texture."""
    preview: bool = False
    """Also write OUT.preview.png / .gif turntables of the mesh."""
    seed: int = 0
    """Seed of the generated views and of the reconstruction."""
    device: str = "auto"
    """"auto", "cpu", "cuda" or "cuda:N" for both stages."""


@dataclass
class AssetResult:
    mesh_path: Path
    views_dir: Path | None  # kept views folder, or None
    reference_pose: int | None
    pose_confidence: float | None
    poses: list[int]
    timings: dict[str, float]  # seconds: checks, views, recon, total
    files: list[Path] = field(default_factory=list)


def spread_poses(azimuths: list[float], count: int, must_include: int | None = None) -> list[int]:
    """``count`` pose indices whose azimuths are closest to ``count`` evenly spaced targets around the ring,
    starting at ``must_include``'s azimuth (so it is always picked)."""
    k = len(azimuths)
    if count >= k:
        return list(range(k))
    az = np.mod(np.asarray(azimuths, dtype=np.float64), 360.0)
    start = az[must_include] if must_include is not None else az[0]
    picks: list[int] = []
    for i in range(count):
        dist = circular_difference(az, start + 360.0 * i / count)
        dist[picks] = np.inf
        picks.append(int(np.argmin(dist)))
    return sorted(picks)


def check_asset_inputs(image: Path, output: Path, views: int | None, steps: int) -> None:
    """Everything that can be checked before a model is loaded (one-line errors)."""
    rgba = load_image(image)  # missing, corrupt, tiny, huge → InputError
    if rgba.getextrema()[3][1] == 0:
        raise InputError(f"{image} is fully transparent: there is no object in it")
    if Path(output).suffix.lower() not in MESH_SUFFIXES:
        raise InputError(f"output {output} must end in .glb, .obj or .ply")
    if Path(output).is_dir():
        raise InputError(f"output {output} is a folder; give a file path such as car.glb")
    if views is not None and views < 2:
        raise InputError(f"--views {views}: need at least 2 views to reconstruct")
    if steps < 1 or steps > 1000:
        raise InputError(f"--steps {steps} must be in 1..1000")
    check_writable_parent(output)


def make_asset(image: str | Path, output: str | Path, cfg: AssetConfig | None = None, keep_views: str | Path | None = None,
               overwrite: bool = False, stage: Callable[[str], None] | None = None) -> AssetResult:
    """Photo → GLB (or OBJ/PLY). ``stage(name)`` is called as each stage starts (for progress display)."""
    t0 = time.perf_counter()
    # torch, diffusers and the mesh libraries are imported here, not when the CLI starts; on a GPU machine this
    # is a large share of the command's time, so it is a stage of its own in the summary.
    from mirage3d.diffusion.views import ViewsConfig, generate_views, load_cameras_json
    from mirage3d.recon import ReconConfig, reconstruct

    timings: dict[str, float] = {"imports": time.perf_counter() - t0}
    cfg = cfg or AssetConfig()
    say = stage or (lambda name: None)
    image, output = Path(image), Path(output)
    t = time.perf_counter()
    check_asset_inputs(image, output, cfg.views, cfg.steps)
    if output.exists() and not overwrite:
        raise InputError(f"{output} already exists; pass --overwrite or choose another -o")
    model_dir = resolve_model(cfg.model)
    if keep_views is not None:
        check_output_dir(Path(keep_views), overwrite)
    cams = load_cameras_json(model_dir)
    if cams is None:
        raise ModelError(f"{model_dir} has no poses/cameras.json; it cannot place views around the object")
    poses = "all"
    if cfg.views is not None and cfg.views < len(cams):
        # The input's pose is estimated inside generate_views and always added; spread the rest around the ring.
        poses = ",".join(str(p) for p in spread_poses([c.azimuth_deg for c in cams], cfg.views, cfg.reference_pose))
    timings["checks"] = time.perf_counter() - t

    work = Path(tempfile.mkdtemp(prefix="mirage3d-views-"))  # system temp: a hard kill leaves nothing beside the output
    try:
        say("views")
        t = time.perf_counter()
        vcfg = ViewsConfig(poses=poses, reference_pose=cfg.reference_pose, num_inference_steps=cfg.steps, guidance_scale=cfg.guidance_scale,
                           hard_guidance_scale=cfg.hard_guidance_scale, box=cfg.box, seed=cfg.seed, device=cfg.device)
        vres = generate_views(image, model_dir, work / "views", vcfg)
        timings["views"] = time.perf_counter() - t

        say("recon")
        t = time.perf_counter()
        rcfg = ReconConfig(seed=cfg.seed, device=cfg.device, iters=cfg.recon_iters, res=cfg.recon_res, faces=cfg.faces,
                           texture_size=cfg.texture_size, preview=cfg.preview)
        rres = reconstruct(work / "views", output, rcfg)
        timings["recon"] = time.perf_counter() - t

        kept = None
        if keep_views is not None:
            kept = Path(keep_views)
            if kept.exists():
                shutil.rmtree(kept)
            kept.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(str(work / "views"), kept)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    timings["total"] = time.perf_counter() - t0
    # The reconstruction writes OUT.config.json (its own settings); the whole command's settings go beside it.
    config_path = output.with_name(output.name + ".make-asset.json")
    save_config(cfg, config_path, model_path=str(model_dir), input=str(image), poses=vres.poses,
                reference_pose=vres.reference_pose, timings=timings)
    files = [*rres.files, config_path]
    return AssetResult(output, kept, vres.reference_pose, vres.pose_confidence, vres.poses, timings, files)

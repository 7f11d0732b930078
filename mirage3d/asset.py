"""``make_asset``: one photo → consistent views → radiance field → textured GLB (the product's main job).

Chains :func:`mirage3d.diffusion.views.generate_views` and :func:`mirage3d.recon.reconstruct`. Inputs are
checked before any model is loaded; the mesh is written atomically by the reconstruction, so a failed or
interrupted run leaves no partial GLB. The intermediate views live in a temporary folder unless
``keep_views`` names a folder for them.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from mirage3d.cameras import circular_difference
from mirage3d.config import save_config
from mirage3d.errors import InputError, ModelError
from mirage3d.io import check_output_path, check_writable_parent, load_image

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
    cross_frame: str = "all"
    """How generated views attend to the input: "concat" (own + input keys/values) or "off" (independent)."""
    reference_pose: int | None = None
    """The input's pose if known; None: estimated with the model's pose model."""
    rounds: int = 0
    """Consistency rounds: fit, render, re-noise and denoise the views again (docs/views.md)."""
    strength: float = 0.5
    """Fraction of the DDIM steps re-run from the renders in each round."""
    box: tuple[int, int, int, int] | None = None
    """The object's box (x0, y0, x1, y1, pixels) in a photo with a background (GrabCut from it); None: found automatically."""
    recon_iters: int = 60
    """Steps of the surface fit (ReconConfig.iters, whose default this is; docs/recon.md)."""
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


def check_asset_config(cfg: AssetConfig, num_poses: int | None = None) -> None:
    """The settings' ranges (one-line errors); with ``num_poses`` (the model's), the pose options against it too."""
    import math

    for name, value, low, high in (
        ("--steps", cfg.steps, 1, 1000),
        ("--iters", cfg.recon_iters, 1, 10**6),
        ("--faces", cfg.faces, 4, 10**7),
        ("--recon-res", cfg.recon_res, 16, 1024),
        ("--texture-size", cfg.texture_size, 16, 8192),
        ("--seed", cfg.seed, 0, 2**63 - 1),
    ):
        if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
            raise InputError(f"{name} {value!r} must be an integer in {low}..{high}")
    if not isinstance(cfg.guidance_scale, (int, float)) or not math.isfinite(cfg.guidance_scale) or cfg.guidance_scale < 0:
        raise InputError(f"--guidance {cfg.guidance_scale!r} must be a finite number >= 0")
    if cfg.views is not None and cfg.views < 2:
        raise InputError(f"--views {cfg.views}: need at least 2 views to reconstruct")
    if num_poses is not None and cfg.views is not None and cfg.views > num_poses:
        raise InputError(f"--views {cfg.views}: the model has {num_poses} poses; use 2..{num_poses}, or leave --views out for all of them")
    if cfg.reference_pose is not None and (cfg.reference_pose < 0 or (num_poses is not None and cfg.reference_pose >= num_poses)):
        raise InputError(f"--pose {cfg.reference_pose} is out of range: this model has poses 0..{(num_poses or 1) - 1}")


def make_asset(
    image: str | Path,
    output: str | Path,
    cfg: AssetConfig | None = None,
    keep_views: str | Path | None = None,
    overwrite: bool = False,
    stage: Callable[[str], None] | None = None,
) -> AssetResult:
    """Photo → GLB (or OBJ/PLY). ``stage(name)`` is called as each stage starts (for progress display)."""
    t0 = time.perf_counter()
    # torch, diffusers and the mesh libraries are imported here, not when the CLI starts; on a GPU machine this
    # is a large share of the command's time, so it is a stage of its own in the summary.
    from mirage3d.diffusion.pipeline import ConsistencyConfig
    from mirage3d.diffusion.views import ViewsConfig, load_cameras_json, make_views, write_views
    from mirage3d.recon import ReconConfig, reconstruct

    timings: dict[str, float] = {"imports": time.perf_counter() - t0}
    cfg = cfg or AssetConfig()
    say = stage or (lambda name: None)
    image, output = Path(image), Path(output)
    t = time.perf_counter()
    check_asset_inputs(image, output, cfg.views, cfg.steps)
    check_asset_config(cfg)
    check_output_path(output, overwrite, kind="file")
    model_dir = resolve_model(cfg.model)
    if keep_views is not None:
        check_output_path(keep_views, overwrite, kind="dir", option="--keep-views")
    cams = load_cameras_json(model_dir)
    if cams is None:
        raise ModelError(f"{model_dir} has no poses/cameras.json; it cannot place views around the object")
    check_asset_config(cfg, len(cams))
    poses = "all"
    if cfg.views is not None and cfg.views < len(cams):
        # The input's pose is estimated inside generate_views and always added; spread the rest around the ring.
        poses = ",".join(str(p) for p in spread_poses([c.azimuth_deg for c in cams], cfg.views, cfg.reference_pose))
    timings["checks"] = time.perf_counter() - t

    say("views")
    t = time.perf_counter()
    rcfg = ReconConfig(
        seed=cfg.seed,
        device=cfg.device,
        iters=cfg.recon_iters,
        res=cfg.recon_res,
        faces=cfg.faces,
        texture_size=cfg.texture_size,
        preview=cfg.preview,
    )
    vcfg = ViewsConfig(
        poses=poses,
        reference_pose=cfg.reference_pose,
        num_inference_steps=cfg.steps,
        guidance_scale=cfg.guidance_scale,
        box=cfg.box,
        cross_frame=cfg.cross_frame,
        consistency=ConsistencyConfig(cfg.rounds, cfg.strength),
        seed=cfg.seed,
        device=cfg.device,
    )
    gen = make_views(image, model_dir, vcfg, recon=replace(rcfg, preview=False))
    timings["views"] = time.perf_counter() - t

    say("recon")
    t = time.perf_counter()
    rres = reconstruct(gen.to_viewset(), output, rcfg)  # views handed over in memory
    timings["recon"] = time.perf_counter() - t

    kept = None
    if keep_views is not None:
        kept = Path(keep_views)
        write_views(gen, kept, vcfg, overwrite=overwrite, input_path=image, model_dir=model_dir)
    timings["total"] = time.perf_counter() - t0
    # The reconstruction writes OUT.config.json (its own settings); the whole command's settings go beside it.
    config_path = output.with_name(output.name + ".make-asset.json")
    save_config(cfg, config_path, model_path=str(model_dir), input=str(image), poses=gen.poses, reference_pose=gen.reference_pose, timings=timings)
    files = [*rres.files, config_path]
    return AssetResult(output, kept, gen.reference_pose, gen.pose_confidence, gen.poses, timings, files)

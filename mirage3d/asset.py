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
from mirage3d.diffusion.config import ConsistencyConfig, ViewsConfig
from mirage3d.errors import InputError, ModelError
from mirage3d.io import check_output_path, check_writable_parent, load_image
from mirage3d.recon.config import ReconConfig, generated_views_config

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


def asset_views_config() -> ViewsConfig:
    """make-asset's views settings: :class:`ViewsConfig`'s defaults with 20 DDIM steps instead of 50, which keep
    a photo on the 2-core CPU under its time target (docs/asset.md; ``--steps 50`` on a GPU), and no consistency
    rounds: they make the views better but the mesh worse (F@2% 0.43 → 0.30, docs/views.md)."""
    return ViewsConfig(num_inference_steps=20, consistency=ConsistencyConfig(rounds=0))


@dataclass
class AssetConfig:
    """Settings of ``mirage3d make-asset`` (saved beside the GLB as ``OUT.make-asset.json``): the two stages'
    own configs, and what only make-asset decides.

    The CLI's ``--seed`` and ``--device`` set both stages' ``seed`` and ``device``; in the library, set
    ``views.seed`` and ``recon.seed`` (``replace_fields(cfg, {"views.seed": 3, "recon.seed": 3})``,
    :func:`mirage3d.config.replace_fields`). Every default is the stage config's own except the views' 20
    DDIM steps and no consistency rounds (:func:`asset_views_config`).
    """

    model: str = "default"
    """Model folder, or "default" for the shipped car model (assets/models/car)."""
    num_views: int | None = None
    """How many poses to generate, spread evenly around the ring (the input's pose included); None: all of
    them, or the ones ``views.poses`` names."""
    views: ViewsConfig = field(default_factory=asset_views_config)
    """The views stage (mirage3d.diffusion.views): steps, guidance, cross-frame attention, consistency rounds,
    the input's pose and box, seed, device."""
    recon: ReconConfig = field(default_factory=generated_views_config)
    """The reconstruction (mirage3d.recon): surface-fit steps, grid resolution (128 for generated views:
    ``recon.config.GENERATED_VIEWS_RES``), faces, texture size, previews, seed, device. The consistency rounds'
    fits use it too, without the previews."""


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


def check_asset_inputs(image: Path, output: Path) -> None:
    """The image and the output path, checked before a model is loaded (one-line errors)."""
    rgba = load_image(image)  # missing, corrupt, tiny, huge → InputError
    if rgba.getextrema()[3][1] == 0:
        raise InputError(f"{image} is fully transparent: there is no object in it")
    if Path(output).suffix.lower() not in MESH_SUFFIXES:
        raise InputError(f"output {output} must end in .glb, .obj or .ply")
    if Path(output).is_dir():
        raise InputError(f"output {output} is a folder; give a file path such as car.glb")
    check_writable_parent(output)


def check_asset_config(cfg: AssetConfig, num_poses: int | None = None) -> None:
    """The settings (one-line errors): each stage config's own checks, then make-asset's; with ``num_poses``
    (the model's), the pose options against it too."""
    cfg.views.validate()
    cfg.recon.validate()
    n = cfg.num_views
    if n is not None and (not isinstance(n, int) or isinstance(n, bool) or n < 2):
        raise InputError(f"--views {n!r}: need at least 2 views to reconstruct")
    if n is not None and cfg.views.poses.strip().lower() != "all":
        raise InputError(f"give the number of views ({n}) or the poses ({cfg.views.poses!r}), not both")
    if num_poses is not None and n is not None and n > num_poses:
        raise InputError(f"--views {n}: the model has {num_poses} poses; use 2..{num_poses}, or leave --views out for all of them")
    pose = cfg.views.reference_pose
    if num_poses is not None and pose is not None and pose >= num_poses:
        raise InputError(f"--pose {pose} is out of range: this model has poses 0..{num_poses - 1}")


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
    from mirage3d.diffusion.views import load_cameras_json, make_views, write_views
    from mirage3d.recon import reconstruct

    timings: dict[str, float] = {"imports": time.perf_counter() - t0}
    cfg = cfg or AssetConfig()
    say = stage or (lambda name: None)
    image, output = Path(image), Path(output)
    t = time.perf_counter()
    check_asset_inputs(image, output)
    check_output_path(output, overwrite, kind="file")
    model_dir = resolve_model(cfg.model)
    if keep_views is not None:
        check_output_path(keep_views, overwrite, kind="dir", option="--keep-views")
    cams = load_cameras_json(model_dir)
    if cams is None:
        raise ModelError(f"{model_dir} has no poses/cameras.json; it cannot place views around the object")
    check_asset_config(cfg, len(cams))
    vcfg = cfg.views
    if cfg.num_views is not None and cfg.num_views < len(cams):
        # The input's pose is estimated inside generate_views and always added; spread the rest around the ring.
        picks = spread_poses([c.azimuth_deg for c in cams], cfg.num_views, vcfg.reference_pose)
        vcfg = replace(vcfg, poses=",".join(str(p) for p in picks))
    timings["checks"] = time.perf_counter() - t

    say("views")
    t = time.perf_counter()
    gen = make_views(image, model_dir, vcfg, recon=replace(cfg.recon, preview=False))
    timings["views"] = time.perf_counter() - t

    say("recon")
    t = time.perf_counter()
    rres = reconstruct(gen.to_viewset(), output, cfg.recon)  # views handed over in memory
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

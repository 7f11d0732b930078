"""``generate_views``: one photo (or none) → a nerfstudio folder of consistent views with cameras.

Output folder (``docs/views.md``): ``images/pose_KK.png`` (RGBA), ``transforms.json`` (cameras from
``MODEL/poses/cameras.json``, the reference at its own camera), ``contact_sheet.png``, ``turntable.gif``,
``config.json``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from mirage3d.config import save_config
from mirage3d.devices import resolve_device
from mirage3d.diffusion.config import ViewsConfig
from mirage3d.diffusion.pipeline import CrossFrameConfig, MiragePipeline, MiragePipelineOutput
from mirage3d.diffusion.preprocess import DEFAULT_FILL, load_framing, prepare_reference
from mirage3d.errors import InputError, ModelError
from mirage3d.foreground import check_box
from mirage3d.io import Frame, Transforms, atomic_dir, atomic_save_image, load_image, write_transforms


@dataclass
class GeneratedViews:
    """Views in memory with their cameras: what make-asset hands to the reconstruction."""

    rgba: list[np.ndarray]  # V × (R, R, 4) float32 in [0, 1], in ``poses`` order
    poses: list[int]
    cameras: list[Any]  # PoseCamera per view (azimuth, elevation, c2w, intrinsics at the pose images' size)
    K: np.ndarray  # (3, 3) intrinsics at the views' size
    reference_index: int
    reference_pose: int
    pose_confidence: float | None

    def to_viewset(self) -> Any:
        """A :class:`mirage3d.recon.ViewSet` (the input view marked as the reference)."""
        from mirage3d.recon.views import ViewSet

        c2w = np.stack([np.asarray(c.c2w, dtype=np.float64) for c in self.cameras])
        files = [Path(f"images/pose_{p:02d}.png") for p in self.poses]
        return ViewSet(np.stack(self.rgba).astype(np.float32), c2w, self.K.copy(), files, self.reference_index)


@dataclass
class ViewsResult:
    out_dir: Path
    poses: list[int]
    reference_pose: int | None
    pose_confidence: float | None
    files: list[Path] = field(default_factory=list)
    seconds: float = 0.0


def load_mirror(model_dir: Path) -> list[int] | None:
    """Pose k's mirror pose from ``MODEL/poses/poses.json`` (read and checked by ``PoseSet``), or None if the
    model has no poses.json."""
    from mirage3d.poses.poseset import PoseSet

    if not (model_dir / "poses" / "poses.json").exists():
        return None
    return [int(m) for m in PoseSet.load(model_dir / "poses").mirror]


def load_cameras_json(model_dir: Path) -> list[Any] | None:
    """Cameras of ``MODEL/poses`` (PoseCamera list, indexed by pose), or None if the model has none."""
    if not (model_dir / "poses" / "cameras.json").exists():
        return None
    from mirage3d.poses.cameras import load_cameras

    cams = load_cameras(model_dir / "poses")
    if [c.pose for c in cams] != list(range(len(cams))):
        raise ModelError(f"{model_dir / 'poses' / 'cameras.json'} must list poses 0..K-1 once each")
    return cams


# Loaded models kept by a long-lived process (`mirage3d serve`): key (folder, device, with pose model) → pipeline.
# None (the default) = load on every call, as a one-shot command should.
_LOADED: dict[tuple[str, str, bool], MiragePipeline] | None = None


def keep_models_loaded(enabled: bool = True) -> None:
    """Make :func:`load_model` keep what it loads in this process and return it on later calls (``False``:
    forget them and load afresh again).

    Only for a process that serves many requests from one unchanging model folder: a folder retrained in
    place is not reloaded. Generation leaves the pipeline as it found it (attention processors are restored
    after each call), so reuse gives the same outputs as a fresh load (tests/test_serve.py).
    """
    global _LOADED
    if not enabled:
        _LOADED = None
    elif _LOADED is None:
        _LOADED = {}


def load_model(model_dir: str | Path, device: str = "auto", need_pose_model: bool = False) -> MiragePipeline:
    """A MiragePipeline with its cameras (and, if asked, pose model) from a model folder."""
    if _LOADED is not None:
        folder, dev = str(Path(model_dir).resolve()), str(resolve_device(device))
        if (folder, dev, True) in _LOADED:  # one with its pose model serves both kinds of call
            return _LOADED[(folder, dev, True)]
        key = (folder, dev, need_pose_model)
        if key not in _LOADED:
            _LOADED[key] = _load_model(model_dir, device, need_pose_model)
        return _LOADED[key]
    return _load_model(model_dir, device, need_pose_model)


def _load_model(model_dir: str | Path, device: str = "auto", need_pose_model: bool = False) -> MiragePipeline:
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise InputError(f"model folder {model_dir} does not exist")
    if not (model_dir / "model_index.json").exists() or not (model_dir / "unet").is_dir():
        raise ModelError(f"{model_dir} is not a mirage3d model (needs model_index.json and unet/ from `mirage3d train`)")
    from diffusers.utils import logging as diffusers_logging

    diffusers_logging.disable_progress_bar()  # the CLI shows its own progress
    from mirage3d.errors import loading

    try:
        with loading("the model", model_dir, "it is damaged or incomplete: copy or train it again"):
            pipe = MiragePipeline.from_pretrained(str(model_dir))
    finally:
        diffusers_logging.enable_progress_bar()
    if not getattr(pipe.unet.config, "num_class_embeds", None):
        raise ModelError(f"{model_dir}: the UNet has no pose classes; it is not a MiragePipeline model")
    pipe.to(resolve_device(device))
    pipe.cameras = load_cameras_json(model_dir)
    pipe.mirror = load_mirror(model_dir)
    framing = load_framing(model_dir)
    pipe.fill = DEFAULT_FILL if framing is None else framing[0]
    pipe.fill_range = None if framing is None else framing[1]
    if need_pose_model:
        from mirage3d.poses.model import PoseModel

        try:
            pose_model = PoseModel.load(model_dir / "poses")
        except ModelError:
            raise InputError(f"{model_dir / 'poses'} has no pose model to estimate the input's pose; pass --pose K") from None
        ref = pose_model.backbone_ref
        if ref.get("kind") == "unet" and Path(str(ref.get("path", ""))).resolve() == model_dir.resolve():
            # The pose model reads this model's own UNet (a shipped model): share it rather than load a copy.
            from mirage3d.poses.features import UNetBackbone, unet_settings

            pose_model.backbone = UNetBackbone(pipe.unet, pipe.scheduler.alphas_cumprod, folder=str(model_dir.resolve()), **unet_settings(ref)).to(
                pipe.device
            )
        pipe.pose_model = pose_model
    return pipe


def parse_poses(spec: str, num_poses: int) -> list[int]:
    if spec.strip().lower() == "all":
        return list(range(num_poses))
    try:
        poses = [int(s) for s in spec.split(",") if s.strip()]
    except ValueError:
        raise InputError(f"--poses {spec!r} must be 'all' or comma-separated integers like 0,2,5") from None
    bad = [p for p in poses if not 0 <= p < num_poses]
    if not poses or bad:
        raise InputError(f"--poses {spec!r}: poses must be in 0..{num_poses - 1}")
    return list(dict.fromkeys(poses))


def white_alpha(rgb: np.ndarray, low: float, high: float) -> np.ndarray:
    """(H, W, 3) in [0, 1] on white → alpha (H, W): distance from white ramped over [low, high]."""
    dist = (1.0 - rgb).max(axis=-1)
    return np.clip((dist - low) / max(high - low, 1e-6), 0.0, 1.0)


def contact_sheet(images: list[np.ndarray], cols: int | None = None) -> np.ndarray:
    """RGBA (H, W, 4) images → one RGB sheet on white, row-major."""
    n = len(images)
    cols = cols or int(np.ceil(np.sqrt(n)))
    rows = int(np.ceil(n / cols))
    h, w = images[0].shape[:2]
    sheet = np.ones((rows * h, cols * w, 3), dtype=np.float32)
    for i, im in enumerate(images):
        r, c = divmod(i, cols)
        sheet[r * h : (r + 1) * h, c * w : (c + 1) * w] = im[..., :3] * im[..., 3:] + (1 - im[..., 3:])
    return sheet


def views_intrinsics(cameras: list[Any], res: int) -> np.ndarray:
    """(3, 3) intrinsics of views at ``res``² (cameras.json holds them for the pose images' size)."""
    c0 = cameras[0]
    s = res / c0.w
    return np.array([[c0.fl_x * s, 0.0, c0.cx * s], [0.0, c0.fl_y * s, c0.cy * s], [0.0, 0.0, 1.0]])


def consistency_renderer(pipe: MiragePipeline, cfg: ViewsConfig, recon: Any, reference_mask: np.ndarray | None) -> Any:
    """The pipeline's ``render_fn``: fit the reconstruction to the current views, render it at their cameras."""
    from mirage3d.recon import fit_field
    from mirage3d.recon.views import ViewSet

    K = views_intrinsics(pipe.cameras, pipe.resolution)

    def render(views: np.ndarray, poses: list[int], reference_index: int, round_: int) -> np.ndarray:
        rgba = _as_rgba(views, cfg, reference_index, reference_mask)
        c2w = np.stack([np.asarray(pipe.cameras[p].c2w, dtype=np.float64) for p in poses])
        # No reference in this fit, so the hull takes the volume rule (a generated silhouette may miss) instead of
        # make-asset's every-silhouette-carves: carved by every view, the field keeps only what all of them agree
        # on, and the next round draws that thinner car (measured in docs/views.md).
        vs = ViewSet(np.stack(rgba), c2w, K.copy(), [Path(f"pose_{p:02d}.png") for p in poses], None)
        with torch.enable_grad():  # the pipeline samples under no_grad; the fit optimises
            fit = fit_field(vs, recon)
        return fit.render(fit.c2w, K, pipe.resolution, pipe.resolution)

    return render


def reprojection_psnr(gen: GeneratedViews, recon: Any) -> float:
    """How well one 3D model explains all the views: mean PSNR (dB, on white) of each view against the render
    of one reconstruction fitted to all of them (``recon``: its ReconConfig), at the view's fitted camera. The fit
    is the consistency rounds' own: no reference view, so the hull takes the volume rule."""
    from mirage3d.recon import fit_field

    vs = replace(gen.to_viewset(), reference=None)
    with torch.enable_grad():
        fit = fit_field(vs, recon)
    h, w = vs.hw
    renders = fit.render(fit.c2w, vs.K, h, w)[..., :3]
    mse = ((vs.rgb_on_white() - renders) ** 2).mean(axis=(1, 2, 3))
    return float(np.mean(-10.0 * np.log10(np.maximum(mse, 1e-10))))


def make_views(input_path: str | Path | None, model_dir: str | Path, cfg: ViewsConfig | None = None, recon: Any = None) -> GeneratedViews:
    """Views of the object in ``input_path`` (None: unconditional) with cameras, in memory.

    ``recon``: the :class:`mirage3d.recon.ReconConfig` of the fits inside the consistency rounds (default:
    ``recon.config.generated_views_config`` on ``cfg.device`` with ``cfg.seed``: the grid for generated views).
    """
    cfg = cfg or ViewsConfig()
    model_dir = Path(model_dir)
    cfg.validate()
    photo = load_image(input_path) if input_path is not None else None  # validate before loading the model
    if cfg.box is not None:  # (the box fits the photo: checked before loading the model)
        if photo is None:
            raise InputError("--box needs an input photo")
        check_box(cfg.box, photo.width, photo.height, str(input_path))
    pipe = load_model(model_dir, cfg.device, need_pose_model=photo is not None and cfg.reference_pose is None)
    if pipe.cameras is None:
        raise ModelError(
            f"{model_dir / 'poses' / 'cameras.json'} is missing; the model needs the cameras of its poses (from `mirage3d poses discover`)"
        )
    num_poses = len(pipe.cameras)
    poses = parse_poses(cfg.poses, num_poses)
    if cfg.reference_pose is not None and not 0 <= cfg.reference_pose < num_poses:
        raise InputError(f"--pose {cfg.reference_pose} is out of range: this model has poses 0..{num_poses - 1}")
    prepared = None
    if photo is not None:
        fill = None if not cfg.reframe else (pipe.fill if cfg.fill is None else cfg.fill)
        prepared = prepare_reference(
            photo, pipe.resolution, fill=fill, name=str(input_path), fill_range=None if cfg.fill is not None else pipe.fill_range, box=cfg.box
        )
    render_fn = None
    if cfg.consistency.rounds:
        if recon is None:
            from mirage3d.recon.config import generated_views_config

            recon = generated_views_config(seed=cfg.seed, device=cfg.device)
        render_fn = consistency_renderer(pipe, cfg, recon, None if prepared is None else prepared.mask)
    pipe.set_progress_bar_config(disable=True)
    generator = torch.Generator().manual_seed(cfg.seed)
    cross = CrossFrameConfig(
        enabled=cfg.cross_frame != "off", mode=cfg.cross_frame if cfg.cross_frame != "off" else "concat", layers=cfg.cross_frame_layers
    )
    try:
        out: MiragePipelineOutput = pipe(
            poses,
            num_inference_steps=cfg.num_inference_steps,
            guidance_scale=cfg.guidance_scale,
            generator=generator,
            output_type="np",
            image=prepared,
            reference_pose=cfg.reference_pose,
            cross_frame=cross,
            consistency=cfg.consistency,
            render_fn=render_fn,
            tune=cfg.tune,
        )
    except ValueError as e:  # check_inputs: bad layer names, out-of-range poses
        raise InputError(str(e)) from None
    rgba = _as_rgba(np.asarray(out.images), cfg, out.reference_index, None if prepared is None else prepared.mask)
    return GeneratedViews(
        rgba,
        list(out.poses),
        list(out.cameras or []),
        views_intrinsics(pipe.cameras, pipe.resolution),
        int(out.reference_index),
        int(out.reference_pose),
        out.pose_confidence,
    )


def generate_views(
    input_path: str | Path | None, model_dir: str | Path, out_dir: str | Path, cfg: ViewsConfig | None = None, overwrite: bool = False
) -> ViewsResult:
    """:func:`make_views`, written as a views folder (see the module docstring)."""
    cfg = cfg or ViewsConfig()
    t0 = time.perf_counter()
    gen = make_views(input_path, model_dir, cfg)
    result = write_views(gen, Path(out_dir), cfg, overwrite, input_path, Path(model_dir))
    result.seconds = time.perf_counter() - t0
    return result


def _as_rgba(images: np.ndarray, cfg: ViewsConfig, reference_index: int | None, reference_mask: np.ndarray | None) -> list[np.ndarray]:
    """Model outputs (V, R, R, 3|4) in [0, 1] → RGBA views; alpha from the model, else from the distance to
    white; the reference keeps the input's own mask."""
    views = []
    for i, im in enumerate(np.asarray(images)):
        if im.shape[-1] == 4:  # the model makes alpha itself
            rgb, a = im[..., :3], im[..., 3]
        else:
            rgb, a = im, white_alpha(im, cfg.alpha_low, cfg.alpha_high)
        if reference_mask is not None and i == reference_index:
            a = reference_mask  # the input's own mask, not a threshold
        views.append(np.concatenate([rgb, a[..., None]], axis=-1).astype(np.float32))
    return views


def write_views(
    gen: GeneratedViews, out_dir: Path, cfg: ViewsConfig, overwrite: bool = False, input_path: Any = None, model_dir: Path | None = None
) -> ViewsResult:
    """Write ``gen`` as a nerfstudio views folder (atomically): images, transforms.json, contact sheet, turntable, config."""
    res = gen.rgba[0].shape[0]
    with atomic_dir(out_dir, overwrite=overwrite) as tmp:
        frames, files = [], []
        for i, (pose, im, cam) in enumerate(zip(gen.poses, gen.rgba, gen.cameras, strict=True)):
            name = f"images/pose_{pose:02d}.png"
            atomic_save_image(tmp / name, im)
            files.append(out_dir / name)
            extra = {"pose": pose, "azimuth_deg": cam.azimuth_deg, "elevation_deg": cam.elevation_deg, "is_reference": i == gen.reference_index}
            frames.append(Frame(name, cam.c2w, extra))
        meta = {"reference_pose": gen.reference_pose, "pose_confidence": gen.pose_confidence, "generator": "mirage3d views"}
        K = gen.K
        write_transforms(tmp / "transforms.json", Transforms(res, res, K[0, 0], K[1, 1], K[0, 2], K[1, 2], frames, meta))
        atomic_save_image(tmp / "contact_sheet.png", contact_sheet(gen.rgba))
        by_az = sorted(range(len(gen.rgba)), key=lambda i: gen.cameras[i].azimuth_deg)
        gif = [Image.fromarray((contact_sheet([gen.rgba[i]], 1) * 255 + 0.5).astype(np.uint8)) for i in by_az]
        gif[0].save(tmp / "turntable.gif", save_all=True, append_images=gif[1:], duration=250, loop=0)
        save_config(
            cfg,
            tmp / "config.json",
            input=None if input_path is None else str(input_path),
            model=None if model_dir is None else str(model_dir),
            estimated_pose=gen.reference_pose if cfg.reference_pose is None else None,
            pose_confidence=gen.pose_confidence,
        )
        files += [out_dir / n for n in ("transforms.json", "contact_sheet.png", "turntable.gif", "config.json")]
    return ViewsResult(out_dir, list(gen.poses), gen.reference_pose, gen.pose_confidence, files)

"""``generate_views``: one photo (or none) → a nerfstudio folder of consistent views with cameras.

Output folder (``docs/views.md``): ``images/pose_KK.png`` (RGBA), ``transforms.json`` (cameras from
``MODEL/poses/cameras.json``, the reference at its own camera), ``contact_sheet.png``, ``turntable.gif``,
``config.json``.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from mirage3d.config import save_config
from mirage3d.diffusion.pipeline import CrossFrameConfig, HardAttentionConfig, MiragePipeline, MiragePipelineOutput
from mirage3d.diffusion.preprocess import DEFAULT_FILL, load_framing, prepare_reference
from mirage3d.devices import resolve_device
from mirage3d.errors import InputError, ModelError
from mirage3d.foreground import check_box
from mirage3d.io import Frame, Transforms, atomic_dir, atomic_save_image, load_image, write_transforms


@dataclass
class ViewsConfig:
    """Everything that decides the views (saved as ``config.json`` beside them)."""

    poses: str = "all"
    """Poses to generate: "all" or comma-separated pose indices ("0,2,5"). The reference's pose is always included."""
    reference_pose: int | None = None
    """The input's pose; None: estimated with the model's pose model (MODEL/poses)."""
    num_inference_steps: int = 50
    """DDIM steps (η = 0), also used for the inversion of the input."""
    guidance_scale: float = 1.0
    """Classifier-free guidance against the "no pose" class (1 = off)."""
    hard_guidance_scale: float = 0.0
    """w of hard-attention guidance (0 = off)."""
    cross_frame: str = "concat"
    """"concat", "reference_only" or "off" (independent sampling)."""
    cross_frame_layers: str = "all"
    """Attention layers with cross-frame attention: "all", or "down"/"mid"/"up" joined by "+"."""
    hard_layers: str = "all"
    """Attention layers that attend hard to the reference in the hard-guidance pass."""
    hard_temperature: float = 0.0
    """0: arg-max hard attention; > 0: softmax at this temperature."""
    fill: float | None = None
    """Object bbox / frame for the input; None: the input's own when in MODEL/framing.json's range, else its
    median bbox fraction, else the default 0.85 (preprocess.fill_for_mask)."""
    reframe: bool = True
    """False: the input is already framed like the training renders (only padded and resized)."""
    box: tuple[int, int, int, int] | None = None
    """The object's box (x0, y0, x1, y1, pixels of the input photo) for a photo with a background: GrabCut from it
    (mirage3d.foreground); None: the mask comes from alpha, a plain background, rembg or the automatic GrabCut."""
    alpha_low: float = 0.03
    """Generated views' alpha: 0 where the distance from white is below this ..."""
    alpha_high: float = 0.12
    """... 1 above this, linear between (max over RGB of 1 − value)."""
    seed: int = 0
    """Seed of the generated views' initial noise."""
    device: str = "auto"
    """"auto" (CUDA if available), "cpu", "cuda", "cuda:1"..."""


@dataclass
class ViewsResult:
    out_dir: Path
    poses: list[int]
    reference_pose: int | None
    pose_confidence: float | None
    files: list[Path] = field(default_factory=list)
    seconds: float = 0.0


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
    try:
        pipe = MiragePipeline.from_pretrained(str(model_dir))
    except (OSError, ValueError, KeyError, json.JSONDecodeError) as e:
        raise ModelError(f"cannot load the model in {model_dir} ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from None
    finally:
        diffusers_logging.enable_progress_bar()
    if not getattr(pipe.unet.config, "num_class_embeds", None):
        raise ModelError(f"{model_dir}: the UNet has no pose classes; it is not a MiragePipeline model")
    pipe.to(resolve_device(device))
    pipe.cameras = load_cameras_json(model_dir)
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

            pose_model.backbone = UNetBackbone(pipe.unet, pipe.scheduler.alphas_cumprod, folder=str(model_dir.resolve()), **unet_settings(ref)).to(pipe.device)
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


def generate_views(input_path: str | Path | None, model_dir: str | Path, out_dir: str | Path, cfg: ViewsConfig | None = None, overwrite: bool = False) -> ViewsResult:
    """Views of the object in ``input_path`` (None: unconditional) with cameras; see the module docstring."""
    cfg = cfg or ViewsConfig()
    t0 = time.perf_counter()
    model_dir, out_dir = Path(model_dir), Path(out_dir)
    if cfg.cross_frame not in ("concat", "reference_only", "off"):
        raise InputError(f"--cross-frame {cfg.cross_frame!r} must be concat, reference_only or off")
    if cfg.num_inference_steps < 1:
        raise InputError(f"--steps must be >= 1, got {cfg.num_inference_steps}")
    if cfg.guidance_scale < 0 or cfg.hard_guidance_scale < 0:
        raise InputError("--guidance and --hard-guidance must be >= 0")
    photo = load_image(input_path) if input_path is not None else None  # validate before loading the model
    if cfg.box is not None:  # (the box fits the photo: checked before loading the model)
        if photo is None:
            raise InputError("--box needs an input photo")
        check_box(cfg.box, photo.width, photo.height, str(input_path))
    pipe = load_model(model_dir, cfg.device, need_pose_model=photo is not None and cfg.reference_pose is None)
    if pipe.cameras is None:
        raise ModelError(f"{model_dir / 'poses' / 'cameras.json'} is missing; the model needs the cameras of its poses (from `mirage3d poses discover`)")
    num_poses = len(pipe.cameras)
    poses = parse_poses(cfg.poses, num_poses)
    if cfg.reference_pose is not None and not 0 <= cfg.reference_pose < num_poses:
        raise InputError(f"--pose {cfg.reference_pose} is out of range: this model has poses 0..{num_poses - 1}")
    prepared = None
    if photo is not None:
        fill = None if not cfg.reframe else (cfg.fill or pipe.fill)
        prepared = prepare_reference(photo, pipe.resolution, fill=fill, name=str(input_path), fill_range=None if cfg.fill else pipe.fill_range, box=cfg.box)
    pipe.set_progress_bar_config(disable=True)
    generator = torch.Generator().manual_seed(cfg.seed)
    cross = CrossFrameConfig(enabled=cfg.cross_frame != "off", mode=cfg.cross_frame if cfg.cross_frame != "off" else "concat", layers=cfg.cross_frame_layers)
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
            hard_guidance_scale=cfg.hard_guidance_scale,
            hard_attention=HardAttentionConfig(layers=cfg.hard_layers, temperature=cfg.hard_temperature),
        )
    except ValueError as e:  # check_inputs: bad layer names, out-of-range poses
        raise InputError(str(e)) from None
    rgba = _to_rgba(out, prepared, cfg)
    result = _write(out_dir, out, rgba, pipe, cfg, overwrite, input_path, model_dir)
    result.seconds = time.perf_counter() - t0
    return result


def _to_rgba(out: MiragePipelineOutput, prepared: Any, cfg: ViewsConfig) -> list[np.ndarray]:
    views = []
    for i, im in enumerate(np.asarray(out.images)):
        if im.shape[-1] == 4:  # the model makes alpha itself
            rgb, a = im[..., :3], im[..., 3]
        else:
            rgb, a = im, white_alpha(im, cfg.alpha_low, cfg.alpha_high)
        if prepared is not None and i == out.reference_index:
            a = prepared.mask  # the input's own mask, not a threshold
        views.append(np.concatenate([rgb, a[..., None]], axis=-1).astype(np.float32))
    return views


def _write(out_dir: Path, out: MiragePipelineOutput, rgba: list[np.ndarray], pipe: MiragePipeline, cfg: ViewsConfig, overwrite: bool, input_path: Any, model_dir: Path) -> ViewsResult:
    res = pipe.resolution
    cams = out.cameras or []
    with atomic_dir(out_dir, overwrite=overwrite) as tmp:
        frames, files = [], []
        for i, (pose, im, cam) in enumerate(zip(out.poses, rgba, cams, strict=True)):
            name = f"images/pose_{pose:02d}.png"
            atomic_save_image(tmp / name, im)
            files.append(out_dir / name)
            extra = {"pose": pose, "azimuth_deg": cam.azimuth_deg, "elevation_deg": cam.elevation_deg, "is_reference": i == out.reference_index}
            frames.append(Frame(name, cam.c2w, extra))
        c0 = cams[0]
        s = res / c0.w  # cameras.json intrinsics are for the pose images' size; scale to the views' size
        meta = {"reference_pose": out.reference_pose, "pose_confidence": out.pose_confidence, "generator": "mirage3d views"}
        write_transforms(tmp / "transforms.json", Transforms(res, res, c0.fl_x * s, c0.fl_y * s, c0.cx * s, c0.cy * s, frames, meta))
        atomic_save_image(tmp / "contact_sheet.png", contact_sheet(rgba))
        by_az = sorted(range(len(rgba)), key=lambda i: cams[i].azimuth_deg)
        gif = [Image.fromarray((contact_sheet([rgba[i]], 1) * 255 + 0.5).astype(np.uint8)) for i in by_az]
        gif[0].save(tmp / "turntable.gif", save_all=True, append_images=gif[1:], duration=250, loop=0)
        save_config(cfg, tmp / "config.json", input=None if input_path is None else str(input_path), model=str(model_dir),
                    estimated_pose=out.reference_pose if cfg.reference_pose is None else None, pose_confidence=out.pose_confidence)
        files += [out_dir / n for n in ("transforms.json", "contact_sheet.png", "turntable.gif", "config.json")]
    return ViewsResult(out_dir, list(out.poses), out.reference_pose, out.pose_confidence, files)

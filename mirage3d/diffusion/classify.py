"""Pose labels from the pose-conditioned UNet itself: ``mirage3d poses relabel MODEL``.

A diffusion model trained with class conditioning is also a classifier (Li et al. 2023, "Your Diffusion
Model is Secretly a Zero-Shot Classifier"; Clark & Jaini 2023): the class under which it denoises an image
best is the class the image most likely belongs to. After phase 2 has been trained on the discovered poses,
every image is scored under every pose k:

    S(x, k) = Σ_j ‖v̂(x_{t_j}, t_j, k) − v_j‖²  +  Σ_j ‖v̂(flip x_{t_j}, t_j, m[k]) − v'_j‖²

(v-prediction targets; ε-models use ε), over a fixed set of timesteps t_j with one fixed noise map per
timestep shared by all images and poses (the same noise for every class removes most of the variance from
the comparison, and makes the score independent of batching). The flipped image is scored under the mirror
pose m[k], as in discovery. The new label is arg min_k S; the cameras, the mirror map and the ring stay.

Why: pose discovery from features confuses views 180° apart (docs/poses.md). The UNet, trained to generate
each pose, has learned what each pose looks like from all of its images; it can correct images whose label
disagrees with most of their pose. Measured in docs/poses.md.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from mirage3d.diffusion.labels import pose_to_class
from mirage3d.errors import InputError, ModelError


@dataclass
class RelabelConfig:
    """Settings of ``mirage3d poses relabel`` (saved beside the new poses as ``relabel.json``)."""

    timesteps: int = 8
    """noise levels scored per image, evenly spaced over the middle of the schedule"""
    t_min: int = 100
    """lowest timestep scored"""
    t_max: int = 900
    """highest timestep scored"""
    flip: bool = True
    """also score the mirror image under the mirror pose"""
    batch_size: int = 64
    """images per batch (each is run under every pose and timestep)"""
    device: str = "auto"
    seed: int = 0
    """seed of the fixed noise maps"""
    workers: int = 4
    """image-decoding threads"""

    def validate(self) -> None:
        if not 1 <= self.timesteps <= 100:
            raise InputError(f"--timesteps {self.timesteps} must be in 1..100")
        if not 0 <= self.t_min <= self.t_max:
            raise InputError(f"timestep range {self.t_min}..{self.t_max} is empty; need 0 <= t_min <= t_max")
        if self.batch_size < 1:
            raise InputError(f"--batch-size {self.batch_size} must be at least 1")


@torch.no_grad()
def pose_scores(unet, alphas_cumprod: torch.Tensor, prediction_type: str, images: torch.Tensor, mirror: np.ndarray, cfg: RelabelConfig,
                progress: Callable[[int, int], None] | None = None) -> torch.Tensor:  # fmt: skip
    """(N, K) denoising losses of ``images`` (N, C, H, W) float in [-1, 1] (on CPU) under each of the K poses."""
    cfg.validate()
    device = next(unet.parameters()).device
    dtype = next(unet.parameters()).dtype
    k = len(mirror)
    ts = torch.linspace(cfg.t_min, min(cfg.t_max, len(alphas_cumprod) - 1), cfg.timesteps).round().long()
    g = torch.Generator().manual_seed(cfg.seed)
    noise = torch.randn((cfg.timesteps, *images.shape[1:]), generator=g).to(device)
    a_bar = alphas_cumprod.to(device)[ts.to(device)].float()
    classes = torch.tensor([pose_to_class(p) for p in range(k)], device=device)
    mirror_classes = classes[torch.as_tensor(mirror, device=device)]
    out = torch.zeros((len(images), k), dtype=torch.float64)
    views = [(False, classes)] + ([(True, mirror_classes)] if cfg.flip else [])
    for start in range(0, len(images), cfg.batch_size):
        x0 = images[start : start + cfg.batch_size].to(device).float()
        b = x0.shape[0]
        total = torch.zeros((b, k), device=device, dtype=torch.float64)
        for flipped, cls in views:
            x = x0.flip(-1) if flipped else x0
            for j in range(cfg.timesteps):
                a, s = a_bar[j].sqrt(), (1 - a_bar[j]).sqrt()
                x_t = a * x + s * noise[j]  # (B, C, H, W)
                target = noise[j].expand_as(x) if prediction_type == "epsilon" else a * noise[j] - s * x
                inp = x_t[:, None].expand(b, k, *x.shape[1:]).reshape(b * k, *x.shape[1:])
                t = torch.full((b * k,), int(ts[j]), device=device, dtype=torch.long)
                pred = unet(inp.to(dtype), t, class_labels=cls.repeat(b)).sample.float().view(b, k, *x.shape[1:])
                total += (pred - target[:, None]).pow(2).mean(dim=(2, 3, 4)).double()
        out[start : start + b] = total.cpu()
        if progress is not None:
            progress(start + b, len(images))
    return out


@dataclass
class RelabelResult:
    folder: Path
    labels: np.ndarray
    changed: float  # fraction of images whose label changed


def relabel_poses(model_dir: str | Path, collection: str | Path, out: str | Path, cfg: RelabelConfig | None = None, poses_dir: str | Path | None = None,
                  overwrite: bool = False, progress: Callable[[int, int], None] | None = None) -> RelabelResult:  # fmt: skip
    """Score every image of the poses folder (default ``MODEL/poses``) with MODEL's UNet; write new poses to ``out``.

    ``out`` is a copy of the poses folder with new labels, confidences and counts in ``poses.json`` (the old
    labels kept as ``labels_before``) and the settings in ``relabel.json``. Its pose model still describes the
    old labels: ``mirage3d poses refit`` fits it to the new ones.
    """
    from diffusers import DDPMScheduler, UNet2DModel

    from mirage3d.config import save_config
    from mirage3d.data.collection import load_uint8_images
    from mirage3d.devices import resolve_device
    from mirage3d.io import atomic_dir, atomic_write_json, check_output_dir
    from mirage3d.poses.cluster import confidence_from_cost
    from mirage3d.poses.visual import pose_sheet

    cfg = cfg or RelabelConfig()
    cfg.validate()
    model_dir, collection = Path(model_dir), Path(collection)
    poses_dir = Path(poses_dir) if poses_dir is not None else model_dir / "poses"
    if not (model_dir / "unet").is_dir():
        raise ModelError(f"{model_dir} is not a mirage3d model (needs unet/ from `mirage3d train`)")
    if not (poses_dir / "poses.json").exists():
        raise InputError(f"{poses_dir} has no poses.json; pass --poses FOLDER from `mirage3d poses discover`")
    check_output_dir(Path(out), overwrite)
    poses = json.loads((poses_dir / "poses.json").read_text())
    files, k, mirror = poses["files"], int(poses["num_poses"]), np.asarray(poses["mirror"], dtype=np.int64)
    missing = [f for f in files if not (collection / f).exists()]
    if missing:
        raise InputError(f"{len(missing)} of {len(files)} posed images (e.g. {missing[0]}) are not in {collection}; pass the collection the poses were discovered on")
    try:
        unet = UNet2DModel.from_pretrained(model_dir / "unet")
        sched_dir = model_dir / "scheduler"
        sched = DDPMScheduler.from_pretrained(sched_dir) if (sched_dir / "scheduler_config.json").exists() else DDPMScheduler(num_train_timesteps=1000)
    except (OSError, ValueError) as e:
        raise ModelError(f"cannot load the UNet in {model_dir} ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from None
    n_classes = getattr(unet.config, "num_class_embeds", None) or 0
    if n_classes < k + 1:
        raise ModelError(f"{model_dir}: the UNet has {n_classes} classes, fewer than the {k} poses + 'no pose' of {poses_dir}")
    device = resolve_device(cfg.device)
    unet = unet.to(device).eval().requires_grad_(False)
    if device.type == "cuda":
        unet = unet.to(torch.bfloat16)
    size = unet.config.sample_size
    res = int(size if isinstance(size, int) else size[0])
    raw = load_uint8_images([collection / f for f in files], res, cfg.workers)
    images = raw[:, : unet.config.in_channels].float().mul_(2.0 / 255.0).sub_(1.0)
    kind = sched.config.get("prediction_type", "epsilon")
    if kind not in ("epsilon", "v_prediction"):
        raise ModelError(f"{model_dir}: prediction type {kind!r} is not supported for relabelling (epsilon or v_prediction)")
    scores = pose_scores(unet, sched.alphas_cumprod, kind, images, mirror, cfg, progress)
    labels = scores.argmin(1).numpy()
    best = scores.gather(1, torch.as_tensor(labels)[:, None])[:, 0]
    # Costs relative to the best pose, scaled by their typical gap, so the confidence is a softmax over margins.
    margin = scores - best[:, None]
    temperature = float(margin[margin > 0].median()) if bool((margin > 0).any()) else 1.0
    confidence = confidence_from_cost(margin, temperature).numpy()
    before = np.asarray(poses["labels"], dtype=np.int64)
    counts = np.bincount(labels, minlength=k)
    with atomic_dir(out, overwrite=overwrite) as tmp:
        for item in poses_dir.iterdir():
            if item.is_file() and item.name not in ("poses.json", "poses_sheet.png"):
                shutil.copy2(item, tmp / item.name)
        atomic_write_json(tmp / "poses.json", {**poses, "labels": [int(x) for x in labels], "labels_before": [int(x) for x in before],
                                               "confidence": [round(float(x), 5) for x in confidence], "counts": [int(c) for c in counts]})  # fmt: skip
        save_config(cfg, tmp / "relabel.json", model=str(model_dir.resolve()), poses=str(poses_dir.resolve()), collection=str(collection.resolve()),
                    changed=float((labels != before).mean()))  # fmt: skip
        pose_sheet([collection / f for f in files], labels, confidence, np.asarray(poses["azimuth_deg"])).save(tmp / "poses_sheet.png")
    return RelabelResult(Path(out), labels, float((labels != before).mean()))

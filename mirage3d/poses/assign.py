"""Using a discovered pose model elsewhere: assign its poses to new images, or refit it to another backbone."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from mirage3d.devices import resolve_device
from mirage3d.errors import InputError
from mirage3d.io import atomic_dir
from mirage3d.poses.cluster import joint_cost
from mirage3d.poses.config import DiscoverConfig
from mirage3d.poses.discover import add_facing, compute_descriptors, fit_descriptor_model, fit_front_model, fit_normalisation, pooled_pairs
from mirage3d.poses.extract import MASK_MIN_TRANSPARENT, ExtractConfig, default_cache_dir, extract_features
from mirage3d.poses.features import Backbone, load_backbone, unet_settings
from mirage3d.poses.model import PoseModel
from mirage3d.poses.poseset import PoseSet


@dataclass
class RefitResult:
    folder: Path
    agreement: float  # fraction of collection images the refitted model labels as the fixed labels


def load_discover_config(poses_dir: Path) -> DiscoverConfig:
    """The ``DiscoverConfig`` a poses folder was discovered with (``config.json``; older flat files too)."""
    path = poses_dir / "config.json"
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise InputError(f"{path} does not exist; pass a folder written by `mirage3d poses discover`") from None
    except json.JSONDecodeError as e:
        raise InputError(f"{path} is not valid JSON ({e.msg} at line {e.lineno})") from None
    return DiscoverConfig.from_dict(data)


def refit_pose_model(
    poses_dir: str | Path,
    backbone: Backbone,
    collection: str | Path,
    out_dir: str | Path,
    features: str | Path | None = None,
    extract_config: ExtractConfig | None = None,
    overwrite: bool = False,
) -> RefitResult:
    """Refit part centroids, descriptor normalisation and pose centres for another ``backbone``, labels fixed.

    The poses (labels, mirror map, cameras) of ``poses_dir`` are kept; only the pose model is rebuilt so that
    ``PoseModel.load(out_dir, backbone)`` assigns the same poses from the new backbone's features (e.g. the
    final pose-conditioned UNet instead of the phase-1 one). Files other than the pose model are copied.
    """
    poses_dir, collection = Path(poses_dir), Path(collection)
    poses = PoseSet.load(poses_dir)
    cfg = load_discover_config(poses_dir)
    ecfg = extract_config or ExtractConfig()
    labels = torch.as_tensor(poses.labels, dtype=torch.long)
    mirror = poses.mirror
    cache = extract_features(collection, features or default_cache_dir(collection, backbone, ecfg.flip), backbone, ecfg)
    if cache.files != poses.files:
        raise InputError(
            f"{collection} does not hold the {len(poses.files)} images that {poses_dir} labels; pass the collection poses were discovered on"
        )
    device = resolve_device(cfg.device)
    dm = fit_descriptor_model(cache, cfg, device)
    d_raw, f_raw = compute_descriptors(cache, dm, device)
    if cfg.facing.w_facing > 0 and f_raw is not None:  # the facing axis is refitted too, with the fixed labels
        b, bf = pooled_pairs(cache, dm, device, cfg.facing.grid)
        d_raw, f_raw, _ = add_facing(b - bf, dm, labels.numpy(), d_raw, f_raw, cfg)
        if cfg.facing.front and dm.facing is not None and poses.azimuth_deg is not None:
            # The front score again, with the fixed poses voting by their azimuth: +1 within 60° of the pose
            # at 0°, −1 within 60° of 180°, the rest not at all (at discovery the poses did not exist yet).
            cos = np.cos(np.deg2rad(poses.azimuth_deg))[labels.numpy()]
            r = fit_front_model(b + bf, np.where(np.abs(cos) >= 0.5, np.sign(cos), 0.0), dm, cfg)
            if r is not None:
                rt = torch.as_tensor(r, dtype=d_raw.dtype)[:, None]
                d_raw, f_raw = torch.cat([d_raw, rt], 1), torch.cat([f_raw, rt], 1)
    fit_normalisation(dm, d_raw, f_raw, cfg)
    d = dm.normalise(d_raw)
    f = dm.normalise(f_raw) if f_raw is not None else d
    k = poses.num_poses
    m_t = torch.as_tensor(mirror)
    sums = torch.zeros(k, d.shape[1]).index_add_(0, labels, d).index_add_(0, m_t[labels], f)
    cnt = torch.bincount(labels, minlength=k).float() + torch.bincount(m_t[labels], minlength=k).float()
    centres = sums / cnt.clamp_min(1)[:, None]
    cost = joint_cost(d, f, centres, mirror)
    temperature = float(cost.gather(1, labels[:, None]).median().clamp_min(1e-6))
    agreement = float((cost.argmin(1) == labels).float().mean())
    model = PoseModel(
        backbone.reference(),
        dm.to("cpu"),
        centres,
        mirror,
        cache.flip if f_raw is not None else "none",
        temperature,
        extra={"grid": list(cache.grid), "image_size": cache.image_size, "refit_from": str(poses_dir.resolve()), "refit_agreement": agreement},
    )
    with atomic_dir(out_dir, overwrite=overwrite) as tmp:
        for p in poses_dir.iterdir():
            if p.is_file() and not p.name.startswith("pose_model") and not p.name.startswith("."):
                shutil.copy2(p, tmp / p.name)
        model.save(tmp)
    return RefitResult(Path(out_dir), agreement)


def assign_files(
    images: list[Path], poses_dir: str | Path, backbone: str | Path | None = None, device: str = "auto", batch_size: int = 32
) -> list[dict]:
    """Pose, azimuth and confidence of image files through the pose model of ``poses_dir``."""
    from mirage3d.data.collection import load_model_image
    from mirage3d.poses.cameras import load_cameras

    if not images:
        raise InputError("give at least one image to assign")
    bb = None if backbone is None else load_backbone(str(backbone), **recorded_unet_settings(poses_dir))
    model = PoseModel.load(poses_dir, bb)
    if model.backbone is None:
        model.backbone = load_backbone(model.backbone_ref)
    model.backbone.to(resolve_device(device))
    azimuth = {c.pose: c.azimuth_deg for c in load_cameras(poses_dir)}
    res = model.backbone.image_size
    loaded = [load_model_image(Path(p), res) for p in images]  # validates every file before any work
    rows: list[dict] = []
    for s in range(0, len(loaded), batch_size):
        chunk = loaded[s : s + batch_size]
        x = torch.stack([torch.from_numpy(rgb).permute(2, 0, 1) for rgb, _ in chunk]) * 2 - 1  # (B, 3, H, W)
        a = torch.stack([torch.from_numpy(alpha)[None] for _, alpha in chunk])  # (B, 1, H, W)
        masked = (a < 0.5).float().mean(dim=(1, 2, 3)) >= MASK_MIN_TRANSPARENT
        labels, conf = np.zeros(len(chunk), dtype=np.int64), np.zeros(len(chunk))
        for sel, m in ((masked, a), (~masked, None)):
            if bool(sel.any()):
                lab, c = model.assign(x[sel], None if m is None else m[sel])
                labels[sel.numpy()], conf[sel.numpy()] = lab, c
        for j, (lab, c) in enumerate(zip(labels, conf, strict=True)):
            rows.append({"file": str(images[s + j]), "pose": int(lab), "azimuth_deg": float(azimuth[int(lab)]), "confidence": float(c)})
    return rows


def recorded_unet_settings(poses_dir: str | Path) -> dict:
    """Timestep / blocks / seed recorded in the pose model, so a replacement UNet is read the same way."""
    path = Path(poses_dir) / "pose_model.json"
    ref = json.loads(path.read_text()).get("backbone", {}) if path.exists() else {}
    return unet_settings(ref) if ref.get("kind") == "unet" else {}


def label_collection(
    collection: str | Path,
    poses_dir: str | Path,
    out_dir: str | Path,
    backbone: str | Path | None = None,
    device: str = "auto",
    overwrite: bool = False,
) -> PoseSet:
    """Label every image of ``collection`` with the pose model of ``poses_dir`` and write a poses folder that
    ``mirage3d train --poses`` takes: ``poses.json`` (these labels and confidences, the mirror map and azimuths
    of ``poses_dir``) beside a copy of its pose model, cameras and config. For fine-tuning a model on new images of
    its category (new renders, ``data render --deform``, one's own photos) with the poses it already knows."""
    from mirage3d.io import list_images

    collection, poses_dir = Path(collection), Path(poses_dir)
    source = PoseSet.load(poses_dir)
    files = list_images(collection)
    if not files:
        raise InputError(f"{collection} has no images to label")
    rows = assign_files(files, poses_dir, backbone, device, batch_size=256)
    names = [str(p.relative_to(collection)).replace("\\", "/") for p in files]
    labels = np.array([r["pose"] for r in rows], dtype=np.int64)
    record = {"labelled_by": str(poses_dir.resolve()), "labelled_collection": str(collection.resolve())}
    result = PoseSet(names, labels, source.mirror.copy(), np.array([r["confidence"] for r in rows]), source.azimuth_deg, record=record)
    with atomic_dir(out_dir, overwrite=overwrite) as tmp:
        for p in sorted(poses_dir.iterdir()):
            if (
                p.is_file()
                and p.suffix in (".json", ".safetensors")
                and p.name not in ("poses.json", "pose_model.json", "pose_model.safetensors", "eval.json")
            ):
                shutil.copy(p, tmp / p.name)  # (eval.json scored the source's collection, not this one)
        # Saved again rather than copied: loading resolves a backbone path relative to the source folder (a model's
        # own UNet, ".."), and saving it elsewhere keeps it absolute, so the copy still reads the source model.
        PoseModel.load(poses_dir).save(tmp)
        result.save(tmp)
    result.folder = Path(out_dir)
    return result

"""The files of a training run: folder checks and resume, pipeline export, sample grids, loss log.

Layout of MODEL (see docs/training.md): model_index.json + unet/ + scheduler/ (MiragePipeline, EMA
weights), checkpoints/checkpoint-<step>/, samples/step-<step>.png, loss.jsonl, loss.png,
train_config.json, poses/ (phase 2).
"""

from __future__ import annotations

import copy
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from mirage3d.diffusion.labels import NULL_CLASS
from mirage3d.diffusion.loss_plot import draw_loss_curve, read_loss_log
from mirage3d.diffusion.train_data import PoseLabels
from mirage3d.errors import InputError
from mirage3d.io import atomic_write_json, atomic_write_text

RESUME_KEYS = (
    "model",
    "res",
    "channels",
    "max_poses",
    "batch_size",
    "grad_accum",
    "lr",
    "lr_schedule",
    "warmup_steps",
    "prediction_type",
    "beta_schedule",
    "num_train_timesteps",
    "p_uncond",
    "flip",
    "seed",
)
SAVE_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def sampling_scheduler(train_scheduler):
    """The DDIM scheduler shipped with the model ("trailing" spacing: the first step starts at t = T − 1)."""
    from diffusers import DDIMScheduler

    return DDIMScheduler.from_config(train_scheduler.config, timestep_spacing="trailing")


# --------------------------------------------------------------------------------------------------
# Output folder: fresh, resumed or refused
# --------------------------------------------------------------------------------------------------
def latest_checkpoint(output: Path) -> Path | None:
    folder = output / "checkpoints"
    if not folder.is_dir():
        return None
    done = [p for p in folder.glob("checkpoint-*") if (p / "state.json").exists() and p.name.split("-")[-1].isdigit()]
    return max(done, key=lambda p: int(p.name.split("-")[-1]), default=None)


def prepare_output(output: Path, record: dict, overwrite: bool) -> None:
    """Main process: refuse foreign or incompatible folders, wipe with ``overwrite``, write train_config.json."""
    if output.exists() and not output.is_dir():
        raise InputError(f"output {output} exists and is a file; choose a folder path")
    probe = output
    while not probe.exists():
        probe = probe.parent
    if not os.access(probe, os.W_OK):
        raise InputError(f"cannot write to {probe}: permission denied; choose another -o")
    saved_path = output / "train_config.json"
    if output.is_dir() and any(output.iterdir()) and not overwrite:
        if not saved_path.exists():
            raise InputError(f"output folder {output} is not empty and holds no training run; pass --overwrite or choose another -o")
        saved = json.loads(saved_path.read_text())
        diffs = [k for k in RESUME_KEYS if saved.get("config", {}).get(k) != record["config"][k]]
        diffs += [k for k in ("unet", "num_images", "poses_sha256", "init") if saved.get(k) != record[k]]
        if diffs and latest_checkpoint(output) is not None:
            k = diffs[0]
            old = saved.get("config", {}).get(k, saved.get(k))
            new = record["config"].get(k, record.get(k))
            raise InputError(
                f"{output} holds a run with {k}={old!r}, this command asks {k}={new!r}; use the same options to resume, or --overwrite to start again"
            )
    elif overwrite and output.is_dir():
        for child in output.iterdir():
            shutil.rmtree(child) if child.is_dir() and not child.is_symlink() else child.unlink()
    output.mkdir(parents=True, exist_ok=True)
    atomic_write_json(saved_path, record)


def copy_poses(poses: PoseLabels, output: Path) -> None:
    dst = output / "poses"
    tmp = output / ".poses.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(poses.folder, tmp, ignore=shutil.ignore_patterns("checkpoints", ".*"))
    shutil.rmtree(dst, ignore_errors=True)
    os.replace(tmp, dst)


def write_framing(output: Path, images: torch.Tensor, max_images: int = 2000) -> float | None:
    """``MODEL/framing.json`` {"bbox_fraction": f}: the median, over (up to ``max_images`` of) the training
    images (uint8 (n, 4, res, res)), of the object's bounding-box side over the frame side
    (``preprocess.bbox_fraction`` of the alpha), and the 5-95 % range of it, so that `views` / `make-asset`
    frame an input photo as the training images were framed (``preprocess.fill_for_mask``). Images without
    transparency are skipped; none with it: nothing is written."""
    from mirage3d.diffusion.preprocess import bbox_fraction

    step = max(1, -(-len(images) // max_images))  # an even sample: collections are often ordered by object
    alpha = images[::step, 3].cpu().numpy().astype(np.float32) / 255.0
    fractions = [bbox_fraction(a) for a in alpha if (a < 0.5).mean() >= 0.01]
    if not fractions:
        return None
    value = round(float(np.median(fractions)), 4)
    lo, hi = (round(float(x), 4) for x in np.percentile(fractions, [5, 95]))
    atomic_write_json(output / "framing.json", {"bbox_fraction": value, "range": [lo, hi], "images": len(fractions)})
    return value


# --------------------------------------------------------------------------------------------------
# Exports: pipeline, sample grids, loss curve
# --------------------------------------------------------------------------------------------------
EXPORT_SHARD = "15MB"


def export_pipeline(output: Path, ema_unet: torch.nn.Module, train_scheduler, save_dtype: str) -> None:
    """Write the MiragePipeline (EMA UNet in ``save_dtype`` + DDIM scheduler) into ``output`` component by component."""
    from mirage3d.diffusion.pipeline import MiragePipeline

    unet = copy.deepcopy(ema_unet).to("cpu")
    for p in unet.parameters():  # cast by hand: ModelMixin.to(dtype) warns about fp32-only modules (there are none)
        p.data = p.data.to(SAVE_DTYPES[save_dtype])
    pipe = MiragePipeline(unet=unet, scheduler=sampling_scheduler(train_scheduler))
    tmp = output / ".pipeline.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    # Shards of at most 15 MB: a model folder then comes back from a GPU machine whose files are capped at
    # 16 MiB each, and its files stay small in git (the shipped model).
    pipe.save_pretrained(tmp, safe_serialization=True, max_shard_size=EXPORT_SHARD)
    for name in ("unet", "scheduler"):
        old = output / f".{name}.old"
        shutil.rmtree(old, ignore_errors=True)
        if (output / name).exists():
            os.replace(output / name, old)
        os.replace(tmp / name, output / name)
        shutil.rmtree(old, ignore_errors=True)
    os.replace(tmp / "model_index.json", output / "model_index.json")  # last: marks the folder loadable
    shutil.rmtree(tmp, ignore_errors=True)


@torch.no_grad()
def sample_grid(
    unet: torch.nn.Module, train_scheduler, num_poses: int | None, cols: int, steps: int, guidance: float, seed: int, autocast: Callable
) -> np.ndarray:
    """uint8 grid (rows·H, cols·W, 3): one row per pose (guided by ``guidance``, ``steps`` DDIM steps), or 4 rows of
    class-0 samples in phase 1."""
    from mirage3d.diffusion.pipeline import MiragePipeline

    pipe = MiragePipeline(unet=unet, scheduler=sampling_scheduler(train_scheduler))
    pipe.set_progress_bar_config(disable=True)
    g = torch.Generator().manual_seed(seed)
    with autocast():
        if num_poses is not None:
            poses = [k for k in range(num_poses) for _ in range(cols)]
            images = pipe(poses, num_inference_steps=steps, guidance_scale=guidance, generator=g, output_type="np").images
            rows = num_poses
        else:  # class 0: the pipeline's __call__ takes pose labels only, so run its loop with the null class
            rows, device, res = 4, unet.device, unet.config.sample_size
            x = torch.randn((rows * cols, unet.config.out_channels, res, res), generator=g).to(device)
            labels = torch.full((rows * cols,), NULL_CLASS, device=device)
            pipe.scheduler.set_timesteps(steps, device=device)
            for t in pipe.scheduler.timesteps:
                out = pipe.predict_noise(pipe.scheduler.scale_model_input(x, t), t, labels, 1.0)
                x = pipe.scheduler.step(out.float(), t, x, generator=g).prev_sample
            images = (x.float() / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).cpu().numpy()
    images = (np.asarray(images, dtype=np.float32)[..., :3] * 255 + 0.5).astype(np.uint8)  # (B, H, W, 3)
    b, h, w, _ = images.shape
    return images.reshape(rows, cols, h, w, 3).transpose(0, 2, 1, 3, 4).reshape(rows * h, cols * w, 3)


def append_loss(output: Path, record: dict) -> None:
    with open(output / "loss.jsonl", "a") as f:
        f.write(json.dumps(record) + "\n")


def truncate_loss_log(output: Path, step: int) -> None:
    """After a resume from ``step``, drop the records the killed run logged past it."""
    recs = [r for r in read_loss_log(output / "loss.jsonl") if r.get("step", 0) <= step]
    atomic_write_text(output / "loss.jsonl", "".join(json.dumps(r) + "\n" for r in recs))


def draw_loss(output: Path) -> None:
    recs = read_loss_log(output / "loss.jsonl")
    draw_loss_curve([r["step"] for r in recs], [r["loss"] for r in recs], output / "loss.png")

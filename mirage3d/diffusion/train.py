"""Training the pose-conditioned pixel-space diffusion UNet with accelerate (CPU, one GPU or several).

Phase 1 (``poses=None``): every image has class 0 ("no pose"); the result is the backbone that pose
discovery reads features from. Phase 2 (``poses=POSES``, usually ``init=`` the phase-1 model): images carry
their discovered pose classes, dropped to class 0 with probability ``p_uncond`` for classifier-free guidance.

The output folder is a ``MiragePipeline.save_pretrained`` folder (EMA weights) plus ``checkpoints/``,
``samples/``, ``loss.jsonl``/``loss.png``, ``train_config.json`` and (phase 2) ``poses/``. Running the same
command again on a folder that holds checkpoints resumes from the newest one.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from mirage3d.config import config_to_dict
from mirage3d.data.collection import load_uint8_images
from mirage3d.data.objects import read_objects
from mirage3d.diffusion.ema import EMA
from mirage3d.diffusion.labels import DEFAULT_MAX_POSES
from mirage3d.diffusion.model import build_unet, count_parameters, unet_config_from_preset, unet_config_of
from mirage3d.diffusion.train_data import BatchSource, class_tables, read_pose_labels
from mirage3d.diffusion.train_outputs import (
    SAVE_DTYPES,
    append_loss,
    copy_poses,
    draw_loss,
    export_pipeline,
    latest_checkpoint,
    prepare_output,
    sample_grid,
    truncate_loss_log,
    write_framing,
)
from mirage3d.errors import InputError, ModelError
from mirage3d.io import atomic_save_image, atomic_write_json, list_images


@dataclass
class TrainConfig:
    """Options of ``mirage3d train`` (saved as MODEL/train_config.json)."""

    model: str = "small"
    """UNet preset (mirage3d.diffusion.model.PRESETS): tiny, small, small64, base. Ignored with ``init``."""
    res: int | None = None
    """Training resolution; None = the preset's."""
    channels: int | None = None
    """3 = RGB on white, 4 = RGB + alpha; None = the preset's (3)."""
    max_poses: int = DEFAULT_MAX_POSES
    """Pose vocabulary of the class table (max_poses + 1 classes), shared by phase 1 and phase 2."""
    batch_size: int = 64
    """Images per process per micro-step."""
    grad_accum: int = 1
    """Micro-steps per optimizer step (effective batch = batch_size × grad_accum × processes)."""
    lr: float = 2e-4
    """Peak AdamW learning rate."""
    lr_schedule: str = "constant"
    """"constant" or "cosine" (to 10% of lr at max_steps), both after a linear warm-up."""
    warmup_steps: int = 200
    """Linear learning-rate warm-up, in optimizer steps."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    max_grad_norm: float = 1.0
    """Gradient clipping (0 = off)."""
    max_steps: int = 20_000
    """Stop after this many optimizer steps (counted over resumes)."""
    minutes: float | None = None
    """Also stop after this many minutes of this invocation (checked every log_every steps)."""
    prediction_type: str = "v_prediction"
    """What the UNet predicts: "epsilon" (the noise) or "v_prediction" (v = α·ε − σ·x0)."""
    beta_schedule: str = "squaredcos_cap_v2"
    """Noise schedule: "squaredcos_cap_v2" (cosine) or "linear" (DDPM's 1e-4..0.02)."""
    num_train_timesteps: int = 1000
    """Diffusion steps of the training schedule."""
    p_uncond: float = 0.1
    """Probability of replacing a pose label by class 0 (classifier-free guidance); no effect in phase 1."""
    reference: bool = False
    """Train a reference-conditioned model (``reference.py``): each image is denoised beside another view of its
    object, from the collection's ``objects.json``. With ``init`` a plain model gains the reference input."""
    p_no_reference: float = 0.1
    """With ``reference``: probability of giving no reference (zeros), so the model also works without one."""
    flip: bool = True
    """Random horizontal flips, with pose k relabelled mirror[k]."""
    ema_max_decay: float = 0.9999
    """Largest EMA decay; see ema.py for the warm-up."""
    ema_power: float = 0.75
    """EMA warm-up exponent: decay_n = 1 − (1 + n)^−power."""
    mixed_precision: str = "auto"
    """"auto" (bf16 on GPU, none on CPU), "no", "bf16" or "fp16"."""
    compile: bool = False
    """torch.compile the UNet (faster steps on GPU after a warm-up of a minute or two)."""
    channels_last: bool = True
    """channels-last memory format for the UNet and its inputs (faster convolutions on GPU)."""
    data_on_device: str = "auto"
    """Keep the uint8 collection on the GPU: "auto" (if it takes < 25% of GPU memory), "yes" or "no"."""
    device: str = "auto"
    """"auto" (what accelerate picks: GPU of LOCAL_RANK if any), "cpu", "cuda" or "cuda:N" (single process)."""
    checkpoint_every: int = 1000
    """Save a resumable checkpoint every N steps (and at the end)."""
    keep_checkpoints: int = 2
    """How many of the newest checkpoints to keep."""
    sample_every: int = 1000
    """Write MODEL/samples/step-N.png every N steps (and at the end); 0 = only at the end."""
    sample_steps: int = 50
    """DDIM steps for the sample grids."""
    sample_per_pose: int = 4
    """Columns of the sample grid (phase 1: a 4-row grid of unconditional samples)."""
    sample_guidance: float = 2.0
    """Classifier-free guidance scale of the phase-2 sample grids."""
    log_every: int = 25
    """Log the loss (loss.jsonl, progress) every N steps."""
    save_dtype: str = "fp32"
    """Dtype of the exported pipeline's UNet: "fp32", "fp16" or "bf16" (checkpoints stay fp32)."""
    workers: int = 8
    """Threads decoding the collection once at start."""
    seed: int = 0
    """Seed of weights, batches, flips, label dropout and noise."""


@dataclass
class TrainProgress:
    """Reported to the ``progress`` callback (main process only) every ``log_every`` steps."""

    step: int
    max_steps: int
    loss: float
    img_per_s: float
    lr: float
    elapsed_s: float
    eta_s: float
    event: str = ""


@dataclass
class TrainResult:
    output: Path
    step: int
    loss: float
    img_per_s: float
    num_parameters: int
    resumed_from: int | None
    num_images: int
    num_poses: int | None
    main_process: bool = True
    """False on the other ranks of a multi-process run (they should print nothing)."""


# Options that must not change when a run is resumed (the model or its data would silently differ).


def validate_config(cfg: TrainConfig) -> None:
    """Reject absurd options with a one-line :class:`InputError`."""
    checks = [
        (cfg.batch_size >= 1, f"batch size must be >= 1, got {cfg.batch_size}"),
        (cfg.grad_accum >= 1, f"grad accumulation must be >= 1, got {cfg.grad_accum}"),
        (cfg.lr > 0 and math.isfinite(cfg.lr), f"learning rate must be > 0, got {cfg.lr}"),
        (cfg.max_steps >= 1, f"max steps must be >= 1, got {cfg.max_steps}"),
        (cfg.minutes is None or cfg.minutes > 0, f"minutes must be > 0, got {cfg.minutes}"),
        (0.0 <= cfg.p_uncond < 1.0, f"p_uncond must be in [0, 1), got {cfg.p_uncond}"),
        (0.0 <= cfg.p_no_reference < 1.0, f"p_no_reference must be in [0, 1), got {cfg.p_no_reference}"),
        (cfg.prediction_type in ("epsilon", "v_prediction"), f"prediction type must be epsilon or v_prediction, got {cfg.prediction_type!r}"),
        (cfg.beta_schedule in ("squaredcos_cap_v2", "linear"), f"beta schedule must be squaredcos_cap_v2 or linear, got {cfg.beta_schedule!r}"),
        (cfg.num_train_timesteps >= 2, f"num_train_timesteps must be >= 2, got {cfg.num_train_timesteps}"),
        (cfg.lr_schedule in ("constant", "cosine"), f"lr schedule must be constant or cosine, got {cfg.lr_schedule!r}"),
        (cfg.mixed_precision in ("auto", "no", "bf16", "fp16"), f"mixed precision must be auto, no, bf16 or fp16, got {cfg.mixed_precision!r}"),
        (cfg.data_on_device in ("auto", "yes", "no"), f"data_on_device must be auto, yes or no, got {cfg.data_on_device!r}"),
        (
            cfg.device in ("auto", "cpu", "cuda") or cfg.device.removeprefix("cuda:").isdigit(),
            f"device must be auto, cpu, cuda or cuda:N, got {cfg.device!r}",
        ),
        (cfg.save_dtype in SAVE_DTYPES, f"save dtype must be one of {', '.join(SAVE_DTYPES)}, got {cfg.save_dtype!r}"),
        (cfg.checkpoint_every >= 1, f"checkpoint every must be >= 1, got {cfg.checkpoint_every}"),
        (cfg.keep_checkpoints >= 1, f"keep checkpoints must be >= 1, got {cfg.keep_checkpoints}"),
        (cfg.sample_every >= 0, f"sample every must be >= 0, got {cfg.sample_every}"),
        (cfg.sample_steps >= 1 and cfg.sample_per_pose >= 1, "sample steps and samples per pose must be >= 1"),
        (cfg.log_every >= 1, f"log every must be >= 1, got {cfg.log_every}"),
        (cfg.warmup_steps >= 0 and cfg.max_grad_norm >= 0 and cfg.weight_decay >= 0, "warmup, max_grad_norm and weight_decay must be >= 0"),
        (0.0 < cfg.ema_max_decay < 1.0 and cfg.ema_power > 0, "ema_max_decay must be in (0, 1) and ema_power > 0"),
    ]
    for ok, msg in checks:
        if not ok:
            raise InputError(msg)


def make_noise_scheduler(cfg: TrainConfig):
    from diffusers import DDPMScheduler

    return DDPMScheduler(
        num_train_timesteps=cfg.num_train_timesteps, beta_schedule=cfg.beta_schedule, prediction_type=cfg.prediction_type, clip_sample=True
    )


def lr_at(cfg: TrainConfig, step: int) -> float:
    """Learning rate of optimizer step ``step`` (0-based): linear warm-up, then constant or cosine to 10%."""
    warm = min(1.0, (step + 1) / cfg.warmup_steps) if cfg.warmup_steps else 1.0
    if cfg.lr_schedule == "cosine":
        frac = min(1.0, max(0, step - cfg.warmup_steps) / max(1, cfg.max_steps - cfg.warmup_steps))
        return cfg.lr * warm * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac)))
    return cfg.lr * warm


# --------------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------------
def _load_init(init: Path) -> torch.nn.Module:
    from diffusers import UNet2DModel

    init = Path(init)
    if not (init / "unet" / "config.json").exists():
        raise ModelError(f"--init {init} is not a mirage3d model folder (no unet/config.json); give a folder written by `mirage3d train`")
    from mirage3d.errors import loading

    with loading("the --init UNet", init / "unet", "it is damaged or incomplete: give another --init folder"):
        return UNet2DModel.from_pretrained(init / "unet").float()


def train(
    collection: str | Path,
    output: str | Path,
    config: TrainConfig | None = None,
    poses: str | Path | None = None,
    init: str | Path | None = None,
    overwrite: bool = False,
    progress: Callable[[TrainProgress], None] | None = None,
) -> TrainResult:
    """Train (or resume training) the MIRAGE UNet on ``collection``; see the module docstring."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState
    from accelerate.utils import broadcast

    cfg = config or TrainConfig()
    validate_config(cfg)
    collection, output = Path(collection), Path(output)
    files = list_images(collection)
    names = [str(p.relative_to(collection)).replace("\\", "/") for p in files]
    pose_labels = read_pose_labels(Path(poses), names) if poses is not None else None

    init_unet = _load_init(Path(init)) if init is not None else None
    if init_unet is not None:
        if cfg.reference:
            from mirage3d.diffusion.reference import with_reference_input

            init_unet = with_reference_input(init_unet)
        ucfg = unet_config_of(init_unet)
        if cfg.res is not None and cfg.res != ucfg.res:
            raise InputError(f"--res {cfg.res} differs from the --init model's resolution {ucfg.res}; drop --res")
    else:
        ucfg = unet_config_from_preset(cfg.model, res=cfg.res, channels=cfg.channels, max_poses=cfg.max_poses, reference=cfg.reference or None)
    if ucfg.reference and not cfg.reference:
        raise InputError("the --init model is reference-conditioned; add --reference to go on training it")
    objects = read_objects(collection, names) if cfg.reference else None
    num_classes = ucfg.max_poses + 1
    classes, mirror_cls = class_tables(len(files), pose_labels, num_classes)

    mp = cfg.mixed_precision
    if mp == "auto":
        mp = "bf16" if torch.cuda.is_available() and cfg.device != "cpu" else "no"
    if cfg.device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise InputError(f"device {cfg.device} asked for but no CUDA GPU is visible; use --device cpu")
        if ":" in cfg.device and int(os.environ.get("WORLD_SIZE", "1")) == 1:
            torch.cuda.set_device(int(cfg.device.split(":")[1]))
    state = AcceleratorState._shared_state
    if state.get("_mixed_precision") not in (None, mp):
        # A second train() in one process (tests, benchmarks) with other precision: accelerate refuses to
        # change its process-wide state, so drop it (keeping the distributed state) and start again.
        AcceleratorState._reset_state(reset_partial_state=False)
    accelerator = Accelerator(mixed_precision=mp, cpu=cfg.device == "cpu")
    device, rank, world = accelerator.device, accelerator.process_index, accelerator.num_processes
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed shapes every step: let cuDNN pick the fastest kernels
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    main = accelerator.is_main_process
    if len(files) < world:
        raise InputError(f"{len(files)} images cannot be shared by {world} processes; add images or use fewer processes")

    record = {
        "config": config_to_dict(cfg),
        "unet": asdict(ucfg),
        "collection": str(collection),
        "num_images": len(files),
        "poses": str(pose_labels.folder) if pose_labels else None,
        "poses_sha256": pose_labels.sha256 if pose_labels else None,
        "num_poses": pose_labels.num_poses if pose_labels else None,
        "init": str(init) if init else None,
        "world_size": world,
    }
    record["unet"]["block_out_channels"] = list(ucfg.block_out_channels)
    record["unet"]["attention"] = list(ucfg.attention)
    # Data: this process's shard, decoded once into uint8 (n, 4, res, res), on the GPU when it fits. Decoded
    # before the output folder is touched, so a bad image in the collection leaves no train_config.json behind.
    shard = list(range(rank, len(files), world)) if objects is None else [i for i in range(len(files)) if objects[i] % world == rank]
    images = load_uint8_images([files[i] for i in shard], ucfg.res, cfg.workers)
    if main:
        prepare_output(output, record, overwrite)
        if pose_labels is not None:
            copy_poses(pose_labels, output)
    accelerator.wait_for_everyone()
    if main:  # how the training images frame the object, for framing input photos alike (views, make-asset)
        write_framing(output, images)
    on_device = device.type != "cpu" and (
        cfg.data_on_device == "yes"
        or (cfg.data_on_device == "auto" and images.numel() < 0.25 * torch.cuda.get_device_properties(device).total_memory)
    )
    images = images.to(device) if on_device else (images.pin_memory() if device.type == "cuda" else images)
    source = BatchSource(
        images,
        classes[shard],
        mirror_cls,
        batch_size=cfg.batch_size,
        channels=ucfg.channels,
        flip=cfg.flip,
        p_uncond=cfg.p_uncond if pose_labels is not None else 0.0,
        seed=cfg.seed,
        rank=rank,
        objects=None if objects is None else torch.from_numpy(objects[shard]),
        p_no_reference=cfg.p_no_reference,
    )

    # Model, EMA, optimizer.
    torch.manual_seed(cfg.seed)
    unet = init_unet if init_unet is not None else build_unet(ucfg)
    n_params = count_parameters(unet)
    if cfg.channels_last:
        unet = unet.to(memory_format=torch.channels_last)
    ema = EMA(unet, cfg.ema_max_decay, cfg.ema_power)
    ema.model.to(device)
    fused = device.type == "cuda"
    optimizer = torch.optim.AdamW(unet.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, fused=fused)
    model, optimizer = accelerator.prepare(unet, optimizer)
    raw_model = accelerator.unwrap_model(model)

    step, resumed_from = 0, None
    ckpt = latest_checkpoint(output)
    if ckpt is not None:
        accelerator.load_state(str(ckpt))
        ema.load(ckpt)
        step = resumed_from = int(json.loads((ckpt / "state.json").read_text())["step"])
        if main:
            truncate_loss_log(output, step)
    elif main:
        (output / "loss.jsonl").unlink(missing_ok=True)
    forward = torch.compile(model) if cfg.compile else model

    scheduler = make_noise_scheduler(cfg)
    alphas = scheduler.alphas_cumprod.to(device=device, dtype=torch.float32)
    sqrt_a, sqrt_1ma = alphas.sqrt(), (1.0 - alphas).sqrt()  # (T,)
    T, accum, B = cfg.num_train_timesteps, cfg.grad_accum, cfg.batch_size
    memfmt = torch.channels_last if cfg.channels_last else torch.contiguous_format

    def save_checkpoint(at: int) -> None:
        folder = output / "checkpoints"
        tmp, final = folder / f".checkpoint-{at}.tmp", folder / f"checkpoint-{at}"
        if main:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        accelerator.wait_for_everyone()
        accelerator.save_state(str(tmp))
        accelerator.wait_for_everyone()
        if main:
            ema.save(tmp)
            atomic_write_json(tmp / "state.json", {"step": at, "images_seen": at * B * accum * world})
            shutil.rmtree(final, ignore_errors=True)
            os.replace(tmp, final)
            done = sorted((p for p in folder.glob("checkpoint-*") if p.name.split("-")[-1].isdigit()), key=lambda p: int(p.name.split("-")[-1]))
            for old in done[: -cfg.keep_checkpoints]:
                shutil.rmtree(old, ignore_errors=True)
            export_pipeline(output, ema.model, scheduler, cfg.save_dtype)
        accelerator.wait_for_everyone()

    def write_samples(at: int) -> None:
        if main:
            grid = sample_grid(
                ema.model,
                scheduler,
                pose_labels.num_poses if pose_labels else None,
                cfg.sample_per_pose,
                cfg.sample_steps,
                cfg.sample_guidance,
                cfg.seed,
                accelerator.autocast,
            )
            atomic_save_image(output / "samples" / f"step-{at:06d}.png", grid)
        accelerator.wait_for_everyone()

    t_start = t_log = time.perf_counter()
    steps_at_log, loss_sum, n_loss = step, torch.zeros((), device=device), 0
    last_loss, last_ips, saved_at = float("nan"), 0.0, step
    model.train()
    while step < cfg.max_steps:
        lr = lr_at(cfg, step)
        for group in optimizer.param_groups:
            group["lr"] = lr
        for micro in range(accum):
            counter = step * accum + micro
            gen = source.generator(counter, device)
            x0, cls = source.batch(counter, device, gen)  # (B, C, res, res) in [-1, 1], (B,); (B, 2C, ...) with a reference
            x0, ref = (x0[:, : ucfg.channels], x0[:, ucfg.channels :]) if ucfg.reference else (x0, None)
            noise = torch.randn(x0.shape, generator=gen, device=device)
            t = torch.randint(0, T, (x0.shape[0],), generator=gen, device=device)
            a, s = sqrt_a[t].view(-1, 1, 1, 1), sqrt_1ma[t].view(-1, 1, 1, 1)
            noisy = a * x0 + s * noise
            noisy = (noisy if ref is None else torch.cat([noisy, ref], dim=1)).contiguous(memory_format=memfmt)
            target = noise if cfg.prediction_type == "epsilon" else a * noise - s * x0
            sync = contextlib.nullcontext() if micro == accum - 1 else accelerator.no_sync(model)
            with sync:
                pred = forward(noisy, t, class_labels=cls).sample
                loss = F.mse_loss(pred.float(), target)
                accelerator.backward(loss / accum)
            loss_sum += loss.detach()
            n_loss += 1
        if cfg.max_grad_norm > 0:
            accelerator.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        ema.update(raw_model)
        step += 1

        if step % cfg.log_every == 0 or step == cfg.max_steps:
            last_loss = accelerator.reduce(loss_sum / max(1, n_loss), "mean").item()
            now = time.perf_counter()
            last_ips = (step - steps_at_log) * B * accum * world / max(1e-9, now - t_log)
            t_log, steps_at_log, n_loss = now, step, 0
            loss_sum.zero_()
            elapsed = now - t_start
            stop = torch.tensor([int(cfg.minutes is not None and elapsed >= cfg.minutes * 60)], device=device)
            stop = bool(broadcast(stop).item())
            if main:
                append_loss(output, {"step": step, "loss": last_loss, "lr": lr, "img_per_s": round(last_ips, 2), "elapsed_s": round(elapsed, 2)})
                eta = (cfg.max_steps - step) * B * accum * world / max(last_ips, 1e-9)
                if cfg.minutes is not None:
                    eta = min(eta, max(0.0, cfg.minutes * 60 - elapsed))
                if progress is not None:
                    progress(TrainProgress(step, cfg.max_steps, last_loss, last_ips, lr, elapsed, eta))
            if stop:
                break
        if step % cfg.checkpoint_every == 0 and step < cfg.max_steps:
            save_checkpoint(step)
            saved_at = step
        if cfg.sample_every and step % cfg.sample_every == 0 and step < cfg.max_steps:
            write_samples(step)

    if saved_at != step or latest_checkpoint(output) is None:
        save_checkpoint(step)
    write_samples(step)
    if main:
        export_pipeline(output, ema.model, scheduler, cfg.save_dtype)
        draw_loss(output)
        if progress is not None:
            progress(TrainProgress(step, cfg.max_steps, last_loss, last_ips, lr_at(cfg, step), time.perf_counter() - t_start, 0.0, "done"))
    accelerator.wait_for_everyone()
    return TrainResult(output, step, last_loss, last_ips, n_params, resumed_from, len(files), pose_labels.num_poses if pose_labels else None, main)

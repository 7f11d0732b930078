"""``mirage3d train``: train (or resume) the pose-conditioned diffusion UNet on a collection."""

from __future__ import annotations

import os
from pathlib import Path

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from mirage3d.cli._errors import console, handle_errors
from mirage3d.cli._options import DEVICE


@handle_errors
def train(
    collection: Path = typer.Argument(..., help="Collection folder (COLLECTION/images/*.png or a folder of images)."),
    output: Path = typer.Option(..., "-o", "--output", help="Model folder (MiragePipeline); an existing run there is resumed."),
    poses: Path | None = typer.Option(None, "--poses", help="POSES folder from pose discovery (phase 2); omit for the pose-free phase 1."),
    init: Path | None = typer.Option(None, "--init", help="Start from this model's UNet (a phase-1 MODEL or BACKBONE folder)."),
    model: str = typer.Option("small", "--model", help="UNet preset: tiny, small (128², 19 M), small64, base (128², 78 M)."),
    res: int | None = typer.Option(None, "--res", help="Resolution (default: the preset's)."),
    channels: int | None = typer.Option(None, "--channels", help="3 = RGB on white, 4 = RGB + alpha (default 3)."),
    batch_size: int = typer.Option(64, "--batch-size", help="Images per GPU per micro-step."),
    grad_accum: int = typer.Option(1, "--grad-accum", help="Micro-steps per optimizer step."),
    lr: float = typer.Option(2e-4, "--lr", help="Peak learning rate (AdamW)."),
    lr_schedule: str = typer.Option("constant", "--lr-schedule", help="constant or cosine (after warm-up)."),
    warmup_steps: int = typer.Option(200, "--warmup-steps", help="Linear LR warm-up steps."),
    max_steps: int = typer.Option(20_000, "--max-steps", help="Total optimizer steps (over resumes)."),
    minutes: float | None = typer.Option(None, "--minutes", help="Also stop after this many minutes."),
    prediction_type: str = typer.Option("v_prediction", "--prediction-type", help="epsilon or v_prediction."),
    beta_schedule: str = typer.Option("squaredcos_cap_v2", "--beta-schedule", help="squaredcos_cap_v2 (cosine) or linear."),
    p_uncond: float = typer.Option(0.1, "--p-uncond", help="Label dropout to 'no pose' (classifier-free guidance)."),
    reference: bool = typer.Option(
        False,
        "--reference",
        help="Reference-conditioned model: denoise each image beside another view of its object (objects.json; docs/training.md).",
    ),
    flip: bool = typer.Option(True, "--flip/--no-flip", help="Horizontal flips (pose k becomes mirror[k])."),
    mixed_precision: str = typer.Option("auto", "--mixed-precision", help="auto (bf16 on GPU), no, bf16, fp16."),
    compile: bool = typer.Option(False, "--compile", help="torch.compile the UNet (GPU; warm-up of a minute or two)."),
    checkpoint_every: int = typer.Option(1000, "--checkpoint-every", help="Checkpoint every N steps."),
    keep_checkpoints: int = typer.Option(2, "--keep-checkpoints", help="How many newest checkpoints to keep."),
    sample_every: int = typer.Option(1000, "--sample-every", help="Sample grid every N steps (0 = only at the end)."),
    sample_steps: int = typer.Option(50, "--sample-steps", help="DDIM steps of the sample grids."),
    save_dtype: str = typer.Option("fp32", "--save-dtype", help="Dtype of the exported UNet: fp32, fp16 or bf16."),
    device: str = DEVICE,
    seed: int = typer.Option(0, "--seed", help="Seed of weights, batches, augmentations and noise."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Delete an existing run in -o and start again."),
) -> None:
    """Train the pose-conditioned diffusion UNet (phase 1 without --poses, phase 2 with). Multi-GPU:
    `accelerate launch --num_processes N -m mirage3d.cli train ...`."""
    from mirage3d.diffusion.train import TrainConfig, TrainProgress
    from mirage3d.diffusion.train import train as run_training
    from mirage3d.io import claim_output

    cfg = TrainConfig(
        model=model,
        res=res,
        channels=channels,
        batch_size=batch_size,
        grad_accum=grad_accum,
        lr=lr,
        lr_schedule=lr_schedule,
        warmup_steps=warmup_steps,
        max_steps=max_steps,
        minutes=minutes,
        prediction_type=prediction_type,
        beta_schedule=beta_schedule,
        p_uncond=p_uncond,
        reference=reference,
        flip=flip,
        mixed_precision=mixed_precision,
        compile=compile,
        checkpoint_every=checkpoint_every,
        keep_checkpoints=keep_checkpoints,
        sample_every=sample_every,
        sample_steps=sample_steps,
        save_dtype=save_dtype,
        device=device,
        seed=seed,
    )
    columns = (
        TextColumn("training"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]}"),
        TextColumn("{task.fields[ips]} img/s"),
        TimeElapsedColumn(),
        TextColumn("ETA {task.fields[eta]}"),
    )
    rank0 = os.environ.get("RANK", "0") == "0"  # set by `accelerate launch`; other ranks show no bar
    with claim_output(output, overwrite, kind="resume"), Progress(*columns, console=console, transient=True, disable=not rank0) as bar:
        task = bar.add_task("train", total=max_steps, loss="-", ips="-", eta="-")

        def report(p: TrainProgress) -> None:
            m, s = divmod(int(p.eta_s), 60)
            bar.update(task, completed=p.step, loss=f"{p.loss:.4f}", ips=f"{p.img_per_s:,.0f}", eta=f"{m // 60}:{m % 60:02d}:{s:02d}")

        result = run_training(collection, output, cfg, poses=poses, init=init, overwrite=overwrite, progress=report)
    if not result.main_process:
        return
    phase = f"phase 2, {result.num_poses} poses" if result.num_poses else "phase 1, no poses"
    resumed = f" (resumed from step {result.resumed_from})" if result.resumed_from is not None else ""
    console.print(
        f"trained {result.num_parameters / 1e6:.2f} M-parameter UNet on {result.num_images} images ({phase}) to step {result.step}{resumed}; last loss {result.loss:.4f}, {result.img_per_s:,.0f} img/s"
    )
    console.print(f"  model (MiragePipeline, EMA weights): {result.output}; checkpoints: {result.output / 'checkpoints'}")
    console.print(f"  samples: {result.output / 'samples'}; loss: {result.output / 'loss.png'}; config: {result.output / 'train_config.json'}")


def register(app: typer.Typer) -> None:
    app.command("train")(train)

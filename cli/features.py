"""``mirage3d features ...``: the offline feature backbone (``features train``) and cached extraction (``features extract``)."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from mirage3d.cli._errors import console, handle_errors

features_app = typer.Typer(help="Feature backbones for pose discovery: train one offline, extract cached patch features.", no_args_is_help=True)

BACKBONE_HELP = "hog, random-vit, dinov2-small|base|large|giant (needs weights), a DINOv2 folder, or a model folder from `mirage3d features train` (UNet features)."


def progress_bar(label: str) -> Progress:
    return Progress(TextColumn(label), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn(), console=console, transient=True)


@features_app.command("train")
@handle_errors
def train(
    collection: Path = typer.Argument(..., help="Collection folder (images/ or a folder of images)."),
    output: Path = typer.Option(..., "-o", "--output", help="Backbone folder to write (a diffusers MiragePipeline folder; resumes if it exists)."),
    model: str = typer.Option("small", help="UNet preset: tiny, small, small64, base."),
    res: int = typer.Option(None, help="Training resolution (default: the preset's)."),
    batch_size: int = typer.Option(64, help="Images per step."),
    max_steps: int = typer.Option(20_000, help="Training steps."),
    minutes: float = typer.Option(None, help="Stop after this many minutes (checkpoint and export first)."),
    lr: float = typer.Option(2e-4, help="Learning rate."),
    device: str = typer.Option("auto", help="auto, cpu, cuda or cuda:N."),
    mixed_precision: str = typer.Option("auto", help="auto, no, bf16 or fp16."),
    workers: int = typer.Option(8, help="Image-decoding workers."),
    sample_steps: int = typer.Option(50, help="DDIM steps of the sample grids written while training."),
    seed: int = typer.Option(0, help="Seed."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Start over in an existing output folder."),
) -> None:
    """Train the offline backbone: phase-1 diffusion training (every image has the "no pose" label)."""
    from mirage3d.diffusion.train import TrainConfig
    from mirage3d.diffusion.train import train as run_training

    cfg = TrainConfig(model=model, res=res, batch_size=batch_size, max_steps=max_steps, minutes=minutes, lr=lr, device=device,
                      mixed_precision=mixed_precision, workers=workers, sample_steps=sample_steps, seed=seed)  # fmt: skip
    with progress_bar("training") as bar:
        task = bar.add_task("train", total=max_steps)
        result = run_training(collection, output, cfg, poses=None, overwrite=overwrite, progress=lambda p: bar.update(task, completed=p.step, total=p.max_steps))
    console.print(f"trained the backbone for {result.step} steps on {result.num_images} images (loss {result.loss:.4f}); wrote {result.output}")
    console.print(f"  next: mirage3d poses discover {collection} --backbone {result.output} -o POSES")


@features_app.command("extract")
@handle_errors
def extract(
    collection: Path = typer.Argument(..., help="Collection folder (images/ or a folder of images)."),
    output: Path = typer.Option(..., "-o", "--output", help="Feature cache folder (safetensors shards; an interrupted run resumes)."),
    backbone: str = typer.Option(..., "--backbone", "-b", help=BACKBONE_HELP),
    timestep: int = typer.Option(100, help="UNet backbones: noise timestep of the input (0..999)."),
    blocks: str = typer.Option("up0", help="UNet backbones: comma-separated blocks whose outputs are the features (up0, up1, mid, down2, ...)."),
    colour_perms: int = typer.Option(1, "--colour-perms", help="UNet backbones: average features over this many RGB channel orders (1..6; docs/poses.md)."),
    noise_maps: int = typer.Option(1, "--noise-maps", help="UNet backbones: average features over this many fixed noise maps (1..32; docs/poses.md)."),
    image_size: int = typer.Option(None, help="Input size for hog / ViT backbones (default 64 / 224)."),
    flip: str = typer.Option("image", help="Mirror features: image (extract the flipped image too), features (flip the map), none."),
    batch_size: int = typer.Option(64, help="Images per forward pass."),
    shard_size: int = typer.Option(1024, help="Images per cache shard."),
    device: str = typer.Option("auto", help="auto, cpu, cuda or cuda:N (under accelerate launch: one GPU per process)."),
    dtype: str = typer.Option("float32", help="Backbone compute dtype on CUDA: float32, bfloat16, float16."),
    workers: int = typer.Option(2, help="Image-decoding workers."),
    seed: int = typer.Option(0, help="Seed of the UNet noise maps / random-init ViT."),
) -> None:
    """Extract patch features of every image into a resumable cache (multi-GPU with `accelerate launch`)."""
    from mirage3d.poses.extract import ExtractConfig, extract_features, is_main_process
    from mirage3d.poses.features import load_backbone

    bb = load_backbone(backbone, timestep=timestep, blocks=tuple(b.strip() for b in blocks.split(",") if b.strip()), seed=seed, image_size=image_size, colour_perms=colour_perms, noise_maps=noise_maps)
    cfg = ExtractConfig(batch_size=batch_size, shard_size=shard_size, flip=flip, device=device, dtype=dtype, num_workers=workers)
    with progress_bar("extracting") as bar:
        task = bar.add_task("extract", total=None)
        cache = extract_features(collection, output, bb, cfg, progress=lambda done, total: bar.update(task, completed=done, total=total))
    if not is_main_process():
        return
    h, w = cache.grid
    console.print(f"wrote features of {cache.num_images} images ({h}x{w} patches x {cache.channels} channels, {cache.num_shards} shards) to {cache.folder}")


def register(app: typer.Typer) -> None:
    app.add_typer(features_app, name="features")

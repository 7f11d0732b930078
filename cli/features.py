"""``mirage3d features extract``: cached patch features of a collection for pose discovery.

The offline feature backbone is phase 1 of ``mirage3d train`` (``mirage3d train COLLECTION -o BACKBONE``, no ``--poses``).
"""

from __future__ import annotations

from pathlib import Path

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from mirage3d.cli._errors import console, handle_errors
from mirage3d.poses.config import DEFAULT_TIMESTEP

features_app = typer.Typer(help="Cached patch features for pose discovery (the backbone itself is phase 1 of `mirage3d train`).", no_args_is_help=True)

BACKBONE_HELP = "hog, random-vit, dinov2-small|base|large|giant (needs weights), a DINOv2 folder, or a model folder from `mirage3d train` (UNet features; phase 1 is enough)."


def progress_bar(label: str) -> Progress:
    return Progress(TextColumn(label), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn(), console=console, transient=True)


@features_app.command("extract")
@handle_errors
def extract(
    collection: Path = typer.Argument(..., help="Collection folder (images/ or a folder of images)."),
    output: Path = typer.Option(..., "-o", "--output", help="Feature cache folder (safetensors shards; an interrupted run resumes)."),
    backbone: str = typer.Option(..., "--backbone", "-b", help=BACKBONE_HELP),
    timestep: int = typer.Option(DEFAULT_TIMESTEP, help="UNet backbones: noise timestep of the input (0..999)."),
    blocks: str = typer.Option("up0", help="UNet backbones: comma-separated blocks whose outputs are the features (up0, up1, mid, down2, ...)."),
    image_size: int = typer.Option(None, help="Input size for hog / ViT backbones (default 64 / 224)."),
    flip: str = typer.Option("image", help="Mirror features: image (extract the flipped image too), features (flip the map), none."),
    batch_size: int = typer.Option(64, help="Images per forward pass."),
    shard_size: int = typer.Option(1024, help="Images per cache shard."),
    device: str = typer.Option("auto", help="auto, cpu, cuda or cuda:N (under accelerate launch: one GPU per process)."),
    dtype: str = typer.Option("float32", help="Backbone compute dtype on CUDA: float32, bfloat16, float16."),
    workers: int = typer.Option(2, help="Image-decoding workers."),
    seed: int = typer.Option(0, help="Seed of the UNet noise map / random-init ViT."),
) -> None:
    """Extract patch features of every image into a resumable cache (multi-GPU with `accelerate launch`)."""
    from mirage3d.poses.extract import ExtractConfig, extract_features, is_main_process
    from mirage3d.poses.features import load_backbone

    bb = load_backbone(backbone, timestep=timestep, blocks=tuple(b.strip() for b in blocks.split(",") if b.strip()), seed=seed, image_size=image_size)
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

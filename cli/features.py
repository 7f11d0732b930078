"""``mirage3d features ...``: the offline feature backbone (``features train``) and cached extraction (``features extract``)."""

from __future__ import annotations

from pathlib import Path

import typer

from mirage3d.cli._errors import console, handle_errors
from mirage3d.cli._options import (BACKBONE, BLOCKS, COLOUR_PERMS, DEVICE, FEATURE_SEED, IMAGE_SIZE, NOISE_MAPS, TIMESTEP, load_backbone_from,
                                   progress_bar)  # fmt: skip

features_app = typer.Typer(help="Feature backbones for pose discovery: train one offline, extract cached patch features.", no_args_is_help=True)


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
    device: str = DEVICE,
    mixed_precision: str = typer.Option("auto", help="auto, no, bf16 or fp16."),
    workers: int = typer.Option(8, help="Image-decoding workers."),
    sample_steps: int = typer.Option(50, help="DDIM steps of the sample grids written while training."),
    seed: int = typer.Option(0, help="Seed."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Start over in an existing output folder."),
) -> None:
    """Train the offline backbone: phase-1 diffusion training (every image has the "no pose" label)."""
    from mirage3d.diffusion.train import TrainConfig
    from mirage3d.diffusion.train import train as run_training
    from mirage3d.io import claim_output

    cfg = TrainConfig(model=model, res=res, batch_size=batch_size, max_steps=max_steps, minutes=minutes, lr=lr, device=device,
                      mixed_precision=mixed_precision, workers=workers, sample_steps=sample_steps, seed=seed)  # fmt: skip
    with claim_output(output, overwrite, kind="resume"), progress_bar("training") as bar:
        task = bar.add_task("train", total=max_steps)
        result = run_training(collection, output, cfg, poses=None, overwrite=overwrite, progress=lambda p: bar.update(task, completed=p.step, total=p.max_steps))
    console.print(f"trained the backbone for {result.step} steps on {result.num_images} images (loss {result.loss:.4f}); wrote {result.output}")
    console.print(f"  next: mirage3d poses discover {collection} --backbone {result.output} -o POSES")


@features_app.command("extract")
@handle_errors
def extract(
    collection: Path = typer.Argument(..., help="Collection folder (images/ or a folder of images)."),
    output: Path = typer.Option(..., "-o", "--output", help="Feature cache folder (safetensors shards; an interrupted run resumes)."),
    backbone: str = BACKBONE,
    timestep: int = TIMESTEP,
    blocks: str = BLOCKS,
    colour_perms: int = COLOUR_PERMS,
    noise_maps: int = NOISE_MAPS,
    image_size: int = IMAGE_SIZE,
    feature_seed: int = FEATURE_SEED,
    flip: str = typer.Option("image", help="Mirror features: image (extract the flipped image too), features (flip the map), none."),
    batch_size: int = typer.Option(64, help="Images per forward pass."),
    shard_size: int = typer.Option(1024, help="Images per cache shard."),
    device: str = DEVICE,
    dtype: str = typer.Option("float32", help="Backbone compute dtype on CUDA: float32, bfloat16, float16."),
    workers: int = typer.Option(2, help="Image-decoding workers."),
) -> None:
    """Extract patch features of every image into a resumable cache (multi-GPU with `accelerate launch`)."""
    from mirage3d.io import claim_output
    from mirage3d.poses.extract import ExtractConfig, extract_features, is_main_process

    with claim_output(output, kind="resume"):
        bb = load_backbone_from(backbone, timestep, blocks, colour_perms, noise_maps, image_size, feature_seed)
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

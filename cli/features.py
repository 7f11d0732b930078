"""``mirage3d features extract``: cached patch features of a collection for pose discovery.

The offline feature backbone is phase 1 of ``mirage3d train`` (``mirage3d train COLLECTION -o BACKBONE``, no ``--poses``).
"""

from __future__ import annotations

from pathlib import Path

import typer

from mirage3d.cli._errors import console, handle_errors
from mirage3d.cli._options import BACKBONE, BLOCKS, DEVICE, FEATURE_SEED, IMAGE_SIZE, TIMESTEP, load_backbone_from, progress_bar

features_app = typer.Typer(
    help="Cached patch features for pose discovery (the backbone itself is phase 1 of `mirage3d train`).", no_args_is_help=True
)


@features_app.command("extract")
@handle_errors
def extract(
    collection: Path = typer.Argument(..., help="Collection folder (images/ or a folder of images)."),
    output: Path = typer.Option(..., "-o", "--output", help="Feature cache folder (safetensors shards; an interrupted run resumes)."),
    backbone: str = BACKBONE,
    timestep: int = TIMESTEP,
    blocks: str = BLOCKS,
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
        bb = load_backbone_from(backbone, timestep, blocks, image_size, feature_seed)
        cfg = ExtractConfig(batch_size=batch_size, shard_size=shard_size, flip=flip, device=device, dtype=dtype, num_workers=workers)
        with progress_bar("extracting") as bar:
            task = bar.add_task("extract", total=None)
            cache = extract_features(collection, output, bb, cfg, progress=lambda done, total: bar.update(task, completed=done, total=total))
    if not is_main_process():
        return
    h, w = cache.grid
    console.print(
        f"wrote features of {cache.num_images} images ({h}x{w} patches x {cache.channels} channels, {cache.num_shards} shards) to {cache.folder}"
    )


def register(app: typer.Typer) -> None:
    app.add_typer(features_app, name="features")

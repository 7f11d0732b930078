"""``mirage3d poses ...``: discover poses in a collection, assign them to new images, refit for another backbone."""

from __future__ import annotations

from pathlib import Path

import typer

from mirage3d.cli._errors import console, handle_errors
from mirage3d.cli._options import (
    BACKBONE,
    BACKBONE_OR_CACHE,
    BLOCKS,
    DEVICE,
    FEATURE_SEED,
    IMAGE_SIZE,
    OVERWRITE,
    TIMESTEP,
    load_backbone_from,
    progress_bar,
)
from mirage3d.errors import InputError
from mirage3d.poses.config import CameraConfig, DescriptorConfig, DiscoverConfig, FacingConfig, PartsConfig

poses_app = typer.Typer(help="Discover poses (labels + cameras) in an unlabeled collection and assign them to images.", no_args_is_help=True)


@poses_app.command("discover")
@handle_errors
def discover(
    collection: Path = typer.Argument(..., help="Collection folder (images/ or a folder of images)."),
    output: Path = typer.Option(..., "-o", "--output", help="Poses folder to write (poses.json, cameras.json, pose model, sheets)."),
    backbone: str = BACKBONE_OR_CACHE,
    features: Path = typer.Option(
        None, "--features", help="Feature cache: reused if made by `features extract`, else made here (default COLLECTION/.cache/features/<hash>)."
    ),
    num_poses: int = typer.Option(DiscoverConfig.num_poses, "--poses", "-k", help="Number of poses K."),
    num_parts: int = typer.Option(PartsConfig.num_parts, "--parts", "-p", help="Number of parts P."),
    timestep: int = TIMESTEP,
    blocks: str = BLOCKS,
    image_size: int = IMAGE_SIZE,
    feature_seed: int = FEATURE_SEED,
    flip: str = typer.Option("image", help="Mirror descriptors from: image, features, none."),
    w_facing: float = typer.Option(
        FacingConfig.w_facing, help="Weight of the facing score from the image and its flip (0 = off, and the front/back score too; docs/poses.md)."
    ),
    facing_component: str = typer.Option(
        str(FacingConfig.component), help="Principal component of the flip difference used as the facing axis (2: measured on cars), or auto."
    ),
    w_front: float = typer.Option(
        FacingConfig.w_front, help="Weight of the front/back score that splits the pose pair holding front and back views (0 = off; docs/poses.md)."
    ),
    w_layout: float = typer.Option(
        DescriptorConfig.w_layout, help="Weight of the layout block: features pooled over a 4 x 4 split of the object's box (0 = off; docs/poses.md)."
    ),
    spacing: str = typer.Option(CameraConfig.spacing, help="Azimuth spacing: uniform or sizes."),
    by_object: bool = typer.Option(
        False, "--by-object", help="Poses from each object's ring of views (the collection's objects.json: turntables, orbits; docs/poses.md)."
    ),
    batch_size: int = typer.Option(64, help="Images per forward pass."),
    device: str = DEVICE,
    workers: int = typer.Option(2, help="Image-decoding workers."),
    seed: int = typer.Option(0, help="Seed of sampling and clustering (not of the features: --feature-seed)."),
    overwrite: bool = OVERWRITE,
) -> None:
    """Discover K poses: parts from patch features, per-image descriptors, mirror-consistent clusters, a camera ring."""
    from mirage3d.io import claim_output, list_images
    from mirage3d.poses.discover import check_discovery_input

    if facing_component != "auto" and not facing_component.isdigit():
        raise InputError(f"--facing-component {facing_component} must be a component number (0, 1, ...) or auto")
    cfg = DiscoverConfig(
        num_poses=num_poses,
        parts=PartsConfig(num_parts=num_parts),
        descriptor=DescriptorConfig(w_layout=w_layout),
        facing=FacingConfig(w_facing=w_facing, component=None if facing_component == "auto" else int(facing_component), w_front=w_front),
        cameras=CameraConfig(spacing=spacing),
        by_object=by_object,
        device=device,
        seed=seed,
    )
    images = list_images(collection)
    check_discovery_input(len(images), cfg, flip)
    if by_object:  # objects.json read and checked before any work
        from mirage3d.data.objects import read_objects

        read_objects(collection, [p.relative_to(collection).as_posix() for p in images])
    with claim_output(output, overwrite, kind="dir"):
        result, cache = _discover(
            collection,
            output,
            backbone,
            features,
            cfg,
            flip,
            batch_size,
            device,
            workers,
            overwrite,
            (backbone, timestep, blocks, image_size, feature_seed),
        )
    if result is None:  # multi-GPU: the other ranks only helped extract
        return
    console.print(f"found {result.num_poses} poses in {len(result.files)} images (features: {cache.folder})")
    for k in range(result.num_poses):
        console.print(f"  pose {k}: azimuth {result.azimuth_deg[k]:6.1f}, {int(result.counts[k])} images, mirror pose {int(result.mirror[k])}")
    console.print(f"  flip agreement {result.flip_agreement:.2f}, mirror residual {result.mirror_residual_deg:.1f} deg")
    console.print(f"wrote {output}/poses.json, cameras.json, transforms.json, pose_model.*, poses_sheet.png, config.json")


def _discover(
    collection: Path,
    output: Path,
    backbone: str | None,
    features: Path | None,
    cfg,
    flip: str,
    batch_size: int,
    device: str,
    workers: int,
    overwrite: bool,
    backbone_options: tuple,
):
    """The features (from the cache, or extracted now) and the discovery; (None, cache) on non-zero ranks."""
    from mirage3d.poses.discover import discover_poses
    from mirage3d.poses.extract import MANIFEST, ExtractConfig, FeatureCache, default_cache_dir, extract_features, is_main_process

    if backbone is None:
        if features is None or not (features / MANIFEST).exists():
            raise InputError("give --backbone BACKBONE (or --features FOLDER made by `mirage3d features extract`)")
        cache = FeatureCache.open(features)
    else:
        # The discovery seed does not reach the backbone: runs with other seeds share one feature cache.
        bb = load_backbone_from(*backbone_options)
        ecfg = ExtractConfig(batch_size=batch_size, flip=flip, device=device, num_workers=workers)
        with progress_bar("features") as bar:
            task = bar.add_task("features", total=None)
            cache = extract_features(
                collection, features or default_cache_dir(collection, bb, flip), bb, ecfg, lambda d, t: bar.update(task, completed=d, total=t)
            )
        if not is_main_process():
            return None, cache
    with progress_bar("descriptors") as bar:
        task = bar.add_task("descriptors", total=cache.num_images)
        result = discover_poses(cache, collection, output, cfg, overwrite=overwrite, progress=lambda d, t: bar.update(task, completed=d, total=t))
    return result, cache


@poses_app.command("assign")
@handle_errors
def assign(
    images: list[Path] = typer.Argument(..., help="Image files (PNG/JPEG; alpha, if any, is the object mask)."),
    poses: Path = typer.Option(..., "--poses", help="Poses folder written by `mirage3d poses discover`."),
    backbone: Path = typer.Option(None, "--backbone", "-b", help="Backbone folder to use instead of the one recorded in the pose model."),
    output: Path = typer.Option(None, "-o", "--output", help="Write the assignments as JSON here."),
    device: str = DEVICE,
    overwrite: bool = OVERWRITE,
) -> None:
    """Assign discovered poses to new images through the saved pose model."""
    import contextlib

    from mirage3d.io import atomic_write_json, claim_output
    from mirage3d.poses.assign import assign_files

    with claim_output(output, overwrite, kind="file") if output is not None else contextlib.nullcontext():
        rows = assign_files(images, poses, backbone, device)
        if output is not None:
            atomic_write_json(output, {"poses": str(poses), "assignments": rows})
    for r in rows:
        console.print(f"{r['file']}: pose {r['pose']} (azimuth {r['azimuth_deg']:.1f}, confidence {r['confidence']:.2f})")
    if output is not None:
        console.print(f"wrote {output}")


@poses_app.command("label")
@handle_errors
def label(
    collection: Path = typer.Argument(..., help="Collection folder (images/ from `data render` or `data import`)."),
    poses: Path = typer.Option(..., "--poses", help="Poses folder of a model (e.g. MODEL/poses) whose pose model labels the images."),
    output: Path = typer.Option(..., "-o", "--output", help="New poses folder for `mirage3d train --poses` (labels of this collection)."),
    backbone: Path = typer.Option(None, "--backbone", "-b", help="Backbone folder to use instead of the one recorded in the pose model."),
    device: str = DEVICE,
    overwrite: bool = OVERWRITE,
) -> None:
    """Label a new collection with an existing model's poses, to fine-tune that model on it (`train --init MODEL --poses OUT`)."""
    from mirage3d.io import claim_output
    from mirage3d.poses.assign import label_collection

    with claim_output(output, overwrite, kind="dir"):
        res = label_collection(collection, poses, output, backbone, device, overwrite=overwrite)
    console.print(f"labelled {len(res.files)} images with {res.num_poses} poses (per pose: {res.counts.tolist()}); wrote {output}/poses.json")


@poses_app.command("refit")
@handle_errors
def refit(
    poses: Path = typer.Argument(..., help="Poses folder written by `mirage3d poses discover`."),
    backbone: str = BACKBONE,
    collection: Path = typer.Option(..., "--collection", help="The collection the poses were discovered on."),
    output: Path = typer.Option(..., "-o", "--output", help="New poses folder (same labels and cameras, pose model for the new backbone)."),
    timestep: int = TIMESTEP,
    blocks: str = BLOCKS,
    image_size: int = IMAGE_SIZE,
    feature_seed: int = FEATURE_SEED,
    features: Path = typer.Option(None, "--features", help="Feature cache folder for the new backbone."),
    device: str = DEVICE,
    overwrite: bool = OVERWRITE,
) -> None:
    """Refit the pose model for another backbone (e.g. the final pose-conditioned UNet), keeping the labels."""
    from mirage3d.io import claim_output
    from mirage3d.poses.assign import refit_pose_model
    from mirage3d.poses.extract import ExtractConfig
    from mirage3d.poses.poseset import PoseSet

    PoseSet.load(poses)  # a damaged poses folder is refused before the backbone is loaded
    with claim_output(output, overwrite, kind="dir"):
        bb = load_backbone_from(backbone, timestep, blocks, image_size, feature_seed)
        res = refit_pose_model(poses, bb, collection, output, features, ExtractConfig(device=device), overwrite)
    console.print(f"refitted the pose model for {backbone}: it gives the fixed label to {100 * res.agreement:.1f}% of the images; wrote {res.folder}")


def register(app: typer.Typer) -> None:
    app.add_typer(poses_app, name="poses")

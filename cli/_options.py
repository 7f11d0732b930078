"""Options that several commands share, each declared once (flag, help text, check).

Commands use them as parameter defaults: ``device: str = DEVICE``. The backbone options of ``features
extract``, ``poses discover`` and ``poses refit`` are one group, turned into a backbone by
:func:`load_backbone_from`.
"""

from __future__ import annotations

import re
from typing import Any

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from mirage3d.cli._errors import console
from mirage3d.poses.config import DEFAULT_TIMESTEP

_DEVICE = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")


def _check_device(value: str | None) -> str | None:
    if value is not None and not _DEVICE.match(value):
        raise typer.BadParameter(f"{value!r} is not a device; use auto, cpu, cuda or cuda:N")
    return value


# Each is a typer.Option (flag, default, help) shared by the commands that take it: `device: str = DEVICE`.
DEVICE = typer.Option(
    "auto", "--device", callback=_check_device, help="auto (the GPU when there is one; under accelerate, this process's GPU), cpu, cuda or cuda:N."
)
OVERWRITE = typer.Option(False, "--overwrite", help="Replace an existing output (only once the new one is complete).")

# The backbone group (features extract, poses discover, poses refit).
BACKBONE_HELP = "hog, random-vit, dinov2-small|base|large|giant (needs weights), a DINOv2 folder, or a model folder from `mirage3d train` (UNet features; phase 1 is enough)."
BACKBONE = typer.Option(..., "--backbone", "-b", help=BACKBONE_HELP)
BACKBONE_OR_CACHE = typer.Option(
    None, "--backbone", "-b", help=BACKBONE_HELP + " Not needed with --features FOLDER from `mirage3d features extract`."
)
TIMESTEP = typer.Option(DEFAULT_TIMESTEP, "--timestep", help="UNet backbones: noise timestep of the input (0..999).")
BLOCKS = typer.Option("up0", "--blocks", help="UNet backbones: comma-separated blocks whose outputs are the features (up0, up1, mid, down2, ...).")
IMAGE_SIZE = typer.Option(None, "--image-size", help="Input size of hog / ViT backbones (default 64 / 224).")
FEATURE_SEED = typer.Option(0, "--feature-seed", help="Seed of the UNet noise maps / random-init ViT: of the features, not of the discovery.")


def load_backbone_from(backbone: str, timestep: int, blocks: str, image_size: int | None, feature_seed: int) -> Any:
    """The backbone the shared options describe (one-line errors for bad specs and damaged folders)."""
    from mirage3d.poses.features import load_backbone

    names = tuple(b.strip() for b in blocks.split(",") if b.strip())
    return load_backbone(backbone, timestep=timestep, blocks=names, seed=feature_seed, image_size=image_size)


def progress_bar(label: str) -> Progress:
    return Progress(TextColumn(label), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn(), console=console, transient=True)

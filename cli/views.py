"""``mirage3d views``: one photo → consistent views with cameras (a nerfstudio folder for ``mirage3d recon``)."""

from __future__ import annotations

from pathlib import Path

import typer

from mirage3d.cli._errors import console, handle_errors
from mirage3d.cli._options import DEVICE, OVERWRITE


@handle_errors
def views(
    input: Path | None = typer.Argument(
        None,
        help="Photo of one object (RGBA cut-out, RGB on a plain background, or a photo with a background: see --box). Leave out for unconditional views.",
    ),
    model: Path = typer.Option(..., "--model", "-m", help="Model folder from `mirage3d train` (with poses/)."),
    output: Path = typer.Option(..., "--output", "-o", help="Output views folder (created; must not exist unless --overwrite)."),
    poses: str = typer.Option("all", "--poses", help="Poses to generate: all, or comma-separated indices like 0,2,5."),
    pose: int | None = typer.Option(None, "--pose", help="The input's pose index (default: estimated with MODEL/poses' pose model)."),
    steps: int = typer.Option(50, "--steps", help="DDIM steps (also used to invert the input)."),
    guidance: float = typer.Option(1.0, "--guidance", help="Classifier-free guidance scale against 'no pose' (1 = off)."),
    cross_frame: str = typer.Option(
        "all",
        "--cross-frame",
        help="all (views attend to the input and each other), concat (to the input), reference_only, or off (independent views).",
    ),
    rounds: int = typer.Option(
        2, "--rounds", help="Consistency rounds (fit, render, re-noise, denoise): views closer to the object, about 4x the time; 0 = off."
    ),
    tune_steps: int = typer.Option(
        0, "--tune-steps", help="Fine-tune the model on the input for this many steps first (GPU: 100 measured best; slow on a CPU)."
    ),
    layers: str = typer.Option("all", "--layers", help="Attention layers with cross-frame attention: all, or down/mid/up joined by '+'."),
    fill: float | None = typer.Option(None, "--fill", help="Object bbox / frame side for the input (default: MODEL/framing.json or 0.85)."),
    no_reframe: bool = typer.Option(False, "--no-reframe", help="The input is already framed like the training renders: only pad and resize."),
    box: str | None = typer.Option(
        None, "--box", help="The object's box x0,y0,x1,y1 (pixels) in a photo with a background: cut out with GrabCut from it."
    ),
    seed: int = typer.Option(0, "--seed", help="Seed of the initial noise."),
    device: str = DEVICE,
    overwrite: bool = OVERWRITE,
) -> None:
    """Generate consistent views of the object in INPUT, with cameras, ready for `mirage3d recon`."""
    from mirage3d.diffusion.pipeline import ConsistencyConfig, TuneConfig
    from mirage3d.diffusion.views import ViewsConfig, generate_views
    from mirage3d.foreground import parse_box
    from mirage3d.io import claim_output

    cfg = ViewsConfig(
        poses=poses,
        reference_pose=pose,
        num_inference_steps=steps,
        guidance_scale=guidance,
        cross_frame=cross_frame,
        cross_frame_layers=layers,
        fill=fill,
        reframe=not no_reframe,
        box=None if box is None else parse_box(box),
        consistency=ConsistencyConfig(rounds=rounds),
        tune=TuneConfig(steps=tune_steps),
        seed=seed,
        device=device,
    )
    with claim_output(output, overwrite, kind="dir"), console.status("generating views..."):
        res = generate_views(input, model, output, cfg, overwrite=overwrite)
    ref = "" if res.reference_pose is None else f", reference pose {res.reference_pose}"
    if res.pose_confidence is not None:
        ref += f" (estimated, confidence {res.pose_confidence:.2f})"
    console.print(
        f"wrote {len(res.poses)} views{ref} to {res.out_dir} in {res.seconds:.1f} s: images/, transforms.json, contact_sheet.png, turntable.gif, config.json"
    )


def register(app: typer.Typer) -> None:
    app.command("views")(views)

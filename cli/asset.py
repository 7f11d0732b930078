"""``mirage3d make-asset``: one photo → textured GLB, through views and reconstruction."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from mirage3d.cli._errors import console, handle_errors


@handle_errors
def make_asset(
    image: Path = typer.Argument(..., help="Photo of one object: an RGBA cut-out, RGB on a plain background, or a photo with a background (see --box)."),
    output: Path = typer.Option(..., "--output", "-o", help="Mesh to write: .glb (default choice), .obj or .ply."),
    model: str = typer.Option("default", "--model", "-m", help="Model folder from `mirage3d train`, or 'default' (the shipped car model)."),
    views: int | None = typer.Option(None, "--views", help="Number of views to generate (default: every pose of the model)."),
    steps: int = typer.Option(20, "--steps", help="DDIM steps (20 fits the CPU time target; use 50 on a GPU)."),
    pose: int | None = typer.Option(None, "--pose", help="The input's pose index if known (default: estimated)."),
    box: str | None = typer.Option(None, "--box", help="The object's box x0,y0,x1,y1 (pixels) in a photo with a background (default: found automatically)."),
    guidance: float = typer.Option(1.0, "--guidance", help="Classifier-free guidance scale (1 = off)."),
    hard_guidance: float = typer.Option(0.0, "--hard-guidance", help="Hard-attention guidance weight (0 = off)."),
    iters: int = typer.Option(600, "--iters", help="Radiance-field optimisation steps."),
    faces: int = typer.Option(20000, "--faces", help="Target face count of the mesh."),
    preview: bool = typer.Option(False, "--preview", help="Also write OUT.preview.png/.gif turntables."),
    keep_views: Path | None = typer.Option(None, "--keep-views", help="Keep the generated views folder here."),
    seed: int = typer.Option(0, "--seed", help="Seed of the views and the reconstruction."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda or cuda:N."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace existing outputs."),
    server: str | None = typer.Option(None, "--server", envvar="MIRAGE3D_SERVER", help="URL of a `mirage3d serve` process to do the work (skips imports and model loading)."),
) -> None:
    """Turn one photo of an object into a textured 3D mesh (GLB)."""
    from mirage3d.foreground import parse_box

    box_px = None if box is None else parse_box(box)
    if server:
        if box_px is not None:
            from mirage3d.errors import InputError

            raise InputError("--box is not sent to a server; cut the photo out first (mirage3d data import) or run without --server")
        options = {"views": views, "steps": steps, "reference_pose": pose, "guidance_scale": guidance, "hard_guidance_scale": hard_guidance,
                   "recon_iters": iters, "faces": faces, "preview": preview, "seed": seed}  # fmt: skip
        _remote(server, image, output, model, options, keep_views, device, overwrite)
        return
    from mirage3d.asset import AssetConfig, make_asset as run

    cfg = AssetConfig(model=model, views=views, steps=steps, guidance_scale=guidance, hard_guidance_scale=hard_guidance, reference_pose=pose,
                      recon_iters=iters, faces=faces, preview=preview, box=box_px, seed=seed, device=device)
    with console.status("checking inputs...") as status:
        res = run(image, output, cfg, keep_views=keep_views, overwrite=overwrite,
                  stage=lambda name: status.update({"views": "generating views...", "recon": "reconstructing the mesh..."}.get(name, name)))
    table = Table(title=f"wrote {res.mesh_path}", show_header=True)
    table.add_column("stage")
    table.add_column("seconds", justify="right")
    for k, v in res.timings.items():
        table.add_row(k, f"{v:.1f}")
    console.print(table)
    est = "given" if pose is not None else f"estimated, confidence {res.pose_confidence:.2f}" if res.pose_confidence is not None else "estimated"
    console.print(f"input pose {res.reference_pose} ({est}); {len(res.poses)} views: poses {res.poses}")
    console.print("files: " + ", ".join(str(p) for p in res.files) + (f"; views: {res.views_dir}" if res.views_dir else ""))


def _remote(server: str, image: Path, output: Path, model: str, options: dict, keep_views: Path | None, device: str, overwrite: bool) -> None:
    """make-asset through a server: no torch here; the server's model and device do the work."""
    import time

    from mirage3d.errors import InputError
    from mirage3d.serve import make_asset_remote, server_health

    t0 = time.perf_counter()
    if keep_views is not None:
        raise InputError("--keep-views is not available with --server (the views stay on the server); run without --server to keep them")
    if device != "auto":
        raise InputError(f"--device {device} cannot be chosen per request; the server runs on the device it was started with")
    health = server_health(server)
    if model not in ("default", health.get("model")) and str(Path(model).resolve()) != health.get("model"):
        raise InputError(f"the server at {server} serves {health.get('model')}, not {model}; start one with `mirage3d serve --model {model}` or drop --server")
    with console.status(f"working on {server}..."):
        res = make_asset_remote(server, image, output, options, overwrite=overwrite)
    table = Table(title=f"wrote {output} (server {server}, {health.get('device')})", show_header=True)
    table.add_column("stage")
    table.add_column("seconds", justify="right")
    for k, v in res.get("timings", {}).items():
        table.add_row(f"server: {k}", f"{v:.1f}")
    table.add_row("this command", f"{time.perf_counter() - t0:.1f}")
    console.print(table)
    conf = res.get("pose_confidence")
    est = "given" if options["reference_pose"] is not None else f"estimated, confidence {conf:.2f}" if conf is not None else "estimated"
    console.print(f"input pose {res.get('reference_pose')} ({est}); {len(res.get('poses', []))} views: poses {res.get('poses')}")
    console.print("files: " + ", ".join(str(p) for p in res["files"]))


def register(app: typer.Typer) -> None:
    app.command("make-asset")(make_asset)

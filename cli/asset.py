"""``mirage3d make-asset``: one photo → textured GLB, through views and reconstruction."""

from __future__ import annotations

import time
from pathlib import Path

import typer
from rich.table import Table

from mirage3d.asset import AssetConfig
from mirage3d.cli._errors import console, handle_errors
from mirage3d.cli._options import DEVICE, OVERWRITE
from mirage3d.cli.serve import TOKEN_HELP
from mirage3d.config import replace_fields

_D = AssetConfig()  # the defaults of the options below are the config's


@handle_errors
def make_asset(
    image: Path = typer.Argument(
        ..., help="Photo of one object: an RGBA cut-out, RGB on a plain background, or a photo with a background (see --box)."
    ),
    output: Path = typer.Option(..., "--output", "-o", help="Mesh to write: .glb (default choice), .obj or .ply."),
    model: str = typer.Option(_D.model, "--model", "-m", help="Model folder from `mirage3d train`, or 'default' (the shipped car model)."),
    views: int | None = typer.Option(_D.num_views, "--views", help="Number of views to generate, 2..K (default: every one of the model's K poses)."),
    steps: int = typer.Option(_D.views.num_inference_steps, "--steps", help="DDIM steps, 1..1000 (20 fits the CPU time target; use 50 on a GPU)."),
    pose: int | None = typer.Option(_D.views.reference_pose, "--pose", help="The input's pose index if known (default: estimated)."),
    box: str | None = typer.Option(
        None, "--box", help="The object's box x0,y0,x1,y1 (pixels) in a photo with a background (default: found automatically)."
    ),
    cross_frame: str = typer.Option(
        _D.views.cross_frame, "--cross-frame", help="all (best mesh), concat (views attend to the input only: keep its colour better) or off."
    ),
    rounds: int = typer.Option(
        _D.views.consistency.rounds,
        "--rounds",
        help="Consistency rounds: views agree better, about 4x the views time, the mesh scored lower (docs/asset.md).",
    ),
    tune_steps: int = typer.Option(
        _D.views.tune.steps,
        "--tune-steps",
        help="Fine-tune the model on the input for this many steps first (GPU: 100 measured best; slow on a CPU).",
    ),
    guidance: float = typer.Option(_D.views.guidance_scale, "--guidance", help="Classifier-free guidance scale (1 = off)."),
    iters: int = typer.Option(_D.recon.iters, "--iters", help="Steps of the surface fit (the reconstruction)."),
    faces: int = typer.Option(_D.recon.faces, "--faces", help="Target face count of the mesh."),
    preview: bool = typer.Option(_D.recon.preview, "--preview", help="Also write OUT.preview.png/.gif turntables."),
    keep_views: Path | None = typer.Option(None, "--keep-views", help="Keep the generated views folder here."),
    seed: int = typer.Option(_D.views.seed, "--seed", help="Seed of the views and the reconstruction."),
    device: str = DEVICE,
    overwrite: bool = OVERWRITE,
    server: str | None = typer.Option(
        None, "--server", envvar="MIRAGE3D_SERVER", help="URL of a `mirage3d serve` process to do the work (skips imports and model loading)."
    ),
    token: str | None = typer.Option(None, "--token", envvar="MIRAGE3D_TOKEN", show_envvar=False, help=TOKEN_HELP),
    local: bool = typer.Option(False, "--local", help="Run in this process even when a `mirage3d serve` is running on this machine."),
    daemon: bool = typer.Option(
        False,
        "--daemon/--no-daemon",
        envvar="MIRAGE3D_DAEMON",
        help="When no local server is running, start one in the background for this and later photos (it stops after 15 idle minutes).",
    ),
) -> None:
    """Turn one photo of an object into a textured 3D mesh (GLB)."""
    from mirage3d.foreground import parse_box
    from mirage3d.io import output_lock

    box_px = None if box is None else parse_box(box)
    if server and box_px is not None:
        from mirage3d.errors import InputError

        raise InputError("--box is not sent to a server; cut the photo out first (mirage3d data import) or run without --server")
    if server is None and not local and device == "auto" and keep_views is None and box_px is None:
        from mirage3d.serve_client import find_local_server

        server = find_local_server(model)  # a running `mirage3d serve` with this model: no imports, no model load here
        if server:
            console.print(f"using the mirage3d server running at {server} (--local to run here)")
        elif daemon:
            from mirage3d.serve_client import DAEMON_IDLE_MINUTES, start_local_server

            with console.status("starting a mirage3d server (imports and the model load, once)..."):
                started = start_local_server(model)
            if started:
                server = started[0]
                console.print(
                    f"started a mirage3d server at {server} for this and later photos (stops after {DAEMON_IDLE_MINUTES:.0f} idle minutes; log: {started[1]})"
                )
            else:
                console.print("could not start a mirage3d server here; running in this process")
    cfg = replace_fields(
        _D,
        {
            "model": model,
            "num_views": views,
            "views.num_inference_steps": steps,
            "views.guidance_scale": guidance,
            "views.reference_pose": pose,
            "views.box": box_px,
            "views.cross_frame": cross_frame,
            "views.consistency.rounds": rounds,
            "views.tune.steps": tune_steps,
            "recon.iters": iters,
            "recon.faces": faces,
            "recon.preview": preview,
            "views.seed": seed,  # --seed and --device are both stages'
            "recon.seed": seed,
            "views.device": device,
            "recon.device": device,
        },
    )
    with output_lock(output):
        if server:
            _remote(server, token, image, output, cfg, keep_views, overwrite)
            return
        from mirage3d.asset import make_asset as run

        with console.status("checking inputs...") as status:
            res = run(
                image,
                output,
                cfg,
                keep_views=keep_views,
                overwrite=overwrite,
                stage=lambda name: status.update({"views": "generating views...", "recon": "reconstructing the mesh..."}.get(name, name)),
            )
    table = Table(title=f"wrote {res.mesh_path}", show_header=True)
    table.add_column("stage")
    table.add_column("seconds", justify="right")
    for k, v in res.timings.items():
        table.add_row(k, f"{v:.1f}")
    console.print(table)
    est = "given" if pose is not None else f"estimated, confidence {res.pose_confidence:.2f}" if res.pose_confidence is not None else "estimated"
    console.print(f"input pose {res.reference_pose} ({est}); {len(res.poses)} views: poses {res.poses}")
    console.print("files: " + ", ".join(str(p) for p in res.files) + (f"; views: {res.views_dir}" if res.views_dir else ""))


def _remote(server: str, token: str | None, image: Path, output: Path, cfg: AssetConfig, keep_views: Path | None, overwrite: bool) -> None:
    """make-asset through a server: no torch here; the server's model and device do the work."""
    from mirage3d.errors import InputError
    from mirage3d.serve_client import check_served_model, make_asset_remote, server_health

    t0 = time.perf_counter()
    if keep_views is not None:
        raise InputError("--keep-views is not available with --server (the views stay on the server); run without --server to keep them")
    if cfg.views.device != "auto":
        raise InputError(f"--device {cfg.views.device} cannot be chosen per request; the server runs on the device it was started with")
    from mirage3d.asset import check_asset_config, check_asset_inputs
    from mirage3d.io import check_output_path

    check_asset_inputs(image, output)  # the local checks first: no server is asked about a bad input
    check_asset_config(cfg)
    check_output_path(output, overwrite, kind="file")
    health = server_health(server, token)
    check_served_model(server, health, cfg.model)
    with console.status(f"working on {server}..."):
        res = make_asset_remote(server, image, output, cfg, overwrite=overwrite, token=token)
    table = Table(title=f"wrote {output} (server {server}, {health.get('device')})", show_header=True)
    table.add_column("stage")
    table.add_column("seconds", justify="right")
    timings = res.get("timings")
    for k, v in timings.items() if isinstance(timings, dict) else []:
        if isinstance(v, (int, float)):
            table.add_row(f"server: {k}", f"{v:.1f}")
    table.add_row("this command", f"{time.perf_counter() - t0:.1f}")
    console.print(table)
    conf = res.get("pose_confidence")
    est = "given" if cfg.views.reference_pose is not None else f"estimated, confidence {conf:.2f}" if isinstance(conf, (int, float)) else "estimated"
    console.print(f"input pose {res.get('reference_pose')} ({est}); {len(res.get('poses') or [])} views: poses {res.get('poses')}")
    console.print("files: " + ", ".join(str(p) for p in res["files"]))


def register(app: typer.Typer) -> None:
    app.command("make-asset")(make_asset)

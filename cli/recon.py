"""``mirage3d recon VIEWS -o OUT.glb``: views with cameras → textured mesh."""

from __future__ import annotations

import math
from pathlib import Path

import typer
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from mirage3d.cli._errors import console, fail, handle_errors
from mirage3d.cli._options import DEVICE, OVERWRITE
from mirage3d.recon.config import ReconConfig  # (light: no torch)

BACKENDS = ("voxel", "nerfstudio")


def register(app: typer.Typer) -> None:
    app.command("recon")(recon)


@handle_errors
def recon(
    views: Path = typer.Argument(..., help="Views folder: transforms.json (nerfstudio) + RGBA images (alpha = object mask)."),
    output: Path = typer.Option(..., "-o", "--output", help="Mesh file to write: .glb (default choice), .obj or .ply."),
    iters: int = typer.Option(None, "--iters", help=f"Steps of the surface fit (default: {ReconConfig.iters} voxel, 5000 nerfstudio)."),
    res: int = typer.Option(ReconConfig.res, "--res", help="Voxels along the longest side of the object's box."),
    faces: int = typer.Option(20000, "--faces", help="Target face count after decimation."),
    texture_size: int = typer.Option(512, "--texture-size", help="Side of the base-colour texture in pixels (e.g. 1024 for 256² views)."),
    fmt: str = typer.Option(None, "--format", help="glb, obj or ply (default: from the output suffix)."),
    refine_cameras: bool = typer.Option(
        False,
        "--refine-cameras",
        help="Correct approximate cameras (per view, plus a shared elevation): silhouette coherence, then jointly with the surface.",
    ),
    hull_misses: int = typer.Option(
        None,
        "--hull-misses",
        help="Views a point may fall outside the mask of and still be kept (default: chosen from the masks, -1; nerfstudio: 0).",
    ),
    preview: bool = typer.Option(False, "--preview", help="Also write OUT.preview.png (turntable strip) and OUT.preview.gif."),
    device: str = DEVICE,
    seed: int = typer.Option(0, "--seed", help="Random seed (ray batches, sample jitter)."),
    backend: str = typer.Option("voxel", "--backend", help="voxel (built in) or nerfstudio (needs ns-train and ns-export on a CUDA machine)."),
    method: str = typer.Option(None, "--method", help="With --backend nerfstudio: instant-ngp-bounded (default) or nerfacto."),
    overwrite: bool = OVERWRITE,
) -> None:
    """Fit a radiance field to views with known cameras and export a textured mesh."""
    from mirage3d.io import claim_output
    from mirage3d.recon import reconstruct
    from mirage3d.recon.nerfstudio import NerfstudioConfig, reconstruct_nerfstudio

    if backend not in BACKENDS:
        fail(f"--backend {backend!r} must be one of {', '.join(BACKENDS)}")
    voxel = ReconConfig()
    if backend == "voxel":
        if method is not None:
            fail("--method applies only to --backend nerfstudio")
        cfg = ReconConfig(
            seed=seed,
            device=device,
            iters=voxel.iters if iters is None else iters,
            res=res,
            faces=faces,
            texture_size=texture_size,
            format=fmt,
            refine_cameras=refine_cameras,
            hull_misses=voxel.hull_misses if hull_misses is None else hull_misses,
            preview=preview,
        )
        run = reconstruct
    else:
        voxel_only = [("--res", res != voxel.res), ("--refine-cameras", refine_cameras), ("--device", device not in ("auto", "cuda"))]
        for name, given in voxel_only:
            if given:
                fail(f"{name} applies only to --backend voxel (nerfstudio trains on CUDA with its own settings)")
        ns = NerfstudioConfig()
        cfg = NerfstudioConfig(
            method=ns.method if method is None else method,
            iters=ns.iters if iters is None else iters,
            seed=seed,
            faces=faces,
            texture_size=texture_size,
            hull_misses=0 if hull_misses is None else hull_misses,
            format=fmt,
            preview=preview,
        )
        run = reconstruct_nerfstudio
    cfg.validate()
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    with claim_output(output, overwrite, kind="file"), Progress(*columns, console=console, transient=True) as bar:
        task = bar.add_task("fit", total=cfg.iters, info="")

        def on_step(step: int, total: int, numbers: dict[str, float]) -> None:
            if step % 10 == 0 or step == total or "psnr" not in numbers:
                bar.update(task, completed=step, info=f"PSNR {numbers['psnr']:.1f} dB" if "psnr" in numbers else "")

        def on_phase(name: str) -> None:
            bar.update(task, description=name)

        result = run(views, output, cfg, progress=on_step, phase=on_phase)
    t = result.timings
    phases = ", ".join(f"{k} {v:.1f}s" for k, v in t.items() if k != "total")
    console.print(f"wrote {result.mesh_path} ({result.faces} faces, {result.vertices} vertices) in {t['total']:.1f}s on {result.device}")
    psnr = f"training-view PSNR {result.psnr:.2f} dB; " if math.isfinite(result.psnr) else ""
    console.print(f"  {psnr}{phases}")
    for f in result.files[1:]:
        console.print(f"  also wrote {f}")

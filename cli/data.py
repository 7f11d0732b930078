"""``mirage3d data ...``: making image collections (``data render``)."""

from __future__ import annotations

import os
from pathlib import Path

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from mirage3d.cli._errors import console, handle_errors
from mirage3d.cli._options import OVERWRITE

data_app = typer.Typer(help="Make image collections with ground truth (headless rendering).", no_args_is_help=True)


@data_app.command("render")
@handle_errors
def render(
    meshes: Path = typer.Argument(..., help="A mesh file or a folder of meshes (searched recursively; other files are ignored)."),
    output: Path = typer.Option(..., "-o", "--output", help="Collection folder to write (images/, ground_truth.jsonl, orbits/, ...)."),
    n_per_mesh: int = typer.Option(200, help="Random views per mesh."),
    res: int = typer.Option(128, help="Image side in pixels."),
    elev_min: float = typer.Option(0.0, help="Lowest camera elevation (degrees)."),
    elev_max: float = typer.Option(35.0, help="Highest camera elevation (degrees)."),
    scale_jitter: float = typer.Option(0.1, help="Per-axis non-uniform scaling 1 ± this (0 = off)."),
    orbits: int = typer.Option(0, help="Also write an orbit of this many views per mesh to orbits/<mesh_id>/ (0 = none)."),
    orbit_elev: float = typer.Option(20.0, help="Elevation of the orbit views (degrees)."),
    supersample: int = typer.Option(1, help="Render at this multiple of --res and filter down (slower, smoother edges)."),
    workers: int = typer.Option(min(os.cpu_count() or 1, 16), help="Render processes (one renderer each); default: one per CPU."),
    seed: int = typer.Option(0, help="Seed; the same seed gives byte-identical images for any --workers."),
    overwrite: bool = OVERWRITE,
) -> None:
    """Render a single-category image collection with ground-truth cameras from a folder of meshes."""
    from mirage3d.data.render import RenderConfig, render_collection
    from mirage3d.io import claim_output

    cfg = RenderConfig(n_per_mesh=n_per_mesh, res=res, elev_min=elev_min, elev_max=elev_max, scale_jitter=scale_jitter,
                       orbits=orbits, orbit_elev=orbit_elev, supersample=supersample, workers=workers, seed=seed)  # fmt: skip
    columns = (TextColumn("rendering"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn())
    with claim_output(output, overwrite, kind="dir"), Progress(*columns, console=console, transient=True) as bar:
        task = bar.add_task("render", total=None)
        result = render_collection(meshes, output, cfg, overwrite=overwrite, progress=lambda done, total: bar.update(task, completed=done, total=total))
    console.print(f"wrote {result.n_images} images of {len(result.mesh_ids)} meshes to {result.output}/images in {result.seconds:.1f} s")
    console.print(f"  ground truth: {result.output / 'ground_truth.jsonl'}; contact sheet: {result.output / 'contact_sheet.png'}; config: {result.output / 'config.json'}")
    if result.orbit_dirs:
        console.print(f"  orbits ({cfg.orbits} views + mesh.glb each): {result.output / 'orbits'}/<mesh_id>/")


def register(app: typer.Typer) -> None:
    app.add_typer(data_app, name="data")

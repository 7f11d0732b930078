"""``mirage3d data ...``: making image collections (``data render`` from meshes, ``data import`` from photos)."""

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
    deform: float = typer.Option(0.0, help="Random smooth, left-right symmetric shape deformations: coefficients in ± this (0 = off; docs/data.md)."),
    views_per_object: int = typer.Option(
        1, help="Images per drawn object (same paint, shape and light, other cameras; listed in objects.json for train --reference)."
    ),
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

    cfg = RenderConfig(
        n_per_mesh=n_per_mesh,
        res=res,
        elev_min=elev_min,
        elev_max=elev_max,
        scale_jitter=scale_jitter,
        deform=deform,
        views_per_object=views_per_object,
        orbits=orbits,
        orbit_elev=orbit_elev,
        supersample=supersample,
        workers=workers,
        seed=seed,
    )
    columns = (TextColumn("rendering"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn())
    with claim_output(output, overwrite, kind="dir"), Progress(*columns, console=console, transient=True) as bar:
        task = bar.add_task("render", total=None)
        result = render_collection(
            meshes, output, cfg, overwrite=overwrite, progress=lambda done, total: bar.update(task, completed=done, total=total)
        )
    console.print(f"wrote {result.n_images} images of {len(result.mesh_ids)} meshes to {result.output}/images in {result.seconds:.1f} s")
    console.print(
        f"  ground truth: {result.output / 'ground_truth.jsonl'}; contact sheet: {result.output / 'contact_sheet.png'}; config: {result.output / 'config.json'}"
    )
    if result.orbit_dirs:
        console.print(f"  orbits ({cfg.orbits} views + mesh.glb each): {result.output / 'orbits'}/<mesh_id>/")


@data_app.command("import")
@handle_errors
def import_(
    photos: Path = typer.Argument(..., help="A folder of photos (PNG/JPEG/WebP/BMP; not searched recursively), one object each."),
    output: Path = typer.Option(
        ..., "-o", "--output", help="Collection folder to write (images/<stem>.png, import.json, contact_sheet.png, config.json)."
    ),
    boxes: Path = typer.Option(
        None,
        "--boxes",
        help="CSV with the header file,x0,y0,x1,y1: the object's box per photo (pixels). Photos without a row are found automatically.",
    ),
    objects: Path = typer.Option(
        None,
        "--objects",
        help="CSV with the header file,object: which photos show one object (a turntable, a video). Writes objects.json for `poses discover --by-object`.",
    ),
    res: int = typer.Option(128, "--res", help="Image side in pixels."),
    fill: float = typer.Option(0.71, "--fill", help="Longer side of the object's box / image side (0.71: as the default car model's renders)."),
    workers: int = typer.Option(min(os.cpu_count() or 1, 16), help="Processes cutting out photos; default: one per CPU."),
    seed: int = typer.Option(0, help="Seed of the cut-out (GrabCut's colour models); the same seed gives the same images."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing output folder."),
) -> None:
    """Import photos as a collection: find the object (a box or automatically), cut it out, crop square, resize."""
    from rich.markup import escape

    from mirage3d.data.photos import ImportConfig, import_photos

    cfg = ImportConfig(res=res, fill=fill, workers=workers, seed=seed)
    columns = (TextColumn("cutting out"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn())
    with Progress(*columns, console=console, transient=True) as bar:
        task = bar.add_task("import", total=None)
        result = import_photos(
            photos,
            output,
            cfg,
            boxes=boxes,
            overwrite=overwrite,
            progress=lambda done, total: bar.update(task, completed=done, total=total),
            objects=objects,
        )
    how = ", ".join(f"{n} {src}" for src, n in sorted(result.sources.items()))
    console.print(f"imported {result.n_images} photos to {result.output}/images in {result.seconds:.1f} s (cut-outs: {how})")
    if result.skipped:
        console.print(f"  skipped {len(result.skipped)} (reasons in {result.output / 'import.json'}):")
        for r in result.skipped[:10]:
            console.print(escape(f"    {r['file']}: {r['reason']}"))
        if len(result.skipped) > 10:
            console.print(f"    ... and {len(result.skipped) - 10} more")
    console.print(f"  contact sheet: {result.output / 'contact_sheet.png'}; config: {result.output / 'config.json'}")


def register(app: typer.Typer) -> None:
    app.add_typer(data_app, name="data")

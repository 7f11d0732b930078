"""``reconstruct``: views folder → fitted radiance field → textured mesh file (GLB / OBJ / PLY)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path


from mirage3d.config import save_config
from mirage3d.errors import InputError
from mirage3d.recon.config import ReconConfig
from mirage3d.recon.fit import Progress, fit_field
from mirage3d.recon.mesh import TexturedMesh, bake_texture, export, extract_mesh, output_format
from mirage3d.recon.views import load_views


@dataclass
class ReconResult:
    """What ``reconstruct`` wrote and how it went."""

    mesh_path: Path
    files: list[Path]  # every file written (mesh, texture/material files for OBJ, config, previews)
    timings: dict[str, float]  # seconds per phase: load, fit, mesh, texture, export, preview, total
    psnr: float  # of field renders vs the training views (dB, whole images on white)
    faces: int
    vertices: int
    device: str
    history: list[dict[str, float]] = field(default_factory=list)


def check_output(output: Path, fmt: str | None) -> str:
    """The mesh format for ``output`` (``fmt`` or its suffix); one-line error if ``output`` is a folder. Shared by the backends."""
    fmt = output_format(output, fmt)
    if output.is_dir():
        raise InputError(f"output {output} is a folder; give a file path such as {output / 'mesh.glb'}")
    return fmt


def write_mesh_preview(textured: TexturedMesh, output: Path) -> list[Path]:
    """``OUTPUT.preview.png`` (turntable strip) and ``.gif`` of the textured mesh; returns their paths."""
    from mirage3d.recon.render import write_preview

    png, gif = output.with_name(output.stem + ".preview.png"), output.with_name(output.stem + ".preview.gif")
    write_preview(textured.to_trimesh(), png, gif)
    return [png, gif]


def reconstruct(views_dir: str | Path, output: str | Path, config: ReconConfig | None = None,
                progress: Progress | None = None, phase: Callable[[str], None] | None = None) -> ReconResult:
    """Fit a voxel radiance field to the views in ``views_dir`` and write a textured mesh to ``output``.

    ``progress(step, total, numbers)`` is called every optimisation step and ``phase(name)`` at the start
    of each phase. Writes ``output`` (atomically; nothing partial on failure), ``OUTPUT.config.json`` and,
    with ``config.preview``, ``OUTPUT.preview.png`` / ``.gif``.
    """
    cfg = config or ReconConfig()
    cfg.validate()
    output = Path(output)
    fmt = check_output(output, cfg.format)
    say = phase or (lambda name: None)
    timings: dict[str, float] = {}
    t_all = time.perf_counter()

    def tick(name: str, t0: float) -> float:
        now = time.perf_counter()
        timings[name] = now - t0
        return now

    t = time.perf_counter()
    say("load")
    views = load_views(views_dir)
    t = tick("load", t)
    say("fit")
    fit = fit_field(views, cfg, progress)
    t = tick("fit", t)
    say("mesh")
    mesh = extract_mesh(fit.field, cfg)
    t = tick("mesh", t)
    say("texture")
    textured = bake_texture(mesh, fit.field, cfg.texture_size)
    t = tick("texture", t)
    say("export")
    files = export(textured, output, fmt)
    config_path = output.with_name(output.name + ".config.json")
    save_config(cfg, config_path, views=str(views_dir), psnr=fit.psnr, faces=int(len(textured.faces)))
    files.append(config_path)
    t = tick("export", t)
    if cfg.preview:
        say("preview")
        files += write_mesh_preview(textured, output)
        t = tick("preview", t)
    timings["total"] = time.perf_counter() - t_all
    return ReconResult(
        mesh_path=output, files=files, timings=timings, psnr=fit.psnr, faces=int(len(textured.faces)),
        vertices=int(len(textured.vertices)), device=str(fit.field.lo.device), history=fit.history,
    )


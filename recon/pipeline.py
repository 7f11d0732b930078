"""``reconstruct``: views (folder or in memory) → fitted signed-distance field → textured mesh file (GLB / OBJ / PLY)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from mirage3d.config import save_config
from mirage3d.errors import InputError
from mirage3d.recon.config import ReconConfig
from mirage3d.recon.fit import FitResult, Progress, fit_field
from mirage3d.recon.mesh import TexturedMesh, export, extract_mesh, output_format
from mirage3d.recon.texture import bake_texture
from mirage3d.recon.views import ViewSet, load_views


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
    fit: FitResult | None = None  # the fitted field and refined cameras (voxel backend)


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


class Stages:
    """Phase announcements (``phase(name)``) and seconds per phase, the same for both backends."""

    def __init__(self, phase: Callable[[str], None] | None) -> None:
        self.say = phase or (lambda name: None)
        self.timings: dict[str, float] = {}
        self.t_all = self.t = time.perf_counter()

    def done(self, name: str) -> None:
        now = time.perf_counter()
        self.timings[name], self.t = now - self.t, now

    def total(self) -> dict[str, float]:
        self.timings["total"] = time.perf_counter() - self.t_all
        return self.timings


def write_records(textured: TexturedMesh, output: Path, files: list[Path], cfg, stages: Stages, stage: str, **record) -> None:
    """``OUTPUT.config.json`` (``cfg`` + ``record``), timed as part of ``stage``, then the preview if
    ``cfg.preview``; appends what it writes to ``files``. Shared by the backends."""
    config_path = output.with_name(output.name + ".config.json")
    save_config(cfg, config_path, faces=int(len(textured.faces)), **record)
    files.append(config_path)
    stages.done(stage)
    if cfg.preview:
        stages.say("preview")
        files += write_mesh_preview(textured, output)
        stages.done("preview")


def reconstruct(
    views: str | Path | ViewSet,
    output: str | Path,
    config: ReconConfig | None = None,
    progress: Progress | None = None,
    phase: Callable[[str], None] | None = None,
) -> ReconResult:
    """Fit a signed-distance field to ``views`` (a views folder, or a :class:`ViewSet` in memory) and write
    a textured mesh to ``output``.

    ``progress(step, total, numbers)`` is called every optimisation step and ``phase(name)`` at the start
    of each phase. Writes ``output`` (atomically; nothing partial on failure), ``OUTPUT.config.json`` and,
    with ``config.preview``, ``OUTPUT.preview.png`` / ``.gif``. ``ReconResult.fit`` is the fitted field
    (``fit.render(...)`` renders it at any camera; ``fit.c2w`` are the refined cameras).
    """
    cfg = config or ReconConfig()
    cfg.validate()
    output = Path(output)
    fmt = check_output(output, cfg.format)
    stages = Stages(phase)
    stages.say("load")
    source = "in memory" if isinstance(views, ViewSet) else str(views)
    views = views if isinstance(views, ViewSet) else load_views(views)
    stages.done("load")
    stages.say("fit")
    fit = fit_field(views, cfg, progress)
    stages.done("fit")
    stages.say("mesh")
    mesh = extract_mesh(fit.field, cfg, fit.c2w, fit.K, views.hw, views.rgba[..., 3])
    stages.done("mesh")
    stages.say("texture")
    textured = bake_texture(mesh, fit.field, views.rgba, fit.c2w, fit.K, views.reference, cfg.texture_size, cfg.texture_power)
    stages.done("texture")
    stages.say("export")
    files = export(textured, output, fmt)
    write_records(
        textured, output, files, cfg, stages, "export", views=source, psnr=fit.psnr, cameras_refined=fit.c2w.tolist() if cfg.refine_cameras else None
    )
    return ReconResult(
        mesh_path=output,
        files=files,
        timings=stages.total(),
        psnr=fit.psnr,
        faces=int(len(textured.faces)),
        vertices=int(len(textured.vertices)),
        device=str(fit.field.lo.device),
        history=fit.history,
        fit=fit,
    )

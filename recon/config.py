"""``ReconConfig``: every setting of ``mirage3d recon`` (saved as ``config.json`` beside the mesh)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mirage3d.errors import InputError

FORMATS = ("glb", "obj", "ply")


def output_checks(iters: int, faces: int, texture_size: int, fmt: str | None) -> list[tuple[bool, str]]:
    """(ok, one-line message) checks of the settings both reconstruction backends share."""
    return [
        (1 <= iters <= 1_000_000, f"--iters {iters} must be between 1 and 1000000"),
        (4 <= faces <= 10_000_000, f"--faces {faces} must be between 4 and 10000000"),
        (16 <= texture_size <= 8192, f"--texture-size {texture_size} must be between 16 and 8192"),
        (fmt is None or fmt in FORMATS, f"--format {fmt!r} must be one of {', '.join(FORMATS)}"),
    ]


def raise_failed(checks: list[tuple[bool, str]]) -> None:
    """:class:`InputError` with the message of the first failed check."""
    for ok, msg in checks:
        if not ok:
            raise InputError(msg)


@dataclass
class ReconConfig:
    """Settings of the views → radiance field → textured mesh stage (defaults: 16 views at 128² on a CPU)."""

    seed: int = 0
    """Seed for ray batches and sample jitter."""
    device: str = "auto"
    """'auto' (CUDA when available), 'cpu' or 'cuda'."""
    cpu_threads: int = 1
    """torch threads while fitting on CPU (0 = leave torch's setting). One beat two on the 2-core machine:
    78 s vs 160 s for 16 views at 128² (many medium-sized ops; two OpenMP threads mostly wait)."""
    iters: int = 600
    """Optimisation steps of the radiance field."""
    res: int = 128
    """Voxels along the longest side of the object's box at the finest level."""
    res_levels: tuple[float, ...] = (0.5, 0.75, 1.0)
    """Coarse-to-fine: grid resolution as a fraction of ``res`` for each level."""
    level_starts: tuple[float, ...] = (0.0, 0.25, 0.5)
    """Fraction of ``iters`` at which each level starts."""
    batch_rays: int = 4096
    """Rays per step, drawn at random from pixels whose ray meets the object's box."""
    step_ratio: float = 0.5
    """Distance between samples along a ray, in voxels of the current level."""
    lr_density: float = 0.1
    """Adam learning rate of the density grid (decays ×0.1 over the run)."""
    lr_color: float = 0.1
    """Adam learning rate of the colour grid."""
    alpha_init: float = 0.1
    """Opacity of a one-voxel step inside the visual hull at the start."""
    w_mask: float = 1.0
    """Weight of the mask loss (rendered opacity vs the views' alpha)."""
    w_tv_density: float = 1e-4
    """Weight of total variation on the density grid."""
    w_tv_color: float = 1e-5
    """Weight of total variation on the colour grid."""
    w_distortion: float = 1e-2
    """Weight of the distortion loss on ray weights (pulls each ray's weight into one surface)."""
    hull: bool = True
    """Carve the visual hull from the alpha masks and never place density outside it."""
    hull_dilate_px: int = 2
    """Mask dilation (pixels) before carving, to tolerate approximate cameras and soft edges."""
    hull_misses: int = 0
    """Views a point may fall outside the mask of and still be kept (inconsistent generated views)."""
    prune_every: int = 200
    """Steps between prunings of the occupancy grid (voxels whose one-voxel opacity is below ``prune_alpha``)."""
    prune_alpha: float = 3e-3
    """Opacity under which a voxel (and its neighbours) counts as empty space when pruning."""
    refine_cameras: bool = False
    """Learn a small SE(3) correction per view jointly with the field (approximate cameras)."""
    lr_camera: float = 1e-3
    """Adam learning rate of the camera corrections (radians / world units)."""
    camera_start: float = 0.1
    """Fraction of ``iters`` after which camera corrections start learning (the field settles first)."""
    level: float = 0.05
    """Marching-cubes iso-level on the one-voxel opacity grid (low: the fitted surface is a few voxels
    thick, and views see its outer layer; 0.05 beat 0.2 and 0.5 on F-score, docs/recon.md)."""
    faces: int = 20000
    """Target face count after decimation."""
    smooth_iters: int = 3
    """Taubin smoothing iterations on the extracted mesh (0 = none)."""
    texture_size: int = 512
    """Side of the square base-colour texture in pixels."""
    format: str | None = None
    """'glb', 'obj' or 'ply'; None = from the output suffix."""
    preview: bool = False
    """Also write a turntable strip (``OUT.preview.png``) and GIF of the exported mesh."""

    def validate(self) -> None:
        """Raise :class:`InputError` (one line) for absurd settings."""
        checks = output_checks(self.iters, self.faces, self.texture_size, self.format) + [
            (8 <= self.res <= 1024, f"--res {self.res} must be between 8 and 1024 voxels"),
            (16 <= self.batch_rays <= 1 << 22, f"batch_rays {self.batch_rays} must be between 16 and 4194304"),
            (0.0 < self.level < 1.0, f"--level {self.level} must be in (0, 1)"),
            (0.05 <= self.step_ratio <= 4.0, f"step_ratio {self.step_ratio} must be in [0.05, 4]"),
            (len(self.res_levels) == len(self.level_starts) and len(self.res_levels) > 0, "res_levels and level_starts must have the same, non-zero length"),
            (self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:"), f"--device {self.device!r} must be auto, cpu or cuda"),
            (self.hull_misses >= 0 and self.hull_dilate_px >= 0, "hull_misses and hull_dilate_px must be >= 0"),
            (self.cpu_threads >= 0, f"cpu_threads {self.cpu_threads} must be >= 0"),
        ]
        raise_failed(checks)
        if self.device.startswith("cuda") and not torch.cuda.is_available():
            raise InputError(f"--device {self.device} asked for, but no CUDA GPU is available; use --device cpu or auto")

"""``ReconConfig``: every setting of ``mirage3d recon`` (saved as ``config.json`` beside the mesh)."""

from __future__ import annotations

from dataclasses import dataclass

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


GENERATED_VIEWS_RES = 128
"""Grid resolution of reconstructions from generated views (make-asset, the consistency rounds of ``mirage3d
views``, eval_asset's consistency score). Generated views disagree with each other (silhouette agreement
0.77-0.82), so they get the stronger Laplacian weight ``w_laplacian_disagree`` like any views that disagree; with
it, grid 64 lost 0.01 F@2% against 128 on four kept sets of generated views of two unseen cars (0.456 against
0.466, CPU, 2026-11-30; docs/recon.md)."""


def generated_views_config(**kw) -> ReconConfig:
    """A :class:`ReconConfig` for generated views: grid :data:`GENERATED_VIEWS_RES`, other fields ``kw``."""
    return ReconConfig(**{"res": GENERATED_VIEWS_RES, **kw})


@dataclass
class ReconConfig:
    """Settings of the views → signed-distance field → textured mesh stage (defaults: docs/recon.md's best row)."""

    seed: int = 0
    """Seed for ray batches and sample jitter."""
    device: str = "auto"
    """'auto' (CUDA when available), 'cpu' or 'cuda'."""
    cpu_threads: int = 1
    """torch threads while fitting on CPU (0 = leave torch's setting); one beat two on the shared 2-core machine."""
    iters: int = 60
    """Steps of the surface stage (full-resolution grid and images)."""
    res: int = 64
    """Grid points along the longest side of the object's box at the finest level. 64 beat 128 on all five cars
    measured (CPU, 2026-11-30, 128² views, 16 views F@2% 0.862 -> 0.891 on three cars not used to choose it,
    PSNR +0.2-1.1 dB) and halves the CPU time: a coarser grid gives smoother surfaces (docs/recon.md)."""
    batch_rays: int = 20480
    """Rays (pixels) per step of the surface stage, drawn at random from pixels whose ray meets the object's box.
    Few large steps: 60 × 20480 rays scored F@2% 0.755 in 2.8 s on an H200 where 300 × 4096 (the same rays)
    scored 0.708 in 12.9 s (docs/recon.md); on a CPU the work is the same."""
    step_ratio: float = 0.5
    """Distance between the samples of a ray, in voxels of the current level."""
    n_samples: int = 32
    """Samples per ray, around its first crossing of the surface (32 against 16: F@2% 0.754 → 0.779 on 16
    exact views, +0.05 s on an H200; docs/recon.md's sweep)."""
    window_before: float = 4.0
    """The samples start this many voxels ahead of the crossing."""
    width_start: float = 1.5
    """Width of the surface's opacity transition (1/s of NeuS) at the start of a stage, in its first level's voxels."""
    width_end: float = 0.125
    """The same at the end, in voxels of the finest level (sharp surface; 0.125 beat 0.25 and 0.5)."""
    lr_sdf: float = 0.3
    """Adam learning rate of the distance grid, in voxels of the current level (decays ×0.1 over the run)."""
    lr_color: float = 0.1
    """Adam learning rate of the colour logits."""
    w_mask: float = 1.0
    """Weight of the opacity loss (rendered opacity vs the views' alpha)."""
    w_eikonal: float = 0.01
    """Weight of the eikonal loss on grid points near the surface (0.01 beat 0.1)."""
    w_laplacian: float = 1e-3
    """Weight of the squared Laplacian of the distance (in voxels) near the surface: smooth surfaces. At grid 64,
    1e-3 beat 1e-2 on all five cars measured (16 exact views F@2% 0.860 -> 0.879, F@1% 0.624 -> 0.680, PSNR +0.6
    dB; 1e-4 0.887 / 0.679, 3e-3 0.871 / 0.656; docs/recon.md). 1e-2 was the best at grid 128."""
    w_laplacian_disagree: float = 1e-2
    """The surface stage's Laplacian weight when the views disagree: their mean silhouette agreement (the share
    of each mask that the visual hull of the other views covers, ``cameras.silhouette_agreement``) is below
    ``agreement``. Cameras turned by up to ±10° about the object plus 3° about a random axis, no refinement
    (CPU, 2026-11-30): F@2% 0.692 -> 0.721 on two cars and 0.707 -> 0.748 on three others against 1e-3."""
    agreement: float = 0.96
    """Silhouette agreement below which the views count as disagreeing. Exact cameras score 0.987-1.000 (5
    cars, 4 to 32 views at 128²), cameras turned ±10° + 3° 0.886-0.942, ±3° 0.973-0.983, make-asset's
    generated views 0.77-0.82 (docs/recon.md)."""
    w_tv_color: float = 1e-4
    """Weight of total variation on the colour grid."""
    reg_band: float = 3.0
    """Grid points within this many voxels of the surface carry the eikonal and Laplacian losses."""
    box_margin: float = 0.05
    """Extra border around the visual hull's box (fraction of its size) so the surface can grow."""
    hull: bool = True
    """Start from the visual hull of the alpha masks (else from a box-filling blob)."""
    hull_dilate_px: int = 0
    """Mask dilation (pixels) before carving the hull the surface stage starts from (1 px cost 0.05-0.18 F@2%
    on exact views: the surface stage does not shrink an inflated start back)."""
    hull_misses: int = -1
    """Views a point may fall outside the mask of and still be in the hull the surface stage starts from.
    -1 (auto): 0 for views with a reference (the input photo among generated views: every generated silhouette
    carves, so none can widen the object; make-asset's F@2% 0.34 -> 0.46 against the rule below), else the
    fewest whose hull holds 85 % of the volume of the hull with one more (0 for consistent views; more when
    cameras are off, so that a few wrong views do not carve the object away)."""
    refine_cameras: bool = False
    """Learn a correction per view (rotation about the object, shift in the image, distance): from the masks
    alone (``coherence_iters``), then with the field (``pose_iters`` and the surface stage)."""
    aim_cameras: bool = True
    """With ``refine_cameras``: first turn each camera whose silhouette centre disagrees with the others' by
    more than 3° so that it agrees (``cameras.aim_at_silhouettes``; large image offsets)."""
    coherence_iters: int = 300
    """With ``refine_cameras``: steps of silhouette coherence (``cameras.silhouette_coherence``: each view's mask
    covered by the visual hull of the others) after the aim and before the pose stage. With a reference view
    (CPU, two cars): deg5 cameras 3.1° -> 0.9° left after refinement, F@2% 0.479 -> 0.621 (docs/recon.md)."""
    shared_elevation: bool = True
    """With ``refine_cameras``: also learn one elevation offset shared by all views (pose-cluster cameras)."""
    shared_focal: bool = False
    """With ``refine_cameras``: also learn one focal-length scale shared by all views (off by default: with
    exact focal lengths it drifted and the object's scale with it)."""
    robust: bool = True
    """With ``refine_cameras``: weight each view by 1 / (1 + its error / the median view error)."""
    lr_camera: float = 3e-3
    """Learning rate of the camera corrections in the pose stage (radians; fractions of the camera distance)."""
    camera_fine: float = 0.3
    """Camera learning rate in the surface stage, as a fraction of ``lr_camera``."""
    pose_batch_rays: int = 4096
    """Rays per step of the pose stage (``refine_cameras``)."""
    pose_iters: int = 300
    """With ``refine_cameras``: steps of the pose stage (coarse grid and images, cameras learning fast) before
    the visual hull is carved again with the refined cameras and the surface stage (``iters`` steps) starts."""
    pose_dilate_px: int = 1
    """Extra mask dilation (pixels) of the hull the pose stage starts from."""
    pose_misses: float = 0.25
    """Share of the views a point of the pose stage's starting hull may fall outside of."""
    pose_width_end: float = 0.25
    """Surface transition width at the end of the pose stage (voxels of its last level)."""
    pose_res: float = 0.25
    """Grid resolution of the pose stage's first half, a fraction of ``res`` (the second half doubles it)."""
    pose_image_scale: float = 0.25
    """Image scale of the pose stage's first half (the second half doubles it)."""
    camera_start: float = 0.3
    """Fraction of each stage's steps before the cameras start to learn (the field first settles on the views)."""
    fair_unseen: bool = True
    """Replace surface the views do not see well (a car's underside; bulges over concavities) by a membrane
    spanning the well-seen surface (``mesh.fair_unseen``)."""
    fair_keep_outline: bool = True
    """Vertices on a view's outline (projected onto the edge of its mask, nearest to that camera) keep their
    place under the membrane: the membrane lifted a car's lower edges and wheels with the unseen underside.
    16 exact views, 2 cars (CPU): held-out PSNR +1.3 dB, F@2% +0.009 (docs/recon.md)."""
    fair_cos: float = 0.3
    """A view sees a vertex well when the vertex's normal is within acos(fair_cos) (73°) of the view direction."""
    fair_views: float = 0.1875
    """...and a vertex is well seen when that many views (this share of them, at least one; 3 of 16) see it well."""
    faces: int = 20000
    """Target face count after decimation."""
    smooth_iters: int = 0
    """Taubin smoothing iterations on the extracted mesh (0 = none)."""
    texture_size: int = 512
    """Side of the square base-colour texture in pixels."""
    texture_power: float = 6.0
    """Exponent p of the view weights cos(θ)^p in texture projection (high: each texel from the views that
    see it most squarely)."""
    format: str | None = None
    """'glb', 'obj' or 'ply'; None = from the output suffix."""
    preview: bool = False
    """Also write a turntable strip (``OUT.preview.png``) and GIF of the exported mesh."""

    def validate(self) -> None:
        """Raise :class:`InputError` (one line) for absurd settings."""
        checks = output_checks(self.iters, self.faces, self.texture_size, self.format) + [
            (8 <= self.res <= 1024, f"--res {self.res} must be between 8 and 1024 voxels"),
            (16 <= self.batch_rays <= 1 << 22, f"batch_rays {self.batch_rays} must be between 16 and 4194304"),
            (16 <= self.pose_batch_rays <= 1 << 22, f"pose_batch_rays {self.pose_batch_rays} must be between 16 and 4194304"),
            (0.05 <= self.step_ratio <= 4.0, f"step_ratio {self.step_ratio} must be in [0.05, 4]"),
            (2 <= self.n_samples <= 1024, f"n_samples {self.n_samples} must be in [2, 1024]"),
            (0.0 < self.pose_res <= 1.0 and 0.0 < self.pose_image_scale <= 1.0, "pose_res and pose_image_scale must be in (0, 1]"),
            (self.pose_iters >= 0 and self.coherence_iters >= 0, "pose_iters and coherence_iters must be >= 0"),
            (self.width_start > 0 and self.width_end > 0, "width_start and width_end must be > 0"),
            (self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:"), f"--device {self.device!r} must be auto, cpu or cuda"),
            (self.hull_misses >= -1 and self.hull_dilate_px >= 0, "hull_misses must be >= -1 and hull_dilate_px >= 0"),
            (self.cpu_threads >= 0, f"cpu_threads {self.cpu_threads} must be >= 0"),
            (
                isinstance(self.seed, int) and not isinstance(self.seed, bool) and 0 <= self.seed < 2**63,
                f"--seed {self.seed!r} must be an integer in 0..{2**63 - 1}",
            ),
        ]
        raise_failed(checks)
        if self.device.startswith("cuda"):
            import torch  # here, not at the top: make-asset's checks and the serve client build this config without torch

            if not torch.cuda.is_available():
                raise InputError(f"--device {self.device} asked for, but no CUDA GPU is available; use --device cpu or auto")

"""``DiscoverConfig``: every setting of pose discovery, grouped by step, with the measured recipe as defaults.

The defaults are the settings `docs/poses.md` measures best on car renders (P = 16 parts, part weights
0.25 / 1 / 0.25, the facing score at 0.35 with the third principal component as its axis, the front/back
score on). A plain ``DiscoverConfig()`` (and a plain ``mirage3d poses discover``) runs them. The config
checks itself once, when it is made; discovery trusts it. It is saved as ``POSES/config.json``.
This module imports nothing heavy, so the CLI reads its defaults from here.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

from mirage3d.errors import InputError

DEFAULT_TIMESTEP = 200
"""Noise timestep (of 1000) of UNet backbone features: 200 beat 50 and 100 on the car renders (docs/poses.md)."""


@dataclass
class DescriptorConfig:
    """Weights of the descriptor blocks (``mirage3d.poses.descriptors``); each block is scaled to total variance 1 first."""

    w_visibility: float = 0.25
    """weight of the part-visibility block"""
    w_location: float = 1.0
    """weight of the part-location block"""
    w_box: float = 0.25
    """weight of the bounding-box aspect-ratio block"""
    w_layout: float = 0.0
    """weight of the layout block: the image's features pooled over a 4 x 4 split of the object's box, projected
    on their first principal components (0 = no layout block). Off by default: on 6,000 car renders it cost ARI
    0.55 → 0.45 and 0.46 → 0.38; on real photos it helped (docs/photos.md)"""
    fg_threshold: float = 0.5
    """a patch counts as foreground (for the bounding box) when its foreground weight is at least this"""

    def __post_init__(self) -> None:
        w = (self.w_visibility, self.w_location, self.w_box, self.w_layout)
        if min(w) < 0 or max(w) <= 0:
            raise InputError(f"descriptor weights must be >= 0 and not all 0, got {', '.join(str(x) for x in w)}")


@dataclass
class CameraConfig:
    """The camera of every pose (``mirage3d.poses.cameras``): what single unlabeled images cannot tell, fixed."""

    elevation_deg: float = 17.5
    """camera elevation of every pose (midpoint of the renderer's default 0-35 degree range)"""
    fov_deg: float = 40.0
    """full field of view (the renderer's default)"""
    fill: float = 0.85
    """fraction of the half-frame spanned by the object's unit bounding sphere (sets the distance)"""
    spacing: str = "uniform"
    """azimuth spacing around the ring: "uniform" (360/K each) or "sizes" (arcs proportional to cluster sizes)"""

    def __post_init__(self) -> None:
        if self.spacing not in ("uniform", "sizes"):
            raise InputError(f"spacing {self.spacing!r} is unknown; use uniform or sizes")
        if not (0.0 < self.fill <= 1.0 and 1.0 < self.fov_deg < 120.0 and -90.0 < self.elevation_deg < 90.0):
            raise InputError(
                f"camera fill must be in (0, 1], fov in (1, 120) and elevation in (-90, 90), got {self.fill}, {self.fov_deg}, {self.elevation_deg}"
            )


@dataclass
class PartsConfig:
    """The part model: clusters of foreground patch features (``mirage3d.poses.parts``)."""

    num_parts: int = 16
    """P, the number of parts; 16 halved the seed-to-seed spread of 8 on the car renders (docs/poses.md)"""
    pca_dim: int = 64
    """patch features are PCA-reduced to this many dimensions before part clustering (0 = no reduction)"""
    sample_images: int = 2000
    """images whose patches fit the part model"""
    max_patches: int = 200_000
    """at most this many foreground patches go into the part k-means"""
    inits: int = 4
    """part k-means runs (k-means++ seeds); the lowest inertia is kept"""

    def __post_init__(self) -> None:
        if self.num_parts < 2:
            raise InputError(f"--parts {self.num_parts} is too small; use at least 2 parts")
        if self.pca_dim < 0 or self.sample_images < 1 or self.max_patches < self.num_parts or self.inits < 1:
            raise InputError("part settings must be positive (PCA dimensions >= 0, sample images and k-means runs >= 1, patches >= parts)")


@dataclass
class FacingConfig:
    """The facing score and the front/back score (``mirage3d.poses.facing``)."""

    w_facing: float = 0.35
    """weight of the facing score (which way the object points, from the image and its flip); 0 = off, and
    then the front/back score is off too. With it, poses are clustered twice: once without, to choose the
    facing axis, then with it. 0.3-0.4 was best on two car render sets (docs/poses.md)"""
    component: int | None = 2
    """principal component (0-based) of the flip differences used as the facing axis; None = the automatic rule
    (the largest-variance component the first-pass poses explain less than half of). On every car feature set
    measured the facing was component 2, and the rule picked it only on some (docs/poses.md)"""
    components: int = 10
    """principal components of the flip differences the axis is chosen from"""
    grid: int = 2
    """the scores pool features over a grid x grid split of the object's box"""
    refine: int = 3
    """self-training rounds that refine the facing axis (``facing.refine_axis``); 0 = the component as is"""
    w_front: float = 0.5
    """weight of the front/back score; 0 = off. With it, the pose pair that holds both front and back views is
    split by the score, and the ring is ordered by the angle of each pose's mean (facing, front) scores. The
    weight does not change the labels, only how much the score counts when the saved model assigns new images"""
    front_dim: int = 128
    """whitened principal components of the flip sums the front/back vote compares images in"""
    front_k: int = 10
    """neighbours that vote in the front/back score"""
    front_max_refs: int = 8192
    """at most this many reference images (a random sample) vote, at discovery and in the saved pose model"""

    def __post_init__(self) -> None:
        if not self.w_facing >= 0 or self.grid < 1 or self.components < 1 or self.refine < 0:
            raise InputError(f"--w-facing {self.w_facing} must be >= 0 (facing grid and components >= 1, refine rounds >= 0)")
        if self.component is not None and not 0 <= self.component < self.components:
            raise InputError(f"--facing-component {self.component} must be in 0..{self.components - 1} (or auto)")
        if not self.w_front >= 0 or self.front_dim < 1 or self.front_k < 1 or self.front_max_refs < 2:
            raise InputError(f"--w-front {self.w_front} must be >= 0 (front dimensions, neighbours >= 1, references >= 2)")

    @property
    def front(self) -> bool:
        """Whether the front/back step runs (it needs the facing score)."""
        return self.w_facing > 0 and self.w_front > 0


@dataclass
class DiscoverConfig:
    """Pose discovery: K poses from part descriptors, the facing and front/back scores, a ring of cameras."""

    num_poses: int = 8
    """K, the number of poses (clusters of descriptors)"""
    parts: PartsConfig = field(default_factory=PartsConfig)
    """the part model"""
    descriptor: DescriptorConfig = field(default_factory=DescriptorConfig)
    """the weights of the descriptor blocks (part visibility, part locations, box aspect)"""
    facing: FacingConfig = field(default_factory=FacingConfig)
    """the facing and front/back scores"""
    cameras: CameraConfig = field(default_factory=CameraConfig)
    """the camera of each pose"""
    n_init: int = 8
    """pose clusterings from different seeds; the lowest objective is kept"""
    by_object: bool = False
    """poses from each object's ring of views (``objects.json``: which images show one object; mirage3d.poses.rings)
    instead of clustering the images' descriptors; the descriptors then only make the pose model"""
    sheet_per_pose: int = 12
    """images per pose on the contact sheet"""
    device: str = "auto"
    """device for descriptor computation ("auto": CUDA when present)"""
    seed: int = 0
    """seed of sampling and k-means (not of the features)"""

    def __post_init__(self) -> None:
        if self.num_poses < 2:
            raise InputError(f"--poses {self.num_poses} is too small; use at least 2 poses")
        if self.n_init < 1:
            raise InputError(f"n_init {self.n_init} must be at least 1")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DiscoverConfig:
        """Rebuild from ``config.json``: the grouped form this class saves, or the flat form of older poses folders
        (fields named as now, or ``part_inits``, ``facing_component``, ``facing_grid``, ...). Unknown keys
        (options since removed, e.g. ``restarts``) are ignored."""
        if not isinstance(data, dict):
            raise InputError(f"a pose discovery config must be a JSON object, got {type(data).__name__}")
        legacy = {
            "part_inits": "inits",
            "facing_component": "component",
            "facing_components": "components",
            "facing_grid": "grid",
            "facing_refine": "refine",
        }
        flat = {legacy.get(k, k): v for k, v in data.items() if not isinstance(v, dict)}
        if not isinstance(data.get("facing"), dict):  # a flat config: the scores were off by default then
            flat = {"w_facing": 0.0, "w_front": 0.0, "component": None, **flat}
        groups: dict[str, Any] = {}
        for name, kind in (("parts", PartsConfig), ("descriptor", DescriptorConfig), ("facing", FacingConfig), ("cameras", CameraConfig)):
            nested = data.get(name) if isinstance(data.get(name), dict) else {}
            names = {f.name for f in fields(kind)}
            groups[name] = kind(**{k: v for k, v in {**flat, **nested}.items() if k in names})
        top = {f.name for f in fields(cls)} - set(groups)
        return cls(**groups, **{k: v for k, v in data.items() if k in top})

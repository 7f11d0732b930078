"""One camera per discovered pose: ``cameras.json`` and a nerfstudio ``transforms.json`` template.

Azimuths come from the ring (``ring.py``). Elevation, distance and focal length cannot be told apart from
single unlabeled images of unknown size, so they are fixed defaults matching the defaults of
``mirage3d data render`` (elevation uniform in 0–35° → 17.5°, 40° field of view, the unit bounding
sphere filling 85 % of the half-frame). Every pose shares them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mirage3d.cameras import Camera, Intrinsics, fit_radius_for_sphere, orbit_c2w
from mirage3d.errors import InputError
from mirage3d.io import Frame, Transforms, atomic_write_json, write_transforms
from mirage3d.poses.config import CameraConfig

ASSUMPTIONS = (
    "Azimuths are known only up to the object's symmetry: azimuth 0 is placed on the axis about which the "
    "discovered mirror pairs are symmetric (front or back: which one is not knowable without labels), and the "
    "ring direction (left/right) is arbitrary. The object is assumed left/right symmetric (a flipped image is "
    "the view from -azimuth). Elevation, distance and focal length are shared defaults, not estimated."
)


@dataclass
class PoseCamera(Camera):
    """The camera of one discovered pose (``mirage3d.cameras.Camera`` with the pose and its orbit position)."""

    pose: int = 0
    azimuth_deg: float = 0.0
    elevation_deg: float = 0.0
    radius: float = 0.0

    def to_json(self) -> dict:
        return {
            "pose": self.pose,
            "azimuth_deg": self.azimuth_deg,
            "elevation_deg": self.elevation_deg,
            "radius": self.radius,
            **self.intrinsics.to_json(),
            "transform_matrix": np.asarray(self.c2w, dtype=float).tolist(),
        }


def make_cameras(azimuth_deg: np.ndarray, res: int, cfg: CameraConfig) -> list[PoseCamera]:
    """A camera per pose at the given azimuths (K,), for images of ``res``×``res`` pixels."""
    radius = fit_radius_for_sphere(1.0, cfg.fov_deg, cfg.fill)
    intr = Intrinsics.from_fov(cfg.fov_deg, res)
    return [
        PoseCamera(orbit_c2w(float(az), cfg.elevation_deg, radius), intr, k, float(az), cfg.elevation_deg, radius)
        for k, az in enumerate(np.asarray(azimuth_deg, dtype=np.float64))
    ]


def write_cameras(folder: Path, cameras: list[PoseCamera], extra: dict | None = None) -> None:
    """``cameras.json`` and ``transforms.json`` (template: one frame per pose, ``images/pose_KK.png``)."""
    atomic_write_json(
        folder / "cameras.json", {"num_poses": len(cameras), "cameras": [c.to_json() for c in cameras], "assumptions": ASSUMPTIONS, **(extra or {})}
    )
    frames = [
        Frame(f"images/pose_{c.pose:02d}.png", c.c2w, {"pose": c.pose, "azimuth_deg": c.azimuth_deg, "elevation_deg": c.elevation_deg})
        for c in cameras
    ]
    write_transforms(folder / "transforms.json", Transforms.from_intrinsics(cameras[0].intrinsics, frames, {"template": True}))


def load_cameras(folder: str | Path) -> list[PoseCamera]:
    """Cameras of a poses folder (``POSES/cameras.json``), indexed by pose."""
    path = Path(folder)
    path = path / "cameras.json" if path.is_dir() else path
    if not path.exists():
        raise InputError(f"{path} does not exist; run `mirage3d poses discover` first")
    try:
        data = json.loads(path.read_text())
        cams = [
            PoseCamera(
                np.asarray(c["transform_matrix"], dtype=np.float64),
                Intrinsics(float(c["fl_x"]), float(c["fl_y"]), float(c["cx"]), float(c["cy"]), int(c["w"]), int(c["h"])),
                int(c["pose"]),
                float(c["azimuth_deg"]),
                float(c["elevation_deg"]),
                float(c["radius"]),
            )
            for c in data["cameras"]
        ]
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
        raise InputError(f"{path} is not a valid cameras.json ({type(e).__name__}: {e})") from None
    return sorted(cams, key=lambda c: c.pose)

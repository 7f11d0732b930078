"""Camera maths shared by every stage (conventions in ``docs/conventions.md``).

World: right-handed, +Z up, object centred at the origin, object front facing +X.
Camera: OpenGL / nerfstudio axes: +X right, +Y up, looking down -Z. Matrices are camera-to-world (4, 4).
Azimuth: degrees in [0, 360), counter-clockwise seen from above, 0 = camera on +X (sees the front),
90 = camera on +Y (sees the object's left side). Elevation: degrees above the XY plane.
A horizontally mirrored image of a left/right-symmetric object is the view from azimuth -az.

``Camera`` (a camera-to-world matrix and ``Intrinsics``) is the one camera type of every stage: the renderer's
views, the camera of each discovered pose (``mirage3d.poses.cameras.PoseCamera`` adds the pose), the frames of
a views folder (``mirage3d.io.Transforms.cameras()``) and what reconstruction reads from it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

WORLD_UP = np.array([0.0, 0.0, 1.0])


def wrap_azimuth(az_deg: np.ndarray | float) -> np.ndarray | float:
    """Azimuth into [0, 360)."""
    out = np.mod(az_deg, 360.0)
    # np.mod(-1e-15, 360) == 360.0 in floating point: fold it back to 0.
    return np.where(out >= 360.0, 0.0, out) if isinstance(out, np.ndarray) else (0.0 if out >= 360.0 else float(out))


def mirror_azimuth(az_deg: np.ndarray | float) -> np.ndarray | float:
    """Azimuth of the horizontally flipped image (reflection through the object's XZ symmetry plane)."""
    return wrap_azimuth(-np.asarray(az_deg, dtype=np.float64)) if np.ndim(az_deg) else wrap_azimuth(-float(az_deg))


def circular_difference(a_deg: np.ndarray, b_deg: np.ndarray) -> np.ndarray:
    """Smallest absolute angle between two azimuths, in [0, 180]."""
    d = np.mod(np.asarray(a_deg, dtype=np.float64) - np.asarray(b_deg, dtype=np.float64), 360.0)
    return np.minimum(d, 360.0 - d)


def spherical_to_position(az_deg: np.ndarray | float, el_deg: np.ndarray | float, radius: np.ndarray | float) -> np.ndarray:
    """Camera centre(s) (..., 3) from azimuth, elevation (degrees) and distance to the origin."""
    az, el = np.deg2rad(az_deg), np.deg2rad(el_deg)
    r = np.asarray(radius, dtype=np.float64)
    return np.stack([r * np.cos(el) * np.cos(az), r * np.cos(el) * np.sin(az), r * np.sin(el) * np.ones_like(az)], axis=-1)


def position_to_spherical(pos: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Inverse of :func:`spherical_to_position`: (azimuth°, elevation°, radius) for (..., 3) positions."""
    pos = np.asarray(pos, dtype=np.float64)
    r = np.linalg.norm(pos, axis=-1)
    az = wrap_azimuth(np.rad2deg(np.arctan2(pos[..., 1], pos[..., 0])))
    el = np.rad2deg(np.arcsin(np.clip(pos[..., 2] / np.maximum(r, 1e-12), -1.0, 1.0)))
    return az, el, r


def look_at(eye: np.ndarray, target: np.ndarray | None = None, up: np.ndarray = WORLD_UP) -> np.ndarray:
    """Camera-to-world (4, 4) for a camera at ``eye`` looking at ``target`` (OpenGL axes).

    When the view direction is parallel to ``up`` (camera straight above or below), world +Y replaces
    ``up`` as the reference, so the result is still a rotation.
    """
    eye = np.asarray(eye, dtype=np.float64)
    target = np.zeros(3) if target is None else np.asarray(target, dtype=np.float64)
    forward = target - eye
    n = np.linalg.norm(forward)
    if n < 1e-12:
        raise ValueError("look_at: eye and target coincide")
    forward /= n
    right = np.cross(forward, up)
    if np.linalg.norm(right) < 1e-8:
        # Degenerate: viewing along the up axis. Use world +Y as the reference instead (perpendicular to a
        # view along Z), so the result is still a proper rotation and deterministic.
        right = np.cross(forward, np.array([0.0, 1.0, 0.0]))
    right /= np.linalg.norm(right)
    cam_up = np.cross(right, forward)
    c2w = np.eye(4)
    c2w[:3, 0], c2w[:3, 1], c2w[:3, 2], c2w[:3, 3] = right, cam_up, -forward, eye
    return c2w


def orbit_c2w(az_deg: float, el_deg: float, radius: float, target: np.ndarray | None = None) -> np.ndarray:
    """Camera-to-world (4, 4) on a sphere around ``target`` (default origin), looking at it."""
    t = np.zeros(3) if target is None else np.asarray(target, dtype=np.float64)
    return look_at(spherical_to_position(az_deg, el_deg, radius) + t, t)


def focal_from_fov(fov_deg: float, size_px: int) -> float:
    """Focal length in pixels for a full field of view ``fov_deg`` across ``size_px`` pixels."""
    return 0.5 * size_px / np.tan(0.5 * np.deg2rad(fov_deg))


def fov_from_focal(focal_px: float, size_px: int) -> float:
    return float(np.rad2deg(2.0 * np.arctan(0.5 * size_px / focal_px)))


def project_points(points: np.ndarray, c2w: np.ndarray, K: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """World points (N, 3) → pixel coordinates (N, 2) (x right, y down, pixel centres at +0.5) and depth (N,).

    Depth is the distance along the viewing axis (positive in front of the camera).
    """
    w2c = np.linalg.inv(c2w)
    p = points @ w2c[:3, :3].T + w2c[:3, 3]  # (N, 3) camera coordinates, OpenGL axes
    depth = -p[:, 2]
    u = K[0, 0] * p[:, 0] / depth + K[0, 2]
    v = -K[1, 1] * p[:, 1] / depth + K[1, 2]
    return np.stack([u, v], axis=-1), depth


def fit_radius_for_sphere(object_radius: float, fov_deg: float, fill: float = 0.9) -> float:
    """Camera distance at which a sphere of ``object_radius`` spans ``fill`` of the image's field of view."""
    half = np.deg2rad(fov_deg) * 0.5
    return float(object_radius / np.sin(np.arctan(fill * np.tan(half))))


@dataclass(frozen=True)
class Intrinsics:
    """Pinhole intrinsics in pixels: focal lengths, principal point (pixel centres at +0.5) and image size."""

    fl_x: float
    fl_y: float
    cx: float
    cy: float
    w: int
    h: int

    @property
    def K(self) -> np.ndarray:
        """(3, 3) intrinsics matrix."""
        return np.array([[self.fl_x, 0.0, self.cx], [0.0, self.fl_y, self.cy], [0.0, 0.0, 1.0]])

    @classmethod
    def from_fov(cls, fov_deg: float, size: int) -> Intrinsics:
        """A square ``size``-pixel image with field of view ``fov_deg`` and the principal point at its centre."""
        f = float(focal_from_fov(fov_deg, size))
        return cls(f, f, size / 2.0, size / 2.0, int(size), int(size))

    def resized(self, w: int, h: int) -> Intrinsics:
        """The same camera for the image resampled to ``w`` x ``h`` pixels."""
        sx, sy = w / self.w, h / self.h
        return Intrinsics(self.fl_x * sx, self.fl_y * sy, self.cx * sx, self.cy * sy, int(w), int(h))

    def to_json(self) -> dict[str, Any]:
        return {"fl_x": float(self.fl_x), "fl_y": float(self.fl_y), "cx": float(self.cx), "cy": float(self.cy), "w": int(self.w), "h": int(self.h)}


@dataclass
class Camera:
    """A pinhole camera: camera-to-world (4, 4) with OpenGL axes in the +Z-up world, and its intrinsics."""

    c2w: np.ndarray
    intrinsics: Intrinsics

    @property
    def K(self) -> np.ndarray:
        return self.intrinsics.K

    # The intrinsics' fields, read through the camera (transforms.json and cameras.json list them flat).
    w = property(lambda self: self.intrinsics.w)
    h = property(lambda self: self.intrinsics.h)
    fl_x = property(lambda self: self.intrinsics.fl_x)
    fl_y = property(lambda self: self.intrinsics.fl_y)
    cx = property(lambda self: self.intrinsics.cx)
    cy = property(lambda self: self.intrinsics.cy)

    @classmethod
    def orbit(cls, az_deg: float, el_deg: float, radius: float, intrinsics: Intrinsics) -> Camera:
        """A camera on the sphere of ``radius`` around the origin, looking at it."""
        return cls(orbit_c2w(az_deg, el_deg, radius), intrinsics)

    def project(self, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """World points (N, 3) → pixel coordinates (N, 2) and depth (N,) (:func:`project_points`)."""
        return project_points(points, self.c2w, self.K)

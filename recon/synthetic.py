"""Tiny analytic scenes for tests and smoke benchmarks, seen from an orbit.

A coloured sphere (colour a smooth function of the normal: rotations about its centre are only weakly
visible) and a toy car of two boxes with one colour per face (its silhouette and colour edges pin every
camera down). Rendered exactly by ray casting (2×2 supersampled, so alpha has soft edges), written as a
views folder (``transforms.json`` + RGBA PNGs) in the project's conventions, or returned as a ViewSet.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mirage3d.cameras import fit_radius_for_sphere, focal_from_fov, orbit_c2w
from mirage3d.io import Frame, Transforms, atomic_save_image, write_transforms


def sphere_colour(normals: np.ndarray) -> np.ndarray:
    """Surface colour (…, 3) of the test sphere: a smooth function of the outward normal (no lighting)."""
    return 0.2 + 0.6 * (0.5 + 0.5 * normals)


def render_sphere(c2w: np.ndarray, K: np.ndarray, res: int, radius: float, centre: np.ndarray, ss: int = 2) -> np.ndarray:
    """(res, res, 4) float32 RGBA of the sphere on a transparent background, ``ss``² samples per pixel."""
    n = res * ss
    v, u = np.meshgrid((np.arange(n) + 0.5) / ss, (np.arange(n) + 0.5) / ss, indexing="ij")
    d_cam = np.stack([(u - K[0, 2]) / K[0, 0], -(v - K[1, 2]) / K[1, 1], -np.ones_like(u)], -1)
    d = d_cam @ c2w[:3, :3].T
    d /= np.linalg.norm(d, axis=-1, keepdims=True)
    oc = c2w[:3, 3] - centre
    b = d @ oc
    disc = b * b - (oc @ oc - radius * radius)
    hit = disc > 0
    t = -b - np.sqrt(np.where(hit, disc, 0.0))
    p = c2w[:3, 3] + d * t[..., None]
    rgb = np.where(hit[..., None], sphere_colour((p - centre) / radius), 0.0)
    rgba = np.concatenate([rgb, hit[..., None].astype(np.float64)], -1)
    rgba = rgba.reshape(res, ss, res, ss, 4).mean((1, 3))
    rgba[..., :3] /= np.maximum(rgba[..., 3:], 1e-8)  # un-premultiply
    return rgba.astype(np.float32)


def write_sphere_views(
    folder: str | Path,
    n_views: int = 8,
    res: int = 48,
    radius: float = 0.5,
    centre: tuple[float, float, float] = (0.0, 0.0, 0.0),
    fov_deg: float = 40.0,
    elevations: tuple[float, ...] = (15.0, 40.0),
) -> Path:
    """Write an orbit of ``n_views`` views of the sphere into ``folder`` (views folder layout)."""
    folder = Path(folder)
    c = np.asarray(centre, dtype=np.float64)
    f = focal_from_fov(fov_deg, res)
    K = np.array([[f, 0, res / 2], [0, f, res / 2], [0, 0, 1.0]])
    dist = fit_radius_for_sphere(1.2 * radius, fov_deg, 0.9)
    frames = []
    for i in range(n_views):
        c2w = orbit_c2w(360.0 * i / n_views, elevations[i % len(elevations)], dist, c)
        atomic_save_image(folder / "images" / f"{i:04d}.png", render_sphere(c2w, K, res, radius, c))
        frames.append(Frame(f"images/{i:04d}.png", c2w))
    write_transforms(folder / "transforms.json", Transforms(res, res, f, f, res / 2, res / 2, frames))
    return folder


# Two boxes (lo, hi) in world units, +Z up, front +X: a body and a cabin set back from its front.
TOY_CAR = (((-0.8, -0.35, 0.0), (0.8, 0.35, 0.35)), ((-0.45, -0.3, 0.35), (0.35, 0.3, 0.6)))
# One colour per face, in the order -X, +X, -Y, +Y, -Z, +Z; the cabin's differ from the body's.
TOY_COLOURS = np.array(
    [
        [[0.9, 0.2, 0.2], [0.95, 0.8, 0.2], [0.2, 0.6, 0.9], [0.3, 0.8, 0.3], [0.3, 0.3, 0.3], [0.85, 0.85, 0.85]],
        [[0.5, 0.2, 0.7], [0.1, 0.4, 0.5], [0.9, 0.5, 0.6], [0.6, 0.4, 0.2], [0.3, 0.3, 0.3], [0.2, 0.2, 0.6]],
    ]
)


def render_boxes(c2w: np.ndarray, K: np.ndarray, res: int, boxes=TOY_CAR, colours=TOY_COLOURS, ss: int = 2) -> np.ndarray:
    """(res, res, 4) float32 RGBA of axis-aligned boxes with one colour per face, ``ss``² samples per pixel."""
    n = res * ss
    v, u = np.meshgrid((np.arange(n) + 0.5) / ss, (np.arange(n) + 0.5) / ss, indexing="ij")
    d = np.stack([(u - K[0, 2]) / K[0, 0], -(v - K[1, 2]) / K[1, 1], -np.ones_like(u)], -1) @ c2w[:3, :3].T
    d /= np.linalg.norm(d, axis=-1, keepdims=True)
    o = c2w[:3, 3]
    best = np.full(d.shape[:2], np.inf)
    rgb = np.zeros(d.shape)
    for b, (lo, hi) in enumerate(boxes):
        inv = 1.0 / np.where(np.abs(d) < 1e-12, 1e-12, d)
        t0, t1 = (np.asarray(lo) - o) * inv, (np.asarray(hi) - o) * inv
        tn = np.minimum(t0, t1)
        near, far = tn.max(-1), np.maximum(t0, t1).min(-1)
        axis = tn.argmax(-1)  # the slab entered last is the face hit
        face = 2 * axis + (np.take_along_axis(d, axis[..., None], -1)[..., 0] < 0)  # entering a +X face moves along -X
        hit = (near < far) & (near > 0) & (near < best)
        best = np.where(hit, near, best)
        rgb = np.where(hit[..., None], colours[b][face], rgb)
    rgba = np.concatenate([rgb, np.isfinite(best)[..., None].astype(np.float64)], -1)
    rgba = rgba.reshape(res, ss, res, ss, 4).mean((1, 3))
    rgba[..., :3] /= np.maximum(rgba[..., 3:], 1e-8)
    return rgba.astype(np.float32)


def toy_car_views(n_views: int = 8, res: int = 48, fov_deg: float = 40.0, elevations: tuple[float, ...] = (20.0, 35.0)):
    """A :class:`ViewSet` of the toy car from an orbit (azimuths evenly spaced from 0; exact cameras)."""
    from mirage3d.recon.views import ViewSet

    f = focal_from_fov(fov_deg, res)
    K = np.array([[f, 0, res / 2], [0, f, res / 2], [0, 0, 1.0]])
    centre = np.array([0.0, 0.0, 0.3])
    dist = fit_radius_for_sphere(0.95, fov_deg, 0.9)
    c2w = np.stack([orbit_c2w(360.0 * i / n_views, elevations[i % len(elevations)], dist, centre) for i in range(n_views)])
    rgba = np.stack([render_boxes(m, K, res) for m in c2w])
    return ViewSet(rgba, c2w, K)

"""Rendering meshes with pyrender + EGL (headless): held-out evaluation renders and turntable previews.

Baked textures already hold the light seen in the views, so meshes we reconstruct are rendered unlit
(``flat=True``: base colour only). Ground-truth meshes can be rendered lit for synthetic test orbits.
One ``OffscreenRenderer`` is kept per process (Mesa EGL refuses a second live one).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import trimesh

from mirage3d.cameras import orbit_c2w
from mirage3d.errors import DependencyError

_RENDERER = None
_RENDERER_SIZE: tuple[int, int] | None = None


def _renderer(w: int, h: int):
    global _RENDERER, _RENDERER_SIZE
    os.environ.setdefault("PYOPENGL_PLATFORM", "egl")
    os.environ.setdefault("PYGLET_HEADLESS", "1")
    try:
        import pyrender
    except Exception as e:  # any import failure means no headless renderer here
        raise DependencyError(f"pyrender with EGL is needed for mesh renders ({type(e).__name__}: {e})") from None
    if _RENDERER is None:
        _RENDERER = pyrender.OffscreenRenderer(w, h)
    elif _RENDERER_SIZE != (w, h):
        # Resized, not deleted and made again: deleting one EGL context while another renderer's lives
        # (mirage3d.data.render keeps one) left that one failing in eglMakeCurrent (EGL_BAD_CONTEXT).
        _RENDERER.viewport_width, _RENDERER.viewport_height = w, h
    _RENDERER_SIZE = (w, h)
    return _RENDERER, pyrender


def _as_trimesh_list(mesh: trimesh.Trimesh | trimesh.Scene) -> list[trimesh.Trimesh]:
    if isinstance(mesh, trimesh.Scene):
        return [g for g in mesh.dump() if isinstance(g, trimesh.Trimesh)] if hasattr(mesh, "dump") else list(mesh.geometry.values())
    return [mesh]


def render_mesh(
    mesh: trimesh.Trimesh | trimesh.Scene, c2w: np.ndarray, K: np.ndarray, w: int, h: int, flat: bool = True, light_dir: np.ndarray | None = None
) -> np.ndarray:
    """Render (V, H, W, 4) float32 RGBA in [0, 1] of a world-space mesh (our +Z-up world) at cameras (V, 4, 4).

    Straight (not premultiplied) colour and alpha = coverage of the 4× MSAA samples, as the views of
    ``mirage3d.data.render`` (``composite_on_white`` then puts both on white the same way). ``flat``: unlit
    base colour (for baked textures). Otherwise one directional light from the camera side (or
    ``light_dir``) plus ambient.
    """
    r, pyrender = _renderer(w, h)
    # A transparent black background: the MSAA resolve then gives colour premultiplied by coverage, which is
    # divided out below. Over a white one, silhouette pixels came out already blended with white and
    # composite_on_white blended them again (edges too light: −0.9 dB held-out PSNR on cars, docs/recon.md).
    scene = pyrender.Scene(bg_color=[0.0, 0.0, 0.0, 0.0], ambient_light=[0.45, 0.45, 0.45])
    for m in _as_trimesh_list(mesh):
        scene.add(pyrender.Mesh.from_trimesh(m, smooth=False))
    zs = np.linalg.norm(c2w[:, :3, 3], axis=1)
    cam = pyrender.IntrinsicsCamera(K[0, 0], K[1, 1], K[0, 2], K[1, 2], znear=max(1e-3, 0.05 * zs.min()), zfar=10 * zs.max())
    cam_node = scene.add(cam, pose=np.eye(4))
    light_node = None
    if not flat:
        light_node = scene.add(pyrender.DirectionalLight(color=np.ones(3), intensity=3.0), pose=np.eye(4))
    flags = pyrender.RenderFlags.RGBA | (pyrender.RenderFlags.FLAT if flat else 0)
    out = []
    for pose in c2w:
        scene.set_pose(cam_node, pose)
        if light_node is not None:
            lp = pose.copy()
            if light_dir is not None:
                from mirage3d.cameras import look_at

                lp = look_at(np.asarray(light_dir, dtype=float))
            scene.set_pose(light_node, lp)
        color, _ = r.render(scene, flags=flags)
        rgba = color.astype(np.float32) / 255.0
        a = rgba[..., 3:]
        rgb = np.where(a > 0, rgba[..., :3] / np.maximum(a, 1e-6), 1.0)  # un-premultiply; white where empty
        out.append(np.concatenate([rgb.clip(0, 1), a], -1))
    return np.stack(out)


def turntable_cameras(
    mesh: trimesh.Trimesh, n: int = 8, elevation: float = 20.0, fov_deg: float = 40.0, size: int = 256
) -> tuple[np.ndarray, np.ndarray]:
    """Cameras (n, 4, 4) around the mesh's bounding-box centre and intrinsics (3, 3) framing it."""
    from mirage3d.cameras import fit_radius_for_sphere, focal_from_fov

    centre = mesh.bounds.mean(0)
    radius = fit_radius_for_sphere(0.5 * float(np.linalg.norm(np.ptp(mesh.bounds, axis=0))), fov_deg, 0.9)
    c2w = np.stack([orbit_c2w(360.0 * i / n, elevation, radius, centre) for i in range(n)])
    f = focal_from_fov(fov_deg, size)
    K = np.array([[f, 0, size / 2], [0, f, size / 2], [0, 0, 1.0]])
    return c2w, K


def write_preview(mesh: trimesh.Trimesh, out_png: Path, out_gif: Path | None = None, n: int = 8, size: int = 192) -> None:
    """Turntable of ``mesh`` (world frame, unlit): a PNG strip and optionally a looping GIF (atomic writes)."""
    from PIL import Image

    from mirage3d.io import atomic_path, atomic_save_image, composite_on_white

    c2w, K = turntable_cameras(mesh, n=n, size=size)
    frames = render_mesh(mesh, c2w, K, size, size, flat=True)
    rgb = [composite_on_white(f) for f in frames]
    atomic_save_image(out_png, np.concatenate(rgb, axis=1))
    if out_gif is not None:
        ims = [Image.fromarray((np.clip(f, 0, 1) * 255 + 0.5).astype(np.uint8)) for f in rgb]
        with atomic_path(out_gif) as tmp:
            ims[0].save(tmp, format="GIF", save_all=True, append_images=ims[1:], duration=120, loop=0)

"""Rendering single-category image collections with ground-truth cameras (pyrender + EGL, headless).

``render_views`` renders one mesh at given cameras (reused for example inputs and held-out test views);
``render_collection`` renders a whole collection: ``images/``, ``ground_truth.jsonl``, ``orbits/``,
``contact_sheet.png`` and ``config.json`` (layout and design in ``docs/data.md``).

One pyrender ``OffscreenRenderer`` lives per process and is reused: a second one in the same process
fails with ``EGL_BAD_DISPLAY`` under Mesa. Workers are spawned (not forked) so none inherits a GL context.
Every random draw comes from ``(seed, image index)``, so images are byte-identical for any worker count.
"""

from __future__ import annotations

import os

os.environ.setdefault("PYOPENGL_PLATFORM", "egl")
os.environ.setdefault("PYGLET_HEADLESS", "1")  # the GPU machine has no X11 libraries for pyglet

import json
import multiprocessing
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from mirage3d.cameras import Intrinsics, fit_radius_for_sphere, focal_from_fov, fov_from_focal, look_at, orbit_c2w, spherical_to_position
from mirage3d.config import save_config
from mirage3d.data import meshes as M
from mirage3d.data.objects import write_objects
from mirage3d.errors import InputError, raise_if_terminated
from mirage3d.io import Frame, Transforms, atomic_dir, atomic_write_text, write_transforms


@dataclass
class RenderConfig:
    """How a collection is rendered (saved as ``config.json`` beside it)."""

    n_per_mesh: int = 200
    """Random views per mesh in ``images/``."""
    res: int = 128
    """Image side in pixels (square)."""
    elev_min: float = 0.0
    """Lowest camera elevation, degrees above the horizontal plane through the object's centre."""
    elev_max: float = 35.0
    """Highest camera elevation, degrees."""
    fov_deg: float = 40.0
    """Nominal field of view (before focal jitter)."""
    focal_jitter: float = 0.05
    """Relative focal-length jitter (± fraction); distance follows so the framing stays the same."""
    fill: float = 0.85
    """Fraction of the half-frame that the object's bounding sphere (radius 1) spans at nominal distance."""
    distance_jitter: float = 0.05
    """Relative camera-distance jitter (± fraction) on top of the framing distance."""
    scale_jitter: float = 0.1
    """Non-uniform scaling: each world axis scaled by 1 ± this, then re-normalised to radius 1 (0 = off)."""
    deform: float = 0.0
    """Random smooth shape deformations, left-right symmetric (:func:`deform_vertices`): each of their 7
    coefficients uniform in ± this (0 = off; 0.15 makes visibly different bodies that stay car-like)."""
    views_per_object: int = 1
    """Images per drawn object: consecutive groups of this many images of a mesh share the paint, the
    per-axis scale, the deformation and the light (fixed in the world), and differ only in the camera; the
    groups are listed in ``objects.json`` (what ``train --reference`` pairs views by). 1 = every image its
    own object. Must divide ``n_per_mesh``."""
    paint_prob: float = 0.8
    """Probability that an image's appearance repaints the mesh's main colour."""
    hue_jitter_deg: float = 15.0
    """Hue shift (± degrees) of the other colours."""
    light_intensity: tuple[float, float] = (2.0, 5.0)
    """Range of the directional light's intensity."""
    ambient: tuple[float, float] = (0.25, 0.6)
    """Range of the ambient light level."""
    supersample: int = 1
    """Render at this multiple of ``res`` and box-filter down; alpha is coverage over ss²×4 MSAA samples
    (1 keeps the 2-core target of ~2,600 images in 2 minutes; 2 halves the speed)."""
    orbits: int = 0
    """Views per mesh in ``orbits/<mesh_id>/`` (0 = no orbits)."""
    orbit_elev: float = 20.0
    """Elevation of the orbit views, degrees."""
    contact_sheet: int = 64
    """Images shown on ``contact_sheet.png``."""
    workers: int = 1
    """Render processes (each holds one renderer)."""
    seed: int = 0
    """Base seed: image i's draws come from (seed, i)."""


@dataclass(frozen=True)
class Lighting:
    """A directional light plus ambient light."""

    direction: tuple[float, float, float]
    """Unit vector from the object towards the light (world coordinates)."""
    intensity: float
    ambient: float


CANONICAL_LIGHT = Lighting(tuple(float(x) for x in spherical_to_position(30.0, 60.0, 1.0)), 3.0, 0.45)


@dataclass
class RenderResult:
    """What ``render_collection`` wrote."""

    output: Path
    n_images: int
    mesh_ids: list[str]
    orbit_dirs: list[Path]
    seconds: float


# --------------------------------------------------------------------------------------------------
# One process's renderer
# --------------------------------------------------------------------------------------------------
class _Renderer:
    """A reused OffscreenRenderer plus per-mesh caches (geometry uploads, canonical materials)."""

    def __init__(self) -> None:
        import pyrender

        self.pr = pyrender
        self.r = pyrender.OffscreenRenderer(64, 64)
        self.meshes: dict[Path, tuple[M.NormalisedMesh, Any]] = {}

    def mesh(self, source: str | Path | M.NormalisedMesh) -> tuple[M.NormalisedMesh, Any]:
        key = Path(source.path if isinstance(source, M.NormalisedMesh) else source).resolve()
        if key not in self.meshes:
            nm = source if isinstance(source, M.NormalisedMesh) else M.load_normalised(key)
            prims = []
            for piece in nm.pieces:
                uv = getattr(piece.visual, "uv", None)
                uv = uv if uv is not None and len(uv) == len(piece.vertices) else None
                prims.append(
                    self.pr.Primitive(positions=piece.vertices, normals=piece.vertex_normals, texcoord_0=uv, indices=piece.faces, material=None)
                )
            self.meshes[key] = (nm, self.pr.Mesh(prims))
        return self.meshes[key]

    def materials(self, nm: M.NormalisedMesh, appearance_seed: int, cfg: RenderConfig) -> list[Any]:
        p = M.appearance_params(appearance_seed, cfg.paint_prob, cfg.hue_jitter_deg)
        out, made, textures = [], {}, {}
        for piece in nm.pieces:
            mat = getattr(piece.visual, "material", None)
            if id(mat) not in made:
                rgb = M.recolour_factor(M._base_rgb(mat), nm.paint_rgb, p) if id(mat) not in nm.textures else M._base_rgb(mat)
                tex = None
                if id(mat) in nm.textures:
                    src = nm.textures[id(mat)]
                    if id(src) not in textures:
                        arr = M.recolour_texture(src, nm.palettes[id(mat)], nm.paint_rgb, p)
                        textures[id(src)] = self.pr.Texture(source=arr, source_channels="RGBA" if arr.shape[-1] == 4 else "RGB")
                    tex = textures[id(src)]
                rough = getattr(mat, "roughnessFactor", None)
                made[id(mat)] = self.pr.MetallicRoughnessMaterial(
                    baseColorFactor=[*rgb, 1.0],
                    baseColorTexture=tex,
                    metallicFactor=0.0,
                    roughnessFactor=0.7 if rough is None else float(rough),
                    doubleSided=True,
                )
            out.append(made[id(mat)])
        return out

    def deformed(self, nm: M.NormalisedMesh, coeffs: np.ndarray) -> Any:
        """A pyrender mesh of ``nm`` deformed by ``coeffs`` (world coordinates: render it with ``mesh_to_world`` = I)."""
        import trimesh

        world = _world_vertices(nm)  # every piece's vertices, in order
        moved = deform_vertices(world, coeffs, world)
        ends = np.cumsum([len(piece.vertices) for piece in nm.pieces])
        prims = []
        for piece, v in zip(nm.pieces, np.split(moved, ends[:-1]), strict=True):
            normals = trimesh.Trimesh(v, piece.faces, process=False).vertex_normals
            uv = getattr(piece.visual, "uv", None)
            uv = uv if uv is not None and len(uv) == len(piece.vertices) else None
            prims.append(self.pr.Primitive(positions=v, normals=normals, texcoord_0=uv, indices=piece.faces, material=None))
        return self.pr.Mesh(prims)

    def render(
        self,
        nm: M.NormalisedMesh,
        mesh: Any,
        c2w: np.ndarray,
        intr: Intrinsics,
        appearance_seed: int,
        scale: np.ndarray | None,
        light: Lighting,
        cfg: RenderConfig,
        deform: np.ndarray | None = None,
    ) -> np.ndarray:
        pr, ss = self.pr, int(cfg.supersample)
        world = np.eye(4) if deform is not None else nm.mesh_to_world
        if deform is not None:
            mesh = self.deformed(nm, deform)
        for prim, mat in zip(mesh.primitives, self.materials(nm, appearance_seed, cfg), strict=True):
            prim.material = mat
        pose = world if scale is None else np.diag([*scale, 1.0]) @ world
        scene = pr.Scene(bg_color=(0.0, 0.0, 0.0, 0.0), ambient_light=(light.ambient,) * 3)
        scene.add(mesh, pose=pose)
        dist = float(np.linalg.norm(c2w[:3, 3]))
        cam = pr.IntrinsicsCamera(intr.fl_x * ss, intr.fl_y * ss, intr.cx * ss, intr.cy * ss, znear=max(dist - 3.0, 0.05), zfar=dist + 3.0)
        scene.add(cam, pose=c2w)
        scene.add(pr.DirectionalLight(color=np.ones(3), intensity=light.intensity), pose=look_at(np.asarray(light.direction)))
        self.r.viewport_width, self.r.viewport_height = intr.w * ss, intr.h * ss
        flags = pr.RenderFlags.RGBA | pr.RenderFlags.SKIP_CULL_FACES
        color, _ = self.r.render(scene, flags=flags)  # (h·ss, w·ss, 4) uint8, colour premultiplied by coverage
        rgba = color.astype(np.float64).reshape(intr.h, ss, intr.w, ss, 4).mean(axis=(1, 3))
        a = rgba[..., 3:4]
        rgb = np.where(a > 0, rgba[..., :3] * 255.0 / np.maximum(a, 1e-9), 0.0)  # un-premultiply
        return np.concatenate([rgb, a], axis=-1).clip(0, 255).round().astype(np.uint8)  # (h, w, 4)


_RENDERER: _Renderer | None = None


def _renderer() -> _Renderer:
    global _RENDERER
    if _RENDERER is None:
        _RENDERER = _Renderer()
    return _RENDERER


def render_views(
    mesh: str | Path | M.NormalisedMesh,
    c2ws: np.ndarray | Sequence[np.ndarray],
    intrinsics: Intrinsics,
    appearance_seed: int = M.CANONICAL_APPEARANCE,
    scale: np.ndarray | None = None,
    lighting: Lighting = CANONICAL_LIGHT,
    config: RenderConfig | None = None,
) -> list[np.ndarray]:
    """Render a mesh (normalised into the world frame) at camera-to-world matrices → RGBA uint8 (h, w, 4) each.

    ``appearance_seed`` 0 keeps the mesh's own colours; ``scale`` (3,) scales the normalised mesh per world
    axis; ``config`` supplies appearance/supersampling settings (defaults otherwise).
    """
    cfg = config or RenderConfig()
    nm, pm = _renderer().mesh(mesh)
    scale_arr = None if scale is None else np.asarray(scale, dtype=np.float64)
    return [_renderer().render(nm, pm, np.asarray(c, dtype=np.float64), intrinsics, appearance_seed, scale_arr, lighting, cfg) for c in c2ws]


# --------------------------------------------------------------------------------------------------
# Random views
# --------------------------------------------------------------------------------------------------
N_DEFORM = 7


def deform_vertices(v: np.ndarray, coeffs: np.ndarray, bounds_of: np.ndarray) -> np.ndarray:
    """Smooth shape deformation of world points ``v`` (N, 3) (front +X, up +Z, the mirror plane y = 0).

    ``bounds_of``: the whole mesh's world vertices (its extent sets the coordinates below); ``coeffs`` (7,):
    with u = x / max|x| in [−1, 1] along the length and h = (z − z_min) / height in [0, 1],
    - length: x + c0·L·sin(πu)/π moves the middle (cabin) forward or back, the ends stay (monotonic for |c0| < 1);
    - height: z_min + (z − z_min)·(1 + c1·u + c2·(u² − ⅓) + c3·sin(πu)): roof and bonnet rise or fall along the
      length, the ground stays;
    - width: y·(1 + c4·u + c5·(u² − ⅓) + c6·(h − ½)): wider or narrower front, middle, top.
    Only y is scaled and nothing depends on y's sign, so a left-right symmetric mesh stays symmetric (the
    project's mirror handling relies on it). Written here because no mesh library offers such a family.
    """
    c = np.asarray(coeffs, dtype=np.float64)
    lo, hi = bounds_of.min(axis=0), bounds_of.max(axis=0)
    half_len = max(float(np.abs(bounds_of[:, 0]).max()), 1e-9)
    height = max(float(hi[2] - lo[2]), 1e-9)
    x, y, z = v[:, 0], v[:, 1], v[:, 2]
    u = np.clip(x / half_len, -1.0, 1.0)
    h = np.clip((z - lo[2]) / height, 0.0, 1.0)
    x2 = x + c[0] * half_len * np.sin(np.pi * u) / np.pi
    z2 = lo[2] + (z - lo[2]) * (1.0 + c[1] * u + c[2] * (u**2 - 1.0 / 3.0) + c[3] * np.sin(np.pi * u))
    y2 = y * (1.0 + c[4] * u + c[5] * (u**2 - 1.0 / 3.0) + c[6] * (h - 0.5))
    return np.stack([x2, y2, z2], axis=1)


def sample_view(cfg: RenderConfig, index: int, world_vertices: np.ndarray) -> dict[str, Any]:
    """All random draws of image ``index`` → its ground-truth record (no file). The camera comes from (seed,
    index); the object (paint, scale, deformation, light) from (seed, first image of its group), so with
    ``views_per_object`` 1 everything comes from (seed, index)."""
    first = index - index % cfg.views_per_object
    rec = _sample_view(cfg, index, world_vertices, shape=first == index)
    if first != index:
        obj = _sample_view(cfg, first, world_vertices)
        rec.update({k: obj[k] for k in ("appearance_seed", "scale", "light", "deform") if k in obj})
    return rec


def _sample_view(cfg: RenderConfig, index: int, world_vertices: np.ndarray, shape: bool = True) -> dict[str, Any]:
    """The draws of (seed, index); ``shape`` False skips normalising the scale (the caller takes the object's)."""
    rng = np.random.default_rng([cfg.seed, index])
    az = float(rng.uniform(0.0, 360.0))
    el = float(rng.uniform(cfg.elev_min, cfg.elev_max))
    f = focal_from_fov(cfg.fov_deg, cfg.res) * (1.0 + rng.uniform(-cfg.focal_jitter, cfg.focal_jitter))
    dist = fit_radius_for_sphere(1.0, fov_from_focal(f, cfg.res), cfg.fill) * (1.0 + rng.uniform(-cfg.distance_jitter, cfg.distance_jitter))
    appearance_seed = int(rng.integers(1, 2**31 - 1))
    s_raw = 1.0 + rng.uniform(-cfg.scale_jitter, cfg.scale_jitter, size=3)
    light_dir = spherical_to_position(az + rng.uniform(-90.0, 90.0), rng.uniform(15.0, 75.0), 1.0)
    light = Lighting(tuple(float(x) for x in light_dir), float(rng.uniform(*cfg.light_intensity)), float(rng.uniform(*cfg.ambient)))
    deform = None
    if cfg.deform > 0:  # drawn last, so the other draws (and images with deform 0) stay as they were
        deform = rng.uniform(-cfg.deform, cfg.deform, size=N_DEFORM)
    s = s_raw
    if shape:  # keep the bounding radius at 1 (framing), deformed or not
        v = world_vertices if deform is None else deform_vertices(world_vertices, deform, world_vertices)
        s = s_raw / np.linalg.norm(v * s_raw, axis=1).max()
    c = cfg.res / 2.0
    return {
        "azimuth_deg": az,
        "elevation_deg": el,
        "distance": float(dist),
        "fl_x": float(f),
        "fl_y": float(f),
        "cx": c,
        "cy": c,
        "w": cfg.res,
        "h": cfg.res,
        "c2w": orbit_c2w(az, el, dist).tolist(),
        "appearance_seed": appearance_seed,
        "scale": [float(x) for x in s],
        "light": asdict(light),
        **({} if deform is None else {"deform": [float(x) for x in deform]}),
    }


def _world_vertices(nm: M.NormalisedMesh) -> np.ndarray:
    v = np.concatenate([p.vertices for p in nm.pieces])
    return v @ nm.mesh_to_world[:3, :3].T + nm.mesh_to_world[:3, 3]


# --------------------------------------------------------------------------------------------------
# Work units (run in a worker process, or in-process with one worker)
# --------------------------------------------------------------------------------------------------
def _render_chunk(job: tuple[str, str, list[int], RenderConfig, str]) -> list[dict[str, Any]]:
    """Render images ``indices`` of one mesh into ``images_dir``; return their ground-truth records."""
    mesh_path, mesh_id, indices, cfg, images_dir = job
    nm, pm = _renderer().mesh(mesh_path)
    wv = _world_vertices(nm)
    records = []
    for i in indices:
        raise_if_terminated()  # a signal's exception can be swallowed inside the renderer's ctypes calls
        rec = sample_view(cfg, i, wv)
        intr = Intrinsics(rec["fl_x"], rec["fl_y"], rec["cx"], rec["cy"], cfg.res, cfg.res)
        deform = np.array(rec["deform"]) if "deform" in rec else None
        img = _renderer().render(
            nm, pm, np.array(rec["c2w"]), intr, rec["appearance_seed"], np.array(rec["scale"]), Lighting(**rec["light"]), cfg, deform
        )
        name = f"{i:06d}.png"
        Image.fromarray(img).save(Path(images_dir) / name)
        info = nm.info
        records.append({"file": f"images/{name}", "index": i, "mesh_id": mesh_id, "category": info.category, "front_verified": info.verified, **rec})
    return records


def orbit_cameras(n: int, elev_deg: float, cfg: RenderConfig) -> tuple[np.ndarray, Intrinsics, np.ndarray]:
    """N orbit views at constant elevation, azimuths evenly spaced from 0 → (c2ws (N, 4, 4), intrinsics, azimuths)."""
    dist = fit_radius_for_sphere(1.0, cfg.fov_deg, cfg.fill)
    az = np.arange(n) * (360.0 / n)
    return np.stack([orbit_c2w(a, elev_deg, dist) for a in az]), Intrinsics.from_fov(cfg.fov_deg, cfg.res), az


def _render_orbit(job: tuple[str, str, list[int], RenderConfig, str]) -> list[dict[str, Any]]:
    """Write one nerfstudio orbit folder: images/, transforms.json and the normalised mesh.glb."""
    mesh_path, mesh_id, _, cfg, out_dir = job
    out = Path(out_dir)
    (out / "images").mkdir(parents=True)
    nm, pm = _renderer().mesh(mesh_path)
    c2ws, intr, azs = orbit_cameras(cfg.orbits, cfg.orbit_elev, cfg)
    frames = []
    for k, (c2w, az) in enumerate(zip(c2ws, azs, strict=True)):
        img = _renderer().render(nm, pm, c2w, intr, M.CANONICAL_APPEARANCE, None, CANONICAL_LIGHT, cfg)
        Image.fromarray(img).save(out / "images" / f"frame_{k:05d}.png")
        frames.append(Frame(f"images/frame_{k:05d}.png", c2w, {"azimuth_deg": float(az), "elevation_deg": cfg.orbit_elev}))
    extra = {
        "mesh_id": mesh_id,
        "appearance_seed": M.CANONICAL_APPEARANCE,
        "light": asdict(CANONICAL_LIGHT),
        "mesh": "mesh.glb",
        "mesh_frame": "world (+Z up, front +X, bounding radius 1)",
    }
    write_transforms(out / "transforms.json", Transforms.from_intrinsics(intr, frames, extra))
    M.normalised_trimesh(nm).export(out / "mesh.glb")
    return []


def _run_job(job: tuple[str, str, str, list[int], RenderConfig, str]) -> tuple[int, list[dict[str, Any]]]:
    kind, *rest = job
    if kind == "orbit":
        _render_orbit(tuple(rest))  # type: ignore[arg-type]
        return rest[3].orbits, []
    recs = _render_chunk(tuple(rest))  # type: ignore[arg-type]
    return len(recs), recs


# --------------------------------------------------------------------------------------------------
# The collection
# --------------------------------------------------------------------------------------------------
def check_config(cfg: RenderConfig) -> None:
    """Reject out-of-range options with a one-line message naming the option."""
    checks = [
        (cfg.n_per_mesh >= 1, f"--n-per-mesh must be at least 1, got {cfg.n_per_mesh}"),
        (
            cfg.views_per_object >= 1 and cfg.n_per_mesh % cfg.views_per_object == 0,
            f"--views-per-object must be at least 1 and divide --n-per-mesh ({cfg.n_per_mesh}), got {cfg.views_per_object}",
        ),
        (16 <= cfg.res <= 2048, f"--res must be between 16 and 2048, got {cfg.res}"),
        (-89.0 <= cfg.elev_min <= cfg.elev_max <= 89.0, f"need -89 <= --elev-min <= --elev-max <= 89, got {cfg.elev_min}, {cfg.elev_max}"),
        (0.0 <= cfg.scale_jitter < 0.5, f"--scale-jitter must be in [0, 0.5), got {cfg.scale_jitter}"),
        (0.0 <= cfg.deform < 0.5, f"--deform must be in [0, 0.5), got {cfg.deform}"),
        (0.0 < cfg.fill <= 1.0 and 1.0 < cfg.fov_deg < 120.0, f"fill must be in (0, 1] and fov in (1, 120), got {cfg.fill}, {cfg.fov_deg}"),
        (cfg.orbits >= 0, f"--orbits must be 0 or more, got {cfg.orbits}"),
        (-89.0 <= cfg.orbit_elev <= 89.0, f"--orbit-elev must be in [-89, 89], got {cfg.orbit_elev}"),
        (cfg.workers >= 1, f"--workers must be at least 1, got {cfg.workers}"),
        (cfg.seed >= 0, f"--seed must be 0 or more, got {cfg.seed}"),
        (1 <= cfg.supersample <= 4, f"supersample must be 1-4, got {cfg.supersample}"),
    ]
    for ok, msg in checks:
        if not ok:
            raise InputError(msg)


def contact_sheet(images_dir: Path, files: list[str], res: int, cols: int = 8) -> Image.Image:
    """Grid of collection images over light grey (thumbnails at most 128 px)."""
    t = min(res, 128)
    rows = (len(files) + cols - 1) // cols
    sheet = Image.new("RGB", (cols * t, rows * t), (220, 220, 220))
    for k, f in enumerate(files):
        with Image.open(images_dir / f) as im:
            thumb = im.convert("RGBA").resize((t, t), Image.Resampling.LANCZOS)
        sheet.paste(thumb, ((k % cols) * t, (k // cols) * t), thumb)
    return sheet


def render_collection(
    meshes: str | Path, output: str | Path, config: RenderConfig, overwrite: bool = False, progress: Callable[[int, int], None] | None = None
) -> RenderResult:
    """Render a collection from a mesh file or folder (searched recursively) into ``output`` (atomically).

    ``progress(done, total)`` is called as images finish. All meshes are loaded and checked before
    anything is rendered, so a corrupt mesh fails at once and leaves no output.
    """
    cfg = config
    check_config(cfg)
    t0 = time.perf_counter()
    paths = M.find_meshes(meshes)
    table = M.load_mesh_table()
    loaded = [M.load_normalised(p, M.mesh_info(p, table)) for p in paths]
    ids = [nm.info.mesh_id for nm in loaded]
    total = len(paths) * (cfg.n_per_mesh + cfg.orbits)
    with atomic_dir(output, overwrite=overwrite) as tmp:
        (tmp / "images").mkdir()
        chunk = 25
        jobs: list[tuple[Any, ...]] = []
        for m, (p, mid) in enumerate(zip(paths, ids, strict=True)):
            if cfg.orbits:
                jobs.append(("orbit", str(p), mid, [], cfg, str(tmp / "orbits" / mid)))
            first = m * cfg.n_per_mesh
            for s in range(0, cfg.n_per_mesh, chunk):
                idx = list(range(first + s, first + min(s + chunk, cfg.n_per_mesh)))
                jobs.append(("images", str(p), mid, idx, cfg, str(tmp / "images")))
        records: list[dict[str, Any]] = []
        done = 0
        if cfg.workers == 1:
            results = map(_run_job, jobs)
            pool = None
        else:
            pool = multiprocessing.get_context("spawn").Pool(min(cfg.workers, len(jobs)))
            results = pool.imap_unordered(_run_job, jobs)
        try:
            for n, recs in results:
                records.extend(recs)
                done += n
                if progress is not None:
                    progress(done, total)
        finally:
            if pool is not None:
                pool.terminate()
                pool.join()
        records.sort(key=lambda r: r["index"])
        atomic_write_text(tmp / "ground_truth.jsonl", "".join(json.dumps(r) + "\n" for r in records))
        if cfg.views_per_object > 1:
            groups = [[r["file"] for r in records[k : k + cfg.views_per_object]] for k in range(0, len(records), cfg.views_per_object)]
            write_objects(tmp, groups)
        n_sheet = min(cfg.contact_sheet, len(records))
        pick = np.linspace(0, len(records) - 1, n_sheet).round().astype(int) if n_sheet else []
        contact_sheet(tmp, [records[i]["file"] for i in pick], cfg.res).save(tmp / "contact_sheet.png")
        mesh_rows = {nm.info.mesh_id: {**asdict(nm.info), "path": str(nm.path), "mesh_to_world": nm.mesh_to_world.tolist()} for nm in loaded}
        save_config(cfg, tmp / "config.json", meshes_source=str(meshes), meshes=mesh_rows, n_images=len(records))
    orbit_dirs = [Path(output) / "orbits" / mid for mid in ids] if cfg.orbits else []
    return RenderResult(Path(output), len(records), ids, orbit_dirs, time.perf_counter() - t0)

"""Meshes for rendering collections: finding, loading, normalising, the per-mesh table, appearance.

Normalisation (``docs/data.md``): the shared meshes are +Y up with their front on a known mesh axis
(``meshes.json``). Mesh (x, y, z) maps to world (z, x, y) (``docs/conventions.md``), then a rotation about
world +Z turns the front to +X, then the bounding-box centre moves to the origin and the bounding sphere
(about that centre) is scaled to radius 1. One 4×4 matrix ``mesh_to_world`` holds all of it.

Appearance: an ``appearance_seed`` of 0 is the mesh's own colours; any other seed recolours the "paint"
(the most-covering saturated colour, else the most-covering one that is not near-black) and jitters the hue and brightness of every other
colour a little. Flat-colour materials and palette textures are both handled (textures texel by texel).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np
import trimesh
from PIL import Image

from mirage3d.errors import InputError

log = logging.getLogger(__name__)

MESH_SUFFIXES = (".glb", ".gltf", ".obj", ".ply", ".off", ".stl")
CANONICAL_APPEARANCE = 0
# Mesh (x, y, z) → world (z, x, y): +Y up → +Z up, mesh +Z → world +X (docs/conventions.md).
MESH_TO_WORLD_AXES = np.array([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
_AXES = {"+X": (1, 0, 0), "-X": (-1, 0, 0), "+Z": (0, 0, 1), "-Z": (0, 0, -1)}


# --------------------------------------------------------------------------------------------------
# The per-mesh table
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class MeshInfo:
    """One row of ``meshes.json``: what a mesh is and where its front is."""

    mesh_id: str
    """File stem, e.g. ``quaternius-realistic-Cop``."""
    category: str
    """Object category (``car``, ``chair``, ...)."""
    front_axis: str = "+Z"
    """Mesh-coordinate axis the object's front faces (``+Z``, ``-Z``, ``+X``, ``-X``; mesh +Y is up)."""
    verified: bool = False
    """True when the front was confirmed by looking at renders."""
    how_verified: str = ""
    """How the front was confirmed (or why it is not)."""


def load_mesh_table() -> dict[str, MeshInfo]:
    """The project's per-mesh table (``mirage3d/data/meshes.json``) keyed by mesh id."""
    text = resources.files("mirage3d.data").joinpath("meshes.json").read_text()
    rows = json.loads(text)["meshes"]
    return {k: MeshInfo(mesh_id=k, **v) for k, v in rows.items()}


def mesh_info(path: Path, table: dict[str, MeshInfo] | None = None) -> MeshInfo:
    """Table row for ``path``; a mesh not in the table is taken as front +Z, unverified (logged)."""
    table = load_mesh_table() if table is None else table
    mesh_id = Path(path).stem
    if mesh_id in table:
        return table[mesh_id]
    log.warning("mesh %s is not in mirage3d/data/meshes.json: assuming front = +Z (unverified)", mesh_id)
    return MeshInfo(mesh_id, category=Path(path).parent.name, front_axis="+Z", verified=False, how_verified="not in meshes.json; front assumed +Z")


def find_meshes(source: str | Path) -> list[Path]:
    """Mesh files under ``source`` (a mesh file, or a folder searched recursively), sorted by path.

    Other files in a folder (textures, licences, READMEs) are ignored: they are normal beside meshes.
    A file given directly that is not a mesh, a missing path, or a folder with no meshes is an error.
    """
    source = Path(source)
    if not source.exists():
        raise InputError(f"meshes path {source} does not exist; give a folder of .glb/.gltf/.obj/.ply files")
    if source.is_file():
        if source.suffix.lower() not in MESH_SUFFIXES:
            raise InputError(f"{source} is not a mesh file (expected one of {', '.join(MESH_SUFFIXES)}) or a folder of meshes")
        return [source]
    files = sorted(p for p in source.rglob("*") if p.is_file() and p.suffix.lower() in MESH_SUFFIXES and not p.name.startswith("."))
    if not files:
        raise InputError(f"no mesh files ({', '.join(MESH_SUFFIXES)}) found in {source} or its subfolders")
    stems: dict[str, Path] = {}
    for p in files:
        if p.stem in stems:
            raise InputError(f"two meshes share the id {p.stem!r} ({stems[p.stem]} and {p}); rename one")
        stems[p.stem] = p
    return files


# --------------------------------------------------------------------------------------------------
# Loading and normalising
# --------------------------------------------------------------------------------------------------
@dataclass
class ColourSlot:
    """A colour that appearance variation can change: a material's factor or a set of texels."""

    rgb: np.ndarray  # (3,) in [0, 1]
    area: float  # surface area it covers (mesh units²)


@dataclass
class NormalisedMesh:
    """A mesh as geometry pieces in mesh coordinates plus the matrix that normalises them into the world."""

    info: MeshInfo
    path: Path
    pieces: list[trimesh.Trimesh]  # node transforms applied, still in mesh coordinates
    mesh_to_world: np.ndarray  # (4, 4): axes swap, front → +X, centre → origin, bounding radius → 1
    paint_rgb: np.ndarray | None  # (3,) the colour recoloured by appearance variation (None: all dark)
    textures: dict[int, np.ndarray] = field(default_factory=dict)  # id(material) → (H, W, C) uint8
    palettes: dict[int, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)  # id → (unique texels (U, 3), inverse (H·W,))


def _front_rotation(front_axis: str) -> np.ndarray:
    """(3, 3) world rotation about +Z that turns the mapped front axis onto +X."""
    if front_axis not in _AXES:
        raise InputError(f"front axis {front_axis!r} is not one of {sorted(_AXES)}")
    f = MESH_TO_WORLD_AXES @ np.array(_AXES[front_axis], dtype=np.float64)
    a = -np.arctan2(f[1], f[0])
    c, s = np.cos(a), np.sin(a)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def load_pieces(path: Path) -> list[trimesh.Trimesh]:
    """Triangle pieces of a mesh file with node transforms applied; corrupt or empty files raise InputError."""
    try:
        scene = trimesh.load(path, force="scene")
        pieces = [g for g in scene.dump() if isinstance(g, trimesh.Trimesh) and len(g.faces) > 0]
    except Exception as e:  # trimesh raises many types for bad files
        raise InputError(f"cannot read mesh {path} ({type(e).__name__}); is it a valid mesh file?") from None
    if not pieces:
        raise InputError(f"mesh {path} has no triangles")
    verts = np.concatenate([p.vertices for p in pieces])
    if not np.all(np.isfinite(verts)) or np.ptp(verts, axis=0).max() <= 0:
        raise InputError(f"mesh {path} has degenerate or non-finite vertices")
    return pieces


def normalisation_matrix(vertices: np.ndarray, front_axis: str) -> np.ndarray:
    """(4, 4) mesh → world: axes swap, front → +X, bounding-box centre → origin, bounding sphere → radius 1."""
    r = _front_rotation(front_axis) @ MESH_TO_WORLD_AXES
    v = vertices @ r.T
    centre = 0.5 * (v.min(axis=0) + v.max(axis=0))
    radius = float(np.linalg.norm(v - centre, axis=1).max())
    m = np.eye(4)
    m[:3, :3] = r / radius
    m[:3, 3] = -centre / radius
    return m


def _texture_array(material: object) -> np.ndarray | None:
    tex = getattr(material, "baseColorTexture", None)
    if tex is None:
        return None
    return np.asarray(tex.convert("RGBA") if isinstance(tex, Image.Image) else tex, dtype=np.uint8)


def _base_rgb(material: object) -> np.ndarray:
    f = getattr(material, "baseColorFactor", None)
    if f is None:
        return np.ones(3)
    f = np.asarray(f, dtype=np.float64)
    return f[:3] / 255.0 if f.max() > 1.0 else f[:3]


def _colour_areas(nm: NormalisedMesh) -> list[ColourSlot]:
    """Area covered by each distinct colour (material factor × texel under each face)."""
    areas: dict[tuple[int, int, int], float] = {}
    for piece in nm.pieces:
        mat = getattr(piece.visual, "material", None)
        base = _base_rgb(mat)
        face_area = piece.area_faces
        tex = nm.textures.get(id(mat))
        uv = getattr(piece.visual, "uv", None)
        if tex is not None and uv is not None and len(uv) == len(piece.vertices):
            h, w = tex.shape[:2]
            fuv = uv[piece.faces].mean(axis=1) % 1.0  # (F, 2) face-centre texture coordinates
            px = tex[np.clip(((1.0 - fuv[:, 1]) * h).astype(int), 0, h - 1), np.clip((fuv[:, 0] * w).astype(int), 0, w - 1), :3]
            cols = px / 255.0 * base
        else:
            cols = np.broadcast_to(base, (len(face_area), 3))
        keys = np.round(np.asarray(cols) * 255).astype(int)
        for k, a in zip(map(tuple, keys), face_area, strict=True):
            areas[k] = areas.get(k, 0.0) + float(a)
    return [ColourSlot(np.array(k) / 255.0, a) for k, a in sorted(areas.items(), key=lambda kv: -kv[1])]


def load_normalised(path: str | Path, info: MeshInfo | None = None) -> NormalisedMesh:
    """Load a mesh file, find its paint colour and compute its normalisation into the world frame."""
    path = Path(path)
    info = mesh_info(path) if info is None else info
    pieces = load_pieces(path)
    m = normalisation_matrix(np.concatenate([p.vertices for p in pieces]), info.front_axis)
    nm = NormalisedMesh(info, path, pieces, m, None)
    by_content: dict[tuple[int, ...], tuple[np.ndarray, tuple[np.ndarray, np.ndarray]]] = {}
    for p in pieces:
        mat = getattr(p.visual, "material", None)
        if mat is not None and id(mat) not in nm.textures:
            arr = _texture_array(mat)
            if arr is not None:
                # Pieces often share one palette image through separate materials: keep one copy, so it
                # is recoloured and uploaded once per image.
                key = arr.shape[:2] + (hash(arr.tobytes()),)
                if key not in by_content:
                    uniq, inv = np.unique(arr[..., :3].reshape(-1, 3), axis=0, return_inverse=True)
                    by_content[key] = (arr, (uniq, inv.reshape(-1)))
                nm.textures[id(mat)], nm.palettes[id(mat)] = by_content[key]
    # Paint = the most-covering saturated colour (if it covers at least a quarter of what the most-covering
    # colour does, so tail lights never count); failing that (white/grey/black cars) the most-covering
    # colour that is not near-black. Greys are tyres, bumpers and trim on coloured cars, black is windows.
    slots = [s for s in _colour_areas(nm) if max(s.rgb) > 0.15]
    hsv = rgb_to_hsv(np.array([s.rgb for s in slots])) if slots else np.zeros((0, 3))
    saturated = [s for s, c in zip(slots, hsv, strict=True) if c[1] > 0.25 and s.area >= 0.25 * slots[0].area]  # not lights
    nm.paint_rgb = saturated[0].rgb if saturated else (slots[0].rgb if slots else None)
    return nm


def normalised_trimesh(nm: NormalisedMesh, scale: np.ndarray | None = None) -> trimesh.Scene:
    """The normalised mesh (world coordinates, +Z up, front +X) as a trimesh scene with its materials."""
    m = nm.mesh_to_world.copy()
    if scale is not None:
        m = np.diag([*np.asarray(scale, dtype=np.float64), 1.0]) @ m
    scene = trimesh.Scene()
    for i, p in enumerate(nm.pieces):
        q = p.copy()
        q.apply_transform(m)
        scene.add_geometry(q, geom_name=f"piece_{i:03d}")
    return scene


# --------------------------------------------------------------------------------------------------
# Appearance variation
# --------------------------------------------------------------------------------------------------
@dataclass
class AppearanceParams:
    """Random draws behind one appearance (all derived from the appearance seed)."""

    paint_hsv: tuple[float, float, float] | None  # new paint colour (None: keep the original)
    hue_shift: float  # fraction of a turn added to other colours' hue
    value_scale: float  # brightness factor for other colours


def appearance_params(seed: int, paint_prob: float = 0.8, hue_jitter_deg: float = 15.0) -> AppearanceParams:
    """Draws for ``seed``; seed 0 is the canonical appearance (original colours)."""
    if seed == CANONICAL_APPEARANCE:
        return AppearanceParams(None, 0.0, 1.0)
    rng = np.random.default_rng([int(seed), 0xC010])
    paint = None
    if rng.random() < paint_prob:
        paint = (float(rng.random()), float(rng.uniform(0.0, 0.9)), float(rng.uniform(0.25, 0.95)))
    return AppearanceParams(paint, float(rng.uniform(-hue_jitter_deg, hue_jitter_deg) / 360.0), float(rng.uniform(0.85, 1.15)))


def rgb_to_hsv(rgb: np.ndarray) -> np.ndarray:
    """(N, 3) RGB in [0, 1] → (N, 3) HSV in [0, 1] (vectorised ``colorsys.rgb_to_hsv``)."""
    rgb = np.asarray(rgb, dtype=np.float64)
    mx, mn = rgb.max(axis=1), rgb.min(axis=1)
    d = mx - mn
    s = np.where(mx > 0, d / np.where(mx > 0, mx, 1.0), 0.0)
    safe = np.where(d > 0, d, 1.0)
    r, g, b = rgb.T
    h = np.where(mx == r, (g - b) / safe, np.where(mx == g, 2.0 + (b - r) / safe, 4.0 + (r - g) / safe))
    h = np.where(d > 0, (h / 6.0) % 1.0, 0.0)
    return np.stack([h, s, mx], axis=1)


def hsv_to_rgb(hsv: np.ndarray) -> np.ndarray:
    """(N, 3) HSV in [0, 1] → (N, 3) RGB in [0, 1] (vectorised ``colorsys.hsv_to_rgb``)."""
    h, s, v = np.asarray(hsv, dtype=np.float64).T
    i = np.floor(h * 6.0)
    f = h * 6.0 - i
    p, q, t = v * (1.0 - s), v * (1.0 - s * f), v * (1.0 - s * (1.0 - f))
    i = i.astype(int) % 6
    table = np.stack([np.stack(c, axis=1) for c in [(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)]])  # (6, N, 3)
    return table[i, np.arange(len(h))]


def _recolour(rgb: np.ndarray, paint_rgb: np.ndarray | None, p: AppearanceParams) -> np.ndarray:
    """(N, 3) colours in [0, 1] → recoloured (N, 3): paint-like colours to the new paint, others jittered."""
    hsv = rgb_to_hsv(rgb)
    h, s, v = hsv.T
    out = hsv_to_rgb(np.stack([(h + p.hue_shift) % 1.0, s, np.minimum(1.0, v * p.value_scale)], axis=1))
    if p.paint_hsv is not None and paint_rgb is not None:
        ph, ps, pv = rgb_to_hsv(np.asarray(paint_rgb)[None])[0]
        if ps < 0.15:  # grey/white paint: other greys of similar brightness
            is_paint = (v >= 0.15) & (s < 0.15) & (np.abs(v - pv) < 0.12)
        else:
            dh = np.minimum(np.abs(h - ph), 1.0 - np.abs(h - ph))
            is_paint = (v >= 0.15) & (dh < 0.025) & (np.abs(s - ps) < 0.3)
        # Keep the shade relation (e.g. DarkOrange vs Orange) by scaling the new value.
        nv = np.minimum(1.0, p.paint_hsv[2] * v / max(pv, 1e-6))
        painted = hsv_to_rgb(np.stack([np.full_like(h, p.paint_hsv[0]), np.full_like(h, p.paint_hsv[1]), nv], axis=1))
        out = np.where(is_paint[:, None], painted, out)
    return out


def recolour_texture(tex: np.ndarray, palette: tuple[np.ndarray, np.ndarray], paint_rgb: np.ndarray | None, p: AppearanceParams) -> np.ndarray:
    """(H, W, C) uint8 texture → recoloured copy; ``palette`` = its distinct texels and inverse index."""
    uniq, inv = palette
    new = np.round(_recolour(uniq / 255.0, paint_rgb, p) * 255.0).astype(np.uint8)
    out = tex.copy()
    out[..., :3] = new[inv.reshape(-1)].reshape(tex.shape[:2] + (3,))
    return out


def recolour_factor(rgb: np.ndarray, paint_rgb: np.ndarray | None, p: AppearanceParams) -> np.ndarray:
    """(3,) base colour factor → recoloured (3,)."""
    return _recolour(np.asarray(rgb, dtype=np.float64)[None], paint_rgb, p)[0]

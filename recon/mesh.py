"""Field → mesh: marching cubes, cleanup, decimation, UV atlas, baked base-colour texture, export.

Axes: meshes are built in our world frame (+Z up, front +X, metres). Files are written in glTF's frame
(+Y up, front +Z) by the cyclic permutation world (x, y, z) → file (y, z, x), a rotation (det +1) that
is the inverse of the renderer's mesh → world map, so an exported mesh lines up with the shared meshes.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import trimesh
from PIL import Image
from scipy import ndimage

from mirage3d.errors import InputError
from mirage3d.io import atomic_path, atomic_write_bytes
from mirage3d.recon.config import FORMATS, ReconConfig
from mirage3d.recon.field import VoxelField, render_weights

# world (+Z up) → glTF (+Y up): x_file = y_world, y_file = z_world, z_file = x_world
WORLD_TO_GLTF = np.array([[0.0, 1.0, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0], [1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0]])


@dataclass
class TexturedMesh:
    """A mesh in the world frame with a UV atlas and a base-colour texture (uv origin bottom-left)."""

    vertices: np.ndarray  # (V, 3) float64, world frame
    faces: np.ndarray  # (F, 3) int64
    uv: np.ndarray  # (V, 2) float64 in [0, 1]
    texture: np.ndarray  # (T, T, 3) uint8

    def to_trimesh(self, to_gltf: bool = False) -> trimesh.Trimesh:
        visual = trimesh.visual.TextureVisuals(
            uv=self.uv,
            material=trimesh.visual.material.PBRMaterial(
                baseColorTexture=Image.fromarray(self.texture), metallicFactor=0.0, roughnessFactor=1.0, doubleSided=False
            ),
        )
        m = trimesh.Trimesh(self.vertices.copy(), self.faces.copy(), visual=visual, process=False)
        if to_gltf:
            m.apply_transform(WORLD_TO_GLTF)
        return m


# --------------------------------------------------------------------------------------------------
# Geometry
# --------------------------------------------------------------------------------------------------
def solid_grid(field: VoxelField, level: float) -> np.ndarray:
    """(Z, Y, X) float opacity grid for marching cubes, with the hidden interior filled in.

    Training prunes the object's interior from the occupancy (no view sees it); here everything enclosed
    by the ``level`` surface counts as solid (opacity 1), so the mesh is one closed outer surface.
    """
    with torch.no_grad():
        alpha = field.voxel_alpha().cpu().numpy().astype(np.float32)
    solid = ndimage.binary_fill_holes(alpha > level)
    return np.where(solid & (alpha <= level), 1.0, alpha).astype(np.float32)


def extract_mesh(field: VoxelField, cfg: ReconConfig) -> trimesh.Trimesh:
    """Marching cubes at ``cfg.level``, largest connected component, Taubin smoothing, decimation."""
    import mcubes

    vol = solid_grid(field, cfg.level)
    if not (vol > cfg.level).any():
        raise InputError(f"the fitted field has no surface at --level {cfg.level}: nothing was reconstructed (lower --level or raise --iters)")
    vol = np.pad(vol.transpose(2, 1, 0), 1)  # (X+2, Y+2, Z+2), zero border closes the surface
    verts, faces = mcubes.marching_cubes(vol, cfg.level)
    verts = (verts - 1.0) * field.voxel + field.lo.cpu().numpy()[None]
    mesh = trimesh.Trimesh(verts, faces.astype(np.int64), process=True)
    mesh = largest_component(mesh)
    if cfg.smooth_iters > 0:
        trimesh.smoothing.filter_taubin(mesh, lamb=0.5, nu=-0.53, iterations=cfg.smooth_iters)
    if len(mesh.faces) > cfg.faces:
        mesh = decimate(mesh, cfg.faces)
    if mesh.volume < 0:
        mesh.invert()
    return mesh


def largest_component(mesh: trimesh.Trimesh) -> trimesh.Trimesh:
    """The connected component with the most faces (floaters and debris go)."""
    labels = trimesh.graph.connected_component_labels(mesh.face_adjacency, node_count=len(mesh.faces))
    if labels.max() == 0:
        return mesh
    keep = labels == np.bincount(labels).argmax()
    sub = mesh.submesh([np.nonzero(keep)[0]], append=True)
    return sub


def decimate(mesh: trimesh.Trimesh, target_faces: int) -> trimesh.Trimesh:
    """Quadric decimation to about ``target_faces``: open3d when installed (the extra mirage3d[mesh]), else
    fast-simplification (a core dependency: without any decimation the texture step of an undecimated
    ~80k-face mesh took 18-20 s on the GPU machine, against ~2.6 s decimated)."""
    if len(mesh.faces) <= target_faces:
        return mesh
    try:
        import open3d as o3d
    except Exception:  # noqa: BLE001 - optional extra; a missing libusb also lands here
        import fast_simplification

        v, f = fast_simplification.simplify(np.asarray(mesh.vertices, np.float32), np.asarray(mesh.faces, np.int32),
                                            target_reduction=1.0 - target_faces / len(mesh.faces))
        return trimesh.Trimesh(np.asarray(v, np.float64), np.asarray(f, np.int64), process=True)
    m = o3d.geometry.TriangleMesh(o3d.utility.Vector3dVector(mesh.vertices), o3d.utility.Vector3iVector(mesh.faces.astype(np.int32)))
    m = m.simplify_quadric_decimation(target_number_of_triangles=int(target_faces))
    m.remove_degenerate_triangles()
    m.remove_unreferenced_vertices()
    return trimesh.Trimesh(np.asarray(m.vertices), np.asarray(m.triangles).astype(np.int64), process=True)


# --------------------------------------------------------------------------------------------------
# Texture
# --------------------------------------------------------------------------------------------------
def rasterize_uv(uv: np.ndarray, faces: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Texels covered by UV triangles: texel (row, col) indices (M, 2), face index (M,), barycentrics (M, 3).

    Vectorised: every triangle's texel bounding box is enumerated at once, then inside-tested.
    Texel centres are at ((col + 0.5) / size, 1 - (row + 0.5) / size) in uv (origin bottom-left).
    """
    tri = uv[faces] * size  # (F, 3, 2) in texel units, x = col, y = size - row
    tri[..., 1] = size - tri[..., 1]  # y down: row axis
    lo = np.floor(tri.min(1) - 0.5).astype(np.int64).clip(0, size - 1)
    hi = np.ceil(tri.max(1) - 0.5).astype(np.int64).clip(0, size - 1)
    wh = hi - lo + 1  # (F, 2)
    counts = wh[:, 0] * wh[:, 1]
    fid = np.repeat(np.arange(len(faces)), counts)
    local = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
    col = lo[fid, 0] + local % wh[fid, 0]
    row = lo[fid, 1] + local // wh[fid, 0]
    p = np.stack([col + 0.5, row + 0.5], -1)
    a, b, c = tri[fid, 0], tri[fid, 1], tri[fid, 2]
    v0, v1, v2 = b - a, c - a, p - a
    den = v0[:, 0] * v1[:, 1] - v1[:, 0] * v0[:, 1]
    den = np.where(np.abs(den) < 1e-12, 1e-12, den)
    l1 = (v2[:, 0] * v1[:, 1] - v1[:, 0] * v2[:, 1]) / den
    l2 = (v0[:, 0] * v2[:, 1] - v2[:, 0] * v0[:, 1]) / den
    l0 = 1.0 - l1 - l2
    bary = np.stack([l0, l1, l2], -1)
    inside = (bary >= -1e-6).all(-1)
    return np.stack([row, col], -1)[inside], fid[inside], bary[inside]


def dilate_texture(tex: np.ndarray, filled: np.ndarray, passes: int = 8) -> np.ndarray:
    """Spread colours into unfilled texels (``passes`` rings) so bilinear lookups at UV seams stay clean."""
    tex, filled = tex.astype(np.float32).copy(), filled.copy()
    for _ in range(passes):
        acc = np.zeros_like(tex)
        cnt = np.zeros(filled.shape, dtype=np.float32)
        for dy, dx in ((-1, 0), (1, 0), (0, -1), (0, 1), (-1, -1), (-1, 1), (1, -1), (1, 1)):
            sh_f = np.roll(filled, (dy, dx), (0, 1))
            acc += np.roll(tex, (dy, dx), (0, 1)) * sh_f[..., None]
            cnt += sh_f
        new = (~filled) & (cnt > 0)
        tex[new] = acc[new] / cnt[new, None]
        filled = filled | new
    tex[~filled] = tex[filled].mean(0) if filled.any() else 0.5
    return tex


@torch.no_grad()
def surface_colors(field: VoxelField, points: np.ndarray, normals: np.ndarray, chunk: int = 65536,
                   start: float = 4.0, depth: float = 4.0, n_samples: int = 12) -> np.ndarray:
    """Colour seen at surface points (P, 3) → (P, 3) in [0, 1].

    A short ray per point, from ``start`` voxels outside along the normal to ``depth`` voxels inside,
    alpha-composited (dense, ``n_samples`` samples) and normalised by its opacity: the colour training
    rays saw there. Where that ray finds almost no opacity, the colour grid is read at the point.
    """
    dev = field.lo.device
    out = np.zeros((len(points), 3), dtype=np.float32)
    offs = torch.linspace(start, -depth, n_samples, device=dev) * field.voxel  # (S,)
    step = (start + depth) / (n_samples - 1)  # in voxels
    for s in range(0, len(points), chunk):
        p = torch.from_numpy(points[s : s + chunk]).float().to(dev)
        n = torch.from_numpy(normals[s : s + chunk]).float().to(dev)
        n = n / n.norm(dim=-1, keepdim=True).clamp_min(1e-9)
        q = (p[:, None] + offs[None, :, None] * n[:, None]).reshape(-1, 3)  # (M*S, 3)
        tau = (field.sigma(q) * field.occupied(q, field.dilated(1)) * step).reshape(-1, n_samples)
        w, _ = render_weights(tau)
        acc = w.sum(-1, keepdim=True)
        col = (w[..., None] * field.color(q).reshape(-1, n_samples, 3)).sum(1)
        col = torch.where(acc > 0.05, col / acc.clamp_min(1e-6), field.color(p))
        out[s : s + chunk] = col.clamp(0, 1).cpu().numpy()
    return out


def bake_texture(mesh: trimesh.Trimesh, field: VoxelField, size: int = 1024) -> TexturedMesh:
    """UV-unwrap with xatlas and bake the field's surface colour into a (size, size) texture."""
    import xatlas

    vmap, faces, uv = xatlas.parametrize(np.asarray(mesh.vertices, dtype=np.float32), np.asarray(mesh.faces, dtype=np.uint32))
    verts = np.asarray(mesh.vertices)[vmap]
    vnormals = np.asarray(mesh.vertex_normals)[vmap]
    faces = faces.astype(np.int64)
    rc, fid, bary = rasterize_uv(uv.astype(np.float64), faces, size)
    tri = faces[fid]  # (M, 3)
    pts = np.einsum("mk,mkd->md", bary, verts[tri])
    nrm = np.einsum("mk,mkd->md", bary, vnormals[tri])
    col = surface_colors(field, pts, nrm)
    tex = np.zeros((size, size, 3), dtype=np.float32)
    filled = np.zeros((size, size), dtype=bool)
    tex[rc[:, 0], rc[:, 1]] = col
    filled[rc[:, 0], rc[:, 1]] = True
    tex = dilate_texture(tex, filled)
    return TexturedMesh(verts.astype(np.float64), faces, uv.astype(np.float64), (np.clip(tex, 0, 1) * 255 + 0.5).astype(np.uint8))


# --------------------------------------------------------------------------------------------------
# Export
# --------------------------------------------------------------------------------------------------
def output_format(path: Path, fmt: str | None) -> str:
    """The format to write: ``fmt`` if given, else from the suffix (.glb, .obj, .ply)."""
    if fmt is not None:
        if fmt not in FORMATS:
            raise InputError(f"--format {fmt!r} must be one of {', '.join(FORMATS)}")
        return fmt
    suffix = Path(path).suffix.lower().lstrip(".")
    if suffix not in FORMATS:
        raise InputError(f"output {path} has suffix '.{suffix}'; use .glb, .obj or .ply (or pass --format)")
    return suffix


def export(tm: TexturedMesh, path: str | os.PathLike[str], fmt: str | None = None) -> list[Path]:
    """Write the mesh (glTF axes, +Y up, metres) atomically; returns every file written.

    GLB: one file, embedded PNG base-colour texture. OBJ: ``.obj`` + ``.mtl`` + ``.png`` beside it.
    PLY: per-vertex colours (PLY has no standard texture), read from the texture at each vertex's UV.
    """
    path = Path(path)
    fmt = output_format(path, fmt)
    mesh = tm.to_trimesh(to_gltf=True)
    if fmt == "glb":
        data = mesh.export(file_type="glb")
        atomic_write_bytes(path, data)
        return [path]
    if fmt == "ply":
        t = tm.texture.shape[0]
        cols = tm.uv.clip(0, 1)
        ij = np.stack([((1 - cols[:, 1]) * t).astype(int).clip(0, t - 1), (cols[:, 0] * t).astype(int).clip(0, t - 1)], -1)
        rgba = np.concatenate([tm.texture[ij[:, 0], ij[:, 1]], np.full((len(ij), 1), 255, np.uint8)], 1)
        plain = trimesh.Trimesh(mesh.vertices, mesh.faces, vertex_colors=rgba, process=False)
        atomic_write_bytes(path, plain.export(file_type="ply"))
        return [path]
    # OBJ with material and texture files; the .obj (what tools open) is renamed into place last.
    from trimesh.exchange.obj import export_obj

    text, files = export_obj(mesh, include_texture=True, return_texture=True, mtl_name=f"{path.stem}.mtl")
    written = []
    for name, blob in files.items():
        atomic_write_bytes(path.parent / name, blob)
        written.append(path.parent / name)
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return [path, *written]

"""Texture projection (visibility, viewing angle, the reference view), the UV atlas and the unseen-surface membrane."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import trimesh

from mirage3d.cameras import orbit_c2w
from mirage3d.recon.atlas import build_atlas
from mirage3d.recon.mesh import fair_unseen, seen_vertices
from mirage3d.recon.raster import rasterize_uv
from mirage3d.recon.texture import project_colors

K = np.array([[60.0, 0, 32], [0, 60.0, 32], [0, 0, 1]])
RED, BLUE, GREEN = (1.0, 0.0, 0.0), (0.0, 0.0, 1.0), (0.0, 1.0, 0.0)


def _flat(colour, n=64) -> np.ndarray:
    img = np.ones((n, n, 4), np.float32)
    img[..., :3] = colour
    return img


def _project(mesh, points, normals, cams, images, reference=None):
    t = lambda a: torch.as_tensor(np.asarray(a), dtype=torch.float32)
    return project_colors(
        t(points), t(normals), t(np.stack(images)), t(np.stack(cams)), t(K), t(mesh.vertices), torch.as_tensor(mesh.faces), reference
    )


def test_projection_puts_each_views_colour_where_it_sees_the_surface():
    box = trimesh.creation.box(extents=(1.0, 1.0, 1.0))
    # Face centres of +X, -X and +Z, with their normals.
    pts = np.array([[0.5, 0.1, 0.05], [-0.5, -0.2, 0.1], [0.1, 0.1, 0.5]])
    nrm = np.array([[1.0, 0, 0], [-1.0, 0, 0], [0, 0, 1.0]])
    cams = [orbit_c2w(0.0, 0.0, 4.0), orbit_c2w(180.0, 0.0, 4.0)]  # from +X and from -X, level: +Z is edge-on
    col, wsum = _project(box, pts, nrm, cams, [_flat(RED), _flat(BLUE)])
    np.testing.assert_allclose(col[0].numpy(), RED, atol=1e-5)
    np.testing.assert_allclose(col[1].numpy(), BLUE, atol=1e-5)
    assert wsum[0] > 0.5 and wsum[1] > 0.5
    assert wsum[2] < 1e-6  # seen by no view: the caller fills it from the field


def test_projection_respects_occlusion():
    near = trimesh.creation.box(extents=(0.5, 0.5, 0.5))
    near.apply_translation([1.0, 0.0, 0.0])
    far = trimesh.creation.box(extents=(0.5, 0.5, 0.5))
    scene = trimesh.util.concatenate([near, far])
    pts = np.array([[0.25, 0.0, 0.0], [1.25, 0.0, 0.0]])  # the hidden box's +X face, the front box's +X face
    nrm = np.array([[1.0, 0, 0], [1.0, 0, 0]])
    _col, wsum = _project(scene, pts, nrm, [orbit_c2w(0.0, 0.0, 4.0)], [_flat(RED)])
    assert wsum[0] < 1e-6 and wsum[1] > 0.5


def test_reference_view_wins_where_it_sees_the_surface():
    box = trimesh.creation.box(extents=(1.0, 1.0, 1.0))
    pts, nrm = np.array([[0.5, 0.0, 0.0]]), np.array([[1.0, 0, 0]])
    cams = [orbit_c2w(0.0, 0.0, 4.0), orbit_c2w(55.0, 0.0, 4.0)]  # squarely, and 55° off the normal
    col, _ = _project(box, pts, nrm, cams, [_flat(GREEN), _flat(BLUE)])
    assert col[0, 1] > 0.9  # without a reference the square view dominates (cos^p weights)
    col_ref, _ = _project(box, pts, nrm, cams, [_flat(GREEN), _flat(BLUE)], reference=1)
    np.testing.assert_allclose(col_ref[0].numpy(), BLUE, atol=1e-5)


@pytest.mark.parametrize("size", [64, 256])
def test_atlas_is_injective_and_covers_every_face(size):
    mesh = trimesh.creation.icosphere(subdivisions=3)
    mesh.vertices *= [1.0, 0.6, 0.4]
    vmap, faces, uv = build_atlas(mesh, size)
    assert uv.min() >= 0.0 and uv.max() <= 1.0
    np.testing.assert_allclose(mesh.vertices[vmap][faces], mesh.vertices[mesh.faces], atol=0)  # same surface
    tri = uv[faces]
    e1, e2 = tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]
    area = 0.5 * np.abs(e1[:, 0] * e2[:, 1] - e1[:, 1] * e2[:, 0])
    assert (area > 0).all()
    rc, _fid, _ = rasterize_uv(torch.from_numpy(uv), torch.from_numpy(faces), size)
    hits = np.zeros((size, size), int)
    np.add.at(hits, (rc[:, 0].numpy(), rc[:, 1].numpy()), 1)
    # Texels are shared only along triangle edges (the inside test includes them), never by overlapping charts.
    assert (hits > 1).sum() < 0.05 * (hits > 0).sum()


def test_membrane_replaces_unseen_surface_and_keeps_seen_surface():
    mesh = trimesh.creation.cylinder(radius=1.0, height=1.0, sections=48)
    mesh = mesh.subdivide().subdivide()
    rng = np.random.default_rng(0)
    bottom = mesh.vertices[:, 2] < -0.49
    inner = bottom & (np.linalg.norm(mesh.vertices[:, :2], axis=1) < 0.7)
    bumpy = mesh.vertices.copy()
    bumpy[inner, 2] -= rng.uniform(0.0, 0.08, inner.sum())  # a hanging, bumpy underside, hidden behind the rim
    bumpy = trimesh.Trimesh(bumpy, mesh.faces, process=False)
    cams = np.stack([orbit_c2w(a, 25.0, 5.0) for a in range(0, 360, 45)])  # all above: the underside is unseen
    seen, _ = seen_vertices(bumpy, cams, K, (64, 64), cos_min=0.2)
    assert seen[mesh.vertices[:, 2] > -0.4].all() and not seen[inner].any()
    faired = fair_unseen(bumpy, seen)
    np.testing.assert_array_equal(faired.vertices[seen], bumpy.vertices[seen])
    z = faired.vertices[inner, 2]
    assert z.std() < 0.01 and -0.5 <= z.mean() <= -0.2  # flat again, spanning the lowest seen ring


def test_membrane_keeps_the_views_outlines():
    """A sphere seen from a ring above: the membrane flattens its unseen lower cap and, with it, the bottom
    of every view's outline; with ``fair_keep_outline`` the vertices on the outlines stay where the masks put
    them, so the mesh's silhouettes match the masks again (and the hidden cap is still flattened)."""
    from dataclasses import replace

    from mirage3d.recon.config import ReconConfig
    from mirage3d.recon.field import SDFField
    from mirage3d.recon.mesh import extract_mesh
    from mirage3d.recon.raster import depth_buffer

    n, r = 40, 0.6
    lo = np.full(3, -1.0)
    voxel = 2.0 / (n - 1)
    z, y, x = np.meshgrid(*(lo[0] + voxel * np.arange(n),) * 3, indexing="ij")
    field = SDFField(lo, voxel, (n, n, n), torch.from_numpy(np.sqrt(x**2 + y**2 + z**2) - r).float())
    cams = np.stack([orbit_c2w(a, 30.0, 3.0) for a in range(0, 360, 30)])
    Kc = np.array([[100.0, 0, 32], [0, 100.0, 32], [0, 0, 1]])

    def masks(mesh):
        t = lambda a: torch.as_tensor(np.asarray(a), dtype=torch.float32)
        return np.stack([np.isfinite(depth_buffer(t(mesh.vertices), torch.as_tensor(mesh.faces), t(c), t(Kc), 64, 64).numpy()) for c in cams])

    cfg = ReconConfig(device="cpu", faces=10**6)
    alpha = masks(extract_mesh(field, replace(cfg, fair_unseen=False))).astype(np.float32)
    lifted = extract_mesh(field, replace(cfg, fair_keep_outline=False), cams, Kc, (64, 64), alpha)
    kept = extract_mesh(field, cfg, cams, Kc, (64, 64), alpha)
    miss_lifted = (alpha.astype(bool) ^ masks(lifted)).sum()
    miss_kept = (alpha.astype(bool) ^ masks(kept)).sum()
    assert miss_lifted > 100 and miss_kept < 0.2 * miss_lifted
    assert kept.is_watertight and len(kept.faces) == len(lifted.faces)
    centre = np.linalg.norm(kept.vertices[:, :2], axis=1) < 0.2
    assert kept.vertices[centre, 2].min() > -0.5 * r  # the unseen cap is still flattened (a sphere's is at -r)


def test_mesh_render_gives_straight_colour_at_antialiased_silhouette_pixels():
    """render_mesh returns straight colour (as the views do), so composite_on_white puts an edge pixel of
    coverage a at a·C + (1 - a): rendered over a white background, edge pixels came out already blended with
    white and were blended again (too light)."""
    from mirage3d.io import composite_on_white
    from mirage3d.recon.mesh import TexturedMesh
    from mirage3d.recon.render import render_mesh

    colour = np.array([0.2, 0.4, 0.6])
    tex = np.broadcast_to((colour * 255).round().astype(np.uint8), (8, 8, 3)).copy()
    # A square facing the camera, turned 30° in the image so that its edges cut pixels partly.
    ang = np.deg2rad(30.0) + np.arange(4) * np.pi / 2
    verts = np.stack([0.5 * np.cos(ang), 0.5 * np.sin(ang), np.zeros(4)], -1)
    mesh = TexturedMesh(verts, np.array([[0, 1, 2], [0, 2, 3]]), np.full((4, 2), 0.5), tex).to_trimesh()
    cam = np.eye(4)
    cam[2, 3] = 2.0  # on +Z looking down -Z at the square
    rgba = render_mesh(mesh, cam[None], K, 64, 64, flat=True)[0]
    a = rgba[..., 3]
    edge = (a > 0.2) & (a < 0.8)
    assert edge.sum() > 10 and (a > 0.99).sum() > 100
    assert np.abs(rgba[edge][:, :3] - tex[0, 0] / 255.0).max() < 0.03  # straight colour, not blended with the background
    on_white = composite_on_white(rgba)
    expect = a[..., None] * (tex[0, 0] / 255.0) + (1 - a[..., None])
    assert np.abs(on_white - expect)[edge].max() < 0.02

"""What F-score a reconstruction from outside views can reach on the shared meshes (docs/recon.md).

The shared cars are game models with inner surfaces (seats, double panels, parts behind the windows) that
no camera outside the car sees, yet `geometry_scores` samples the whole true surface. For each orbit folder
(``C/orbits/<mesh>/``: ``mesh.glb`` in world frame + ``transforms.json``) this samples the true surface and
casts a ray from each sample towards 400 directions all round and towards each orbit camera (open3d's
raycasting: a ray leaves the surface unblocked = seen). It prints the share of the surface seen from outside
and from the ring of cameras, and the ceiling: F@1 % / F@2 % of the outer surface alone scored against the
whole true mesh (what a perfect reconstruction of everything visible would score). With ``--glbs DIR``
(``bench_recon.py --out``'s ``meshes_out/``, files ``<mesh>_16_none_off.glb``), also each reconstruction's
recall on the ring-seen surface, on the outer surface the ring does not see, and its F@2 % against the outer
surface only.

    python3 benchmarks/recon_ceiling.py --collection C [--glbs OUT/meshes_out] [--samples 100000]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import open3d as o3d
import trimesh

from mirage3d.io import read_transforms
from mirage3d.recon.mesh import WORLD_TO_GLTF
from mirage3d.recon.metrics import fscore, point_distances, sample_surface


def seen_from(mesh: trimesh.Trimesh, pts: np.ndarray, eyes: np.ndarray, offset: float) -> np.ndarray:
    """(P,) bool: points with an unblocked line of sight to at least one of ``eyes`` (E, 3)."""
    scene = o3d.t.geometry.RaycastingScene()
    scene.add_triangles(o3d.core.Tensor(mesh.vertices.astype(np.float32)), o3d.core.Tensor(mesh.faces.astype(np.uint32)))
    seen = np.zeros(len(pts), bool)
    for eye in eyes:
        d = eye[None] - pts
        dist = np.linalg.norm(d, axis=1)
        d /= dist[:, None]
        # leave the surface by `offset` first: coplanar overlays (decals) do not hide what they cover
        rays = o3d.core.Tensor(np.concatenate([pts + d * offset, d], 1).astype(np.float32))
        seen |= scene.cast_rays(rays)["t_hit"].numpy() >= dist - offset - 1e-3
    return seen


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--collection", type=Path, required=True)
    ap.add_argument("--glbs", type=Path, help="bench_recon's meshes_out/ folder (16 exact views, refinement off)")
    ap.add_argument("--samples", type=int, default=100_000)
    a = ap.parse_args()
    k = np.arange(400)  # a Fibonacci sphere of directions, 4 units out (the orbit cameras sit at 3.4)
    z = 1 - (k + 0.5) / 200
    r = np.sqrt(1 - z * z)
    sphere = 4.0 * np.stack([r * np.cos(np.pi * (1 + 5**0.5) * k), r * np.sin(np.pi * (1 + 5**0.5) * k), z], 1)
    head = "| mesh | seen from outside | seen from the ring | ceiling F@1% | ceiling F@2% |"
    if a.glbs:
        head += " recon F@2% | vs outer surface only | recall: ring-seen / outer, not ring-seen |"
    print(head + "\n" + "|---" * (head.count("|") - 1) + "|")
    for orbit in sorted(p.parent for p in (a.collection / "orbits").glob("*/transforms.json")):
        true = trimesh.load(orbit / "mesh.glb", force="mesh")
        pts = sample_surface(true, a.samples)
        diag = float(np.linalg.norm(true.bounds[1] - true.bounds[0]))
        ring = np.stack([f.transform_matrix[:3, 3] for f in read_transforms(orbit).frames])
        outer = seen_from(true, pts, sphere, 0.0025 * diag)
        by_ring = seen_from(true, pts, ring, 0.0025 * diag)
        d_outer, d_all = point_distances(pts[outer], pts)
        c1, c2 = (fscore(d_outer, d_all, t * diag) for t in (0.01, 0.02))
        row = f"| {orbit.name} | {outer.mean():.3f} | {by_ring.mean():.3f} | {c1:.3f} | {c2:.3f} |"
        glb = a.glbs / f"{orbit.name}_16_none_off.glb" if a.glbs else None
        if glb is not None and glb.exists():
            pred = trimesh.load(glb, force="mesh")
            pred.apply_transform(np.linalg.inv(WORLD_TO_GLTF))
            pp = sample_surface(pred, a.samples)
            tau = 0.02 * diag
            d_pt, d_tp = point_distances(pp, pts)  # pred → true, true → pred
            d_po, d_op = point_distances(pp, pts[outer])
            near = d_tp < tau
            row += (
                f" {fscore(d_pt, d_tp, tau):.3f} | {fscore(d_po, d_op, tau):.3f} | {near[by_ring].mean():.3f} / {near[outer & ~by_ring].mean():.3f} |"
            )
        print(row, flush=True)


if __name__ == "__main__":
    main()

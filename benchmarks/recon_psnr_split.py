"""Where the held-out PSNR of ``mirage3d recon``'s GLB is lost: texture, silhouette edge, or outline.

For each orbit folder (as ``bench_recon.py``: 16 of the 32 views for training, the views half-way between
held out) it reconstructs with the defaults and renders the GLB unlit at the held-out cameras, then splits the
squared error (on white) into three regions: *core* (inside both the GLB's and the true silhouette, 2 px
from their edges), *edge* (the 2 px band inside both) and *outline* (pixels inside one silhouette only: the
mesh's outline against the true one). Beside it, the same texture step (``bake_texture``, same views and
cameras) run on the *true* mesh (subdivided to 2 cm edges so the atlas has small triangles): what the
texture can reach when the geometry is right; and the fitted field rendered at the held-out cameras.

    python3 benchmarks/recon_psnr_split.py --collection C --limit 2 --out /tmp/split
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("PYOPENGL_PLATFORM", "egl")
os.environ.setdefault("PYGLET_HEADLESS", "1")

import numpy as np
import torch
import trimesh
from scipy import ndimage

sys.path.insert(0, str(Path(__file__).parent))
from bench_recon import parse_sets, split

from mirage3d.io import composite_on_white, load_image, read_transforms, rgba_to_array
from mirage3d.recon import ReconConfig, load_views, reconstruct
from mirage3d.recon.mesh import WORLD_TO_GLTF
from mirage3d.recon.metrics import psnr
from mirage3d.recon.render import render_mesh
from mirage3d.recon.texture import bake_texture


def error_split(ren: np.ndarray, gt: np.ndarray) -> dict[str, float]:
    """Mean PSNR over views and each region's share of the summed squared error (core / edge / outline)."""
    a, b = composite_on_white(ren), composite_on_white(gt)
    se = ((a - b) ** 2).sum(-1)
    mp, mg = ren[..., 3] > 0.5, gt[..., 3] > 0.5
    core = np.stack([ndimage.binary_erosion(m, iterations=2) for m in mp & mg])
    outline = mp ^ mg
    edge = (mp | mg) & ~core & ~outline
    tot = max(float(se.sum()), 1e-12)
    return {
        "psnr": float(np.mean([psnr(x, y) for x, y in zip(a, b)])),
        "core": float(se[core].sum()) / tot,
        "edge": float(se[edge].sum()) / tot,
        "outline": float(se[outline].sum()) / tot,
        "core_psnr": float(-10 * np.log10(max(float(se[core].mean()) / 3, 1e-12))),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--collection", type=Path, required=True, help="a collection rendered with --orbits (uses C/orbits/*/)")
    ap.add_argument("--out", type=Path, required=True, help="scratch folder")
    ap.add_argument("--limit", type=int, default=0, help="first N meshes only (0 = all)")
    ap.add_argument("--views", type=int, default=16)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--set", nargs="*", default=[], help="ReconConfig overrides, e.g. iters=300 res=96")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    orbits = sorted(p for p in (args.collection / "orbits").iterdir() if (p / "transforms.json").exists())
    orbits = orbits[: args.limit] if args.limit else orbits
    load = os.getloadavg()[0]
    print(f"date {time.strftime('%Y-%m-%d %H:%M')}, load {load:.1f}, device {args.device}, {args.views} views, settings {args.set or 'defaults'}\n")
    print("| mesh | what | held-out PSNR | core share | edge share | outline share | core PSNR |")
    print("|---|---|---|---|---|---|---|")
    for orbit in orbits:
        t, full = read_transforms(orbit), load_views(orbit)
        train, held = split(len(t.frames), args.views)
        base = full.subset(train)
        cfg = ReconConfig(device=args.device, **parse_sets(args.set))
        glb = args.out / f"{orbit.name}.glb"
        res = reconstruct(base, glb, cfg)
        c2w = np.stack([t.frames[i].transform_matrix for i in held])
        gt = np.stack([rgba_to_array(load_image(orbit / t.frames[i].file_path)) for i in held])
        scene = trimesh.load(glb)
        for g in scene.geometry.values():
            g.apply_transform(np.linalg.inv(WORLD_TO_GLTF))
        rows = {"GLB": render_mesh(scene, c2w, t.K, t.w, t.h, flat=True)}
        true = trimesh.load(orbit / "mesh.glb", force="mesh")
        true = trimesh.Trimesh(true.vertices, true.faces, process=True).subdivide_to_size(0.02)
        tm = bake_texture(true, res.fit.field, base.rgba, res.fit.c2w, res.fit.K, base.reference, cfg.texture_size)
        rows["same texture step on the true mesh"] = render_mesh(tm.to_trimesh(), c2w, t.K, t.w, t.h, flat=True)
        rows["fitted field rendered"] = res.fit.render(c2w, t.K, t.h, t.w)
        for what, ren in rows.items():
            s = error_split(ren, gt)
            print(
                f"| {orbit.name} | {what} | {s['psnr']:.2f} | {s['core']:.2f} | {s['edge']:.2f} | {s['outline']:.2f} | {s['core_psnr']:.2f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()

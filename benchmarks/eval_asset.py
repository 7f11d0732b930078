"""End-to-end quality of `make-asset` on objects not used in training (Markdown table).

    python3 benchmarks/eval_asset.py --collection C --model MODEL --out OUT [--objects 5] [--input-frame 1]
        [--steps 50] [--device auto] [--seed 0]

C is a collection rendered with ``--orbits`` (its orbit folders use the meshes' original colours, an
appearance no training render has: training renders always repaint, appearance seeds ≥ 1). For each of the
first ``--objects`` orbit folders, orbit frame ``--input-frame`` is the input photo; `make_asset` writes
OUT/<object>.glb and keeps its views.

The discovered poses' azimuths are known only up to a rotation and a reflection. With the input's true
azimuth φ and the model's reference pose azimuth a_ref, generated pose k is placed at φ + s·(a_k − a_ref)
for s = ±1, whichever gives the higher mean PSNR (one bit chosen with the truth: a single image cannot tell
left from right for a symmetric object). Each generated view is compared with the orbit frame of nearest
azimuth: PSNR / SSIM (RGB on white), mask IoU (alpha > 0.5). The mesh is moved into the true frame with the
same rotation/reflection and scored with Chamfer-L1 and F-score at 1% / 2% of the true mesh's bounding-box
diagonal (`mirage3d.recon.metrics`). Writes OUT/eval_asset.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import trimesh

from mirage3d.asset import AssetConfig, make_asset
from mirage3d.cameras import circular_difference, position_to_spherical
from mirage3d.io import composite_on_white, load_image, read_transforms, rgba_to_array
from mirage3d.recon.mesh import WORLD_TO_GLTF
from mirage3d.recon.metrics import geometry_scores, psnr, ssim


def azimuths(t) -> np.ndarray:
    return np.array([float(position_to_spherical(f.transform_matrix[:3, 3])[0]) for f in t.frames])


def ring_to_true(a_deg: np.ndarray, phi: float, a_ref: float, s: int) -> np.ndarray:
    return np.mod(phi + s * (np.asarray(a_deg) - a_ref), 360.0)


def frame_rgba(folder: Path, file_path: str) -> np.ndarray:
    return rgba_to_array(load_image(folder / file_path))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--collection", type=Path, required=True)
    ap.add_argument("--model", default="default")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--objects", type=int, default=5)
    ap.add_argument("--input-frame", type=int, default=1)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    a.out.mkdir(parents=True, exist_ok=True)
    folders = sorted(p.parent for p in (a.collection / "orbits").glob("*/transforms.json"))[: a.objects]
    if not folders:
        sys.exit(f"no orbit folders in {a.collection / 'orbits'}: render with --orbits")
    rows = []
    print("| object | input az | ref pose | views PSNR | views SSIM | mask IoU | Chamfer-L1 | F@1% | F@2% | views s | recon s |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for folder in folders:
        truth = read_transforms(folder)
        true_az = azimuths(truth)
        phi = float(true_az[a.input_frame])
        name = folder.name
        glb = a.out / f"{name}.glb"
        res = make_asset(folder / truth.frames[a.input_frame].file_path, glb,
                         AssetConfig(model=a.model, steps=a.steps, device=a.device, seed=a.seed, preview=True),
                         keep_views=a.out / f"{name}_views", overwrite=True)
        views = read_transforms(a.out / f"{name}_views")
        gen_az = azimuths(views)
        ref_i = next(i for i, f in enumerate(views.frames) if f.extra.get("is_reference"))
        best = None
        for s in (1, -1):
            placed = ring_to_true(gen_az, phi, gen_az[ref_i], s)
            scores = []
            for i, f in enumerate(views.frames):
                if i == ref_i:
                    continue
                j = int(np.argmin(circular_difference(true_az, placed[i])))
                g = frame_rgba(a.out / f"{name}_views", f.file_path)
                t = frame_rgba(folder, truth.frames[j].file_path)
                if g.shape != t.shape:
                    from PIL import Image

                    t = rgba_to_array(Image.fromarray((t * 255).astype(np.uint8)).resize(g.shape[1::-1], Image.Resampling.LANCZOS))
                gi, ti = composite_on_white(g), composite_on_white(t)
                mg, mt = g[..., 3] > 0.5, t[..., 3] > 0.5
                iou = float((mg & mt).sum() / max((mg | mt).sum(), 1))
                scores.append((psnr(gi, ti), ssim(gi, ti), iou))
            m = np.mean(scores, axis=0)
            if best is None or m[0] > best[1][0]:
                best = (s, m)
        s, (p, q, iou) = best
        # mesh: glTF (+Y up) → mirage3d world (+Z up) → true frame (reflection s, rotation about +Z)
        mesh = trimesh.load(glb, force="mesh")
        mesh.apply_transform(np.linalg.inv(WORLD_TO_GLTF))
        if s < 0:
            mesh.apply_transform(np.diag([1.0, -1.0, 1.0, 1.0]))
            mesh.invert()
        rot = np.deg2rad(phi - s * gen_az[ref_i])
        mesh.apply_transform(trimesh.transformations.rotation_matrix(rot, [0, 0, 1]))
        true_mesh = trimesh.load(folder / "mesh.glb", force="mesh")
        geo = geometry_scores(mesh, true_mesh)
        row = {"object": name, "input_azimuth": phi, "reference_pose": res.reference_pose, "reflection": s, "psnr": float(p), "ssim": float(q),
               "mask_iou": iou, "chamfer_l1": geo.chamfer_l1, "f1": geo.fscore[0.01], "f2": geo.fscore[0.02], **{f"{k}_s": v for k, v in res.timings.items()}}  # fmt: skip
        rows.append(row)
        print(f"| {name} | {phi:.0f} | {res.reference_pose} | {p:.2f} | {q:.3f} | {iou:.3f} | {geo.chamfer_l1:.3f} | {geo.fscore[0.01]:.3f} | "
              f"{geo.fscore[0.02]:.3f} | {res.timings['views']:.1f} | {res.timings['recon']:.1f} |", flush=True)  # fmt: skip
    keys = ["psnr", "ssim", "mask_iou", "chamfer_l1", "f1", "f2", "views_s", "recon_s"]
    mean = {k: float(np.mean([r[k] for r in rows])) for k in keys}
    print(f"| **mean of {len(rows)}** | | | {mean['psnr']:.2f} | {mean['ssim']:.3f} | {mean['mask_iou']:.3f} | {mean['chamfer_l1']:.3f} | "
          f"{mean['f1']:.3f} | {mean['f2']:.3f} | {mean['views_s']:.1f} | {mean['recon_s']:.1f} |")  # fmt: skip
    (a.out / "eval_asset.json").write_text(json.dumps({"rows": rows, "mean": mean, "args": {k: str(v) for k, v in vars(a).items()}, "time": time.time()}, indent=2) + "\n")


if __name__ == "__main__":
    main()

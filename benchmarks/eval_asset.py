"""End-to-end quality of `make-asset` on shapes the model never saw, beside the template baseline (Markdown).

    python3 benchmarks/eval_asset.py --collection C --model MODEL --out OUT [--objects 5] [--input-frames 1,2,6]
        [--steps 50] [--device auto] [--seeds 0] [--variants independent,cross-frame,all-views,all-views+rounds] [--templates DIR]

C is a collection rendered with ``--orbits`` from meshes the model did not train on (for the shipped car
model: ``../shared/meshes/cars-more``). For each orbit folder, each orbit frame of ``--input-frames`` (default 1)
is an input photo; every variant runs `make_asset` on it and keeps its views (the means are over objects × frames × seeds):

- ``independent``: each view sampled on its own (no cross-frame attention), the baseline of the views;
- ``cross-frame``: generated views attend to the input only (MIRAGE);
- ``all-views``: generated views attend to the input and to each other (make-asset's default);
- ``rounds``: cross-frame + the consistency rounds (generate → reconstruct → render → re-noise → denoise);
- ``all-views+rounds``: both;
- ``tune``: all-views after 100 steps of test-time fine-tuning on the input (``views.tune``).
``--set views.tune.lr=1e-4`` (repeatable) changes a setting of every variant.

Scores. The discovered poses' azimuths are known only up to a rotation and a reflection: with the input's
true azimuth φ and the reference pose's azimuth a_ref, generated pose k is placed at φ + s·(a_k − a_ref), s = ±1
chosen by the mean PSNR (one bit from the truth: one image cannot tell left from right for a symmetric
object). Each generated view is compared with the orbit frame of nearest azimuth: PSNR / SSIM (RGB on
white), mask IoU (alpha > 0.5). ``consistency``: the views' reprojection PSNR (one field fitted to all views,
rendered back at their cameras; higher = the views agree with one 3D shape). The mesh is moved into the true
frame with the same rotation/reflection and scored with Chamfer-L1 and F-score at 1 % / 2 % of the true mesh's
bounding-box diagonal. The **template** baseline for each object: every mesh in ``--templates`` (the training
cars), centred and stretched per axis to the true mesh's bounding box, scored the same way (mean and best
over templates): a mesh that ignores the photo. Writes OUT/eval_asset.json.
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
from mirage3d.config import replace_fields
from mirage3d.data.meshes import find_meshes, load_normalised, normalised_trimesh
from mirage3d.io import composite_on_white, load_image, read_transforms, rgba_to_array
from mirage3d.recon import ReconConfig, load_views
from mirage3d.recon.config import generated_views_config
from mirage3d.recon.fit import fit_field
from mirage3d.recon.mesh import WORLD_TO_GLTF
from mirage3d.recon.metrics import geometry_scores, psnr, ssim

VARIANTS = {
    "independent": {"views.cross_frame": "off"},
    "cross-frame": {"views.cross_frame": "concat"},
    "all-views": {"views.cross_frame": "all"},
    "rounds": {"views.cross_frame": "concat", "views.consistency.rounds": 2},
    "all-views+rounds": {"views.cross_frame": "all", "views.consistency.rounds": 2},
    "tune": {"views.cross_frame": "all", "views.tune.steps": 100},
}


def azimuths(t) -> np.ndarray:
    return np.array([float(position_to_spherical(f.transform_matrix[:3, 3])[0]) for f in t.frames])


def frame_rgba(folder: Path, file_path: str, size: tuple[int, int] | None = None) -> np.ndarray:
    im = load_image(folder / file_path)
    if size is not None and im.size != size:
        from PIL import Image

        im = im.resize(size, Image.Resampling.LANCZOS)
    return rgba_to_array(im)


def stretched_template(template: trimesh.Trimesh, true_mesh: trimesh.Trimesh) -> trimesh.Trimesh:
    """``template`` centred on and stretched per axis to ``true_mesh``'s bounding box."""
    lo, hi = template.bounds
    tlo, thi = true_mesh.bounds
    m = np.diag([*((thi - tlo) / np.maximum(hi - lo, 1e-9)), 1.0])
    m[:3, 3] = (tlo + thi) / 2 - m[:3, :3] @ ((lo + hi) / 2)
    out = template.copy()
    out.apply_transform(m)
    return out


def template_scores(templates: list[trimesh.Trimesh], true_mesh: trimesh.Trimesh) -> tuple[float, float]:
    """(mean, best) F@2 % of the templates stretched to the true box."""
    f2 = [geometry_scores(stretched_template(t, true_mesh), true_mesh).fscore[0.02] for t in templates]
    return float(np.mean(f2)), float(np.max(f2))


def views_scores(views_dir: Path, truth_dir: Path, phi: float) -> tuple[int, np.ndarray, float]:
    """(s, [PSNR, SSIM, IoU], a_ref): the generated views against the nearest true orbit frames, best reflection s."""
    truth, views = read_transforms(truth_dir), read_transforms(views_dir)
    true_az, gen_az = azimuths(truth), azimuths(views)
    ref_i = next(i for i, f in enumerate(views.frames) if f.extra.get("is_reference"))
    best = None
    for s in (1, -1):
        placed = np.mod(phi + s * (gen_az - gen_az[ref_i]), 360.0)
        scores = []
        for i, f in enumerate(views.frames):
            if i == ref_i:
                continue
            g = frame_rgba(views_dir, f.file_path)
            j = int(np.argmin(circular_difference(true_az, placed[i])))
            t = frame_rgba(truth_dir, truth.frames[j].file_path, (g.shape[1], g.shape[0]))
            mg, mt = g[..., 3] > 0.5, t[..., 3] > 0.5
            iou = float((mg & mt).sum() / max((mg | mt).sum(), 1))
            scores.append((psnr(composite_on_white(g), composite_on_white(t)), ssim(composite_on_white(g), composite_on_white(t)), iou))
        m = np.mean(scores, axis=0)
        if best is None or m[0] > best[1][0]:
            best = (s, m)
    return best[0], best[1], float(gen_az[ref_i])


def mesh_in_true_frame(glb: Path, s: int, phi: float, a_ref: float) -> trimesh.Trimesh:
    """The GLB (glTF +Y up) in mirage3d world (+Z up), reflected by ``s`` and rotated so the input's pose sits at φ."""
    mesh = trimesh.load(glb, force="mesh")
    mesh.apply_transform(np.linalg.inv(WORLD_TO_GLTF))
    if s < 0:
        mesh.apply_transform(np.diag([1.0, -1.0, 1.0, 1.0]))
        mesh.invert()
    mesh.apply_transform(trimesh.transformations.rotation_matrix(np.deg2rad(phi - s * a_ref), [0, 0, 1]))
    return mesh


def reprojection(views_dir: Path, recon: ReconConfig) -> float:
    """PSNR (dB) of the views against renders of one field fitted to all of them."""
    vs = load_views(views_dir)
    fit = fit_field(vs, recon)
    h, w = vs.hw
    r = fit.render(fit.c2w, vs.K, h, w)[..., :3]
    mse = ((vs.rgb_on_white() - r) ** 2).mean(axis=(1, 2, 3))
    return float(np.mean(-10 * np.log10(np.maximum(mse, 1e-10))))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--collection", type=Path, required=True)
    ap.add_argument("--model", default="default")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--objects", type=int, default=5)
    ap.add_argument("--input-frames", default="1", help="comma-separated orbit frames used as inputs, e.g. 1,2,6")
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--device", default="auto")
    ap.add_argument(
        "--seeds", default="0", help="comma-separated seeds of the views and the reconstruction, e.g. 0,1,2 (one's mesh F@2%% varies by about ±0.04)"
    )
    ap.add_argument("--variants", default="independent,cross-frame,all-views,all-views+rounds")
    ap.add_argument("--set", action="append", default=[], help="dotted.field=value (JSON value) for every variant, e.g. views.tune.lr=1e-4")
    ap.add_argument("--templates", type=Path, default=Path("../shared/meshes/cars"), help="training meshes for the template baseline")
    a = ap.parse_args()
    a.out.mkdir(parents=True, exist_ok=True)
    try:
        frames = [int(f) for f in a.input_frames.split(",") if f.strip()]
    except ValueError:
        sys.exit(f"--input-frames {a.input_frames!r} must be comma-separated frame numbers like 1,2,6")
    try:
        seeds = [int(x) for x in a.seeds.split(",") if x.strip()]
    except ValueError:
        sys.exit(f"--seeds {a.seeds!r} must be comma-separated integers like 0,1,2")
    folders = sorted(p.parent for p in (a.collection / "orbits").glob("*/transforms.json"))[: a.objects]
    if not folders:
        sys.exit(f"no orbit folders in {a.collection / 'orbits'}: render with --orbits")
    variants = [v.strip() for v in a.variants.split(",")]
    if bad := [v for v in variants if v not in VARIANTS]:
        sys.exit(f"unknown variant {bad[0]!r}; choose from {', '.join(VARIANTS)}")
    templates = [normalised_trimesh(load_normalised(p)).to_geometry() for p in find_meshes(a.templates)]
    base = replace_fields(
        AssetConfig(model=a.model),
        {"views.num_inference_steps": a.steps, "views.device": a.device, "recon.device": a.device},
    )
    overrides = {}  # --set: applied after each variant's own settings
    for kv in a.set:
        key, _, val = kv.partition("=")
        try:
            overrides[key] = json.loads(val)
        except json.JSONDecodeError:
            overrides[key] = val
    score_recon = generated_views_config(seed=0, device=a.device)
    rows = []
    head = "| object | frame | seed | variant | views PSNR | SSIM | mask IoU | consistency dB | Chamfer-L1 | F@1% | F@2% | template F@2% mean / best | views s | recon s |"
    print(head)
    print("|" + "---|" * (head.count("|") - 1))
    for folder, frame, seed in ((fo, fr, sd) for fo in folders for fr in frames for sd in seeds):
        truth = read_transforms(folder)
        if not 0 <= frame < len(truth.frames):
            sys.exit(f"--input-frames: {folder} has frames 0..{len(truth.frames) - 1}, not {frame}")
        phi = float(azimuths(truth)[frame])
        true_mesh = trimesh.load(folder / "mesh.glb", force="mesh")
        if frame == frames[0] and seed == seeds[0]:
            t_mean, t_best = template_scores(templates, true_mesh)
        for variant in variants:
            name = f"{folder.name}_f{frame}_s{seed}_{variant}"
            glb = a.out / f"{name}.glb"
            res = make_asset(
                folder / truth.frames[frame].file_path,
                glb,
                replace_fields(replace_fields(base, {**VARIANTS[variant], "views.seed": seed, "recon.seed": seed}), overrides),
                keep_views=a.out / f"{name}_views",
                overwrite=True,
            )
            s, (p, q, iou), a_ref = views_scores(a.out / f"{name}_views", folder, phi)
            geo = geometry_scores(mesh_in_true_frame(glb, s, phi, a_ref), true_mesh)
            cons = reprojection(a.out / f"{name}_views", score_recon)
            row = {
                "object": folder.name,
                "input_frame": frame,
                "seed": seed,
                "variant": variant,
                "input_azimuth": phi,
                "reference_pose": res.reference_pose,
                "reflection": s,
                "psnr": float(p),
                "ssim": float(q),
                "mask_iou": iou,
                "consistency_db": cons,
                "chamfer_l1": geo.chamfer_l1,
                "f1": geo.fscore[0.01],
                "f2": geo.fscore[0.02],
                "template_f2_mean": t_mean,
                "template_f2_best": t_best,
                **{f"{k}_s": v for k, v in res.timings.items()},
            }
            rows.append(row)
            print(
                f"| {folder.name} | {frame} | {seed} | {variant} | {p:.2f} | {q:.3f} | {iou:.3f} | {cons:.2f} | {geo.chamfer_l1:.3f} | {geo.fscore[0.01]:.3f} | "
                f"{geo.fscore[0.02]:.3f} | {t_mean:.3f} / {t_best:.3f} | {res.timings['views']:.1f} | {res.timings['recon']:.1f} |",
                flush=True,
            )
    keys = ["psnr", "ssim", "mask_iou", "consistency_db", "chamfer_l1", "f1", "f2", "template_f2_mean", "template_f2_best", "views_s", "recon_s"]
    means = {}
    for variant in variants:
        vr = [r for r in rows if r["variant"] == variant]
        m = means[variant] = {k: float(np.mean([r[k] for r in vr])) for k in keys}
        print(
            f"| **mean of {len(vr)}** | | | {variant} | {m['psnr']:.2f} | {m['ssim']:.3f} | {m['mask_iou']:.3f} | {m['consistency_db']:.2f} | "
            f"{m['chamfer_l1']:.3f} | {m['f1']:.3f} | {m['f2']:.3f} | {m['template_f2_mean']:.3f} / {m['template_f2_best']:.3f} | "
            f"{m['views_s']:.1f} | {m['recon_s']:.1f} |"
        )
    out = {"rows": rows, "mean": means, "args": {k: str(v) for k, v in vars(a).items()}, "time": time.time()}
    (a.out / "eval_asset.json").write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()

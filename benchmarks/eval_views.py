"""Fidelity and consistency of generated views against true renders (Markdown table, two rows).

    python3 benchmarks/eval_views.py --model MODEL --orbits-dir C/orbits [--input-frame 0] [--steps 50] \
        [--guidance 1.0] [--max-objects 6] [--backbone SPEC] [--device auto] [--seed 0] --out OUT

For every orbit folder (``mirage3d data render --orbits``: a nerfstudio folder per object, or one such
folder), frame ``--input-frame`` is the input (already in the training framing, so only padded/resized).
Its pose is estimated with MODEL/poses' pose model. Pose azimuths are known only up to a rotation and a
reflection, so each generated pose k is placed at true azimuth φ_in + s·(a_k − a_ref), with the reflection
s fitted once by ``best_alignment`` of the pose model's assignments of all orbit frames against their true
azimuths; it is then compared with the orbit frame of nearest azimuth. Metrics over generated views (the
reference excluded): PSNR and SSIM (RGB on white), mask IoU (generated alpha by the white threshold of
``mirage3d views`` vs true alpha > 0.5), feature similarity (cosine of the mean-pooled backbone features,
the pose model's backbone unless --backbone). Rows: independent sampling, cross-frame attention.
Writes OUT/eval_views.json and OUT/<object>_<row>.png.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from mirage3d.cameras import circular_difference, position_to_spherical
from mirage3d.data.collection import load_model_image
from mirage3d.diffusion.pipeline import CrossFrameConfig
from mirage3d.diffusion.preprocess import PreparedImage
from mirage3d.diffusion.views import contact_sheet, load_model, white_alpha
from mirage3d.io import atomic_save_image, read_transforms
from mirage3d.poses.evaluate import best_alignment
from mirage3d.recon.metrics import psnr, ssim


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    inter, union = np.logical_and(a, b).sum(), np.logical_or(a, b).sum()
    return float(inter / union) if union else 1.0


def orbit_folders(root: Path) -> list[Path]:
    if (root / "transforms.json").exists():
        return [root]
    folders = sorted(p for p in root.iterdir() if (p / "transforms.json").exists())
    if not folders:
        raise SystemExit(f"no orbit folders (with transforms.json) in {root}")
    return folders


def frame_azimuths(t) -> np.ndarray:
    az, _, _ = position_to_spherical(t.c2w()[:, :3, 3])
    return np.asarray(az)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, required=True)
    ap.add_argument("--orbits-dir", type=Path, required=True)
    ap.add_argument("--input-frame", type=int, default=0)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--guidance", type=float, default=1.0)
    ap.add_argument("--layers", default="all", help="cross-frame attention layers")
    ap.add_argument("--max-objects", type=int, default=0, help="0 = all")
    ap.add_argument("--backbone", default=None, help="feature backbone spec (default: the pose model's)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()

    pipe = load_model(args.model, args.device, need_pose_model=True)
    pipe.to(dtype=getattr(torch, args.dtype))
    pipe.set_progress_bar_config(disable=True)
    device, res = pipe.device, pipe.resolution
    pose_model = pipe.pose_model
    if args.backbone:
        from mirage3d.poses.features import load_backbone

        backbone = load_backbone(args.backbone)
    else:
        if pose_model.backbone is None:
            from mirage3d.poses.features import load_backbone

            pose_model.backbone = load_backbone(pose_model.backbone_ref)
        backbone = pose_model.backbone
    backbone.to(device)
    pose_az = np.array([c.azimuth_deg for c in pipe.cameras])

    folders = orbit_folders(args.orbits_dir)[: args.max_objects or None]
    objects = []
    for folder in folders:
        t = read_transforms(folder)
        loaded = [load_model_image(folder / f.file_path, res) for f in t.frames]
        rgb = torch.stack([torch.from_numpy(c).permute(2, 0, 1) for c, _ in loaded]).float()  # (N, 3, R, R) in [0, 1]
        alpha = np.stack([a for _, a in loaded])  # (N, R, R)
        labels, _ = pose_model.assign((rgb * 2 - 1).to(device), torch.from_numpy(alpha)[:, None].float().to(device))
        objects.append({"name": folder.name, "rgb": rgb, "alpha": alpha, "az": frame_azimuths(t), "labels": np.asarray(labels)})
    all_pred = np.concatenate([pose_az[o["labels"]] for o in objects])
    all_true = np.concatenate([o["az"] for o in objects])
    med_err, rotation, reflected = best_alignment(all_pred, all_true)
    sign = -1.0 if reflected else 1.0
    print(f"pose model on {len(all_true)} orbit frames: median azimuth error {med_err:.1f}° after alignment (reflected={reflected})")

    rows_cfg = [
        ("independent", CrossFrameConfig(enabled=False)),
        ("cross-frame", CrossFrameConfig(layers=args.layers)),
    ]
    args.out.mkdir(parents=True, exist_ok=True)
    results: dict[str, dict[str, list[float]]] = {name: {"psnr": [], "ssim": [], "iou": [], "feat": [], "az_gap": []} for name, _ in rows_cfg}
    seconds: dict[str, float] = {name: 0.0 for name, _ in rows_cfg}
    for o in objects:
        i = args.input_frame
        prepared = PreparedImage(o["rgb"][i].permute(1, 2, 0).numpy(), o["alpha"][i].astype(np.float32), (0, 0, res, res), "alpha")
        ref_pose = int(o["labels"][i])
        gen_poses = [k for k in range(len(pose_az)) if k != ref_pose]
        target_az = o["az"][i] + sign * (pose_az[gen_poses] - pose_az[ref_pose])
        match = [int(np.argmin(circular_difference(o["az"], a))) for a in target_az]
        gap = circular_difference(o["az"][match], target_az)
        for name, cross in rows_cfg:
            t0 = time.perf_counter()
            out = pipe(
                gen_poses,
                num_inference_steps=args.steps,
                guidance_scale=args.guidance,
                generator=torch.Generator().manual_seed(args.seed),
                output_type="np",
                image=prepared,
                reference_pose=ref_pose,
                cross_frame=cross,
            )
            seconds[name] += time.perf_counter() - t0
            views = np.asarray(out.images)[[j for j, p in enumerate(out.poses) if p != ref_pose]]  # (K, R, R, 3), order of gen_poses
            gen = torch.from_numpy(views).permute(0, 3, 1, 2).float()
            true = o["rgb"][match]
            r = results[name]
            gen_hwc, true_hwc = views, true.permute(0, 2, 3, 1).numpy()  # (K, R, R, 3) each
            r["psnr"] += [psnr(g, t) for g, t in zip(gen_hwc, true_hwc, strict=True)]
            r["ssim"] += [ssim(g, t) for g, t in zip(gen_hwc, true_hwc, strict=True)]
            gen_alpha = white_alpha(views, 0.03, 0.12) > 0.5
            r["iou"] += [mask_iou(g, a > 0.5) for g, a in zip(gen_alpha, o["alpha"][match], strict=True)]
            with torch.no_grad():
                fg = backbone((gen * 2 - 1).to(device), None).float().mean(dim=(1, 2))
                ft = backbone((true * 2 - 1).to(device), None).float().mean(dim=(1, 2))
            r["feat"] += F.cosine_similarity(fg, ft, dim=1).cpu().tolist()
            r["az_gap"] += gap.tolist()
            sheet = [np.dstack([v, np.ones(v.shape[:2])]) for v in views] + [
                np.dstack([t.permute(1, 2, 0).numpy(), np.ones((res, res))]) for t in true
            ]
            atomic_save_image(args.out / f"{o['name']}_{name}.png", contact_sheet(sheet, cols=len(views)))

    print(
        f"\n{len(objects)} objects, {len(pose_az) - 1} generated views each, {args.steps} DDIM steps, CFG {args.guidance:g}; "
        f"mean azimuth gap to the matched true frame {np.mean(results[rows_cfg[0][0]]['az_gap']):.1f}°\n"
    )
    print("| sampling | PSNR ↑ | SSIM ↑ | mask IoU ↑ | feature cos ↑ | s / object |")
    print("|---|---|---|---|---|---|")
    summary = {}
    for name, _ in rows_cfg:
        r = results[name]
        summary[name] = {k: float(np.mean(v)) for k, v in r.items()} | {"seconds_per_object": seconds[name] / len(objects)}
        s = summary[name]
        print(f"| {name} | {s['psnr']:.2f} | {s['ssim']:.3f} | {s['iou']:.3f} | {s['feat']:.3f} | {s['seconds_per_object']:.1f} |")
    (args.out / "eval_views.json").write_text(
        json.dumps(
            {
                "args": {k: str(v) for k, v in vars(args).items()},
                "alignment": {"median_error_deg": med_err, "rotation_deg": rotation, "reflected": reflected},
                "rows": summary,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()

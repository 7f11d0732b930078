"""Benchmark ``mirage3d recon`` on orbit renders of the shared meshes: speed per phase and accuracy.

For each orbit folder (``C/orbits/<mesh>/``: N views at one elevation + the true ``mesh.glb`` in world
frame) and each view count V, recon runs on every (N/V)-th view; the views half-way between training
azimuths are held out. Prints a Markdown table: views, res, seconds per phase, total, Chamfer-L1 and
F-score at 1 % / 2 % of the true bounding-box diagonal, PSNR / SSIM of unlit renders of the GLB at the
held-out cameras vs the true renders (on white). Writes only under --out.

    python3 benchmarks/bench_recon.py --meshes ../shared/meshes/cars --limit 2 --out /tmp/bench_recon
    python3 benchmarks/bench_recon.py --collection C --views 16 8 --device cuda --out /tmp/bench_recon
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import sys
from pathlib import Path

os.environ.setdefault("PYOPENGL_PLATFORM", "egl")
os.environ.setdefault("PYGLET_HEADLESS", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
import trimesh  # noqa: E402

from mirage3d.io import Transforms, composite_on_white, load_image, read_transforms, rgba_to_array, write_transforms  # noqa: E402
from mirage3d.recon import ReconConfig, reconstruct  # noqa: E402
from mirage3d.recon.mesh import WORLD_TO_GLTF  # noqa: E402
from mirage3d.recon.metrics import geometry_scores, psnr, ssim  # noqa: E402
from mirage3d.recon.render import render_mesh  # noqa: E402


def make_collection(meshes: Path, out: Path, orbits: int, res: int, limit: int) -> Path:
    from mirage3d.data.render import RenderConfig, render_collection

    src = out / "meshes"
    if src.exists():
        shutil.rmtree(src)
    src.mkdir(parents=True)
    files = sorted(meshes.rglob("*.glb")) if meshes.is_dir() else [meshes]
    for f in files[:limit] if limit else files:
        (src / f.name).symlink_to(f.resolve())
        for tex in (f.parent / "Textures",):  # Kenney meshes reference Textures/colormap.png
            if tex.is_dir() and not (src / "Textures").exists():
                (src / "Textures").symlink_to(tex.resolve())
    coll = out / "collection"
    render_collection(src, coll, RenderConfig(n_per_mesh=1, res=res, orbits=orbits), overwrite=True)
    return coll


def split(n: int, v: int) -> tuple[list[int], list[int]]:
    """Training views: every (n/v)-th; held out: the views half-way between them."""
    stride = max(1, n // v)
    train = list(range(0, n, stride))[:v]
    held = [i + stride // 2 for i in train if stride >= 2 and i + stride // 2 < n]
    return train, held


def perturb(c2w: np.ndarray, deg: float, rng: np.random.Generator) -> np.ndarray:
    """A camera rotated by ``deg`` about a random axis through its centre and shifted by deg·π/180 of its distance."""
    from scipy.spatial.transform import Rotation

    axis = rng.normal(size=3)
    R = Rotation.from_rotvec(np.deg2rad(deg) * axis / np.linalg.norm(axis)).as_matrix()
    out = c2w.copy()
    out[:3, :3] = R @ c2w[:3, :3]
    shift = rng.normal(size=3)
    out[:3, 3] += np.deg2rad(deg) * np.linalg.norm(c2w[:3, 3]) * shift / np.linalg.norm(shift)
    return out


def subset_folder(orbit: Path, t: Transforms, idx: list[int], dst: Path, perturb_deg: float = 0.0) -> Path:
    if dst.exists():
        shutil.rmtree(dst)
    (dst / "images").mkdir(parents=True)
    frames = []
    rng = np.random.default_rng(0)
    for i in idx:
        fr = t.frames[i]
        shutil.copy(orbit / fr.file_path, dst / "images" / Path(fr.file_path).name)
        m = perturb(fr.transform_matrix, perturb_deg, rng) if perturb_deg > 0 else fr.transform_matrix
        frames.append(type(fr)(f"images/{Path(fr.file_path).name}", m, {}))
    write_transforms(dst / "transforms.json", Transforms(t.w, t.h, t.fl_x, t.fl_y, t.cx, t.cy, frames))
    return dst


def evaluate(glb: Path, orbit: Path, t: Transforms, held: list[int]) -> dict[str, float]:
    pred = trimesh.load(glb, force="mesh")
    pred.apply_transform(np.linalg.inv(WORLD_TO_GLTF))  # file (+Y up) → world (+Z up)
    true = trimesh.load(orbit / "mesh.glb", force="mesh")
    g = geometry_scores(pred, true)
    out = {"chamfer": g.chamfer_l1, "f1": g.fscore[0.01], "f2": g.fscore[0.02], "psnr": float("nan"), "ssim": float("nan")}
    if held:
        scene = trimesh.load(glb)  # keep the texture
        for geom in scene.geometry.values():
            geom.apply_transform(np.linalg.inv(WORLD_TO_GLTF))
        c2w = np.stack([t.frames[i].transform_matrix for i in held])
        ren = render_mesh(scene, c2w, t.K, t.w, t.h, flat=True)
        gt = np.stack([rgba_to_array(load_image(orbit / t.frames[i].file_path)) for i in held])
        a, b = composite_on_white(ren), composite_on_white(gt)
        out["psnr"] = float(np.mean([psnr(x, y) for x, y in zip(a, b)]))
        out["ssim"] = float(np.mean([ssim(x, y) for x, y in zip(a, b)]))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--collection", type=Path, help="a collection rendered with --orbits (uses C/orbits/*/)")
    src.add_argument("--meshes", type=Path, help="mesh file or folder: render orbits here first (mirage3d.data.render)")
    ap.add_argument("--out", type=Path, required=True, help="scratch folder (everything is written here)")
    ap.add_argument("--orbits", type=int, default=32, help="orbit views rendered per mesh with --meshes")
    ap.add_argument("--img-res", type=int, default=128, help="image side with --meshes")
    ap.add_argument("--limit", type=int, default=0, help="first N meshes only (0 = all)")
    ap.add_argument("--views", type=int, nargs="+", default=[16, 8], help="training view counts")
    ap.add_argument("--iters", type=int, default=ReconConfig.iters)
    ap.add_argument("--res", type=int, default=ReconConfig.res)
    ap.add_argument("--batch-rays", type=int, default=ReconConfig.batch_rays)
    ap.add_argument("--faces", type=int, default=ReconConfig.faces)
    ap.add_argument("--refine-cameras", action="store_true")
    ap.add_argument("--perturb-deg", type=float, default=0.0,
                    help="rotate each training camera by this many degrees about a random axis (and shift it by the "
                         "same fraction of its distance, in radians) to mimic approximate cameras")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    ap.add_argument("--device", default="auto")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    coll = args.collection or make_collection(args.meshes, args.out, args.orbits, args.img_res, args.limit)
    orbits = sorted(p for p in (coll / "orbits").iterdir() if (p / "transforms.json").exists())
    if args.limit:
        orbits = orbits[: args.limit]
    if not orbits:
        sys.exit(f"no orbit folders with transforms.json under {coll / 'orbits'}")
    dev = "cuda" if args.device == "auto" and torch.cuda.is_available() else ("cpu" if args.device == "auto" else args.device)
    print(f"machine: {platform.node()} {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch threads "
          f"{torch.get_num_threads()}, device {dev}" + (f" ({torch.cuda.get_device_name()})" if dev.startswith("cuda") else ""))
    print(f"settings: iters {args.iters}, res {args.res}, batch {args.batch_rays}, faces {args.faces}, "
          f"refine_cameras {args.refine_cameras}, perturb {args.perturb_deg} deg")
    print("\n| mesh | views | res | iters | load s | fit s | mesh s | texture s | export s | total s | train PSNR | Chamfer-L1 | F@1% | F@2% | PSNR | SSIM | faces |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    rows = []
    for orbit in orbits:
        t = read_transforms(orbit)
        for v in args.views:
            train, held = split(len(t.frames), v)
            views_dir = subset_folder(orbit, t, train, args.out / "views" / f"{orbit.name}_{v}", args.perturb_deg)
            cfg = ReconConfig(iters=args.iters, res=args.res, batch_rays=args.batch_rays, faces=args.faces,
                              device=dev, refine_cameras=args.refine_cameras)
            glb = args.out / "meshes_out" / f"{orbit.name}_{v}.glb"
            res = reconstruct(views_dir, glb, cfg)
            m = evaluate(glb, orbit, t, held)
            tm = res.timings
            rows.append((v, tm["total"], m))
            print(f"| {orbit.name} | {len(train)} | {args.res} | {args.iters} | {tm['load']:.1f} | {tm['fit']:.1f} | {tm['mesh']:.1f} | "
                  f"{tm['texture']:.1f} | {tm['export']:.1f} | {tm['total']:.1f} | {res.psnr:.2f} | {m['chamfer']:.4f} | "
                  f"{m['f1']:.3f} | {m['f2']:.3f} | {m['psnr']:.2f} | {m['ssim']:.3f} | {res.faces} |", flush=True)
    for v in args.views:
        sel = [r for r in rows if r[0] == v]
        if len(sel) > 1:
            mean = {k: float(np.mean([r[2][k] for r in sel])) for k in sel[0][2]}
            print(f"| **mean** | {v} | {args.res} | {args.iters} | | | | | | {np.mean([r[1] for r in sel]):.1f} | | "
                  f"{mean['chamfer']:.4f} | {mean['f1']:.3f} | {mean['f2']:.3f} | {mean['psnr']:.2f} | {mean['ssim']:.3f} | |")


if __name__ == "__main__":
    main()

"""Benchmark ``mirage3d recon`` on orbit renders of the shared meshes: accuracy, camera recovery, speed.

For each orbit folder (``C/orbits/<mesh>/``: N views at one elevation + the true ``mesh.glb`` in world
frame) and each view count V, recon runs on every (N/V)-th view; the views half-way between training
azimuths are held out. Camera errors (``--perturb``, one or more, each run with ``--refine off on``):

* ``none``: the true cameras;
* ``azA+B``: every camera turned about the object's centre by a random azimuth in ±A° and then B° about a
  random axis through the centre (``az10+3``; ``az20`` = ±20° azimuth only): wrong pose-cluster azimuths;
* ``degD``: every camera rotated D° about a random axis through its own centre and shifted by D·π/180 of
  its distance in a random direction (the older ``--perturb-deg D``).

``--reference``: the first training view keeps its true camera and is the reference view, as the input photo
is among make-asset's generated views (its camera is the one known exactly; refinement never moves it, and it
fixes the frame: without it, the cameras' common error moves the whole reconstruction, which no view can reveal).

Prints a Markdown table: mesh, views, perturbation, refinement, seconds per phase, Chamfer-L1, F-score at
1 % / 2 % of the true bounding-box diagonal, PSNR / SSIM of unlit renders of the GLB at the held-out (true)
cameras vs the true renders, mean camera rotation error before → after (the errors' common rotation, which
no reconstruction can see without a reference view, removed), then the means per setting. Writes only
under --out.

    python3 benchmarks/bench_recon.py --meshes ../shared/meshes/cars --limit 2 --out /tmp/bench_recon
    python3 benchmarks/bench_recon.py --collection C --views 16 --perturb none az10+3 deg5 --refine off on --out /tmp/br
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import shutil
import sys
import time
from pathlib import Path

os.environ.setdefault("PYOPENGL_PLATFORM", "egl")
os.environ.setdefault("PYGLET_HEADLESS", "1")

import numpy as np
import torch
import trimesh
from scipy.spatial.transform import Rotation

from mirage3d.errors import InputError
from mirage3d.io import composite_on_white, load_image, read_transforms, rgba_to_array
from mirage3d.recon import ReconConfig, load_views, reconstruct
from mirage3d.recon.mesh import WORLD_TO_GLTF
from mirage3d.recon.metrics import geometry_scores, psnr, ssim
from mirage3d.recon.render import render_mesh


def make_collection(meshes: list[Path], out: Path, orbits: int, res: int, limit: int) -> Path:
    from mirage3d.data.render import RenderConfig, render_collection

    src = out / "meshes"
    if src.exists():
        shutil.rmtree(src)
    src.mkdir(parents=True)
    files = [f for m in meshes for f in (sorted(m.rglob("*.glb")) if m.is_dir() else [m])]
    for f in files[:limit] if limit else files:
        (src / f.name).symlink_to(f.resolve())
        tex = f.parent / "Textures"  # Kenney meshes reference Textures/colormap.png
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
    axis = rng.normal(size=3)
    R = Rotation.from_rotvec(np.deg2rad(deg) * axis / np.linalg.norm(axis)).as_matrix()
    out = c2w.copy()
    out[:3, :3] = R @ c2w[:3, :3]
    shift = rng.normal(size=3)
    out[:3, 3] += np.deg2rad(deg) * np.linalg.norm(c2w[:3, 3]) * shift / np.linalg.norm(shift)
    return out


def turn_about(c2w: np.ndarray, az_deg: float, axis_deg: float, centre: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A camera turned about ``centre``: ``az_deg`` about world +Z, then ``axis_deg`` about a random axis."""
    axis = rng.normal(size=3)
    R = (
        Rotation.from_rotvec(np.deg2rad(axis_deg) * axis / np.linalg.norm(axis)).as_matrix()
        @ Rotation.from_euler("z", az_deg, degrees=True).as_matrix()
    )
    out = c2w.copy()
    out[:3, :3] = R @ c2w[:3, :3]
    out[:3, 3] = R @ (c2w[:3, 3] - centre) + centre
    return out


def perturb_cameras(c2w: np.ndarray, mode: str, seed: int) -> np.ndarray:
    """Apply a ``--perturb`` mode (none, azA[+B], degD) to cameras (N, 4, 4); reproducible by ``seed``."""
    rng = np.random.default_rng(seed)
    if mode == "none":
        return c2w.copy()
    if mode.startswith("az"):
        a, _, b = mode[2:].partition("+")
        return np.stack([turn_about(m, rng.uniform(-float(a), float(a)), float(b or 0), np.zeros(3), rng) for m in c2w])
    if mode.startswith("deg"):
        return np.stack([perturb(m, float(mode[3:]), rng) for m in c2w])
    raise SystemExit(f"--perturb {mode!r}: use none, azA, azA+B or degD")


def rotation_errors(c2w: np.ndarray, true: np.ndarray) -> np.ndarray:
    """Per-view rotation error (deg) of cameras vs the truth after removing their mean common rotation."""
    rel = Rotation.from_matrix(np.einsum("nij,nkj->nik", c2w[:, :3, :3], true[:, :3, :3]))  # R · R_trueᵀ
    return np.rad2deg((rel.mean().inv() * rel).magnitude())


def evaluate(glb: Path, orbit: Path, t, held: list[int]) -> dict[str, float]:
    pred = trimesh.load(glb, force="mesh")
    pred.apply_transform(np.linalg.inv(WORLD_TO_GLTF))  # file (+Y up) → world (+Z up)
    true = trimesh.load(orbit / "mesh.glb", force="mesh")
    g = geometry_scores(pred, true)
    pred.merge_vertices(merge_tex=True, merge_norm=True)  # the GLB splits vertices along UV seams
    out = {
        "chamfer": g.chamfer_l1,
        "f1": g.fscore[0.01],
        "f2": g.fscore[0.02],
        "psnr": float("nan"),
        "ssim": float("nan"),
        "watertight": float(pred.is_watertight),
        "components": float(len(pred.split(only_watertight=False))),
    }
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


def parse_sets(items: list[str]) -> dict:
    """``key=value`` overrides of ReconConfig fields (values as Python literals)."""
    import ast

    fields = {f.name for f in dataclasses.fields(ReconConfig)}
    out = {}
    for it in items:
        k, _, v = it.partition("=")
        if k not in fields:
            raise SystemExit(f"--set {it!r}: {k} is not a ReconConfig field")
        out[k] = ast.literal_eval(v)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--collection", type=Path, help="a collection rendered with --orbits (uses C/orbits/*/)")
    src.add_argument("--meshes", type=Path, nargs="+", help="mesh files or folders: render orbits here first (mirage3d.data.render)")
    ap.add_argument("--out", type=Path, required=True, help="scratch folder (everything is written here)")
    ap.add_argument("--orbits", type=int, default=32, help="orbit views rendered per mesh with --meshes")
    ap.add_argument("--img-res", type=int, default=128, help="image side with --meshes")
    ap.add_argument("--limit", type=int, default=0, help="first N meshes only (0 = all)")
    ap.add_argument("--views", type=int, nargs="+", default=[16, 8], help="training view counts")
    ap.add_argument("--perturb", nargs="+", default=["none"], help="camera errors: none, azA, azA+B, degD (see above)")
    ap.add_argument("--perturb-deg", type=float, default=0.0, help="shorthand for --perturb degD")
    ap.add_argument("--refine", nargs="+", default=["off"], choices=["off", "on"], help="camera refinement settings to run")
    ap.add_argument("--refine-cameras", action="store_true", help="shorthand for --refine on")
    ap.add_argument("--set", nargs="*", default=[], help="ReconConfig overrides, e.g. iters=300 res=96")
    ap.add_argument(
        "--reference",
        action="store_true",
        help="the first training view keeps its true camera and is the reference view (as the input photo is in make-asset's views)",
    )
    ap.add_argument("--warmup", action="store_true", help="run the first reconstruction once untimed (CUDA start-up)")
    ap.add_argument("--keep", type=int, default=1, help="keep this many GLBs per setting (the rest are deleted)")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    ap.add_argument("--device", default="auto")
    args = ap.parse_args()
    perturbs = [f"deg{args.perturb_deg:g}"] if args.perturb_deg else args.perturb
    refines = ["on"] if args.refine_cameras else args.refine
    sets = parse_sets(args.set)
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
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(
        f"machine: {platform.node()} {platform.processor() or platform.machine()}, {os.cpu_count()} cores, load {load:.1f}, "
        f"torch threads {torch.get_num_threads()}, device {dev}" + (f" ({torch.cuda.get_device_name()})" if dev.startswith("cuda") else "")
    )
    print(
        f"date {time.strftime('%Y-%m-%d %H:%M')}; settings: {sets or 'defaults'}; perturb {perturbs}; refine {refines}"
        + ("; view 0 exact and the reference" if args.reference else "")
    )
    head = (
        "| mesh | views | cameras | refine | fit s | mesh s | texture s | total s | Chamfer-L1 | F@1% | F@2% | PSNR | SSIM "
        "| cam err ° | watertight | parts |"
    )
    print("\n" + head + "\n" + "|---" * (head.count("|") - 1) + "|", flush=True)
    rows = []
    warm = args.warmup
    for mi, orbit in enumerate(orbits):
        t = read_transforms(orbit)
        full = load_views(orbit)
        for v in args.views:
            train, held = split(len(t.frames), v)
            for pmode in perturbs:
                base = full.subset(train)
                base.c2w = perturb_cameras(base.c2w, pmode, seed=1000 * mi + v)
                if args.reference:  # the first training view keeps its true camera and is the reference view
                    base.c2w[0], base.reference = full.c2w[train[0]], 0
                err0 = rotation_errors(base.c2w, full.c2w[train]).mean()
                for ref in refines:
                    cfg = ReconConfig(device=dev, **{**sets, "refine_cameras": ref == "on"})
                    glb = args.out / "meshes_out" / f"{orbit.name}_{v}_{pmode}_{ref}.glb"
                    try:
                        if warm:
                            reconstruct(base, glb, cfg)
                            warm = False
                        res = reconstruct(base, glb, cfg)
                    except InputError as e:  # e.g. an empty hull from wrong cameras: a failed row scores 0
                        print(f"| {orbit.name} | {v} | {pmode} | {ref} | failed: {e} |", flush=True)
                        rows.append(
                            (
                                (v, pmode, ref),
                                float("nan"),
                                {
                                    k: (0.0 if k in ("f1", "f2") else float("nan"))
                                    for k in ("chamfer", "f1", "f2", "psnr", "ssim", "watertight", "components")
                                },
                                err0,
                                float("nan"),
                            )
                        )
                        continue
                    m = evaluate(glb, orbit, t, held)
                    err1 = rotation_errors(res.fit.c2w, full.c2w[train]).mean()
                    tm = res.timings
                    rows.append(((v, pmode, ref), tm["total"], m, err0, err1))
                    print(
                        f"| {orbit.name} | {v} | {pmode} | {ref} | {tm['fit']:.2f} | {tm['mesh']:.2f} | {tm['texture']:.2f} | "
                        f"{tm['total']:.2f} | {m['chamfer']:.4f} | {m['f1']:.3f} | {m['f2']:.3f} | {m['psnr']:.2f} | {m['ssim']:.3f} | "
                        f"{err0:.2f} → {err1:.2f} | {m['watertight']:.0f} | {m['components']:.0f} |",
                        flush=True,
                    )
                    if sum(1 for r in rows if r[0] == (v, pmode, ref)) > args.keep:
                        for f in res.files:
                            f.unlink(missing_ok=True)
    print("\nmeans per setting:\n")
    print("| views | cameras | refine | objects | total s | Chamfer-L1 | F@1% | F@2% | PSNR | SSIM | cam err ° | watertight |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for key in dict.fromkeys(r[0] for r in rows):
        sel = [r for r in rows if r[0] == key]
        mean = {k: float(np.nanmean([r[2][k] for r in sel])) for k in sel[0][2]}
        failed = sum(1 for r in sel if not np.isfinite(r[1]))
        print(
            f"| {key[0]} | {key[1]} | {key[2]} | {len(sel)}{f' ({failed} failed, F = 0)' if failed else ''} | "
            f"{np.nanmean([r[1] for r in sel]):.2f} | {mean['chamfer']:.4f} | "
            f"{mean['f1']:.3f} | {mean['f2']:.3f} | {mean['psnr']:.2f} | {mean['ssim']:.3f} | "
            f"{np.mean([r[3] for r in sel]):.2f} → {np.nanmean([r[4] for r in sel]):.2f} | {mean['watertight']:.2f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()

"""Time ``render_collection`` on a mesh folder for several worker counts; prints a Markdown table.

    python3 benchmarks/bench_render.py ../shared/meshes/cars --out /tmp/bench_render --n-per-mesh 200 --res 128 --workers 1 2

Writes only under --out (one collection per worker count, removed after timing unless --keep).
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import time
from pathlib import Path

os.environ.setdefault("PYOPENGL_PLATFORM", "egl")
os.environ.setdefault("PYGLET_HEADLESS", "1")

from mirage3d.data.render import RenderConfig, render_collection


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("meshes", type=Path)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--n-per-mesh", type=int, default=200)
    ap.add_argument("--res", type=int, default=128)
    ap.add_argument("--supersample", type=int, default=1)
    ap.add_argument("--orbits", type=int, default=0)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--keep", action="store_true", help="keep the rendered collections")
    args = ap.parse_args()

    args.out.mkdir(parents=True, exist_ok=True)
    print(f"machine: {platform.node()} ({os.cpu_count()} CPUs), res {args.res}, supersample {args.supersample}, orbits {args.orbits}\n")
    print("| images | seconds | img/s | workers |")
    print("|---:|---:|---:|---:|")
    for w in args.workers:
        dest = args.out / f"workers{w}"
        cfg = RenderConfig(n_per_mesh=args.n_per_mesh, res=args.res, supersample=args.supersample, orbits=args.orbits, workers=w)
        t0 = time.perf_counter()
        result = render_collection(args.meshes, dest, cfg, overwrite=True)
        dt = time.perf_counter() - t0  # everything: mesh loading, worker start-up, PNGs, ground truth, contact sheet
        n = result.n_images + len(result.mesh_ids) * args.orbits
        print(f"| {n} | {dt:.1f} | {n / dt:.1f} | {w} |", flush=True)
        if not args.keep:
            shutil.rmtree(dest)


if __name__ == "__main__":
    main()

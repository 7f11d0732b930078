"""Contact sheet for checking which way meshes face: each row is one mesh seen from its front (azimuth 0),
its back (180) and its left side (90), as ``mirage3d data render`` places it (``mirage3d/data/meshes.json``).

A correct row shows headlights or a grille in the first column and the long bonnet on the left of the side
view (world +X, the front, is on the image's left when the camera sits on +Y).

    python3 scripts/check_mesh_fronts.py ../shared/meshes/cars ../shared/meshes/cars-more -o docs/figures/mesh_fronts.png
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

os.environ.setdefault("PYOPENGL_PLATFORM", "egl")

from mirage3d.cameras import (
    Intrinsics,
    focal_from_fov,
    orbit_c2w,
)
from mirage3d.data.meshes import find_meshes
from mirage3d.data.render import render_views


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folders", nargs="+", type=Path)
    ap.add_argument("-o", "--out", type=Path, required=True)
    ap.add_argument("--res", type=int, default=160)
    args = ap.parse_args()
    f = focal_from_fov(30.0, args.res)
    intr = Intrinsics(f, f, args.res / 2, args.res / 2, args.res, args.res)
    rows = []
    for path in [p for folder in args.folders for p in find_meshes(folder)]:
        imgs = render_views(path, [orbit_c2w(az, 12.0, 5.0) for az in (0.0, 180.0, 90.0)], intr)
        row = Image.new("RGB", (args.res * 3 + 260, args.res), "white")
        for i, im in enumerate(imgs):
            rgba = Image.fromarray(im)
            row.paste(rgba, (260 + i * args.res, 0), rgba)
        ImageDraw.Draw(row).text((6, args.res // 2 - 6), path.stem, fill="black")
        rows.append(np.asarray(row))
    header = Image.new("RGB", (args.res * 3 + 260, 18), "white")
    for i, name in enumerate(("front (az 0)", "back (az 180)", "left side (az 90)")):
        ImageDraw.Draw(header).text((264 + i * args.res, 3), name, fill="black")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.concatenate([np.asarray(header), *rows], 0)).save(args.out)
    print(f"wrote {args.out} ({len(rows)} meshes)")


if __name__ == "__main__":
    main()

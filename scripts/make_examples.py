#!/usr/bin/env python3
"""Render the example inputs in assets/examples/ from the shared meshes (not training renders).

    python3 scripts/make_examples.py [--meshes ../shared/meshes/cars] [--out assets/examples]

Each example is one car under an appearance seed that no training render uses (training seeds are drawn
by the collection's RNG from [1, 2^31); these are fixed small numbers outside that draw by construction of
the file names, and recorded in examples.json with the true azimuth/elevation for evaluation).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from mirage3d.cameras import Intrinsics, fit_radius_for_sphere, focal_from_fov, orbit_c2w
from mirage3d.data.render import render_views
from mirage3d.io import atomic_save_image, atomic_write_json

EXAMPLES = [  # (mesh file, appearance seed, azimuth, elevation)
    ("quaternius-realistic-SportsCar.glb", 7, 35.0, 15.0),
    ("quaternius-Basic_Taxi.glb", 11, 300.0, 20.0),
    ("quaternius-realistic-SUV.glb", 0, 130.0, 10.0),
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    here = Path(__file__).resolve().parents[1]
    ap.add_argument("--meshes", type=Path, default=here.parent / "shared" / "meshes" / "cars")
    ap.add_argument("--out", type=Path, default=here / "assets" / "examples")
    ap.add_argument("--res", type=int, default=256)
    a = ap.parse_args()
    f = focal_from_fov(40.0, a.res)
    intr = Intrinsics(f, f, a.res / 2, a.res / 2, a.res, a.res)
    dist = fit_radius_for_sphere(1.0, 40.0, 0.85)
    records = []
    for mesh, seed, az, el in EXAMPLES:
        rgba = render_views(a.meshes / mesh, [orbit_c2w(az, el, dist)], intr, appearance_seed=seed)[0]
        name = f"{Path(mesh).stem.split('-')[-1].lower()}.png"
        atomic_save_image(a.out / name, np.asarray(rgba))
        records.append({"file": name, "mesh": mesh, "appearance_seed": seed, "azimuth_deg": az, "elevation_deg": el, "distance": dist})
        print(f"wrote {a.out / name}")
    atomic_write_json(a.out / "examples.json", records)


if __name__ == "__main__":
    main()

"""What the views given to the reconstruction are worth: make-asset's mesh from views that are *consistent* but
of another car (Markdown table).

    python3 benchmarks/asset_views_ceiling.py [--truth DIR] [--others M1 M2 ...] [--input-azimuth 45] [--device cpu]

For each car in ``--truth`` (default: ``../shared/meshes/cars-more``, shapes the shipped model never saw), eight
views at the shipped model's pose cameras (``assets/models/car/poses/cameras.json``: 45° apart, its elevation,
distance and focal length), the first at ``--input-azimuth``, are rendered and reconstructed with the default
``ReconConfig``, in three ways:

- **8 true views**: every view of the true car (what perfect generated views would give at these cameras);
- **input + 7 of another car**: the input view of the true car, the other 7 of a training car, rendered
  exactly (a perfectly consistent "generic car", which is what the model's views amount to, `docs/asset.md`);
- **the same, stretched to the true box**: the other car scaled per axis to the true car's bounding box
  (what the template baseline knows and a photo does not tell).

The mesh is scored against the true mesh (F-score at 2 % / 1 % of its box diagonal, Chamfer-L1), as
``eval_asset.py`` scores make-asset's. Needs pyrender with EGL (or OSMesa) for the renders.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
import trimesh

from mirage3d.cameras import Intrinsics, orbit_c2w
from mirage3d.data import render as R
from mirage3d.data.meshes import load_normalised, normalised_trimesh
from mirage3d.recon import reconstruct
from mirage3d.recon.config import generated_views_config
from mirage3d.recon.mesh import WORLD_TO_GLTF
from mirage3d.recon.metrics import geometry_scores
from mirage3d.recon.views import ViewSet

SHARED = Path(__file__).resolve().parents[2] / "shared" / "meshes"
OTHERS = ["quaternius-Car_SimpleCar.glb", "quaternius-realistic-NormalCar1.glb", "quaternius-realistic-SUV.glb"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--truth", type=Path, default=SHARED / "cars-more")
    ap.add_argument("--others", type=Path, nargs="+", default=[SHARED / "cars" / n for n in OTHERS])
    ap.add_argument("--cameras", type=Path, default=Path(__file__).resolve().parents[1] / "assets/models/car/poses/cameras.json")
    ap.add_argument("--input-azimuth", type=float, default=45.0)
    ap.add_argument("--device", default="cpu")
    a = ap.parse_args()
    c0 = json.loads(a.cameras.read_text())["cameras"][0]
    intr = Intrinsics(c0["fl_x"], c0["fl_y"], c0["cx"], c0["cy"], c0["w"], c0["h"])
    c2ws = np.stack([orbit_c2w(a.input_azimuth + 45.0 * k, c0["elevation_deg"], c0["radius"]) for k in range(8)])
    cfg = generated_views_config(device=a.device, seed=0)

    def views(mesh: Path, scale: np.ndarray | None = None) -> np.ndarray:
        return np.stack([im.astype(np.float32) / 255 for im in R.render_views(mesh, c2ws, intr, scale=scale)])

    print("| true car | views | F@2% | F@1% | Chamfer-L1 |")
    print("|---|---|---|---|---|")
    rows: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for truth in sorted(a.truth.glob("*.glb")):
            true_mesh = normalised_trimesh(load_normalised(truth)).to_geometry()
            tv = views(truth)

            def score(rgba: np.ndarray, name: str, kind: str, truth: Path = truth, true_mesh: trimesh.Trimesh = true_mesh) -> None:
                out = Path(tmp) / f"{truth.stem}.glb"
                reconstruct(ViewSet(rgba, c2ws.copy(), intr.K.copy(), reference=0), out, cfg)
                m = trimesh.load(out, force="mesh")
                m.apply_transform(np.linalg.inv(WORLD_TO_GLTF))
                g = geometry_scores(m, true_mesh)
                rows.setdefault(kind, []).append(g.fscore[0.02])
                print(f"| {truth.stem} | {name} | {g.fscore[0.02]:.3f} | {g.fscore[0.01]:.3f} | {g.chamfer_l1:.3f} |", flush=True)

            score(tv, "8 true views", "true car")
            true_box = np.ptp(true_mesh.vertices, axis=0)
            for other in a.others:
                mix = views(other)
                mix[0] = tv[0]
                score(mix, f"input + 7 of {other.stem}", "another car")
                other_box = np.ptp(normalised_trimesh(load_normalised(other)).to_geometry().vertices, axis=0)
                mix = views(other, scale=true_box / other_box)
                mix[0] = tv[0]
                score(mix, f"input + 7 of {other.stem}, stretched to the true box", "another car, true box")
    print("\nmean F@2% per kind: " + "; ".join(f"{k}: {np.mean(v):.3f} ({len(v)})" for k, v in rows.items()))


if __name__ == "__main__":
    main()

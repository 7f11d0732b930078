"""How much pose discovery depends on its seed, and which unsupervised numbers tell a good run from a bad one.

    python3 benchmarks/bench_part_seeds.py --collection C --backbone MODEL --out OUT [--seeds 0-7] [--part-inits 4,16]

One feature cache (the UNet noise seed fixed at 0), then `discover_poses` for every discovery seed (the seed of
the part sample, the part k-means and the pose clustering) and number of part k-means runs, with and without
the facing + front/back scores. For each run it prints the truth-based figures (ARI, median azimuth error) beside
numbers that need no truth:
- part fit: mean cosine similarity of the sampled foreground patches to their part centre (higher = tighter parts);
- J/N: the pose clustering's objective per image (descriptors have unit variance per block, so runs compare);
- flip agreement (what `mirage3d poses discover --restarts N` keeps the highest of), the facing score's eta² (share
  of its variance the first-pass poses explain);
- consensus: mean ARI of the run's labels against the other seeds' labels of the same setting.
The last rows say what picking the run by each number would have given.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import adjusted_rand_score

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mirage3d.devices import resolve_device  # noqa: E402
from mirage3d.poses.discover import DiscoverConfig, _gather, discover_poses, fit_descriptor_model, sample_indices  # noqa: E402
from mirage3d.poses.evaluate import evaluate_poses  # noqa: E402
from mirage3d.poses.extract import ExtractConfig, extract_features  # noqa: E402
from mirage3d.poses.features import load_backbone  # noqa: E402


def seeds(spec: str) -> list[int]:
    if "-" in spec:
        a, b = spec.split("-")
        return list(range(int(a), int(b) + 1))
    return [int(x) for x in spec.split(",")]


def part_fit(cache, cfg: DiscoverConfig, device: torch.device) -> float:
    """Mean cosine similarity of the part sample's foreground patches to their nearest part centre."""
    dm = fit_descriptor_model(cache, cfg, device)
    pm = dm.parts.to(device)
    sample = _gather(cache, sample_indices(cache.num_images, cfg.sample_images, cfg.seed))
    feats = sample["feats"].to(device).float()
    fg = pm.foreground(feats, sample["fg"].to(device).float(), sample["has_mask"].bool().to(device))
    sim = (pm.embed(feats, fg) @ pm.centroids.T).amax(-1)
    return float(sim[fg >= 0.5].mean())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--collection", type=Path, required=True)
    ap.add_argument("--backbone", required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--timestep", type=int, default=200)
    ap.add_argument("--parts", type=int, default=8)
    ap.add_argument("--poses", type=int, default=8)
    ap.add_argument("--weights", default="0,1,0")
    ap.add_argument("--seeds", default="0-7")
    ap.add_argument("--part-inits", default="4")
    ap.add_argument("--w-facing", type=float, default=0.5)
    ap.add_argument("--w-front", type=float, default=0.5)
    ap.add_argument("--facing-component", type=int, default=None,
                    help="also run facing + front with this principal component as the facing axis (DiscoverConfig.facing_component)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--workers", type=int, default=8)
    args = ap.parse_args()
    device = resolve_device(args.device)
    w = [float(x) for x in args.weights.split(",")]
    bb = load_backbone(args.backbone, timestep=args.timestep, blocks=("up0",), seed=0)
    cache = extract_features(args.collection, args.out / "features", bb, ExtractConfig(batch_size=args.batch_size, flip="image", device=args.device, num_workers=args.workers))
    del bb
    settings = [("plain", 0.0, 0.0, None), ("facing + front", args.w_facing, args.w_front, None)]
    if args.facing_component is not None:
        settings.append((f"facing c{args.facing_component} + front", args.w_facing, args.w_front, args.facing_component))
    rows = []
    print("| part inits | seed | setting | ARI | median az err | part fit | J/N | flip agreement | facing eta² max | front used |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for inits, seed in itertools.product([int(x) for x in args.part_inits.split(",")], seeds(args.seeds)):
        base = DiscoverConfig(num_poses=args.poses, num_parts=args.parts, w_visibility=w[0], w_location=w[1], w_box=w[2], device=args.device, seed=seed, part_inits=inits)
        fit = part_fit(cache, base, device)
        for name, wf, wr, comp in settings:
            cfg = DiscoverConfig(**{**base.__dict__, "w_facing": wf, "w_front": wr, "facing_component": comp})
            folder = args.out / "poses" / f"i{inits}_s{seed}_{'plain' if wf == 0 else 'front'}{'' if comp is None else f'_c{comp}'}"
            ps = discover_poses(cache, args.collection, folder, cfg, overwrite=True)
            m = evaluate_poses(folder, args.collection)
            info = json.loads((folder / "poses.json").read_text())
            row = {"part_inits": inits, "seed": seed, "setting": name, "ari": m.ari, "median_error_deg": m.median_error_deg, "part_fit": fit,
                   "objective_per_image": info["objective"] / len(ps.labels), "flip_agreement": ps.flip_agreement,
                   "facing_eta2_max": max(info.get("facing_eta2", [0.0])), "front_used": info.get("front_used"), "labels": ps.labels.tolist()}  # fmt: skip
            rows.append(row)
            print(f"| {inits} | {seed} | {name} | {m.ari:.3f} | {m.median_error_deg:.1f} | {fit:.4f} | {row['objective_per_image']:.4f} | {ps.flip_agreement:.3f} | "
                  f"{row['facing_eta2_max']:.3f} | {row['front_used']} |", flush=True)  # fmt: skip
    print()
    print("| part inits | setting | ARI mean ± sd | min–max | picked by best part fit | by lowest J/N | by highest consensus | by highest flip agreement (--restarts) |")
    print("|---|---|---|---|---|---|---|---|")
    for inits, (name, _, _, _) in itertools.product([int(x) for x in args.part_inits.split(",")], settings):
        group = [r for r in rows if r["part_inits"] == inits and r["setting"] == name]
        aris = np.array([r["ari"] for r in group])
        for r in group:
            others = [adjusted_rand_score(r["labels"], o["labels"]) for o in group if o is not r]
            r["consensus"] = float(np.mean(others)) if others else 0.0

        def pick(key, best=max):
            r = best(group, key=lambda r: r[key])
            return f"{r['ari']:.3f} / {r['median_error_deg']:.1f}° (seed {r['seed']})"

        print(f"| {inits} | {name} | {aris.mean():.3f} ± {aris.std():.3f} | {aris.min():.3f}–{aris.max():.3f} | {pick('part_fit')} | "
              f"{pick('objective_per_image', min)} | {pick('consensus')} | {pick('flip_agreement')} |")  # fmt: skip
    for r in rows:
        r.pop("labels")
    (args.out / "bench_part_seeds.json").write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()

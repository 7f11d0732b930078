"""Pose discovery quality: ARI / NMI / median azimuth error per backbone and setting (Markdown table).

    python3 benchmarks/bench_poses.py --collection C --backbone MODEL --out OUT \
        [--poses 8] [--parts 8,16,24] [--timesteps 50,100,200] [--blocks "up0;up0,up1"] \
        [--weights "0.25,1,0.25;0,1,0.25;1,1,0.5"] [--flips image,features] [--centre 0,1] [--baselines] [--device cuda]

Every backbone setting (kind, timestep, blocks, flip) is extracted once into OUT/features/<name>
(resumable); every descriptor setting (P, weights) is discovered into OUT/poses/<name> and scored against
C/ground_truth.jsonl. Baselines (--baselines): random-init ViT (parts) and HOG (flat descriptor).
Writes nothing outside OUT.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mirage3d.poses.discover import DiscoverConfig, discover_poses  # noqa: E402
from mirage3d.poses.evaluate import evaluate_poses  # noqa: E402
from mirage3d.poses.extract import ExtractConfig, extract_features  # noqa: E402
from mirage3d.poses.features import load_backbone  # noqa: E402


def floats(s: str) -> list[float]:
    return [float(x) for x in s.split(",") if x.strip()]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--collection", required=True, type=Path)
    ap.add_argument("--backbone", type=Path, help="trained UNet model folder (from `mirage3d features train`)")
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--poses", default="8", help="comma-separated K values")
    ap.add_argument("--parts", default="16", help="comma-separated P values")
    ap.add_argument("--timesteps", default="100", help="comma-separated UNet timesteps")
    ap.add_argument("--blocks", default="up0", help="';'-separated block lists, e.g. 'up0;up0,up1;mid,up0'")
    ap.add_argument("--weights", default="0.25,1,0.25", help="';'-separated w_visibility,w_location,w_box triples")
    ap.add_argument("--flips", default="image", help="comma-separated flip modes: image, features")
    ap.add_argument("--pca-dim", type=int, default=64)
    ap.add_argument("--modes", default="parts", help="descriptor modes for UNet backbones: parts, flat or parts,flat")
    ap.add_argument("--colour-perms", default="1", help="comma-separated UNet colour_perms values (1..6)")
    ap.add_argument("--noise-maps", default="1", help="comma-separated UNet noise_maps values (1..32)")
    ap.add_argument("--w-facing", default="0", help="comma-separated facing weights to sweep (0 = off)")
    ap.add_argument("--w-front", default="0", help="comma-separated front/back weights to sweep (0 = off; only with a facing weight > 0)")
    ap.add_argument("--max-fixed", default="none", help="comma-separated max_self_mirror values: none, 0, 2, ...")
    ap.add_argument("--centre", default="0", help="comma-separated centre_images settings to sweep: 0, 1 or 0,1")
    ap.add_argument("--spacing", default="uniform", help="uniform or sizes")
    ap.add_argument("--baselines", action="store_true", help="also random-init ViT and HOG")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--workers", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    ks = [int(x) for x in args.poses.split(",")]
    parts = [int(x) for x in args.parts.split(",")]
    weights = [floats(w) for w in args.weights.split(";")]
    flips = [f.strip() for f in args.flips.split(",")]
    settings: list[tuple[str, dict, str]] = []  # (name, backbone spec dict for load_backbone, mode)
    if args.backbone is not None:
        for t, blocks, cp, nm in itertools.product([int(x) for x in args.timesteps.split(",")], args.blocks.split(";"), [int(x) for x in args.colour_perms.split(",")],
                                                   [int(x) for x in args.noise_maps.split(",")]):  # fmt: skip
            for mode in args.modes.split(","):  # the flat mode reads the same feature cache
                settings.append((f"unet_t{t}_{blocks.replace(',', '+')}" + (f"_cp{cp}" if cp > 1 else "") + (f"_nm{nm}" if nm > 1 else ""),
                                 {"spec": str(args.backbone), "timestep": t, "blocks": tuple(blocks.split(",")), "colour_perms": cp, "noise_maps": nm}, mode))
    if args.baselines:
        settings.append(("random-vit", {"spec": "random-vit"}, "parts"))
        settings.append(("hog", {"spec": "hog"}, "flat"))
    if not settings:
        ap.error("give --backbone and/or --baselines")

    rows = []
    centres = [bool(int(x)) for x in args.centre.split(",")]
    fixeds = [None if x.strip() == "none" else int(x) for x in args.max_fixed.split(",")]
    facings = [float(x) for x in args.w_facing.split(",")]
    fronts = [float(x) for x in args.w_front.split(",")]
    print("| backbone | flip | centre | max self-mirror | w facing | w front | P | K | w (vis, loc, box) | ARI | NMI | median az err (deg) | within 45 deg | flip agreement | extract s | discover s |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for (name, spec, mode), flip in itertools.product(settings, flips):
        bb = load_backbone(spec["spec"], timestep=spec.get("timestep", 100), blocks=spec.get("blocks", ("up0",)), seed=args.seed, colour_perms=spec.get("colour_perms", 1),
                          noise_maps=spec.get("noise_maps", 1))
        t0 = time.perf_counter()
        cache = extract_features(args.collection, args.out / "features" / f"{name}_{flip}", bb,
                                 ExtractConfig(batch_size=args.batch_size, flip=flip, device=args.device, dtype=args.dtype, num_workers=args.workers))  # fmt: skip
        t_extract = time.perf_counter() - t0
        del bb
        for k, p, w, c, mf, wf, wr in itertools.product(ks, parts if mode == "parts" else [0], weights if mode == "parts" else [weights[0]],
                                                        centres if mode == "parts" else [False], fixeds, facings, fronts):  # fmt: skip
            if wr > 0 and wf <= 0:
                continue
            tag = (f"{name}_{flip}_{mode}_K{k}_P{p}_w{'-'.join(f'{x:g}' for x in w)}" + ("_centred" if c else "") + (f"_fix{mf}" if mf is not None else "")
                   + (f"_facing{wf:g}" if wf else "") + (f"_front{wr:g}" if wr else ""))  # fmt: skip
            cfg = DiscoverConfig(num_poses=k, num_parts=max(p, 2), mode=mode, pca_dim=args.pca_dim, w_visibility=w[0], w_location=w[1], w_box=w[2],
                                 spacing=args.spacing, device=args.device, seed=args.seed, centre_images=c, max_self_mirror=mf, w_facing=wf, w_front=wr)  # fmt: skip
            t0 = time.perf_counter()
            ps = discover_poses(cache, args.collection, args.out / "poses" / tag, cfg, overwrite=True)
            t_disc = time.perf_counter() - t0
            m = evaluate_poses(args.out / "poses" / tag, args.collection)
            row = {"backbone": name, "mode": mode, "flip": flip, "centre_images": c, "max_self_mirror": mf, "w_facing": wf, "w_front": wr, "P": p if mode == "parts" else "-", "K": k, "w": w, **m.to_json(), "flip_agreement": ps.flip_agreement,
                   "extract_s": t_extract, "discover_s": t_disc}  # fmt: skip
            rows.append(row)
            wtxt = ", ".join(f"{x:g}" for x in w) if mode == "parts" else "-"
            print(f"| {name} | {flip} | {'yes' if c else 'no'} | {'-' if mf is None else mf} | {wf:g} | {wr:g} | {row['P']} | {k} | {wtxt} | {m.ari:.3f} | {m.nmi:.3f} | {m.median_error_deg:.1f} | {100 * m.within_45_deg:.0f}% | "
                  f"{ps.flip_agreement:.2f} | {t_extract:.0f} | {t_disc:.0f} |", flush=True)  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "bench_poses.json").write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()

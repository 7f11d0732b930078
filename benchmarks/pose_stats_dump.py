"""Compact per-image pose statistics from a feature cache, small enough to study pose discovery off the GPU machine.

    python3 benchmarks/pose_stats_dump.py FEATURES COLLECTION OUT [--parts 8[,16]] [--seeds 0[-7]] [--grid 2] [--device cuda]

FEATURES is a feature cache with mirror features (`--flip image`), e.g. OUT/features/<name>_image of
`bench_poses.py`. Writes to the folder OUT:
- `descriptors.safetensors`: raw part descriptors of every image (`d`) and of its flip (`f`) for a part model
  of P parts fitted as `mirage3d poses discover` does (seed 0), and the foreground boxes; with several parts
  or seeds, also `d_p{P}_s{seed}` / `f_p{P}_s{seed}` for each (`d`, `f`: the first of them);
- `pooled.safetensors`, `pooled_flip.safetensors`: unit patch features averaged over grid x grid cells of the
  object's box (mirage3d.poses.facing.box_pool) for the images and for their flips (fp16);
- `ground_truth.jsonl` and `files.json` (the cache's order).
A 6,000-image cache of 256-channel features gives about 2 x 12 MB of pooled features.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mirage3d.poses.discover import DiscoverConfig, compute_descriptors, fit_descriptor_model  # noqa: E402
from mirage3d.poses.extract import FeatureCache  # noqa: E402
from mirage3d.poses.facing import box_pool, foreground_boxes  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("features", type=Path)
    ap.add_argument("collection", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("--parts", default="8", help="comma-separated part counts")
    ap.add_argument("--seeds", default="0", help="part-model seeds: N or A-B")
    ap.add_argument("--grid", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    a = ap.parse_args()
    cache = FeatureCache.open(a.features)
    dev = torch.device(a.device)
    lo, _, hi = a.seeds.partition("-")
    desc: dict[str, torch.Tensor] = {}
    first = None  # the first part model: its descriptors are also saved as d / f, its foreground pools the features
    for parts in [int(x) for x in a.parts.split(",")]:
        for seed in range(int(lo), int(hi or lo) + 1):
            dm = fit_descriptor_model(cache, DiscoverConfig(num_parts=parts, device=a.device, seed=seed), dev)
            d, f = compute_descriptors(cache, dm, dev)
            desc[f"d_p{parts}_s{seed}"], desc[f"f_p{parts}_s{seed}"] = d.contiguous(), f.contiguous()
            if first is None:
                first = dm.to(dev)
                desc["d"], desc["f"] = d.clone(), f.clone()  # (copies: safetensors refuses tensors that share memory)
    dm = first
    pooled, pooled_flip, boxes = [], [], []
    for _, data in cache.iter_shards():
        feats = data["feats"].to(dev).float()
        fg = dm.foreground(feats, data["fg"].to(dev).float(), data["has_mask"].bool().to(dev))
        pooled.append(box_pool(feats, fg, a.grid).half().cpu())
        pooled_flip.append(box_pool(data["feats_flip"].to(dev).float(), fg.flip(-1), a.grid).half().cpu())
        boxes.append(foreground_boxes(fg).cpu())
    a.out.mkdir(parents=True, exist_ok=True)
    save_file({**desc, "boxes": torch.cat(boxes)}, a.out / "descriptors.safetensors")
    save_file({"b": torch.cat(pooled)}, a.out / "pooled.safetensors")
    save_file({"b": torch.cat(pooled_flip)}, a.out / "pooled_flip.safetensors")
    (a.out / "files.json").write_text(json.dumps(cache.files))
    shutil.copy(a.collection / "ground_truth.jsonl", a.out / "ground_truth.jsonl")
    print(f"wrote {a.out}: {cache.num_images} images, P = {a.parts}, seeds {a.seeds}, grid = {a.grid}")


if __name__ == "__main__":
    main()

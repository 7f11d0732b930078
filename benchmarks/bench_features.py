"""Feature-extraction throughput (img/s) per backbone, device and dtype (Markdown table).

    python3 benchmarks/bench_features.py --backbone MODEL [--devices cuda,cpu] [--dtypes float32,bfloat16] \
        [--batch-size 256] [--n 2048] [--collection C --out OUT]

"forward" = backbone on random images already on the device (flip of each image included, as extraction
does with --flip image). With --collection, "extract" = the whole `features extract` path (PNG decoding,
batching, fp16 shards on disk) into OUT/<name> (nothing is written outside OUT).
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

import torch

from mirage3d.poses.extract import ExtractConfig, extract_features
from mirage3d.poses.features import load_backbone


def rate_text(r: float) -> str:
    """img/s with one decimal below 10 (a UNet on a 2-core CPU runs at ~1 img/s), whole numbers above."""
    return f"{r:.1f}" if r < 10 else f"{r:.0f}"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def forward_rate(bb, device: torch.device, dtype: str, batch: int, n: int) -> float:
    x = torch.rand(batch, 3, bb.image_size, bb.image_size, device=device) * 2 - 1
    amp = {"bfloat16": torch.bfloat16, "float16": torch.float16}.get(dtype)
    with torch.no_grad(), torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None and device.type == "cuda"):
        bb(x[:2])  # warm-up
        bb(x.flip(-1))
        sync(device)
        t0 = time.perf_counter()
        done = 0
        while done < n:
            bb(x)
            bb(x.flip(-1))
            done += batch
        sync(device)
    return done / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backbone", type=Path, help="UNet model folder (from `mirage3d train`)")
    ap.add_argument("--baselines", default="hog,random-vit", help="comma-separated extra backbones ('' for none)")
    ap.add_argument("--devices", default="cuda,cpu" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtypes", default="float32,bfloat16" if torch.cuda.is_available() else "float32")
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--n", type=int, default=2048, help="images per forward measurement (CPU uses n/16)")
    ap.add_argument("--collection", type=Path)
    ap.add_argument("--out", type=Path)
    ap.add_argument("--workers", type=int, default=8)
    args = ap.parse_args()
    specs = ([str(args.backbone)] if args.backbone else []) + [s for s in args.baselines.split(",") if s]
    print(
        f"torch {torch.__version__}, {torch.cuda.get_device_name() if torch.cuda.is_available() else 'no CUDA'}, {torch.get_num_threads()} CPU threads"
    )
    print("| backbone | device | dtype | batch | input | grid x C | forward img/s (image + flip) | extract img/s (PNG → shards) |")
    print("|---|---|---|---|---|---|---|---|")
    for spec in specs:
        name = "unet" if spec == str(args.backbone) else spec
        for dev in args.devices.split(","):
            device = torch.device(dev)
            for dtype in args.dtypes.split(",") if device.type == "cuda" else ["float32"]:
                bb = load_backbone(spec).to(device)
                batch = args.batch_size if device.type == "cuda" else min(args.batch_size, 32)
                n = args.n if device.type == "cuda" else max(batch, args.n // 16)
                with torch.no_grad():
                    f = bb(torch.zeros(1, 3, bb.image_size, bb.image_size, device=device))
                rate = forward_rate(bb, device, dtype, batch, n)
                ext = "-"
                if args.collection is not None and args.out is not None:
                    out = args.out / f"{name}_{dev.replace(':', '')}_{dtype}"
                    shutil.rmtree(out, ignore_errors=True)
                    t0 = time.perf_counter()
                    cache = extract_features(
                        args.collection, out, bb, ExtractConfig(batch_size=batch, device=dev, dtype=dtype, num_workers=args.workers)
                    )
                    ext = rate_text(cache.num_images / (time.perf_counter() - t0))
                print(
                    f"| {name} | {dev} | {dtype} | {batch} | {bb.image_size}² | {f.shape[1]}x{f.shape[2]} x {f.shape[3]} | {rate_text(rate)} | {ext} |",
                    flush=True,
                )


if __name__ == "__main__":
    main()

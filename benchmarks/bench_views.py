"""Time of `MiragePipeline` views generation (reference inversion + joint DDIM) at the shipping model size.

    python3 benchmarks/bench_views.py [--preset small] [--views 8,16] [--steps 25,50] \
        [--device auto] [--dtype auto] [--repeats 2] [--out OUT]

Random weights (speed only). One row per (views K, steps): seconds for K generated
views + the reference from one input image, including its DDIM inversion (same number of steps).
``--dtype auto``: bfloat16 weights on CUDA, float32 on CPU. Writes only OUT/bench_views.json (if --out).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import torch
from diffusers import DDIMScheduler

from mirage3d.diffusion.model import build_unet, count_parameters, unet_config_from_preset
from mirage3d.diffusion.pipeline import CrossFrameConfig, MiragePipeline


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="small")
    ap.add_argument("--res", type=int, default=128)
    ap.add_argument("--views", default="8,16", help="comma-separated numbers of generated views K")
    ap.add_argument("--steps", default="25,50", help="comma-separated DDIM step counts")
    ap.add_argument("--guidance", type=float, default=1.0, help="CFG scale (≠ 1 doubles the batch)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"])
    ap.add_argument("--repeats", type=int, default=2, help="timed runs per row (the best is reported), after one warm-up")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch default)")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()

    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    dtype_name = args.dtype if args.dtype != "auto" else ("bfloat16" if device.type == "cuda" else "float32")
    dtype = getattr(torch, dtype_name)
    cfg = unet_config_from_preset(args.preset, res=args.res, max_poses=32)
    unet = build_unet(cfg).eval()
    pipe = MiragePipeline(unet, DDIMScheduler(num_train_timesteps=1000, timestep_spacing="trailing"))
    pipe.to(device, dtype)
    pipe.set_progress_bar_config(disable=True)
    ref = torch.rand(1, 3, args.res, args.res) * 2 - 1

    machine = (
        torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, {os.cpu_count()} cores"
    )
    print(
        f"model preset {args.preset} {args.res}², {count_parameters(unet) / 1e6:.1f} M parameters; device {machine}; {dtype_name}; torch {torch.__version__}"
    )
    if device.type == "cpu":
        print(f"load average before: {os.getloadavg()[0]:.1f}")
    rows = []
    print("\n| views K | DDIM steps | CFG | UNet images / step | seconds | s per view |")
    print("|---|---|---|---|---|---|")
    for k in (int(v) for v in args.views.split(",")):
        for steps in (int(s) for s in args.steps.split(",")):
            kw = dict(
                num_inference_steps=steps, guidance_scale=args.guidance, output_type="np", image=ref, reference_pose=0, cross_frame=CrossFrameConfig()
            )
            poses = list(range(1, k + 1))
            pipe(poses, **{**kw, "num_inference_steps": 2})  # warm-up (allocations, kernels)
            best = float("inf")
            for r in range(args.repeats):
                sync(device)
                t0 = time.perf_counter()
                pipe(poses, generator=torch.Generator().manual_seed(r), **kw)
                sync(device)
                best = min(best, time.perf_counter() - t0)
            per_step = (k + 1) * (1 + (args.guidance != 1.0))
            rows.append({"views": k, "steps": steps, "cfg": args.guidance, "batch": per_step, "seconds": best})
            print(f"| {k} | {steps} | {args.guidance:g} | {per_step} | {best:.2f} | {best / k:.3f} |", flush=True)
    if device.type == "cpu":
        print(f"\nload average after: {os.getloadavg()[0]:.1f}")
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "bench_views.json").write_text(
            json.dumps({"machine": machine, "dtype": dtype_name, "preset": args.preset, "rows": rows}, indent=2)
        )


if __name__ == "__main__":
    main()

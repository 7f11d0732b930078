"""Training throughput of `mirage3d train` vs the plain diffusers loop, and a small objective comparison.

Speed (default): img/s and peak GPU memory for the same UNet and batch, measured in one run:
  plain (PNG DataLoader)    the diffusers example loop: eager, bf16 autocast, fp32 weights, AdamW, EMA,
                            DataLoader over the PNGs (decode per step, --workers processes)
  plain (memory DataLoader) same loop, DataLoader over an in-memory float tensor
  ours (eager)              mirage3d.diffusion.train.train(): GPU-resident uint8 data, fused AdamW,
                            channels-last, bf16, EMA
  ours (compile)            the same with torch.compile

    python3 benchmarks/bench_train.py --out /tmp/bt [--model small] [--batch-size 128] [--steps 200] \
        [--n-images 2048] [--collection C]

On a machine without CUDA it runs the tiny config on the CPU (use it for the CPU figure in docs).

Objectives (--compare-objectives): trains ε/v × cosine/linear for --minutes each on --collection (phase 1,
unconditional), then reports x0-MSE on held-out images at fixed noise levels ᾱ ∈ {0.9, 0.5, 0.1, 0.01}
(comparable across objectives and schedules), and for 64 DDIM samples the mean distance to the nearest
training image (realism proxy) and the mean pairwise distance ratio samples/training (diversity, ~1 is good).
Sample grids are left in OUT/<run>/samples/ for eyeballing.

    python3 benchmarks/bench_train.py --compare-objectives --collection C --out /tmp/bo --minutes 5

Writes nothing outside --out.
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from mirage3d.data.collection import ImageCollection, load_uint8_images
from mirage3d.diffusion.model import build_unet, count_parameters, unet_config_from_preset
from mirage3d.diffusion.train import TrainConfig, make_noise_scheduler, train
from mirage3d.io import list_images


def synthetic_collection(folder: Path, n: int, res: int) -> Path:
    """n RGBA PNGs of random coloured ellipses (decoding cost like real renders)."""
    from PIL import Image, ImageDraw

    if (folder / "images").is_dir() and len(list((folder / "images").iterdir())) >= n:
        return folder
    (folder / "images").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        im = Image.new("RGBA", (res, res), (0, 0, 0, 0))
        d = ImageDraw.Draw(im)
        for _ in range(3):
            x0, y0 = (int(v) for v in rng.integers(0, res // 2, 2))
            w, h = (int(v) for v in rng.integers(res // 8, res // 2, 2))
            d.ellipse([x0, y0, x0 + w, y0 + h], fill=tuple(int(c) for c in rng.integers(0, 255, 3)) + (255,))
        im.save(folder / "images" / f"{i:06d}.png")
    return folder


def plain_loop(collection: Path, cfg: TrainConfig, steps: int, warmup: int, device: torch.device, data: str, workers: int) -> tuple[float, float]:
    """The loop of diffusers' train_unconditional example, class-conditioned; returns (img/s, peak GiB)."""
    from diffusers.training_utils import EMAModel

    ucfg = unet_config_from_preset(cfg.model, res=cfg.res)
    unet = build_unet(ucfg).to(device)
    ema = EMAModel(unet.parameters(), decay=0.9999, use_ema_warmup=True, power=0.75)
    ema.to(device)
    opt = torch.optim.AdamW(unet.parameters(), lr=cfg.lr)
    sched = make_noise_scheduler(cfg)
    if data == "png":
        ds = ImageCollection(collection, ucfg.res)
    else:
        imgs = load_uint8_images(list_images(collection), ucfg.res)[:, :3].float() / 127.5 - 1
        ds = torch.utils.data.TensorDataset(imgs)
    dl = torch.utils.data.DataLoader(
        ds,
        batch_size=cfg.batch_size,
        shuffle=True,
        drop_last=True,
        num_workers=workers,
        pin_memory=device.type == "cuda",
        persistent_workers=workers > 0,
    )
    amp = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")
    done, t0 = 0, None
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    while done < steps + warmup:
        for batch in dl:
            x = (batch["pixel_values"] if isinstance(batch, dict) else batch[0]).to(device, non_blocking=True)
            noise = torch.randn_like(x)
            t = torch.randint(0, sched.config.num_train_timesteps, (x.shape[0],), device=device)
            noisy = sched.add_noise(x, noise, t)
            target = noise if cfg.prediction_type == "epsilon" else sched.get_velocity(x, noise, t)
            cls = torch.zeros(x.shape[0], dtype=torch.long, device=device)
            with amp:
                pred = unet(noisy, t, class_labels=cls).sample
            loss = F.mse_loss(pred.float(), target)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
            ema.step(unet.parameters())
            done += 1
            if done == warmup:
                loss.item()
                t0 = time.perf_counter()
            if done >= steps + warmup:
                break
    loss.item()
    ips = steps * cfg.batch_size / (time.perf_counter() - t0)
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")
    return ips, peak


def ours(collection: Path, out: Path, cfg: TrainConfig, steps: int, warmup: int, device: torch.device) -> tuple[float, float]:
    """train() itself; img/s = mean of its logged rates after ``warmup`` steps (compile warm-up excluded)."""
    rates: list[float] = []
    log_every = max(1, min(10, steps // 5))
    run_cfg = dataclasses.replace(cfg, max_steps=warmup + steps, log_every=log_every, checkpoint_every=10**9, sample_every=0, sample_steps=2)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    train(collection, out, run_cfg, overwrite=True, progress=lambda p: rates.append(p.img_per_s) if p.step > warmup and not p.event else None)
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")
    return float(np.mean(rates)), peak


def speed(args: argparse.Namespace) -> None:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = args.model or ("small" if device.type == "cuda" else "tiny")
    batch = args.batch_size or (128 if device.type == "cuda" else 16)
    cfg = TrainConfig(model=model, batch_size=batch, prediction_type=args.prediction_type, device="auto" if device.type == "cuda" else "cpu")
    res = unet_config_from_preset(model).res
    coll = Path(args.collection) if args.collection else synthetic_collection(args.out / "collection", args.n_images, res)
    steps, warmup = args.steps or (200 if device.type == "cuda" else 20), args.warmup or (30 if device.type == "cuda" else 3)
    n_params = count_parameters(build_unet(unet_config_from_preset(model)))
    rows = []
    rows.append(("plain (PNG DataLoader)", *plain_loop(coll, cfg, steps, warmup, device, "png", args.workers)))
    rows.append(("plain (memory DataLoader)", *plain_loop(coll, cfg, steps, warmup, device, "memory", args.workers)))
    rows.append(("ours (eager)", *ours(coll, args.out / "run_eager", cfg, steps, warmup, device)))
    if device.type == "cuda" and not args.no_compile:
        rows.append(("ours (compile)", *ours(coll, args.out / "run_compile", dataclasses.replace(cfg, compile=True), steps, warmup + 20, device)))
    base = max(rows[0][1], rows[1][1])
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    print(f"\n{name}; model {model} ({n_params / 1e6:.1f} M params, {res}²), batch {batch}, {args.prediction_type}, {steps} timed steps\n")
    print("| loop | img/s | × best plain | peak GPU GiB |")
    print("|---|---|---|---|")
    for label, ips, peak in rows:
        print(f"| {label} | {ips:,.1f} | {ips / base:.2f} | {peak:.1f} |")


# --------------------------------------------------------------------------------------------------
@torch.no_grad()
def evaluate_run(model_dir: Path, train_imgs: torch.Tensor, held: torch.Tensor, cfg: TrainConfig, device: torch.device, n_samples: int) -> dict:
    from mirage3d.diffusion.pipeline import MiragePipeline

    pipe = MiragePipeline.from_pretrained(model_dir).to(device)
    unet = pipe.unet.float().eval()
    sched = make_noise_scheduler(cfg)
    ab = sched.alphas_cumprod
    g = torch.Generator().manual_seed(0)
    res: dict = {}
    x0 = held.to(device)
    for target in (0.9, 0.5, 0.1, 0.01):
        t = int(torch.argmin((ab - target).abs()))
        a, s = ab[t].sqrt().item(), (1 - ab[t]).sqrt().item()
        noise = torch.randn(x0.shape, generator=g).to(device)
        xt = a * x0 + s * noise
        out = unet(xt, torch.full((len(x0),), t, device=device), class_labels=torch.zeros(len(x0), dtype=torch.long, device=device)).sample
        est = (xt - s * out) / a if cfg.prediction_type == "epsilon" else a * xt - s * out
        res[f"x0-MSE ᾱ={target}"] = F.mse_loss(est.clamp(-1, 1), x0).item()
    # unconditional samples: same loop as the training sample grids
    pipe.scheduler.set_timesteps(50, device=device)
    x = torch.randn((n_samples, unet.config.in_channels, unet.config.sample_size, unet.config.sample_size), generator=g).to(device)
    cls = torch.zeros(n_samples, dtype=torch.long, device=device)
    for t in pipe.scheduler.timesteps:
        x = pipe.scheduler.step(unet(x, t, class_labels=cls).sample, t, x, generator=g).prev_sample
    small = lambda z: F.interpolate(z.float().clamp(-1, 1), size=32, mode="area").flatten(1)
    s_, tr = small(x), small(train_imgs.to(device))
    res["NN dist"] = torch.cdist(s_, tr).min(1).values.mean().item()
    res["diversity"] = (torch.pdist(s_).mean() / torch.pdist(tr[: len(s_)]).mean()).item()
    return res


def compare_objectives(args: argparse.Namespace) -> None:
    if not args.collection:
        raise SystemExit("--compare-objectives needs --collection (a real rendered collection)")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    files = list_images(args.collection)
    rng = np.random.default_rng(0)
    held_idx = set(rng.choice(len(files), size=max(8, len(files) // 20), replace=False).tolist())
    split = args.out / "train_split" / "images"
    split.mkdir(parents=True, exist_ok=True)
    for i, f in enumerate(files):
        if i not in held_idx and not (split / f.name).exists():
            (split / f.name).symlink_to(f.resolve())
    model = args.model or ("small" if device.type == "cuda" else "tiny")
    res = unet_config_from_preset(model).res
    held = load_uint8_images([files[i] for i in sorted(held_idx)][:256], res)[:, :3].float() / 127.5 - 1
    train_imgs = load_uint8_images([f for i, f in enumerate(files) if i not in held_idx][:2048], res)[:, :3].float() / 127.5 - 1
    rows = []
    for pred in ("epsilon", "v_prediction"):
        for sched in ("squaredcos_cap_v2", "linear"):
            cfg = TrainConfig(
                model=model,
                batch_size=args.batch_size or 128,
                prediction_type=pred,
                beta_schedule=sched,
                max_steps=10**9,
                minutes=args.minutes,
                compile=not args.no_compile,
                sample_every=0,
                checkpoint_every=10**9,
                device="auto" if device.type == "cuda" else "cpu",
            )
            out = args.out / f"{pred}_{sched}"
            r = train(split.parent, out, cfg, overwrite=True)
            m = evaluate_run(out, train_imgs, held, cfg, device, n_samples=64)
            rows.append((pred, sched, r.step, r.loss, m))
    keys = list(rows[0][4])
    print(f"\n{model}, {args.minutes} min each, {len(files) - len(held_idx)} train / {len(held_idx)} held-out images\n")
    print("| prediction | schedule | steps | train loss | " + " | ".join(keys) + " |")
    print("|---|---|---|---|" + "---|" * len(keys))
    for pred, sched, steps, loss, m in rows:
        print(f"| {pred} | {sched} | {steps} | {loss:.4f} | " + " | ".join(f"{m[k]:.4f}" for k in keys) + " |")
    print("\nlower x0-MSE and NN dist are better; diversity near 1 is good. Grids: OUT/<run>/samples/")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True, help="Folder for the synthetic collection and runs.")
    ap.add_argument("--collection", type=str, default=None, help="Use this collection instead of synthetic PNGs.")
    ap.add_argument("--model", default=None, help="Preset (default: small on GPU, tiny on CPU).")
    ap.add_argument("--batch-size", type=int, default=None)
    ap.add_argument("--steps", type=int, default=None, help="Timed steps per loop.")
    ap.add_argument("--warmup", type=int, default=None, help="Untimed steps before timing.")
    ap.add_argument("--n-images", type=int, default=2048)
    ap.add_argument("--workers", type=int, default=8, help="DataLoader processes of the plain loop.")
    ap.add_argument("--prediction-type", default="v_prediction")
    ap.add_argument("--no-compile", action="store_true")
    ap.add_argument("--compare-objectives", action="store_true")
    ap.add_argument("--minutes", type=float, default=5.0, help="Per objective, with --compare-objectives.")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    compare_objectives(args) if args.compare_objectives else speed(args)


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Pack a trained MODEL folder for shipping or transfer: the EMA UNet in fp16/bf16, sharded safetensors.

    python3 scripts/pack_model.py MODEL OUT [--dtype bf16|fp16] [--max-shard 15MB]

Copies model_index.json, scheduler/, poses/ and the small records (train_config.json, framing.json, loss.png, the newest
sample grid); leaves checkpoints/ behind. The result loads with MiragePipeline.from_pretrained(OUT).
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import torch

from mirage3d.diffusion.pipeline import MiragePipeline
from mirage3d.io import atomic_dir

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("--dtype", default="bf16", choices=sorted(DTYPES))
    ap.add_argument("--max-shard", default="15MB")
    ap.add_argument("--overwrite", action="store_true")
    a = ap.parse_args()
    pipe = MiragePipeline.from_pretrained(a.model)
    with atomic_dir(a.out, overwrite=a.overwrite) as tmp:
        pipe.unet.to(DTYPES[a.dtype])
        pipe.unet.save_pretrained(tmp / "unet", safe_serialization=True, max_shard_size=a.max_shard)
        pipe.scheduler.save_pretrained(tmp / "scheduler")
        shutil.copy2(a.model / "model_index.json", tmp / "model_index.json")
        for name in ("train_config.json", "loss.png", "loss.jsonl", "config.json", "framing.json"):
            if (a.model / name).exists():
                shutil.copy2(a.model / name, tmp / name)
        if (a.model / "poses").is_dir():
            shutil.copytree(a.model / "poses", tmp / "poses")
        samples = sorted((a.model / "samples").glob("*.png")) if (a.model / "samples").is_dir() else []
        if samples:
            (tmp / "samples").mkdir()
            shutil.copy2(samples[-1], tmp / "samples" / samples[-1].name)
    size = sum(p.stat().st_size for p in a.out.rglob("*") if p.is_file())
    print(f"packed {a.model} -> {a.out} ({a.dtype}, {size / 1e6:.1f} MB)")


if __name__ == "__main__":
    main()

"""Batched, resumable feature extraction into a cache of safetensors shards.

A feature cache is a folder::

    manifest.json            files (relative to the collection), backbone reference, grid, shard size, flip mode
    shard_00000.safetensors  feats (n, h, w, C) fp16, [feats_flip (n, h, w, C)], fg (n, h, w) fp16, has_mask (n,) u8

Shards are written atomically and skipped when present, so an interrupted run resumes where it stopped.
Under ``accelerate launch`` (``WORLD_SIZE`` > 1) process ``r`` of ``W`` extracts shards ``r, r + W, …``; every
shard holds the same bytes whatever the number of processes (features are per-image, batches never cross a
shard, the UNet noise map is fixed), so the cache does not depend on how it was made.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch.utils.data import DataLoader, Subset

from mirage3d.data.collection import ImageCollection
from mirage3d.devices import resolve_device
from mirage3d.errors import InputError
from mirage3d.io import atomic_path, atomic_write_json, check_image_headers, list_images
from mirage3d.poses.features import Backbone

FLIP_MODES = ("image", "features", "none")
MANIFEST = "manifest.json"
# An image "has a mask" when at least this fraction of its pixels is clearly transparent (alpha < 0.5).
MASK_MIN_TRANSPARENT = 0.01


@dataclass
class ExtractConfig:
    """Feature extraction into a cache (checked when made)."""

    batch_size: int = 64
    """images per forward pass (a shard is processed in batches of this size)"""
    shard_size: int = 1024
    """images per cache shard (the unit of resuming and of splitting across processes)"""
    flip: str = "image"
    """mirror descriptors from: "image" (features of the flipped image, 2x cost), "features" (flip the feature map), "none" """
    device: str = "auto"
    """torch device; "auto" = this process's CUDA device when present, else CPU"""
    dtype: str = "float32"
    """backbone compute dtype: float32, bfloat16 or float16 (autocast; CUDA only)"""
    num_workers: int = 2
    """DataLoader worker processes decoding images"""

    def __post_init__(self) -> None:
        if self.flip not in FLIP_MODES:
            raise InputError(f"flip mode {self.flip!r} is unknown; use one of {', '.join(FLIP_MODES)}")
        if self.batch_size < 1 or self.shard_size < 1:
            raise InputError(f"batch size and shard size must be >= 1 (got {self.batch_size}, {self.shard_size})")
        if self.dtype not in ("float32", "bfloat16", "float16"):
            raise InputError(f"dtype {self.dtype!r} is unknown; use float32, bfloat16 or float16")


@dataclass
class FeatureCache:
    """A finished (or partial) feature cache folder."""

    folder: Path
    files: list[str]
    shard_size: int
    grid: tuple[int, int]
    channels: int
    flip: str
    backbone: dict[str, Any]
    image_size: int
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def num_images(self) -> int:
        return len(self.files)

    @property
    def num_shards(self) -> int:
        return (len(self.files) + self.shard_size - 1) // self.shard_size

    def shard_path(self, i: int) -> Path:
        return self.folder / f"shard_{i:05d}.safetensors"

    def load_shard(self, i: int) -> dict[str, torch.Tensor]:
        """Tensors of shard ``i``; ``feats_flip`` is filled in for flip mode "features"."""
        data = load_file(self.shard_path(i))
        if self.flip == "features":
            data["feats_flip"] = data["feats"].flip(2)
        return data

    def iter_shards(self) -> Iterator[tuple[int, dict[str, torch.Tensor]]]:
        """(index of the shard's first image, tensors) for every shard, in order."""
        for i in range(self.num_shards):
            yield i * self.shard_size, self.load_shard(i)

    @classmethod
    def open(cls, folder: str | Path) -> FeatureCache:
        folder = Path(folder)
        path = folder / MANIFEST
        if not path.exists():
            raise InputError(f"{folder} is not a feature cache (no {MANIFEST}); make one with `mirage3d features extract`")
        m = json.loads(path.read_text())
        cache = cls(
            folder,
            m["files"],
            m["shard_size"],
            tuple(m["grid"]),
            m["channels"],
            m["flip"],
            m["backbone"],
            m["image_size"],
            {"collection": m.get("collection")},
        )
        missing = [i for i in range(cache.num_shards) if not cache.shard_path(i).exists()]
        if missing:
            raise InputError(
                f"feature cache {folder} is incomplete ({len(missing)} of {cache.num_shards} shards missing); run `mirage3d features extract` again to resume"
            )
        return cache


def is_main_process() -> bool:
    """True unless this is a non-zero rank of an ``accelerate launch`` / ``torchrun`` job."""
    return int(os.environ.get("RANK", "0")) == 0


def _distributed() -> tuple[int, int, Callable[[], None]]:
    """(rank, world size, barrier); a single process unless launched by accelerate/torchrun."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return 0, 1, lambda: None
    from accelerate import PartialState

    state = PartialState()
    return state.process_index, state.num_processes, state.wait_for_everyone


def extract_features(
    collection: str | Path,
    out: str | Path,
    backbone: Backbone,
    config: ExtractConfig | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> FeatureCache:
    """Extract (and cache) patch features of every image of ``collection`` into ``out``.

    ``progress(done, total)`` is called after each batch (on rank 0 only). Existing shards of a matching
    cache are kept (resume); a cache made with another backbone or settings is refused.
    """
    cfg = config or ExtractConfig()
    collection, out = Path(collection), Path(out)
    rank, world, barrier = _distributed()
    device = resolve_device(cfg.device)
    backbone = backbone.to(device)
    dataset = ImageCollection(collection, backbone.image_size)
    files = dataset.relative_names()
    with torch.no_grad():
        probe = backbone(torch.zeros(1, 3, backbone.image_size, backbone.image_size, device=device))
    _, gh, gw, channels = probe.shape
    manifest = {
        "collection": str(collection.resolve()),
        "files": files,
        "backbone": backbone.reference(),
        "image_size": backbone.image_size,
        "shard_size": cfg.shard_size,
        "flip": cfg.flip,
        "grid": [gh, gw],
        "channels": channels,
        "dtype": "float16",
    }
    cache = FeatureCache(out, files, cfg.shard_size, (gh, gw), channels, cfg.flip, manifest["backbone"], backbone.image_size)
    if rank == 0:  # only rank 0 checks and writes the manifest; the others wait for it
        check_image_headers(dataset.files)  # a file that is no image is refused before the cache folder exists
        if (out / MANIFEST).exists():
            old = json.loads((out / MANIFEST).read_text())
            keys = ("files", "backbone", "shard_size", "flip", "grid", "image_size")
            diff = [k for k in keys if old.get(k) != manifest[k]]
            if diff:
                raise InputError(f"{out} holds features made with other settings ({', '.join(diff)} differ); choose another output folder")
        elif out.exists() and any(out.iterdir()):
            raise InputError(f"output folder {out} exists and is not a feature cache; choose another -o")
        atomic_write_json(out / MANIFEST, manifest)
    barrier()

    todo = [i for i in range(cache.num_shards) if i % world == rank and not cache.shard_path(i).exists()]
    total = sum(min(cfg.shard_size, len(files) - i * cfg.shard_size) for i in todo)
    done = 0
    autocast = device.type == "cuda" and cfg.dtype != "float32"
    amp_dtype = {"bfloat16": torch.bfloat16, "float16": torch.float16}.get(cfg.dtype, torch.float32)
    for s in todo:
        idx = list(range(s * cfg.shard_size, min((s + 1) * cfg.shard_size, len(files))))
        loader = DataLoader(
            Subset(dataset, idx), batch_size=cfg.batch_size, shuffle=False, num_workers=cfg.num_workers, pin_memory=device.type == "cuda"
        )
        parts: dict[str, list[torch.Tensor]] = {"feats": [], "feats_flip": [], "fg": [], "has_mask": []}
        for batch in loader:
            x = batch["pixel_values"].to(device, non_blocking=True)  # (b, 3, H, W)
            alpha = batch["mask"]  # (b, 1, H, W)
            a_dev = alpha.to(device)
            with torch.no_grad(), torch.autocast(device.type, dtype=amp_dtype, enabled=autocast):
                parts["feats"].append(backbone(x, a_dev).half().cpu())  # (b, h, w, C)
                if cfg.flip == "image":
                    parts["feats_flip"].append(backbone(x.flip(-1), a_dev.flip(-1)).half().cpu())
            parts["fg"].append(F.adaptive_avg_pool2d(alpha, (gh, gw))[:, 0].half())  # (b, h, w) covered fraction
            parts["has_mask"].append(((alpha < 0.5).float().mean(dim=(1, 2, 3)) >= MASK_MIN_TRANSPARENT).to(torch.uint8))
            done += x.shape[0]
            if progress is not None and rank == 0:
                progress(done, total)
        tensors = {k: torch.cat(v).contiguous() for k, v in parts.items() if v}
        with atomic_path(cache.shard_path(s)) as tmp:
            save_file(tensors, str(tmp))
    barrier()
    return cache


def sample_indices(n: int, k: int, seed: int) -> np.ndarray:
    """Sorted random subset of ``min(n, k)`` indices of ``range(n)`` (deterministic for a seed)."""
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(n, size=min(n, k), replace=False))


def default_cache_dir(collection: str | Path, backbone: Backbone, flip: str) -> Path:
    """``COLLECTION/.cache/features/<hash of backbone + flip>``: one cache per backbone setting, shared by runs."""
    import hashlib

    key = json.dumps({"b": backbone.reference(), "f": flip, "n": len(list_images(collection))}, sort_keys=True)
    return Path(collection) / ".cache" / "features" / hashlib.sha1(key.encode()).hexdigest()[:12]

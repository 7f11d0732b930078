"""Training data: pose labels from a POSES folder, and batches drawn from an in-memory uint8 collection.

Every random choice of a training step (which images, flips, label dropout, noise, timesteps) comes from a
generator seeded by (seed, rank, step, micro-step). A run resumed from a checkpoint therefore sees exactly
the batches and noise the uninterrupted run would have seen, without saving any sampler state.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from mirage3d.diffusion.labels import NULL_CLASS
from mirage3d.errors import InputError


@dataclass
class PoseLabels:
    """Discovered poses for every collection image, in the collection's file order."""

    folder: Path
    """The POSES folder (copied into MODEL/poses/)."""
    num_poses: int
    labels: np.ndarray
    """(N,) int pose 0..K-1 per collection image."""
    mirror: np.ndarray
    """(K,) int: the pose of the horizontally flipped image of pose k."""
    sha256: str
    """Hash of poses.json, to refuse resuming a run with different poses."""


def read_pose_labels(path: Path, collection_names: list[str]) -> PoseLabels:
    """Read ``POSES/poses.json`` (or the file itself, through :class:`mirage3d.poses.poseset.PoseSet`) and align it
    to ``collection_names``: ``files`` must be exactly the collection's images (relative paths), in any order."""
    from mirage3d.poses.poseset import PoseSet

    poses = PoseSet.load(path)
    return PoseLabels(poses.folder, poses.num_poses, poses.labels_for(collection_names), poses.mirror, poses.sha256)


def class_tables(num_images: int, poses: PoseLabels | None, num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(N,) class per image and (num_classes,) class of the flipped image; phase 1 → all NULL_CLASS."""
    mirror_cls = torch.arange(num_classes)
    if poses is None:
        return torch.full((num_images,), NULL_CLASS, dtype=torch.long), mirror_cls
    if poses.num_poses > num_classes - 1:
        raise InputError(f"poses has {poses.num_poses} poses but the model has room for {num_classes - 1}; raise max_poses")
    mirror_cls[1 : poses.num_poses + 1] = torch.from_numpy(poses.mirror) + 1
    return torch.from_numpy(poses.labels) + 1, mirror_cls


def step_seed(seed: int, rank: int, counter: int) -> int:
    """A well-mixed 63-bit seed for one (run seed, process, micro-step)."""
    h = hashlib.blake2b(f"{seed}/{rank}/{counter}".encode(), digest_size=8).digest()
    return int.from_bytes(h, "little") & ((1 << 63) - 1)


class BatchSource:
    """Batches of one process's shard of the collection, held as uint8 (n, 4, res, res) on ``device``.

    Sample order: an endless chain of per-epoch permutations of the shard, each seeded by (seed, rank,
    epoch), read ``batch_size`` at a time; so micro-step c always gets the same images.
    """

    def __init__(
        self,
        images: torch.Tensor,
        classes: torch.Tensor,
        mirror_cls: torch.Tensor,
        *,
        batch_size: int,
        channels: int,
        flip: bool,
        p_uncond: float,
        seed: int,
        rank: int,
        objects: torch.Tensor | None = None,
        p_no_reference: float = 0.1,
    ):
        self.images = images  # (n, 4, res, res) uint8, on the training device or pinned CPU memory
        self.device = images.device
        self.classes = classes.to(images.device)
        self.mirror_cls = mirror_cls.to(images.device)
        self.batch_size, self.channels, self.flip, self.p_uncond = batch_size, channels, flip, p_uncond
        self.seed, self.rank = seed, rank
        self._perms: dict[int, torch.Tensor] = {}
        self.p_no_reference = p_no_reference
        self.objects = None
        if objects is not None:  # (n,) object id per image: batches carry a random other view of the same object
            objects = torch.as_tensor(objects, dtype=torch.long)
            order = torch.sort(objects, stable=True).indices  # images grouped by object
            ids, sizes = torch.unique_consecutive(objects[order], return_counts=True)
            if int(sizes.min()) < 2:
                raise InputError("every object needs at least two views in this process's share of the collection")
            starts = torch.cumsum(sizes, 0) - sizes
            rank_of = torch.empty_like(order)
            rank_of[order] = torch.arange(len(order))
            group = torch.repeat_interleave(torch.arange(len(ids)), sizes)[rank_of]  # group of each image
            dev = images.device
            self.objects = (order.to(dev), starts[group].to(dev), sizes[group].to(dev), (rank_of - starts[group]).to(dev))

    def _perm(self, epoch: int) -> torch.Tensor:
        if epoch not in self._perms:
            g = torch.Generator().manual_seed(step_seed(self.seed, self.rank, -1 - epoch))
            self._perms = {epoch: torch.randperm(len(self.images), generator=g).to(self.images.device)}
        return self._perms[epoch]

    def indices(self, counter: int) -> torch.Tensor:
        n, b = len(self.images), self.batch_size
        start, parts = counter * b, []
        while b > 0:
            epoch, offset = divmod(start, n)
            take = min(b, n - offset)
            parts.append(self._perm(epoch)[offset : offset + take])
            start, b = start + take, b - take
        return torch.cat(parts)

    def generator(self, counter: int, device: torch.device) -> torch.Generator:
        return torch.Generator(device=device).manual_seed(step_seed(self.seed, self.rank, counter))

    def _pixels(self, idx: torch.Tensor, device: torch.device) -> torch.Tensor:
        """Images ``idx`` as (B, C, res, res) float in [-1, 1] on ``device``."""
        x = self.images[idx].to(device, non_blocking=True)  # (B, 4, res, res) uint8
        return x[:, : self.channels].float().mul_(2.0 / 255.0).sub_(1.0)

    def batch(self, counter: int, device: torch.device, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """Images (B, C, res, res) float in [-1, 1] and classes (B,) for micro-step ``counter``, on ``device``.

        With ``objects``: (B, 2C, res, res), each image followed by another view of its object (the same flip;
        zeros, "no reference", with probability ``p_no_reference``)."""
        idx = self.indices(counter)
        x = self._pixels(idx, device)
        cls = self.classes[idx].to(device)
        b = x.shape[0]
        if self.objects is not None:
            order, start, size, pos = self.objects
            n = size[idx]  # views of each image's object; step 1..n-1 through them picks another view
            step = 1 + (torch.rand(b, generator=gen, device=device) * (n.to(device) - 1)).long().clamp_max(n.to(device) - 2)
            ref = self._pixels(order[start[idx] + (pos[idx] + step.to(pos.device)) % n], device)
            keep = torch.rand(b, generator=gen, device=device) >= self.p_no_reference
            x = torch.cat([x, ref * keep[:, None, None, None]], dim=1)
        if self.flip:
            flipped = torch.rand(b, generator=gen, device=device) < 0.5
            x = torch.where(flipped[:, None, None, None], x.flip(-1), x)
            cls = torch.where(flipped, self.mirror_cls.to(device)[cls], cls)
        if self.p_uncond > 0:
            drop = torch.rand(b, generator=gen, device=device) < self.p_uncond
            cls = torch.where(drop, torch.full_like(cls, NULL_CLASS), cls)
        return x, cls

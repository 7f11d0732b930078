"""The saved pose model: backbone reference, part model, descriptor normalisation and pose centres.

Files (in a poses folder): ``pose_model.safetensors`` (tensors) and ``pose_model.json`` (everything else).
``PoseModel.assign`` labels new images exactly as discovery labelled the collection (joint cost of the
image and its flip against the mirror-consistent pose centres).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from mirage3d.errors import InputError, ModelError
from mirage3d.io import atomic_path, atomic_write_json
from mirage3d.poses.cluster import confidence_from_cost, joint_cost
from mirage3d.poses.descriptors import part_descriptors
from mirage3d.poses.facing import FacingModel, FrontModel, box_pool
from mirage3d.poses.features import Backbone, load_backbone
from mirage3d.poses.parts import PartModel


@dataclass
class LayoutModel:
    """The layout block of the descriptor: box-pooled features (``box_pool`` on a ``grid`` x ``grid`` split of the
    object's box) minus their mean, projected on principal components fitted at discovery."""

    mean: torch.Tensor  # (F,) F = channels · grid²
    components: torch.Tensor  # (F, L)
    grid: int

    @classmethod
    def fit(cls, pooled: torch.Tensor, dims: int, grid: int) -> LayoutModel:
        """Principal components of ``pooled`` (N, F) by an exact SVD (deterministic, unlike randomized PCA)."""
        x = pooled.double()
        mean = x.mean(0)
        _, _, vh = torch.linalg.svd(x - mean, full_matrices=False)
        return cls(mean.float(), vh[:dims].T.contiguous().float(), grid)

    def project(self, feats: torch.Tensor, fg: torch.Tensor) -> torch.Tensor:
        """(N, L) layout descriptors of features (N, h, w, C) with foreground weights (N, h, w)."""
        b = box_pool(feats, fg, self.grid)
        return (b - self.mean.to(b.device)) @ self.components.to(b.device)

    def to(self, device: torch.device | str) -> LayoutModel:
        return LayoutModel(self.mean.to(device), self.components.to(device), self.grid)


@dataclass
class DescriptorModel:
    """Maps features of a batch to normalised descriptors (N, D): part descriptors, the layout block, then the scores."""

    parts: PartModel
    fg_threshold: float = 0.5
    desc_mean: torch.Tensor | None = None  # (D,) set once fitted
    desc_scale: torch.Tensor | None = None  # (D,)
    facing: FacingModel | None = None  # appends the facing score (image) and its negative (flip)
    front: FrontModel | None = None  # then appends the front score (the same for image and flip)
    layout: LayoutModel | None = None  # the layout block, right after the part descriptors

    @property
    def layout_dims(self) -> int:
        return 0 if self.layout is None else int(self.layout.components.shape[1])

    def raw(self, feats: torch.Tensor, fg_alpha: torch.Tensor, has_mask: torch.Tensor) -> torch.Tensor:
        """Unnormalised descriptors (N, D) of features (N, h, w, C) with alpha coverage (N, h, w)."""
        return self._raw(feats, self.foreground(feats, fg_alpha, has_mask))

    def _raw(self, feats: torch.Tensor, fg: torch.Tensor) -> torch.Tensor:
        """:meth:`raw` given the foreground weights from :meth:`foreground`."""
        d = part_descriptors(self.parts.assign(feats), fg, self.parts.num_parts, self.fg_threshold)
        return d if self.layout is None else torch.cat([d, self.layout.project(feats, fg)], 1)

    def foreground(self, feats: torch.Tensor, fg_alpha: torch.Tensor, has_mask: torch.Tensor) -> torch.Tensor:
        """The foreground weights the descriptor uses (N, h, w)."""
        return self.parts.foreground(feats, fg_alpha.to(feats.device), has_mask.to(feats.device))

    def raw_pair(
        self, feats: torch.Tensor, feats_flip: torch.Tensor, fg_alpha: torch.Tensor, has_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Unnormalised descriptors of images and of their mirror images (features ``feats_flip``), with the
        facing score (+s, −s) and the front score (r, r) appended when the model has them."""
        fg = self.foreground(feats, fg_alpha, has_mask)  # once: the descriptor and the facing score share it
        d = self._raw(feats, fg)
        f = self.raw(feats_flip, fg_alpha.flip(-1), has_mask)
        pooled: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}  # grid → (b(x), b(flip x)), shared by both scores

        def pool(grid: int) -> tuple[torch.Tensor, torch.Tensor]:
            if grid not in pooled:
                pooled[grid] = (box_pool(feats, fg, grid), box_pool(feats_flip, fg.flip(-1), grid))
            return pooled[grid]

        if self.facing is not None:
            s = self.facing.score_pooled(*pool(self.facing.grid))[:, None]
            d, f = torch.cat([d, s], 1), torch.cat([f, -s], 1)
        if self.front is not None:
            b, b_flip = pool(self.front.grid)
            r = self.front.score_sums(b + b_flip)[:, None]
            d, f = torch.cat([d, r], 1), torch.cat([f, r], 1)
        return d, f

    def normalise(self, raw: torch.Tensor) -> torch.Tensor:
        return (raw - self.desc_mean.to(raw.device)) * self.desc_scale.to(raw.device)

    def __call__(self, feats: torch.Tensor, fg_alpha: torch.Tensor, has_mask: torch.Tensor) -> torch.Tensor:
        return self.normalise(self.raw(feats, fg_alpha, has_mask))

    def tensors(self) -> dict[str, torch.Tensor]:
        t = {"desc_mean": self.desc_mean, "desc_scale": self.desc_scale, **self.parts.tensors()}
        if self.facing is not None:
            t["facing_axis"] = self.facing.axis
        if self.front is not None:
            t.update(self.front.tensors())
        if self.layout is not None:
            t["layout_mean"], t["layout_components"] = self.layout.mean, self.layout.components
        return t

    def to(self, device: torch.device | str) -> DescriptorModel:
        mv = lambda x: None if x is None else x.to(device)
        return DescriptorModel(
            self.parts.to(device),
            self.fg_threshold,
            mv(self.desc_mean),
            mv(self.desc_scale),
            None if self.facing is None else self.facing.to(device),
            None if self.front is None else self.front.to(device),
            None if self.layout is None else self.layout.to(device),
        )


@dataclass
class PoseModel:
    """Assigns discovered poses to images. Load with :meth:`PoseModel.load`."""

    backbone_ref: dict[str, Any]
    descriptor: DescriptorModel
    centres: torch.Tensor  # (K, D) pose centres in descriptor space
    mirror: np.ndarray  # (K,) mirror pose of each pose
    flip: str  # "image", "features" or "none": how the flipped descriptor is made
    temperature: float  # softmax temperature of the confidence (median joint cost at discovery)
    backbone: Backbone | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def num_poses(self) -> int:
        return int(self.centres.shape[0])

    def pose_costs(self, d: torch.Tensor, f: torch.Tensor | None) -> torch.Tensor:
        """(N, K) cost of each pose for descriptors ``d`` and flipped descriptors ``f`` (None: no flips)."""
        c = self.centres.to(d.device)
        if f is None:
            return 2 * torch.cdist(d, c) ** 2
        return joint_cost(d, f, c, self.mirror)

    @torch.no_grad()
    def assign(self, images: torch.Tensor, masks: torch.Tensor | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Pose labels (B,) and confidences (B,) in (0, 1] for images (B, 3, H, W) in [-1, 1], masks (B, 1, H, W)."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise InputError(f"images must have shape (B, 3, H, W), got {tuple(images.shape)}")
        if self.backbone is None:
            self.backbone = load_backbone(self.backbone_ref)
        bb = self.backbone
        x = images.to(bb.device, torch.float32)
        m = None if masks is None else masks.to(bb.device, torch.float32)
        feats = bb(x, m)  # (B, h, w, C)
        b, gh, gw, _ = feats.shape
        if masks is None:
            fg_alpha, has_mask = torch.ones(b, gh, gw, device=feats.device), torch.zeros(b, dtype=torch.bool, device=feats.device)
        else:
            fg_alpha = F.adaptive_avg_pool2d(masks.to(feats.device, torch.float32), (gh, gw))[:, 0]
            has_mask = torch.ones(b, dtype=torch.bool, device=feats.device)
        dm = self.descriptor.to(feats.device)
        f = None
        if self.flip in ("image", "features"):
            feats_flip = bb(x.flip(-1), None if m is None else m.flip(-1)) if self.flip == "image" else feats.flip(2)
            d_raw, f_raw = dm.raw_pair(feats, feats_flip, fg_alpha, has_mask)
            d, f = dm.normalise(d_raw), dm.normalise(f_raw)
        else:
            d = dm(feats, fg_alpha, has_mask)
        cost = self.pose_costs(d, f)
        labels = cost.argmin(1)
        conf = confidence_from_cost(cost, self.temperature)
        return labels.cpu().numpy(), conf.cpu().numpy()

    def save(self, folder: str | Path) -> None:
        folder = Path(folder)
        # fp32, except tensors the descriptor keeps in fp16 (the front model's unit reference embeddings)
        tensors = {
            k: v.detach().to(v.dtype if v.dtype == torch.float16 else torch.float32).cpu().contiguous()
            for k, v in self.descriptor.tensors().items()
            if v is not None
        }
        tensors["pose_centres"] = self.centres.detach().float().cpu().contiguous()
        with atomic_path(folder / "pose_model.safetensors") as tmp:
            save_file(tensors, str(tmp))
        ref = dict(self.backbone_ref)
        if isinstance(ref.get("path"), str) and Path(ref["path"]).is_absolute():
            # A pose model saved inside its backbone's folder (MODEL/poses of a trained model) records the
            # backbone relative to itself ("..") so the model folder can be moved or shipped.
            try:
                Path(folder).resolve().relative_to(Path(ref["path"]).resolve())
                ref["path"] = os.path.relpath(Path(ref["path"]).resolve(), Path(folder).resolve())
            except ValueError:
                pass
        meta = {
            "format": "mirage3d-pose-model/1",
            "backbone": ref,
            "mode": "parts",
            "num_poses": self.num_poses,
            "num_parts": self.descriptor.parts.num_parts,
            "mirror": [int(m) for m in self.mirror],
            "flip": self.flip,
            "temperature": self.temperature,
            "descriptor_fg_threshold": self.descriptor.fg_threshold,
            "feature_fg_threshold": self.descriptor.parts.fg_threshold,
            "facing_grid": None if self.descriptor.facing is None else self.descriptor.facing.grid,
            "layout_grid": None if self.descriptor.layout is None else self.descriptor.layout.grid,
            **({} if self.descriptor.front is None else {"front_k": self.descriptor.front.k, "front_grid": self.descriptor.front.grid}),
            **self.extra,
        }
        atomic_write_json(folder / "pose_model.json", meta)

    @classmethod
    def load(cls, folder: str | Path, backbone: Backbone | None = None) -> PoseModel:
        """Load ``folder/pose_model.*``. ``backbone`` None: rebuild the recorded one when first needed."""
        folder = Path(folder)
        meta_path, tensor_path = folder / "pose_model.json", folder / "pose_model.safetensors"
        if not meta_path.exists() or not tensor_path.exists():
            raise ModelError(f"{folder} holds no pose model (pose_model.json + pose_model.safetensors); run `mirage3d poses discover`")
        from mirage3d.errors import loading

        with loading("the pose model", folder, "run `mirage3d poses discover` (or `poses refit`) again"):
            meta = json.loads(meta_path.read_text())
            t = load_file(tensor_path)
            # Pose models written with descriptor options since removed (the flat descriptor, per-image centring)
            if meta["mode"] != "parts" or meta.get("centre_images", False):
                raise ModelError(
                    f"the pose model in {folder} uses a descriptor mirage3d no longer computes (flat or centred); discover the poses again"
                )
            parts = PartModel.from_tensors(t, meta.get("feature_fg_threshold", 0.0))
            facing = FacingModel(t["facing_axis"].float(), int(meta["facing_grid"])) if "facing_axis" in t else None
            front = FrontModel.from_tensors(t, int(meta["front_k"]), int(meta["front_grid"])) if "front_refs" in t else None
            layout = (
                LayoutModel(t["layout_mean"].float(), t["layout_components"].float(), int(meta["layout_grid"])) if "layout_components" in t else None
            )
            dm = DescriptorModel(parts, float(meta.get("descriptor_fg_threshold", 0.5)), t["desc_mean"], t["desc_scale"], facing, front, layout)
            known = {
                "format",
                "backbone",
                "mode",
                "num_poses",
                "num_parts",
                "mirror",
                "flip",
                "temperature",
                "descriptor_fg_threshold",
                "feature_fg_threshold",
                "facing_grid",
                "layout_grid",
                "front_k",
                "front_grid",
                "flat_grid",
                "centre_images",
            }
            ref = dict(meta["backbone"])
            # A relative backbone path is relative to the pose-model folder (a shipped model refers to its own
            # UNet as ".."), so the model folder can move.
            if isinstance(ref.get("path"), str) and not Path(ref["path"]).is_absolute() and (folder / ref["path"]).exists():
                ref["path"] = str((folder / ref["path"]).resolve())
            model = cls(
                ref,
                dm,
                t["pose_centres"],
                np.asarray(meta["mirror"], dtype=np.int64),
                meta["flip"],
                float(meta["temperature"]),
                backbone,
                {k: v for k, v in meta.items() if k not in known},
            )
        if len(model.mirror) != model.num_poses:
            raise ModelError(f"pose model in {folder} has {len(model.mirror)} mirror entries for {model.num_poses} poses")
        return model

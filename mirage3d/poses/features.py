"""Backbones that turn images into patch features, behind one interface.

Every backbone maps images ``(B, 3, H, W)`` in [-1, 1] (RGB composited on white) to patch features
``(B, h, w, C)``. A backbone is rebuilt from a small JSON ``reference`` (what the pose model records), so a
saved pose model can re-create the exact feature extractor it was fitted with.

- ``unet``: decoder activations of a diffusers ``UNet2DModel`` (the project's own, trained offline by
  phase 1 of ``mirage3d train``); the image is noised to a fixed timestep with a fixed noise map so the
  features are deterministic.
- ``dinov2``: ``transformers.Dinov2Model`` from the hub name or a local folder (needs the weights).
- ``random-vit``: a DINOv2-small-shaped ViT with seeded random weights (a baseline).
- ``hog``: histograms of oriented gradients of the grayscale image per cell (a colour-blind baseline).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from mirage3d.diffusion.reference import ensure_reference_hook
from mirage3d.errors import DependencyError, InputError, ModelError
from mirage3d.poses.config import DEFAULT_TIMESTEP

DINOV2_NAMES = ("small", "base", "large", "giant")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class Backbone(torch.nn.Module):
    """Base class: ``forward(images (B, 3, H, W) in [-1, 1], masks (B, 1, H, W) in [0, 1] or None) -> (B, h, w, C)``.

    Only backbones that take an alpha channel (a 4-channel UNet) use ``masks``; None means fully opaque.
    """

    #: input resolution the backbone expects (images are loaded square at this size)
    image_size: int = 64

    def reference(self) -> dict[str, Any]:
        """JSON-ready description from which :func:`load_backbone` rebuilds this backbone."""
        raise NotImplementedError

    @property
    def device(self) -> torch.device:
        p = next(self.parameters(), None)
        return p.device if p is not None else torch.device("cpu")


# --------------------------------------------------------------------------------------------------
# UNet (the offline backbone)
# --------------------------------------------------------------------------------------------------
def weights_fingerprint(folder: str | Path) -> str | None:
    """SHA-1 (16 hex digits) of a UNet folder's safetensors files; None when there are none."""
    files = sorted(_unet_folder(Path(folder)).glob("*.safetensors"))
    if not files:
        return None
    h = hashlib.sha1()
    for f in files:
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 22), b""):
                h.update(chunk)
    return h.hexdigest()[:16]


def _unet_folder(folder: Path) -> Path:
    folder = Path(folder)
    if (folder / "unet" / "config.json").exists():
        return folder / "unet"
    if (folder / "config.json").exists():
        try:
            cls = json.loads((folder / "config.json").read_text()).get("_class_name")
        except json.JSONDecodeError:
            cls = None
        if cls == "UNet2DModel":
            return folder
    raise ModelError(
        f"{folder} holds no diffusers UNet2DModel (expected {folder}/unet/config.json); train one with `mirage3d train COLLECTION -o BACKBONE` (phase 1)"
    )


class _BlocksCaptured(Exception):
    """Raised by a forward hook to stop the UNet once every feature block has run: with ``up0`` the
    high-resolution up blocks, about 5/6 of the CPU time at 128², are skipped (same features)."""


class UNetBackbone(Backbone):
    """Activations of a ``UNet2DModel`` on the image noised to ``timestep`` (class label 0 = "no pose").

    ``blocks`` names the modules whose outputs are used: ``up0`` = ``up_blocks[0]``, ``mid`` = ``mid_block``,
    ``down2`` = ``down_blocks[2]``. Several blocks are resized to the first one's grid, each L2-normalised per
    patch (so each block weighs the same) and concatenated.
    """

    def __init__(
        self,
        unet: Any,
        alphas_cumprod: torch.Tensor,
        timestep: int = DEFAULT_TIMESTEP,
        blocks: tuple[str, ...] = ("up0",),
        seed: int = 0,
        folder: str | None = None,
    ):
        super().__init__()
        self.unet = unet.eval().requires_grad_(False)
        self.folder = folder
        self.timestep = int(timestep)
        self.blocks = tuple(blocks)
        self.seed = int(seed)
        n_t = len(alphas_cumprod)
        if not 0 <= self.timestep < n_t:
            raise InputError(f"timestep {timestep} is out of range; use 0..{n_t - 1}")
        self.register_buffer("alpha_bar", alphas_cumprod[self.timestep].float().clone(), persistent=False)
        if unet.config.out_channels not in (3, 4):
            raise ModelError(f"the UNet makes {unet.config.out_channels} channels; a feature backbone needs 3 (RGB) or 4 (RGB + alpha)")
        ensure_reference_hook(unet)  # a reference-conditioned UNet is read without a reference (zeros)
        size = unet.config.sample_size
        self.image_size = int(size if isinstance(size, int) else size[0])
        # One fixed noise map shared by every image: features do not depend on batch composition or image order.
        g = torch.Generator().manual_seed(self.seed)
        self.register_buffer("noise", torch.randn((1, unet.config.out_channels, self.image_size, self.image_size), generator=g), persistent=False)
        self._modules_by_name = {b: self._resolve(b) for b in self.blocks}

    def _resolve(self, name: str) -> torch.nn.Module:
        u = self.unet
        try:
            if name == "mid":
                return u.mid_block
            if name.startswith("up"):
                return u.up_blocks[int(name[2:])]
            if name.startswith("down"):
                return u.down_blocks[int(name[4:])]
        except (ValueError, IndexError):
            pass
        raise InputError(f"unknown UNet block {name!r}; use up0..up{len(u.up_blocks) - 1}, mid or down0..down{len(u.down_blocks) - 1}")

    @classmethod
    def from_folder(cls, folder: str | Path, timestep: int = DEFAULT_TIMESTEP, blocks: tuple[str, ...] = ("up0",), seed: int = 0) -> UNetBackbone:
        from diffusers import DDPMScheduler, UNet2DModel

        from mirage3d.errors import loading

        ufolder = _unet_folder(Path(folder))
        with loading("the UNet backbone", ufolder, "it is damaged or incomplete: copy or train it again (`mirage3d train`)"):
            unet = UNet2DModel.from_pretrained(ufolder)
            sched_dir = ufolder.parent / "scheduler"
            sched = (
                DDPMScheduler.from_pretrained(sched_dir)
                if (sched_dir / "scheduler_config.json").exists()
                else DDPMScheduler(num_train_timesteps=1000)
            )
            return cls(unet, sched.alphas_cumprod, timestep, blocks, seed, folder=str(Path(folder).resolve()))

    def reference(self) -> dict[str, Any]:
        # "weights" fingerprints the UNet's files, so a feature cache made from the same folder before it was
        # retrained (same path, other weights) is refused instead of silently reused.
        return {
            "kind": "unet",
            "path": self.folder,
            "timestep": self.timestep,
            "blocks": list(self.blocks),
            "seed": self.seed,
            "weights": weights_fingerprint(self.folder) if self.folder else None,
        }

    @torch.no_grad()
    def forward(self, images: torch.Tensor, masks: torch.Tensor | None = None) -> torch.Tensor:
        x = images.to(self.noise.device, torch.float32)
        if self.noise.shape[1] == 4:  # RGB + alpha model: alpha in [-1, 1] as the 4th channel
            alpha = torch.ones_like(x[:, :1]) if masks is None else masks.to(x.device, torch.float32)
            if alpha.shape[-2:] != x.shape[-2:]:
                alpha = F.interpolate(alpha, size=x.shape[-2:], mode="bilinear", align_corners=False)
            x = torch.cat([x, alpha * 2 - 1], dim=1)
        if x.shape[-1] != self.image_size or x.shape[-2] != self.image_size:
            x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bilinear", antialias=True, align_corners=False)
        a = self.alpha_bar
        x_t = a.sqrt() * x + (1 - a).sqrt() * self.noise  # (B, C, H, W)
        outs: dict[str, torch.Tensor] = {}

        def keep(name: str, out: Any) -> None:
            outs[name] = out[0] if isinstance(out, tuple) else out
            if len(outs) == len(self._modules_by_name):  # every block seen: the rest of the UNet (the high-resolution up blocks) is not needed
                raise _BlocksCaptured

        hooks = [m.register_forward_hook(lambda _m, _i, o, n=n: keep(n, o)) for n, m in self._modules_by_name.items()]
        try:
            t = torch.full((x_t.shape[0],), self.timestep, device=x.device, dtype=torch.long)
            labels = torch.zeros_like(t) if self.unet.config.num_class_embeds is not None else None
            dtype = next(self.unet.parameters()).dtype
            self.unet(x_t.to(dtype), t, class_labels=labels)
        except _BlocksCaptured:
            pass
        finally:
            for h in hooks:
                h.remove()
        feats = [outs[b].float() for b in self.blocks]  # each (B, C_b, h_b, w_b)
        if len(feats) > 1:
            size = feats[0].shape[-2:]
            feats = [
                F.normalize(F.interpolate(f, size=size, mode="bilinear", align_corners=False) if f.shape[-2:] != size else f, dim=1) for f in feats
            ]
        return torch.cat(feats, dim=1).permute(0, 2, 3, 1).contiguous()  # (B, h, w, C)


# --------------------------------------------------------------------------------------------------
# DINOv2 (pretrained or random-init)
# --------------------------------------------------------------------------------------------------
class Dinov2Backbone(Backbone):
    """Patch tokens of the last layer of a ``Dinov2Model`` (after its final layer norm)."""

    def __init__(self, model: Any, image_size: int = 224, ref: dict[str, Any] | None = None):
        super().__init__()
        self.model = model.eval().requires_grad_(False)
        patch = int(model.config.patch_size)
        if image_size % patch:
            raise InputError(f"image size {image_size} must be a multiple of the ViT patch size {patch}")
        self.image_size = int(image_size)
        self._ref = ref or {}
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    @classmethod
    def from_pretrained(cls, name_or_path: str, image_size: int = 224) -> Dinov2Backbone:
        from transformers import Dinov2Model

        name = name_or_path
        if name in DINOV2_NAMES or name in (f"dinov2-{n}" for n in DINOV2_NAMES):
            name = f"facebook/dinov2-{name.removeprefix('dinov2-')}"
        is_local = Path(name).exists()
        try:
            model = Dinov2Model.from_pretrained(name)
        except (OSError, ValueError) as e:
            if is_local:
                raise ModelError(f"{name} is not a DINOv2 model folder ({type(e).__name__}); it needs config.json and model.safetensors") from None
            raise DependencyError(
                f"DINOv2 weights {name!r} are not available here (offline); on a connected machine run "
                f"`hf download {name} --local-dir DINO_DIR`, copy DINO_DIR here and pass --backbone DINO_DIR, "
                "or train an offline backbone with `mirage3d train COLLECTION -o BACKBONE` (phase 1)"
            ) from None
        ref = {"kind": "dinov2", "path": str(Path(name).resolve()) if is_local else name, "image_size": image_size}
        return cls(model, image_size, ref)

    @classmethod
    def random(cls, seed: int = 0, image_size: int = 224) -> Dinov2Backbone:
        """DINOv2-small shape (12 layers, 384 wide, patch 14) with seeded random weights."""
        from transformers import Dinov2Config, Dinov2Model

        torch.manual_seed(seed)
        model = Dinov2Model(
            Dinov2Config(hidden_size=384, num_hidden_layers=12, num_attention_heads=6, intermediate_size=1536, patch_size=14, image_size=image_size)
        )
        return cls(model, image_size, {"kind": "random-vit", "seed": seed, "image_size": image_size})

    def reference(self) -> dict[str, Any]:
        return dict(self._ref)

    @torch.no_grad()
    def forward(self, images: torch.Tensor, masks: torch.Tensor | None = None) -> torch.Tensor:
        x = images.to(self.mean.device, torch.float32)
        if x.shape[-1] != self.image_size or x.shape[-2] != self.image_size:
            x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bicubic", antialias=True, align_corners=False)
        x = ((x + 1) / 2 - self.mean) / self.std
        dtype = next(self.model.parameters()).dtype
        tokens = self.model(pixel_values=x.to(dtype)).last_hidden_state.float()  # (B, 1 + R + h*w, C)
        g = self.image_size // int(self.model.config.patch_size)
        patches = tokens[:, -g * g :]  # skip CLS (and register tokens, if any)
        return patches.reshape(x.shape[0], g, g, -1)


# --------------------------------------------------------------------------------------------------
# HOG (baseline)
# --------------------------------------------------------------------------------------------------
class HogBackbone(Backbone):
    """Histograms of oriented gradients (unsigned, ``bins`` orientations) of the grayscale image per cell.

    Each cell's histogram is divided by the RMS histogram norm of its 3×3 cell neighbourhood (block
    normalisation, as in Dalal & Triggs), so contrast does not matter.
    """

    def __init__(self, image_size: int = 64, cell: int = 8, bins: int = 9):
        super().__init__()
        if image_size % cell:
            raise InputError(f"HOG image size {image_size} must be a multiple of the cell size {cell}")
        self.image_size, self.cell, self.bins = int(image_size), int(cell), int(bins)

    def reference(self) -> dict[str, Any]:
        return {"kind": "hog", "image_size": self.image_size, "cell": self.cell, "bins": self.bins}

    @torch.no_grad()
    def forward(self, images: torch.Tensor, masks: torch.Tensor | None = None) -> torch.Tensor:
        x = images.float()
        if x.shape[-1] != self.image_size:
            x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bilinear", antialias=True, align_corners=False)
        gray = ((x + 1) / 2).mean(dim=1, keepdim=True)  # (B, 1, H, W)
        p = F.pad(gray, (1, 1, 1, 1), mode="replicate")
        gx = p[..., 1:-1, 2:] - p[..., 1:-1, :-2]
        gy = p[..., 2:, 1:-1] - p[..., :-2, 1:-1]
        mag = torch.sqrt(gx**2 + gy**2)
        ang = torch.remainder(torch.atan2(gy, gx), torch.pi) / torch.pi * self.bins - 0.5  # bin k centred at k
        # Linear interpolation between the two nearest orientation bins (circular): weight 1 - |distance|.
        centres = torch.arange(self.bins, device=x.device, dtype=x.dtype).view(1, -1, 1, 1)
        dist = torch.remainder(ang - centres + self.bins / 2, self.bins) - self.bins / 2  # (B, bins, H, W)
        hist = mag * (1 - dist.abs()).clamp_min(0)
        cells = F.avg_pool2d(hist, self.cell)  # (B, bins, h, w)
        energy = F.avg_pool2d(cells.pow(2).sum(1, keepdim=True), 3, stride=1, padding=1, count_include_pad=False)
        cells = cells / torch.sqrt(energy + 1e-6)
        return cells.permute(0, 2, 3, 1).contiguous()


# --------------------------------------------------------------------------------------------------
# Building a backbone from a CLI spec or a saved reference
# --------------------------------------------------------------------------------------------------
def unet_settings(ref: dict[str, Any]) -> dict[str, Any]:
    """The ``UNetBackbone`` settings a saved reference records, as keyword arguments."""
    removed = [k for k in ("colour_perms", "noise_maps") if int(ref.get(k, 1)) > 1]
    if removed:  # features averaged over colour orders / noise maps: options measured not to help, removed
        raise ModelError(f"the backbone reference asks for {' and '.join(removed)} > 1, which mirage3d no longer computes; discover the poses again")
    # A reference always records its timestep; 100 was the default when references were first written.
    return {"timestep": int(ref.get("timestep", 100)), "blocks": tuple(ref.get("blocks", ("up0",))), "seed": int(ref.get("seed", 0))}


def load_backbone(
    spec: str | dict[str, Any], *, timestep: int = DEFAULT_TIMESTEP, blocks: tuple[str, ...] = ("up0",), seed: int = 0, image_size: int | None = None
) -> Backbone:
    """Backbone from a spec string or a saved :meth:`Backbone.reference` dict.

    Spec strings: ``hog``, ``random-vit``, ``dinov2-small|base|large|giant``, ``facebook/dinov2-*``, or a folder
    (a mirage3d model / backbone with ``unet/``, or a DINOv2 ``save_pretrained`` folder).
    """
    if isinstance(spec, dict):
        kind = spec.get("kind")
        if kind == "unet":
            return UNetBackbone.from_folder(spec["path"], **unet_settings(spec))
        if kind == "dinov2":
            return Dinov2Backbone.from_pretrained(spec["path"], spec.get("image_size", 224))
        if kind == "random-vit":
            return Dinov2Backbone.random(spec.get("seed", 0), spec.get("image_size", 224))
        if kind == "hog":
            return HogBackbone(spec.get("image_size", 64), spec.get("cell", 8), spec.get("bins", 9))
        raise ModelError(f"unknown backbone kind {kind!r} in the pose model; expected unet, dinov2, random-vit or hog")
    s = str(spec)
    if s == "hog":
        return HogBackbone(image_size or 64)
    if s in ("random-vit", "random"):
        return Dinov2Backbone.random(seed, image_size or 224)
    path = Path(s)
    if path.is_dir():
        cfg = path / "config.json"
        model_type = None
        if cfg.exists():
            try:
                model_type = json.loads(cfg.read_text()).get("model_type")
            except json.JSONDecodeError:
                model_type = None
        if model_type == "dinov2":
            return Dinov2Backbone.from_pretrained(s, image_size or 224)
        return UNetBackbone.from_folder(path, timestep, blocks, seed)
    if "dinov2" in s or s in DINOV2_NAMES:
        return Dinov2Backbone.from_pretrained(s, image_size or 224)
    raise InputError(
        f"backbone {s!r} is neither a folder nor one of: hog, random-vit, dinov2-small|base|large|giant; pass a model folder from `mirage3d train`"
    )

"""The pose-conditioned pixel-space UNet: a config dataclass with named presets and its builder.

The network is a diffusers ``UNet2DModel`` with a class-embedding table of ``max_poses + 1`` entries
(class 0 = "no pose", pose k = class k + 1; see ``labels.py``), so the pose-free phase-1 model and the
pose-conditioned phase-2 model are one network. Attention sits only at the coarse levels, where it is
cheap and where the pose-discovery features are read (``up_blocks[0]``).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from diffusers import UNet2DModel

from mirage3d.diffusion.labels import DEFAULT_MAX_POSES
from mirage3d.diffusion.reference import is_reference_unet
from mirage3d.errors import InputError


@dataclass(frozen=True)
class UNetConfig:
    """Architecture of the denoiser (everything ``UNet2DModel`` needs, nothing about training)."""

    res: int = 128
    """Image side in pixels (square). Must be a multiple of 2**(len(block_out_channels) - 1)."""
    block_out_channels: tuple[int, ...] = (64, 128, 128, 256)
    """Channels per resolution level, finest first; each level after the first halves the resolution."""
    attention: tuple[bool, ...] = (False, False, True, True)
    """Self-attention in the down/up blocks of each level (coarse levels only keeps it cheap)."""
    layers_per_block: int = 2
    """ResNet blocks per level on the way down (the way up has one more)."""
    attention_head_dim: int = 64
    """Channels per attention head."""
    norm_num_groups: int = 32
    """GroupNorm groups; must divide every entry of ``block_out_channels``."""
    channels: int = 3
    """Image channels the model sees and makes: 3 = RGB composited on white, 4 = RGB + alpha."""
    reference: bool = False
    """Also take a clean reference view of the object (``in_channels`` = 2 × channels; ``reference.py``)."""
    max_poses: int = DEFAULT_MAX_POSES
    """Size of the pose vocabulary; the class table has max_poses + 1 rows (row 0 = no pose)."""
    time_scale_shift: str = "scale_shift"
    """How the time + class embedding enters each ResNet: "scale_shift" (AdaGN, as in ADM) or "default" (added)."""
    dropout: float = 0.0
    """Dropout inside the ResNet blocks."""

    @property
    def levels(self) -> int:
        return len(self.block_out_channels)

    def validate(self) -> None:
        """Raise :class:`InputError` naming the bad field (user-facing: presets can be overridden)."""
        if self.levels < 1:
            raise InputError("block_out_channels must list at least one level")
        if len(self.attention) != self.levels:
            raise InputError(f"attention has {len(self.attention)} entries for {self.levels} levels; give one per level")
        factor = 2 ** (self.levels - 1)
        if self.res < 8 or self.res % factor:
            raise InputError(f"res {self.res} must be a multiple of {factor} (2^(levels-1) for {self.levels} levels) and >= 8")
        if self.channels not in (3, 4):
            raise InputError(f"channels must be 3 (RGB) or 4 (RGBA), got {self.channels}")
        if not 1 <= self.max_poses <= 1024:
            raise InputError(f"max_poses must be in 1..1024, got {self.max_poses}")
        if self.layers_per_block < 1:
            raise InputError(f"layers_per_block must be >= 1, got {self.layers_per_block}")
        for c in self.block_out_channels:
            if c % self.norm_num_groups:
                raise InputError(f"norm_num_groups {self.norm_num_groups} does not divide channel count {c}")
        if self.time_scale_shift not in ("scale_shift", "default"):
            raise InputError(f"time_scale_shift must be 'scale_shift' or 'default', got {self.time_scale_shift!r}")


# Presets. Parameter counts measured with diffusers 0.42.1 (count_parameters(build_unet(PRESETS[name]))).
PRESETS: dict[str, UNetConfig] = {
    # CPU tests: 32², 0.19 M parameters, one attention level so attention processors are exercised.
    "tiny": UNetConfig(res=32, block_out_channels=(16, 32), attention=(False, True), layers_per_block=1, attention_head_dim=8, norm_num_groups=8),
    # The shipping size: 128², 19.4 M parameters, attention at 32² and 16²; up_blocks[0] is 16²×256.
    "small": UNetConfig(res=128, block_out_channels=(64, 128, 128, 256), attention=(False, False, True, True)),
    # The backbone measured in RESEARCH-NOTES.md (64², channels 64/128/256/256), 27.7 M parameters.
    "small64": UNetConfig(res=64, block_out_channels=(64, 128, 256, 256), attention=(False, False, True, True)),
    # A larger 128² model for longer runs, 77 M parameters.
    "base": UNetConfig(res=128, block_out_channels=(128, 256, 256, 512), attention=(False, False, True, True)),
}


def unet_config_from_preset(preset: str, **overrides: object) -> UNetConfig:
    """The named preset with some fields replaced (``res=64``, ``channels=4``...)."""
    if preset not in PRESETS:
        raise InputError(f"unknown model preset {preset!r}; choose one of {', '.join(PRESETS)}")
    cfg = replace(PRESETS[preset], **{k: v for k, v in overrides.items() if v is not None})
    cfg.validate()
    return cfg


def build_unet(cfg: UNetConfig) -> UNet2DModel:
    """A freshly initialised class-conditioned ``UNet2DModel`` for ``cfg``."""
    cfg.validate()
    down = tuple("AttnDownBlock2D" if a else "DownBlock2D" for a in cfg.attention)
    up = tuple("AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(cfg.attention))
    return UNet2DModel(
        sample_size=cfg.res,
        in_channels=cfg.channels * (2 if cfg.reference else 1),
        out_channels=cfg.channels,
        block_out_channels=tuple(cfg.block_out_channels),
        down_block_types=down,
        up_block_types=up,
        layers_per_block=cfg.layers_per_block,
        attention_head_dim=cfg.attention_head_dim,
        norm_num_groups=cfg.norm_num_groups,
        num_class_embeds=cfg.max_poses + 1,
        resnet_time_scale_shift=cfg.time_scale_shift,
        dropout=cfg.dropout,
    )


def unet_config_of(unet: UNet2DModel) -> UNetConfig:
    """Recover the :class:`UNetConfig` of a built or loaded UNet (for ``--init`` and checks)."""
    c = unet.config
    res = c.sample_size if isinstance(c.sample_size, int) else c.sample_size[0]
    return UNetConfig(
        res=int(res),
        block_out_channels=tuple(c.block_out_channels),
        attention=tuple(t.startswith("Attn") for t in c.down_block_types),
        layers_per_block=int(c.layers_per_block),
        attention_head_dim=int(c.attention_head_dim or 8),
        norm_num_groups=int(c.norm_num_groups),
        channels=int(c.out_channels),
        reference=is_reference_unet(unet),
        max_poses=int(c.num_class_embeds or 1) - 1,
        time_scale_shift=str(c.resnet_time_scale_shift),
        dropout=float(c.dropout),
    )


def count_parameters(module: object) -> int:
    return sum(p.numel() for p in module.parameters())  # type: ignore[attr-defined]

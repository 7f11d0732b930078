"""Reference-conditioned UNets: the denoiser also sees a clean view of the object (the input photo).

A reference-conditioned model is a ``UNet2DModel`` whose ``in_channels`` is twice its ``out_channels``: the
noisy view, then a clean reference view of the same object from another direction, concatenated along the
channels (as Zero-1-to-3 conditions its denoiser on the input view; here the target direction is the pose
label). Trained on pairs of views of one object (``train --reference``, pairs from the collection's
``objects.json``), its samples can take the reference's shape, which pose labels and attention alone do not
give (``docs/asset.md``). A zero reference means "no reference" (dropped at random in training).

Every caller of the UNet (sampling, inversion, test-time tuning, pose features) passes only the noisy
image: a forward pre-hook (:func:`ensure_reference_hook`) appends the reference set by :func:`reference_image`
(zeros outside it). Inputs that already have ``in_channels`` channels (training) pass through untouched.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch

_ATTR = "_mirage3d_reference"


def is_reference_unet(unet: Any) -> bool:
    """Whether ``unet`` takes a reference view beside the noisy image."""
    c = unet.config
    return int(c.in_channels) == 2 * int(c.out_channels)


def _append_reference(module: torch.nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
    sample = args[0] if args else kwargs["sample"]
    if sample.shape[1] == module.config.in_channels:
        return None  # already conditioned (training)
    ref = getattr(module, _ATTR, None)
    if ref is None:
        ref = torch.zeros_like(sample)
    else:
        ref = ref.to(sample.device, sample.dtype)
        if ref.shape[0] != sample.shape[0]:
            ref = ref.expand(sample.shape[0], *ref.shape[1:])
    joined = torch.cat([sample, ref], dim=1)
    if args:
        return (joined, *args[1:]), kwargs
    return args, {**kwargs, "sample": joined}


def ensure_reference_hook(unet: torch.nn.Module) -> None:
    """Install the pre-hook on a reference-conditioned UNet (once; a no-op for plain UNets)."""
    if is_reference_unet(unet) and not getattr(unet, "_mirage3d_reference_hook", False):
        unet.register_forward_pre_hook(_append_reference, with_kwargs=True)
        unet._mirage3d_reference_hook = True
        setattr(unet, _ATTR, None)


@contextlib.contextmanager
def reference_image(unet: torch.nn.Module, image: torch.Tensor | None) -> Iterator[None]:
    """Inside the block every call of ``unet`` is conditioned on ``image`` ((1 | B, C, R, R) in [-1, 1]; None =
    no reference). A no-op for plain UNets."""
    if not is_reference_unet(unet):
        yield
        return
    ensure_reference_hook(unet)
    before = getattr(unet, _ATTR, None)
    setattr(unet, _ATTR, None if image is None else image.detach())
    try:
        yield
    finally:
        setattr(unet, _ATTR, before)


def with_reference_input(unet: torch.nn.Module) -> torch.nn.Module:
    """A copy of plain ``unet`` that also takes a reference: ``conv_in`` gets zero weights for the reference's
    channels, so the new model computes exactly what ``unet`` did until it is trained."""
    from diffusers import UNet2DModel

    if is_reference_unet(unet):
        return unet
    cfg = dict(unet.config)
    c = int(cfg["out_channels"])
    cfg["in_channels"] = 2 * c
    new = UNet2DModel.from_config(cfg).to(unet.device, unet.dtype)
    state = unet.state_dict()
    w = state["conv_in.weight"]
    state["conv_in.weight"] = torch.cat([w, torch.zeros_like(w[:, :c])], dim=1)
    new.load_state_dict(state)
    return new

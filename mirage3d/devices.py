"""The ``--device`` option shared by every stage."""

from __future__ import annotations

import os

import torch

from mirage3d.errors import InputError


def resolve_device(device: str) -> torch.device:
    """``auto`` (this process's CUDA device under accelerate/torchrun — LOCAL_RANK —, else the CPU), ``cpu``,
    ``cuda`` or ``cuda:N``; one-line errors for unknown names or CUDA asked for where there is none."""
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        return torch.device("cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise InputError(f"unknown device {device!r}; use auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"device {device!r} asked for but CUDA is not available here; use --device cpu")
    return dev

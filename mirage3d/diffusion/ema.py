"""Exponential moving average of a model's weights, saved as safetensors (no pickle in checkpoints).

diffusers' ``EMAModel`` would do the same maths, but accelerate can only checkpoint it through a pickle
(``register_for_checkpointing`` loads with ``weights_only=False``); this one keeps the average as a whole
model copy, so it saves with safetensors and exports straight to the pipeline.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from mirage3d.io import atomic_path, atomic_write_json


class EMA:
    """Average with warm-up: decay_n = min(max_decay, 1 − (1 + n)^−power) at update n.

    The warm-up lets short runs (a few thousand steps) still produce a useful average: with power 3/4 the
    decay is 0.994 after 1k updates and 0.999 after 10k, reaching ``max_decay`` 0.9999 near 215k.
    """

    def __init__(self, model: nn.Module, max_decay: float = 0.9999, power: float = 0.75):
        self.model = copy.deepcopy(model).float().requires_grad_(False).eval()
        self.max_decay = float(max_decay)
        self.power = float(power)
        self.num_updates = 0

    def decay(self) -> float:
        return min(self.max_decay, 1.0 - (1.0 + self.num_updates) ** -self.power)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """ema ← ema + (1 − decay)·(θ − ema) for every parameter (one fused foreach kernel)."""
        weight = 1.0 - self.decay()
        ema_params = list(self.model.parameters())
        params = [p.detach() for p in model.parameters()]
        if len(ema_params) != len(params):
            raise RuntimeError("EMA and model have different parameter lists")
        params = [p if p.dtype == e.dtype else p.to(e.dtype) for p, e in zip(params, ema_params)]
        torch._foreach_lerp_(ema_params, params, weight)
        self.num_updates += 1

    def save(self, folder: Path) -> None:
        """Write ``ema.safetensors`` and ``ema.json`` (update count and decay settings) into ``folder``."""
        state = {k: v.detach().contiguous().cpu() for k, v in self.model.state_dict().items()}
        with atomic_path(folder / "ema.safetensors") as tmp:
            save_file(state, str(tmp))
        atomic_write_json(folder / "ema.json", {"num_updates": self.num_updates, "max_decay": self.max_decay, "power": self.power})

    def load(self, folder: Path) -> None:
        state = load_file(str(folder / "ema.safetensors"))
        self.model.load_state_dict(state)
        meta = json.loads((folder / "ema.json").read_text())
        self.num_updates = int(meta["num_updates"])

"""Deterministic DDIM (η = 0) sampling steps and DDIM inversion of a reference image.

The same two functions move samples down (generation) and up (inversion) the noise levels, so a
reference inverted here and then denoised with the same timesteps retraces its own trajectory.

Trajectory indexing: ``timesteps`` are descending, ``t_0 > t_1 > … > t_{n-1}``; ``latents[i]`` is the
sample fed to the model at step ``i`` (noise level ᾱ(t_i)) and ``latents[n]`` is the clean image.
Inversion goes from ``latents[i+1]`` to ``latents[i]`` with ε predicted at ``(latents[i+1], t_i)``: the
usual approximation ε(x_{t_{i+1}}, t_i) ≈ ε(x_{t_i}, t_i), exact in the limit of many small steps.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from diffusers import DDIMScheduler
from diffusers.schedulers import SchedulerMixin

# model(x, t, class_labels) -> raw model output (ε, v or x0 depending on prediction_type)
Denoiser = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def ddim_timesteps(scheduler: SchedulerMixin, num_inference_steps: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """Descending DDIM timesteps for ``num_inference_steps`` with the model's training noise schedule."""
    ddim = DDIMScheduler.from_config(scheduler.config)
    ddim.set_timesteps(num_inference_steps, device=device)
    return ddim.timesteps


def alpha_bar(scheduler: SchedulerMixin, t: int) -> float:
    """ᾱ(t); for t < 0 (after the last step) 1.0 = the clean image, or ᾱ(0) if ``set_alpha_to_one`` is off (as DDIM)."""
    if t < 0:
        return 1.0 if scheduler.config.get("set_alpha_to_one", True) else float(scheduler.alphas_cumprod[0])
    return float(scheduler.alphas_cumprod[int(t)])


def next_levels(timesteps: torch.Tensor) -> list[int]:
    """Timestep reached after each step: t_{i+1}, and -1 (clean) after the last."""
    ts = [int(t) for t in timesteps]
    return ts[1:] + [-1]


def to_eps(scheduler: SchedulerMixin, model_output: torch.Tensor, x: torch.Tensor, t: int) -> torch.Tensor:
    """Noise estimate ε from the model output at timestep ``t`` (any diffusers ``prediction_type``)."""
    a = alpha_bar(scheduler, t)
    kind = scheduler.config.get("prediction_type", "epsilon")
    if kind == "epsilon":
        return model_output
    if kind == "v_prediction":
        return a**0.5 * model_output + (1 - a) ** 0.5 * x
    if kind == "sample":
        return (x - a**0.5 * model_output) / (1 - a) ** 0.5
    raise ValueError(f"unsupported prediction_type {kind!r}")


def ddim_move(x: torch.Tensor, eps: torch.Tensor, a_from: float, a_to: float, clip: bool = False) -> torch.Tensor:
    """DDIM (η = 0) move of ``x`` at level ᾱ=a_from to level a_to along ε (down or up).

    ``clip``: clamp the predicted clean image to [-1, 1] and re-derive ε from it (as diffusers' DDIM with
    ``clip_sample``); never used for inversion, where it would break invertibility.
    """
    x0 = (x - (1 - a_from) ** 0.5 * eps) / a_from**0.5
    if clip:
        x0 = x0.clamp(-1, 1)
        if a_from < 1:
            eps = (x - a_from**0.5 * x0) / (1 - a_from) ** 0.5
    return a_to**0.5 * x0 + (1 - a_to) ** 0.5 * eps


@dataclass
class DDIMTrajectory:
    """timesteps (n,) descending; latents: n + 1 tensors (B, C, H, W), ``latents[0]`` = x_T, ``latents[n]`` = x_0."""

    timesteps: torch.Tensor
    latents: list[torch.Tensor]


@torch.no_grad()
def ddim_invert(
    model: Denoiser,
    scheduler: SchedulerMixin,
    x0: torch.Tensor,
    class_labels: torch.Tensor,
    num_inference_steps: int,
    progress: Callable | None = None,
) -> DDIMTrajectory:
    """Invert clean images ``x0`` (B, C, H, W) in [-1, 1] to x_T, keeping every intermediate latent."""
    timesteps = ddim_timesteps(scheduler, num_inference_steps, x0.device)
    levels = next_levels(timesteps)
    n = len(timesteps)
    latents: list[torch.Tensor] = [x0] * (n + 1)
    x = x0
    steps = range(n - 1, -1, -1)
    for i in progress(steps) if progress else steps:
        t = int(timesteps[i])
        t_tensor = torch.full((x.shape[0],), t, device=x.device, dtype=torch.long)
        eps = to_eps(scheduler, model(x, t_tensor, class_labels), x, t)
        x = ddim_move(x, eps.to(x.dtype), alpha_bar(scheduler, levels[i]), alpha_bar(scheduler, t))
        latents[i] = x
    return DDIMTrajectory(timesteps=timesteps, latents=latents)


@torch.no_grad()
def ddim_sample(
    model: Denoiser,
    scheduler: SchedulerMixin,
    x_T: torch.Tensor,
    class_labels: torch.Tensor,
    num_inference_steps: int,
    clip: bool = False,
) -> torch.Tensor:
    """Plain deterministic DDIM from ``x_T``: the inverse of :func:`ddim_invert` (used to check it)."""
    timesteps = ddim_timesteps(scheduler, num_inference_steps, x_T.device)
    levels = next_levels(timesteps)
    x = x_T
    for i, t in enumerate(int(t) for t in timesteps):
        t_tensor = torch.full((x.shape[0],), t, device=x.device, dtype=torch.long)
        eps = to_eps(scheduler, model(x, t_tensor, class_labels), x, t)
        x = ddim_move(x, eps.to(x.dtype), alpha_bar(scheduler, t), alpha_bar(scheduler, levels[i]), clip=clip)
    return x

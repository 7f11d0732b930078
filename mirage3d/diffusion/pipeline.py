"""``MiragePipeline``: the pose-conditioned pixel-space diffusion pipeline.

Plain class-conditioned sampling (one image per requested pose, classifier-free guidance against the
"no pose" class). Reference-image conditioning with cross-frame attention is layered on top in this module
by the views work (see ``docs/``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from diffusers import DiffusionPipeline, UNet2DModel
from diffusers.schedulers import SchedulerMixin
from diffusers.utils import BaseOutput
from PIL import Image

from mirage3d.diffusion.labels import NULL_CLASS, pose_to_class


@dataclass
class MiragePipelineOutput(BaseOutput):
    """images: PIL list or array (B, H, W, 3) in [0, 1]; poses: the pose label of each image."""

    images: list[Image.Image] | np.ndarray
    poses: list[int]


class MiragePipeline(DiffusionPipeline):
    unet: UNet2DModel
    scheduler: SchedulerMixin

    def __init__(self, unet: UNet2DModel, scheduler: SchedulerMixin):
        super().__init__()
        self.register_modules(unet=unet, scheduler=scheduler)

    def check_inputs(self, poses: list[int], num_inference_steps: int, guidance_scale: float) -> None:
        n_cls = self.unet.config.num_class_embeds
        if not poses:
            raise ValueError("poses must list at least one pose label")
        for p in poses:
            if not 0 <= int(p) < n_cls - 1:
                raise ValueError(f"pose {p} is out of range: this model knows poses 0..{n_cls - 2}")
        if num_inference_steps < 1:
            raise ValueError(f"num_inference_steps must be >= 1, got {num_inference_steps}")
        if guidance_scale < 0:
            raise ValueError(f"guidance_scale must be >= 0, got {guidance_scale}")

    def predict_noise(self, x: torch.Tensor, t: torch.Tensor, class_labels: torch.Tensor, guidance_scale: float) -> torch.Tensor:
        """Model output with classifier-free guidance: out_null + w·(out_cond − out_null); w = 1 is plain conditional."""
        if guidance_scale == 1.0:
            return self.unet(x, t, class_labels=class_labels).sample
        null = torch.full_like(class_labels, NULL_CLASS)
        out = self.unet(torch.cat([x, x]), t, class_labels=torch.cat([class_labels, null])).sample
        cond, uncond = out.chunk(2)
        return uncond + guidance_scale * (cond - uncond)

    @torch.no_grad()
    def __call__(
        self,
        poses: list[int],
        num_inference_steps: int = 50,
        guidance_scale: float = 1.0,
        generator: torch.Generator | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
    ) -> MiragePipelineOutput | tuple:
        self.check_inputs(poses, num_inference_steps, guidance_scale)
        res = self.unet.config.sample_size
        res = res if isinstance(res, int) else res[0]
        b = len(poses)
        x = torch.randn((b, self.unet.config.in_channels, res, res), generator=generator, device=torch.device("cpu"), dtype=torch.float32)
        x = x.to(self.device, self.unet.dtype) * self.scheduler.init_noise_sigma
        labels = torch.as_tensor([pose_to_class(int(p)) for p in poses], device=self.device)
        self.scheduler.set_timesteps(num_inference_steps, device=self.device)
        for t in self.progress_bar(self.scheduler.timesteps):
            model_in = self.scheduler.scale_model_input(x, t)
            out = self.predict_noise(model_in, t, labels, guidance_scale)
            x = self.scheduler.step(out, t, x, generator=generator).prev_sample
        images = (x.float() / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).cpu().numpy()
        if output_type == "pil":
            images = self.numpy_to_pil(images)
        if not return_dict:
            return (images, list(poses))
        return MiragePipelineOutput(images=images, poses=[int(p) for p in poses])

"""``MiragePipeline``: the pose-conditioned pixel-space diffusion pipeline.

Two ways to call it (design in ``docs/views.md``):

- **Plain** (no ``image``, ``cross_frame`` unset): one independent sample per requested pose with the
  model's own scheduler and classifier-free guidance against the "no pose" class. Training uses this for
  sample grids.
- **Views** (an ``image``, or ``cross_frame`` given): consistent views of one object. The reference view
  sits at index 0 of every batch group; generated views attend to it through
  :class:`~mirage3d.diffusion.attention.CrossFrameAttnProcessor2_0`. With an image, the reference is the
  DDIM-inverted input, kept on its inverted trajectory at every step (so it reconstructs the input);
  without one, the first requested pose is generated normally and serves as the reference.
  Sampling is deterministic DDIM (η = 0) on the model's noise schedule.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from diffusers import DiffusionPipeline, UNet2DModel
from diffusers.schedulers import SchedulerMixin
from diffusers.utils import BaseOutput
from PIL import Image

from mirage3d.diffusion.attention import CROSS_FRAME_MODES, cross_frame_attention, select_layers
from mirage3d.diffusion.config import ConsistencyConfig, TuneConfig
from mirage3d.diffusion.inversion import alpha_bar, ddim_invert, ddim_move, ddim_timesteps, next_levels, to_eps
from mirage3d.diffusion.labels import NULL_CLASS, pose_to_class
from mirage3d.diffusion.preprocess import DEFAULT_FILL, PreparedImage, prepare_reference
from mirage3d.diffusion.reference import ensure_reference_hook, reference_image


@dataclass
class CrossFrameConfig:
    """How generated views attend to the reference view."""

    enabled: bool = True
    """False: views are sampled independently (the baseline)."""
    mode: str = "concat"
    """"concat": keys/values = own + reference; "reference_only": the reference's only."""
    layers: str | list[str] = "all"
    """Attention layers that use it: "all", "down"/"mid"/"up" joined by "+", or module names."""


# render_fn(views, poses, reference_index, round) -> renders: views (V, H, W, C) in [0, 1] in ``poses`` order
# (C = 3 RGB on white, or 4 with alpha for an RGBA model); renders (V, H, W, 4) RGBA in [0, 1], same order.
RenderFn = Callable[[np.ndarray, list[int], int, int], np.ndarray]


@dataclass
class MiragePipelineOutput(BaseOutput):
    """images: the views, PIL list or array (N, H, W, 3) in [0, 1], in the order of ``poses``.

    cameras: the camera of each view (from ``pipeline.cameras``, if set); reference: the preprocessed
    reference image (views mode with an image); reference_index: which of ``images`` is the reference.
    """

    images: list[Image.Image] | np.ndarray
    poses: list[int]
    cameras: list[Any] | None = None
    reference: Image.Image | np.ndarray | None = None
    reference_index: int | None = None
    reference_pose: int | None = None
    reference_mask: np.ndarray | None = None
    pose_confidence: float | None = None

    @property
    def views(self) -> list[Image.Image] | np.ndarray:
        return self.images


@dataclass
class _Plan:
    """What one views-mode call will do (resolved inputs)."""

    out_poses: list[int]
    reference_pose: int
    gen_poses: list[int]
    reference: torch.Tensor | None  # (1, 3, R, R) in [-1, 1], or None (unconditional)
    reference_mask: np.ndarray | None = None
    confidence: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)


class MiragePipeline(DiffusionPipeline):
    unet: UNet2DModel
    scheduler: SchedulerMixin

    # Not registered modules (not saved by save_pretrained): set by mirage3d.diffusion.views.load_model
    # from MODEL/poses/. pose_model: has .assign(images (B,3,H,W) in [-1,1], masks) -> (labels, confidence).
    pose_model: Any = None
    cameras: list[Any] | None = None
    mirror: list[int] | None = None  # pose k's mirror pose (MODEL/poses/poses.json "mirror"), None if unknown
    fill: float = DEFAULT_FILL
    fill_range: tuple[float, float] | None = None  # MODEL/framing.json's 5-95 % bbox fractions (preprocess.fill_for_mask)
    _label_shift: int = 0  # while tuned: labels + this select "the input object at pose k" (_InstanceEmbedding)

    def __init__(self, unet: UNet2DModel, scheduler: SchedulerMixin):
        super().__init__()
        self.register_modules(unet=unet, scheduler=scheduler)
        ensure_reference_hook(unet)  # a reference-conditioned UNet gets the input view appended to every call

    @property
    def num_poses(self) -> int | None:
        """Poses the model was trained with (from its cameras), None if no cameras are loaded."""
        return None if self.cameras is None else len(self.cameras)

    @property
    def resolution(self) -> int:
        res = self.unet.config.sample_size
        return int(res if isinstance(res, int) else res[0])

    def check_inputs(
        self,
        poses: list[int],
        num_inference_steps: int,
        guidance_scale: float,
        reference_pose: int | None = None,
        cross_frame: CrossFrameConfig | None = None,
        consistency: ConsistencyConfig | None = None,
        render_fn: RenderFn | None = None,
    ) -> None:
        n_cls = self.unet.config.num_class_embeds
        if not n_cls or n_cls < 2:
            raise ValueError("this UNet has no pose classes (num_class_embeds); it is not a MiragePipeline UNet")
        if not poses:
            raise ValueError("poses must list at least one pose label")
        limit = min(n_cls - 1, self.num_poses or n_cls - 1)
        for p in [*poses, *([] if reference_pose is None else [reference_pose])]:
            if not 0 <= int(p) < limit:
                raise ValueError(f"pose {p} is out of range: this model knows poses 0..{limit - 1}")
        if num_inference_steps < 1:
            raise ValueError(f"num_inference_steps must be >= 1, got {num_inference_steps}")
        if guidance_scale < 0:
            raise ValueError(f"guidance_scale must be >= 0, got {guidance_scale}")
        if cross_frame is not None:
            if cross_frame.mode not in CROSS_FRAME_MODES:
                raise ValueError(f"cross_frame mode {cross_frame.mode!r} is not one of {CROSS_FRAME_MODES}")
            select_layers(self.unet, cross_frame.layers)
        if consistency is not None and consistency.rounds:
            if consistency.rounds < 0 or not 0.0 < consistency.strength <= 1.0:
                raise ValueError(f"consistency rounds must be >= 0 and strength in (0, 1], got {consistency.rounds} and {consistency.strength}")
            if render_fn is None:
                raise ValueError("consistency rounds need a render_fn that fits a 3D model to the views and renders it")

    def predict_noise(self, x: torch.Tensor, t: torch.Tensor, class_labels: torch.Tensor, guidance_scale: float) -> torch.Tensor:
        """Model output with classifier-free guidance: out_null + w·(out_cond − out_null); w = 1 is plain conditional."""
        if guidance_scale == 1.0:
            return self.unet(x, t, class_labels=class_labels).sample
        null = torch.full_like(class_labels, NULL_CLASS)
        out = self.unet(torch.cat([x, x]), t, class_labels=torch.cat([class_labels, null])).sample
        cond, uncond = out.chunk(2)
        return uncond + guidance_scale * (cond - uncond)

    def _to_output(self, x: torch.Tensor, output_type: str) -> list[Image.Image] | np.ndarray:
        images = (x.float() / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).cpu().numpy()
        return self.numpy_to_pil(images) if output_type == "pil" else images

    @torch.no_grad()
    def __call__(
        self,
        poses: list[int] | None = None,
        num_inference_steps: int = 50,
        guidance_scale: float = 1.0,
        generator: torch.Generator | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        image: Image.Image | np.ndarray | torch.Tensor | PreparedImage | None = None,
        reference_pose: int | None = None,
        cross_frame: CrossFrameConfig | str | None = None,
        consistency: ConsistencyConfig | None = None,
        render_fn: RenderFn | None = None,
        tune: TuneConfig | None = None,
    ) -> MiragePipelineOutput | tuple:
        """Sample one view per pose in ``poses`` (default: every pose of the model).

        image: the reference — PIL / array (raw photo, framed with :func:`prepare_reference`), a
            :class:`PreparedImage`, or a tensor (3|1×3, R, R) in [-1, 1] already in the model's framing.
        reference_pose: the reference's pose; None → ``self.pose_model`` estimates it.
        cross_frame: CrossFrameConfig, or "concat" / "reference_only" / "off". Default: on ("concat", all
            layers) when an image is given, off otherwise (plain independent sampling).
        consistency: refinement rounds through ``render_fn`` (:class:`ConsistencyConfig`); views mode only.
        tune: test-time fine-tuning on the image (:class:`TuneConfig`); the UNet's weights are restored after.
        """
        if poses is None:
            if self.num_poses is None:
                raise ValueError("poses not given and no cameras loaded to say how many poses the model has; pass poses=[...]")
            poses = list(range(self.num_poses))
        poses = [int(p) for p in poses]
        if isinstance(cross_frame, str):
            cross_frame = CrossFrameConfig(enabled=False) if cross_frame == "off" else CrossFrameConfig(mode=cross_frame)
        self.check_inputs(poses, num_inference_steps, guidance_scale, reference_pose, cross_frame, consistency, render_fn)
        consistency = consistency or ConsistencyConfig(rounds=0)  # rounds need a render_fn: off unless asked
        if image is None and cross_frame is None and consistency.rounds == 0:
            return self._plain(poses, num_inference_steps, guidance_scale, generator, output_type, return_dict)

        cross_frame = cross_frame or CrossFrameConfig()
        plan = self._plan(poses, image, reference_pose)
        seed = generator.initial_seed() if generator is not None else None
        with reference_image(self.unet, plan.reference):  # a reference-conditioned UNet sees the input in every call
            x = self._views(plan, cross_frame, num_inference_steps, guidance_scale, generator, consistency, render_fn)
            if tune is not None and tune.steps and plan.reference is not None:
                # The untuned views are the prior that keeps every pose label's viewpoint while the model learns the input.
                with self._tuned(plan, tune, x, 0 if seed is None else seed):
                    g2 = None if seed is None else torch.Generator().manual_seed(seed)
                    x = self._views(plan, cross_frame, num_inference_steps, guidance_scale, g2, consistency, render_fn)
        images = self._to_output(x, output_type)
        ref_index = plan.out_poses.index(plan.reference_pose)
        cams = [self.cameras[p] for p in plan.out_poses] if self.cameras is not None else None
        reference = None
        if plan.reference is not None:
            reference = self._to_output(plan.reference, output_type)[0]
        out = MiragePipelineOutput(
            images=images,
            poses=plan.out_poses,
            cameras=cams,
            reference=reference,
            reference_index=ref_index,
            reference_pose=plan.reference_pose,
            reference_mask=plan.reference_mask,
            pose_confidence=plan.confidence,
        )
        return out if return_dict else out.to_tuple()

    # ----------------------------------------------------------------------------------------------
    def _plain(self, poses, num_inference_steps, guidance_scale, generator, output_type, return_dict):
        res = self.resolution
        b = len(poses)
        x = torch.randn((b, self.unet.config.out_channels, res, res), generator=generator, device=torch.device("cpu"), dtype=torch.float32)
        x = x.to(self.device, self.unet.dtype) * self.scheduler.init_noise_sigma
        labels = torch.as_tensor([pose_to_class(int(p)) for p in poses], device=self.device)
        self.scheduler.set_timesteps(num_inference_steps, device=self.device)
        for t in self.progress_bar(self.scheduler.timesteps):
            model_in = self.scheduler.scale_model_input(x, t)
            out = self.predict_noise(model_in, t, labels, guidance_scale)
            x = self.scheduler.step(out, t, x, generator=generator).prev_sample
        images = self._to_output(x, output_type)
        if not return_dict:
            return (images, list(poses))
        return MiragePipelineOutput(images=images, poses=[int(p) for p in poses])

    def _reference_tensor(self, image: Any) -> tuple[torch.Tensor, np.ndarray | None]:
        res = self.resolution
        if isinstance(image, torch.Tensor):
            ref = image if image.ndim == 4 else image[None]
            if ref.shape[0] != 1 or ref.shape[1] != self.unet.config.out_channels or tuple(ref.shape[2:]) != (res, res):
                raise ValueError(f"image tensor must be (1, {self.unet.config.out_channels}, {res}, {res}) in [-1, 1], got {tuple(image.shape)}")
            return ref.float(), None
        prepared = image if isinstance(image, PreparedImage) else prepare_reference(image, res, fill=self.fill, fill_range=self.fill_range)
        if prepared.image.shape[:2] != (res, res):
            raise ValueError(f"prepared image is {prepared.image.shape[:2]}, the model expects {res}x{res}")
        ref = prepared.to_tensor()
        if self.unet.config.out_channels == 4:  # RGB on white + alpha, all in [-1, 1]
            ref = torch.cat([ref, torch.from_numpy(prepared.mask)[None, None].float() * 2 - 1], dim=1)
        return ref, prepared.mask

    def _plan(self, poses: list[int], image: Any, reference_pose: int | None) -> _Plan:
        if image is None:
            ref_pose = poses[0] if reference_pose is None else reference_pose
            out_poses = poses if ref_pose in poses else [ref_pose, *poses]
            return _Plan(out_poses, ref_pose, [p for p in out_poses if p != ref_pose], None)
        ref, mask = self._reference_tensor(image)
        confidence = None
        if reference_pose is None:
            if self.pose_model is None:
                raise ValueError("no pose model is loaded to estimate the reference pose; pass reference_pose (--pose K)")
            m = torch.ones_like(ref[:, :1]) if mask is None else torch.from_numpy(mask)[None, None].float()
            labels, conf = self.pose_model.assign(ref[:, :3], m)
            reference_pose = int(labels[0])
            confidence = float(conf[0])
        out_poses = poses if reference_pose in poses else [reference_pose, *poses]
        gen = [p for p in out_poses if p != reference_pose]
        return _Plan(out_poses, reference_pose, gen, ref, mask, confidence)

    def _views(
        self,
        plan: _Plan,
        cross_frame: CrossFrameConfig,
        num_inference_steps: int,
        guidance_scale: float,
        generator: torch.Generator | None,
        consistency: ConsistencyConfig | None = None,
        render_fn: RenderFn | None = None,
    ) -> torch.Tensor:
        """Joint DDIM over [reference, generated views...] (then the consistency rounds); returns the views in
        ``plan.out_poses`` order."""
        device = self.device
        res, ch = self.resolution, self.unet.config.out_channels
        ref_cls = pose_to_class(plan.reference_pose)
        labels = torch.as_tensor([ref_cls, *(pose_to_class(p) for p in plan.gen_poses)], device=device) + self._label_shift  # (V,)
        n_views = len(labels)
        # Position in plan.out_poses → index in the internal order [reference, generated...].
        gen_iter = iter(range(1, n_views))
        order = [0 if p == plan.reference_pose else next(gen_iter) for p in plan.out_poses]

        ref_latents = None  # the reference's latent fed at each step (its inverted trajectory with an image)
        if plan.reference is not None:
            unet = self._denoiser()
            trajectory = ddim_invert(unet, self.scheduler, plan.reference.to(device), labels[:1], num_inference_steps, self.progress_bar)
            ref_latents = [lat[0] for lat in trajectory.latents]
        x = torch.randn((n_views, ch, res, res), generator=generator, device=torch.device("cpu"), dtype=torch.float32).to(device)
        timesteps = ddim_timesteps(self.scheduler, num_inference_steps, device)
        latents = self._denoise(x, 0, timesteps, labels, ref_latents, cross_frame, guidance_scale)
        x = latents.pop()  # the clean views: (V, C, R, R)
        ref_latents = [*latents, x[0].clone()]  # the reference at every level, clean last
        consistency = consistency or ConsistencyConfig(rounds=0)  # rounds need a render_fn: off unless asked
        n = len(timesteps)
        start = min(n - 1, max(0, round((1.0 - consistency.strength) * n)))
        rounds = consistency.rounds if plan.gen_poses else 0  # the reference alone: nothing to make agree
        for r in range(rounds):
            views = (x[order].float() / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).cpu().numpy()
            renders = render_fn(views, list(plan.out_poses), plan.out_poses.index(plan.reference_pose), r)  # (V, H, W, 4)
            r_t = torch.from_numpy(np.asarray(renders, dtype=np.float32)).permute(0, 3, 1, 2)  # (V, 4, R, R)
            rgb = r_t[:, :3] * r_t[:, 3:] + (1 - r_t[:, 3:])  # on white, as the model's images
            x0 = (torch.cat([rgb, r_t[:, 3:]], 1) if ch == 4 else rgb) * 2 - 1
            x0 = x0[[plan.out_poses.index(p) for p in [plan.reference_pose, *plan.gen_poses]]].to(device)  # internal order
            a = alpha_bar(self.scheduler, int(timesteps[start]))
            noise = torch.randn(x0.shape, generator=generator, device=torch.device("cpu"), dtype=torch.float32).to(device)
            x = a**0.5 * x0 + (1 - a) ** 0.5 * noise
            x = self._denoise(x, start, timesteps, labels, ref_latents, cross_frame, guidance_scale).pop()
        return x[order]

    @contextlib.contextmanager
    def _tuned(self, plan: _Plan, tune: TuneConfig, prior: torch.Tensor, seed: int) -> Iterator[None]:
        """Inside the block the UNet is fine-tuned on the plan's image (see :meth:`_tune`); then restored."""
        saved = {k: v.detach().clone() for k, v in self.unet.state_dict().items()}
        base = self.unet.class_embedding
        self.unet.class_embedding = _InstanceEmbedding(base)
        try:
            self._tune(plan, tune, prior, seed)
            self._label_shift = base.num_embeddings
            yield
        finally:
            self._label_shift = 0
            self.unet.class_embedding = base
            self.unet.load_state_dict(saved)

    def _tune(self, plan: _Plan, tune: TuneConfig, prior: torch.Tensor, seed: int) -> None:
        """``tune.steps`` of the training objective: the input (at its pose) and its mirror image (at the mirror
        pose) with the instance offset of :class:`_InstanceEmbedding`, and the untuned views ``prior`` (V, C, R, R,
        ``plan.out_poses`` order) at their poses without it, half of each batch each (DreamBooth's prior
        preservation: the pose labels keep their viewpoints, the offset takes what is particular to this object).

        Full fine-tuning rather than adapters: the UNet is small (19 M parameters), and no adapter library is a
        dependency. The draws come from their own generator (``seed``).
        """
        device, unet = self.device, self.unet
        shift = unet.class_embedding.base.num_embeddings
        x0 = plan.reference.to(device, torch.float32)
        inst, inst_labels = [x0], [pose_to_class(plan.reference_pose) + shift]
        if self.mirror is not None:  # the flipped photo is a true view from the mirror pose (training relabels flips so)
            inst.append(x0.flip(-1))
            inst_labels.append(pose_to_class(int(self.mirror[plan.reference_pose])) + shift)
        inst_x, inst_l = torch.cat(inst), torch.as_tensor(inst_labels, device=device)
        keep = [i for i, p in enumerate(plan.out_poses) if p != plan.reference_pose]
        prior_x = prior[keep].to(device, torch.float32)
        prior_l = torch.as_tensor([pose_to_class(plan.out_poses[i]) for i in keep], device=device)
        half = max(1, tune.batch // 2)
        ac = self.scheduler.alphas_cumprod.to(device, torch.float32)
        v_pred = self.scheduler.config.prediction_type == "v_prediction"
        g = torch.Generator().manual_seed(int(seed) + 0x7E57)
        params = list(unet.parameters())
        flags = [q.requires_grad for q in params]  # (a shared pose-model backbone freezes the UNet)
        delta = unet.class_embedding.delta
        others = [q for q in params if q is not delta]
        opt = torch.optim.AdamW([{"params": others}, {"params": [delta], "lr": tune.lr * 50}], lr=tune.lr, weight_decay=0.0)
        unet.requires_grad_(True)
        try:
            with torch.enable_grad():
                for _ in range(tune.steps):
                    i = torch.randint(0, len(inst_x), (half,), generator=g).to(device)
                    j = torch.randint(0, len(prior_x), (half if len(prior_x) else 0,), generator=g).to(device)
                    xb, lb = torch.cat([inst_x[i], prior_x[j]]), torch.cat([inst_l[i], prior_l[j]])
                    t = torch.randint(0, len(ac), (len(xb),), generator=g).to(device)
                    eps = torch.randn(xb.shape, generator=g).to(device)
                    a = ac[t].view(-1, 1, 1, 1)
                    xt = a.sqrt() * xb + (1 - a).sqrt() * eps
                    target = a.sqrt() * eps - (1 - a).sqrt() * xb if v_pred else eps
                    out = unet(xt.to(unet.dtype), t, class_labels=lb).sample.float()
                    loss = torch.nn.functional.mse_loss(out, target)
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
        finally:
            for q, f in zip(params, flags, strict=True):
                q.requires_grad_(f)

    def _denoiser(self) -> Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]:
        dtype = self.unet.dtype
        return lambda x, t, cls: self.unet(x.to(dtype), t, class_labels=cls).sample.float()

    def _denoise(
        self,
        x: torch.Tensor,
        start: int,
        timesteps: torch.Tensor,
        labels: torch.Tensor,
        ref_latents: list[torch.Tensor] | None,
        cross_frame: CrossFrameConfig,
        guidance_scale: float,
    ) -> list[torch.Tensor]:
        """DDIM from step ``start`` to the clean images, all views jointly (V, C, R, R).

        View 0 is the reference: it is set to ``ref_latents[i]`` at each step when given (its inverted
        trajectory), else denoised with the others. Returns the reference's latent at every step from 0
        (entries before ``start`` from ``ref_latents``), followed by the clean views as the last entry.
        """
        device = self.device
        n_views = len(labels)
        unet = self._denoiser()
        levels = next_levels(timesteps)
        clip = bool(self.scheduler.config.get("clip_sample", False))
        use_cfg = guidance_scale != 1.0
        # Batch groups: conditional, then "no pose" with classifier-free guidance; each holds all V views.
        batch_labels = torch.cat([labels, torch.full_like(labels, NULL_CLASS)]) if use_cfg else labels
        n_groups = 2 if use_cfg else 1
        ref_out = list(ref_latents[:start]) if ref_latents is not None else []
        x = x.clone()
        with cross_frame_attention(self.unet, cross_frame.layers if cross_frame.enabled else "none") as state:
            state.views_per_group, state.mode = n_views, cross_frame.mode
            for i in self.progress_bar(range(start, len(timesteps))):
                t = int(timesteps[i])
                if ref_latents is not None:
                    x[0] = ref_latents[i]  # the reference stays on its trajectory
                ref_out.append(x[0].clone())
                t_batch = torch.full((len(batch_labels),), t, device=device, dtype=torch.long)
                out = unet(torch.cat([x] * n_groups), t_batch, batch_labels).chunk(n_groups)
                cond = out[0]
                pred = out[1] + guidance_scale * (cond - out[1]) if use_cfg else cond
                eps = to_eps(self.scheduler, pred, x, t)
                x = ddim_move(x, eps, alpha_bar(self.scheduler, t), alpha_bar(self.scheduler, levels[i]), clip=clip)
        if ref_latents is not None:
            x[0] = ref_latents[-1]
        return [*ref_out, x]


class _InstanceEmbedding(torch.nn.Module):
    """The UNet's class embedding while it is tuned on one input: labels ≥ N (the table's size) are "the
    input object at pose label − N", embedded as the pose's row plus a learned offset ``delta``."""

    def __init__(self, base: torch.nn.Embedding):
        super().__init__()
        self.base = base
        self.delta = torch.nn.Parameter(torch.zeros(base.embedding_dim, device=base.weight.device, dtype=base.weight.dtype))

    def forward(self, labels: torch.Tensor) -> torch.Tensor:
        n = self.base.num_embeddings
        inst = (labels >= n).to(self.delta.dtype)[:, None]
        return self.base(labels % n) + inst * self.delta

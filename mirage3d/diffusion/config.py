"""The views stage's settings: :class:`ViewsConfig` and its :class:`ConsistencyConfig`.

A module of their own, free of torch and diffusers, so that ``make-asset``'s input checks and the ``serve``
client can build and check them without the heavy imports (``mirage3d.diffusion.views`` and
``mirage3d.diffusion.pipeline`` re-export both).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from mirage3d.errors import InputError

CROSS_FRAME_CHOICES = ("concat", "reference_only", "all", "off")
MAX_STEPS = 1000  # the DDIM schedule has 1000 training steps: more inference steps than that cannot be taken


@dataclass
class ConsistencyConfig:
    """Rounds of generate → reconstruct → render → re-noise → denoise (IM-3D's iterative refinement).

    After the joint denoising, ``render_fn`` fits one 3D model to all views and renders it at every view's
    camera; the renders are noised back to the level ``strength`` of the way up the DDIM schedule and
    denoised again with cross-frame attention, the reference staying on its own trajectory. The views then
    keep what the denoiser adds (detail, the input's look) on top of a shape that one 3D model explains.
    """

    rounds: int = 2
    """Refinement rounds (0 = off). 2 by default for the views (H200, 14 inputs of 2 unseen cars: views PSNR
    16.06 → 17.61 dB, mask IoU 0.712 → 0.762, 3 rounds no better); make-asset sets 0, because the mesh made from
    the refined views scored lower (F@2% 0.43 → 0.30; docs/views.md)."""
    strength: float = 0.5
    """Fraction of the DDIM steps re-run from each round's renders (0 = keep the renders, 1 = from pure noise)."""


@dataclass
class TuneConfig:
    """Test-time fine-tuning: the UNet is trained for a few steps on the input photo (and its mirror image, at
    the mirror pose) before the views are made, then restored (DreamBooth's idea with one image and pose labels
    in place of text), so that the model's samples at the other poses take more of this object."""

    steps: int = 0
    """Optimizer steps on the input (0 = off)."""
    lr: float = 2e-5
    """AdamW learning rate."""
    batch: int = 8
    """Images per step (copies of the input and its mirror image, each with its own noise and timestep)."""


@dataclass
class ViewsConfig:
    """Everything that decides the views (saved as ``config.json`` beside them)."""

    poses: str = "all"
    """Poses to generate: "all" or comma-separated pose indices ("0,2,5"). The reference's pose is always included."""
    reference_pose: int | None = None
    """The input's pose; None: estimated with the model's pose model (MODEL/poses)."""
    num_inference_steps: int = 50
    """DDIM steps (η = 0), also used for the inversion of the input."""
    guidance_scale: float = 1.0
    """Classifier-free guidance against the "no pose" class (1 = off)."""
    cross_frame: str = "all"
    """"concat" (own + input), "reference_only", "all" (every view) or "off" (independent sampling)."""
    cross_frame_layers: str = "all"
    """Attention layers with cross-frame attention: "all", or "down"/"mid"/"up" joined by "+"."""
    fill: float | None = None
    """Object bbox / frame for the input; None: the input's own when in MODEL/framing.json's range, else its
    median bbox fraction, else the default 0.85 (preprocess.fill_for_mask)."""
    reframe: bool = True
    """False: the input is already framed like the training renders (only padded and resized)."""
    box: tuple[int, int, int, int] | None = None
    """The object's box (x0, y0, x1, y1, pixels of the input photo) for a photo with a background: GrabCut from it
    (mirage3d.foreground); None: the mask comes from alpha, a plain background, rembg or the automatic GrabCut."""
    alpha_low: float = 0.03
    """Generated views' alpha: 0 where the distance from white is below this ..."""
    alpha_high: float = 0.12
    """... 1 above this, linear between (max over RGB of 1 − value)."""
    tune: TuneConfig = field(default_factory=TuneConfig)
    """Test-time fine-tuning on the input before its views are made (docs/views.md)."""
    consistency: ConsistencyConfig = field(default_factory=ConsistencyConfig)
    """Generate → reconstruct → render → re-noise → denoise rounds (docs/views.md)."""
    seed: int = 0
    """Seed of the generated views' initial noise."""
    device: str = "auto"
    """"auto" (CUDA if available), "cpu", "cuda", "cuda:1"..."""

    def validate(self) -> None:
        """Raise :class:`InputError` (one line) for settings out of range; what needs the photo or the model
        (the box inside the photo, the poses against the model's) is checked by ``make_views``."""
        steps, seed = self.num_inference_steps, self.seed
        if not isinstance(steps, int) or isinstance(steps, bool) or not 1 <= steps <= MAX_STEPS:
            raise InputError(f"--steps {steps!r} must be an integer in 1..{MAX_STEPS}")
        if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed < 2**63:
            raise InputError(f"--seed {seed!r} must be an integer in 0..{2**63 - 1}")
        if self.cross_frame not in CROSS_FRAME_CHOICES:
            raise InputError(f"--cross-frame {self.cross_frame!r} must be concat, reference_only, all or off")
        if not isinstance(self.guidance_scale, (int, float)) or not 0 <= self.guidance_scale < float("inf"):  # (NaN fails too)
            raise InputError(f"--guidance {self.guidance_scale!r} must be a finite number >= 0")
        if self.fill is not None and not 0 < self.fill <= 1:
            raise InputError(f"--fill {self.fill} must be in (0, 1]: the object's box side over the frame side")
        if self.reference_pose is not None and self.reference_pose < 0:
            raise InputError(f"--pose {self.reference_pose} is out of range: poses are numbered from 0")
        tune = self.tune
        if not isinstance(tune.steps, int) or isinstance(tune.steps, bool) or tune.steps < 0 or not 0 < tune.lr < 1 or tune.batch < 1:
            raise InputError(f"--tune-steps must be >= 0, --tune-lr in (0, 1) and the tuning batch >= 1, got {tune.steps}, {tune.lr}, {tune.batch}")
        rounds, strength = self.consistency.rounds, self.consistency.strength
        if rounds < 0 or not 0.0 < strength <= 1.0:
            raise InputError(f"--rounds must be >= 0 and --strength in (0, 1], got {rounds} and {strength}")

"""MiragePipeline: plain sampling kept, views mode, DDIM inversion, save/load round trip."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler, UNet2DModel

from mirage3d.diffusion.inversion import ddim_invert, ddim_sample
from mirage3d.diffusion.pipeline import CrossFrameConfig, MiragePipeline


def tiny_unet(res: int = 8, channels: int = 3, seed: int = 0) -> UNet2DModel:
    torch.manual_seed(seed)
    return UNet2DModel(
        sample_size=res,
        in_channels=channels,
        out_channels=channels,
        block_out_channels=(8, 16),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D"),
        num_class_embeds=5,
        norm_num_groups=4,
        attention_head_dim=4,
    ).eval()


@pytest.fixture(scope="module")
def pipe() -> MiragePipeline:
    p = MiragePipeline(tiny_unet(), DDPMScheduler(num_train_timesteps=1000))
    p.set_progress_bar_config(disable=True)
    return p


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_plain_call_unchanged(pipe: MiragePipeline) -> None:
    a = pipe([0, 1, 1], num_inference_steps=3, guidance_scale=2.0, generator=gen(), output_type="np")
    b = pipe([0, 1, 1], num_inference_steps=3, guidance_scale=2.0, generator=gen(), output_type="np")
    assert a.images.shape == (3, 8, 8, 3) and a.poses == [0, 1, 1] and a.cameras is None
    np.testing.assert_array_equal(a.images, b.images)
    images, poses = pipe([2], num_inference_steps=2, generator=gen(), return_dict=False)
    assert len(images) == 1 and images[0].size == (8, 8) and poses == [2]


def test_views_with_reference_image(pipe: MiragePipeline) -> None:
    ref = torch.rand(1, 3, 8, 8) * 2 - 1
    out = pipe([0, 2, 3], num_inference_steps=4, generator=gen(), output_type="np", image=ref, reference_pose=1, guidance_scale=1.5)
    assert out.poses == [1, 0, 2, 3] and out.reference_index == 0 and out.reference_pose == 1
    assert out.images.shape == (4, 8, 8, 3)
    # The reference stays on its inverted trajectory, so it comes back as the input.
    np.testing.assert_allclose(out.views[0], (ref[0].permute(1, 2, 0).numpy() + 1) / 2, atol=1e-5)
    plain = pipe(
        [0, 2, 3], num_inference_steps=4, generator=gen(), output_type="np", image=ref, reference_pose=1, guidance_scale=1.5, cross_frame="off"
    )
    assert np.abs(out.images[1:] - plain.images[1:]).max() > 1e-3  # attending to the reference changes the views


def test_unconditional_reference_is_unaffected_by_other_views(pipe: MiragePipeline) -> None:
    alone = pipe([2], num_inference_steps=3, generator=gen(), output_type="np", cross_frame="concat")
    joint = pipe(
        [2, 0, 3], num_inference_steps=3, generator=gen(), output_type="np", cross_frame=CrossFrameConfig(mode="reference_only", layers="up")
    )
    assert joint.reference_index == 0 and joint.poses == [2, 0, 3]
    np.testing.assert_allclose(joint.images[0], alone.images[0], atol=1e-4)


def test_reference_pose_estimated_with_pose_model(pipe: MiragePipeline) -> None:
    class FakePoseModel:
        def assign(self, images: torch.Tensor, masks: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
            assert images.shape == (1, 3, 8, 8) and masks.shape == (1, 1, 8, 8)
            return np.array([3]), np.array([0.75])

    ref = torch.rand(1, 3, 8, 8) * 2 - 1
    with pytest.raises(ValueError, match="reference_pose"):
        pipe([0], num_inference_steps=1, image=ref)
    pipe.pose_model = FakePoseModel()
    try:
        out = pipe([0], num_inference_steps=1, image=ref, output_type="np")
    finally:
        pipe.pose_model = None
    assert out.reference_pose == 3 and out.poses == [3, 0] and out.pose_confidence == 0.75


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(poses=[4]), "out of range"),
        (dict(poses=[0], reference_pose=9), "out of range"),
        (dict(poses=[0], cross_frame=CrossFrameConfig(mode="sideways")), "mode"),
        (dict(poses=[0], cross_frame=CrossFrameConfig(layers=["nope"])), "not in this UNet"),
        (dict(poses=None), "poses not given"),
        (dict(poses=[0], image=torch.zeros(1, 3, 4, 4), reference_pose=0), "image tensor"),
    ],
)
def test_check_inputs(pipe: MiragePipeline, kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        pipe(num_inference_steps=1, **kwargs)


def test_ddim_inversion_round_trip() -> None:
    # A mild noise schedule (ᾱ_T ≈ 0.35) keeps a random tiny UNet's ε well-conditioned, so the usual
    # inversion approximation ε(x_{t+1}, t) ≈ ε(x_t, t) holds and improves with more steps.
    unet = tiny_unet()
    model = lambda x, t, c: unet(x, t, class_labels=c).sample
    sched = DDIMScheduler(num_train_timesteps=1000, beta_end=0.002)
    x0 = torch.rand(1, 3, 8, 8, generator=gen(1)) * 1.6 - 0.8
    c = torch.tensor([2])
    errors = []
    for n in (4, 16):
        traj = ddim_invert(model, sched, x0, c, n)
        assert len(traj.latents) == n + 1 and torch.equal(traj.latents[-1], x0)
        assert (traj.latents[0] - x0).abs().mean() > 0.1  # inversion really moved away from the image
        errors.append((ddim_sample(model, sched, traj.latents[0], c, n) - x0).abs().max().item())
    assert errors[1] < 0.1
    assert errors[1] < errors[0] / 2


def test_save_pretrained_round_trip(tmp_path, pipe: MiragePipeline) -> None:
    pipe.save_pretrained(tmp_path / "m")
    loaded = MiragePipeline.from_pretrained(tmp_path / "m")
    loaded.set_progress_bar_config(disable=True)
    assert (tmp_path / "m" / "model_index.json").exists()
    ref = torch.rand(1, 3, 8, 8) * 2 - 1
    kw = dict(num_inference_steps=2, output_type="np", image=ref, reference_pose=1)
    np.testing.assert_allclose(loaded([0, 2], generator=gen(), **kw).images, pipe([0, 2], generator=gen(), **kw).images, atol=1e-6)


def test_rgba_model_reference_includes_alpha() -> None:
    from mirage3d.diffusion.preprocess import PreparedImage

    p = MiragePipeline(tiny_unet(channels=4), DDIMScheduler(num_train_timesteps=1000))
    p.set_progress_bar_config(disable=True)
    rgb = np.random.default_rng(0).random((8, 8, 3)).astype(np.float32)
    mask = np.zeros((8, 8), np.float32)
    mask[2:6, 2:6] = 1
    out = p([0], num_inference_steps=2, output_type="np", image=PreparedImage(rgb, mask, (0, 0, 8, 8), "alpha"), reference_pose=1)
    assert out.images.shape == (2, 8, 8, 4)
    np.testing.assert_allclose(out.images[0][..., 3], mask, atol=1e-5)


def _loss_on(p: MiragePipeline, x: torch.Tensor, label: int, n: int = 64) -> float:
    """The v-prediction loss of ``p.unet`` on ``x`` at class ``label`` over fixed draws of noise and timestep."""
    g = torch.Generator().manual_seed(5)
    t = torch.randint(0, 1000, (n,), generator=g)
    eps = torch.randn((n, *x.shape[1:]), generator=g)
    a = p.scheduler.alphas_cumprod[t].view(-1, 1, 1, 1)
    xt = a.sqrt() * x + (1 - a).sqrt() * eps
    with torch.no_grad():
        out = p.unet(xt, t, class_labels=torch.full((n,), label)).sample
    return float(((out - (a.sqrt() * eps - (1 - a).sqrt() * x)) ** 2).mean())


def test_tuning_fits_the_input_keeps_the_prior_and_restores_the_model() -> None:
    from mirage3d.diffusion.config import TuneConfig

    p = MiragePipeline(tiny_unet(seed=2), DDPMScheduler(num_train_timesteps=1000, prediction_type="v_prediction"))
    p.set_progress_bar_config(disable=True)
    p.mirror = [0, 3, 2, 1]
    p.unet.requires_grad_(False)  # as a shared pose-model backbone leaves it
    ref = torch.rand(1, 3, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1
    before = {k: v.clone() for k, v in p.unet.state_dict().items()}
    embedding = p.unet.class_embedding
    kw = dict(num_inference_steps=4, output_type="np", image=ref, reference_pose=1, cross_frame="all")
    plain = p([0, 1, 2, 3], generator=gen(), **kw)
    tune = TuneConfig(steps=200, lr=1e-3, batch=4)
    tuned = p([0, 1, 2, 3], generator=gen(), tune=tune, **kw)
    assert p.unet.class_embedding is embedding and p._label_shift == 0
    for k, v in p.unet.state_dict().items():  # the model is back as it was
        torch.testing.assert_close(v, before[k], rtol=0, atol=0)
    assert not any(q.requires_grad for q in p.unet.parameters())
    assert np.abs(tuned.images[[0, 2, 3]] - plain.images[[0, 2, 3]]).max() > 1e-3  # the tuned model made other views
    np.testing.assert_allclose(tuned.images[1], (ref[0].permute(1, 2, 0).numpy() + 1) / 2, atol=1e-5)  # still the input
    # Inside the block the model fits the input (at its pose, as the instance) and its mirror image better.
    plan = p._plan([0, 1, 2, 3], ref, 1)
    prior = torch.from_numpy(plain.images).permute(0, 3, 1, 2) * 2 - 1
    loss0, loss0_m = _loss_on(p, ref, 2), _loss_on(p, ref.flip(-1), 4)
    with p._tuned(plan, tune, prior, 0):
        n = p._label_shift
        assert n == 5
        loss1, loss1_m = _loss_on(p, ref, 2 + n), _loss_on(p, ref.flip(-1), 4 + n)
    assert loss1 < 0.75 * loss0 and loss1_m < 0.75 * loss0_m

"""The consistency rounds (generate → reconstruct → render → re-noise → denoise) on a tiny model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_views_cli import make_tiny_model

from mirage3d.diffusion.pipeline import ConsistencyConfig
from mirage3d.diffusion.views import ViewsConfig, make_views, reprojection_psnr
from mirage3d.errors import InputError
from mirage3d.recon import ReconConfig

pytestmark = pytest.mark.usefixtures("one_torch_thread")

RECON = ReconConfig(seed=0, device="cpu", iters=60, batch_rays=4096, faces=2000)


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    d = tmp_path_factory.mktemp("consistency")
    model = make_tiny_model(d / "model", 4, num_class_embeds=5, radius=3.38, focal=22.0, size=16)
    im = np.zeros((48, 48, 4), np.uint8)
    im[14:34, 10:38] = (40, 60, 200, 255)
    Image.fromarray(im, "RGBA").save(d / "in.png")
    return model, d / "in.png"


def views(setup: tuple[Path, Path], rounds: int) -> object:
    model, image = setup
    cfg = ViewsConfig(reference_pose=1, num_inference_steps=4, seed=0, device="cpu", consistency=ConsistencyConfig(rounds, 0.5))
    return make_views(image, model, cfg, recon=RECON)


def test_rounds_make_the_views_agree_with_one_3d_model(setup: tuple[Path, Path]) -> None:
    # Score: PSNR of the views against renders of one field fitted to all of them. The random tiny model's
    # independent-looking views fit badly (about 17.7 dB); one round starts from renders of such a field, so the
    # views it returns agree with one 3D model far better (about 20.4 dB).
    before, after = views(setup, 0), views(setup, 1)
    assert before.poses == after.poses == [0, 1, 2, 3] and after.reference_index == 1
    assert reprojection_psnr(after, RECON) > reprojection_psnr(before, RECON) + 2.0
    # The input view is kept as it was (its pixels and mask) through the rounds.
    np.testing.assert_allclose(after.rgba[1], before.rgba[1], atol=1e-5)


def test_bad_rounds_or_strength_are_one_line_errors(setup: tuple[Path, Path]) -> None:
    model, image = setup
    for c in (ConsistencyConfig(-1, 0.5), ConsistencyConfig(1, 0.0), ConsistencyConfig(1, 1.5)):
        with pytest.raises(InputError, match="--rounds must be >= 0 and --strength in"):
            make_views(image, model, ViewsConfig(reference_pose=1, num_inference_steps=2, device="cpu", consistency=c))

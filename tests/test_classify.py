"""The UNet as a pose classifier (`mirage3d poses relabel`): a known answer, mirror handling, the CLI and its errors."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from mirage3d.cli.main import app
from mirage3d.diffusion.classify import RelabelConfig, pose_scores
from mirage3d.diffusion.labels import pose_to_class

from test_views_cli import make_tiny_model

runner = CliRunner()
pytestmark = pytest.mark.usefixtures("one_torch_thread")


class TemplateDenoiser(torch.nn.Module):
    """A perfect denoiser of a world where pose k's images are exactly template k: under class k it predicts
    the clean image to be template k, and returns the v (or ε) that implies. Its loss under class k is then
    ‖x0 − template_k‖² / (1 − ᾱ) (up to the ε/v scale), so the right answer is the nearest template."""

    def __init__(self, templates: torch.Tensor, alphas_cumprod: torch.Tensor, prediction_type: str):
        super().__init__()
        self.templates, self.a_bar, self.kind = templates, alphas_cumprod, prediction_type
        self.dummy = torch.nn.Parameter(torch.zeros(()))

    def forward(self, x_t, t, class_labels):
        a = self.a_bar[t].float().sqrt().view(-1, 1, 1, 1)
        s = (1 - self.a_bar[t].float()).sqrt().view(-1, 1, 1, 1)
        x0 = self.templates[class_labels - pose_to_class(0)]
        eps = (x_t - a * x0) / s
        return SimpleNamespace(sample=eps if self.kind == "epsilon" else a * eps - s * x0)


def _templates() -> tuple[torch.Tensor, np.ndarray]:
    """4 poses, 8×8 RGB: poses 1 and 3 are each other's mirror images, 0 and 2 their own."""
    g = torch.Generator().manual_seed(0)
    t = torch.rand((4, 3, 8, 8), generator=g) * 2 - 1
    t[0] = (t[0] + t[0].flip(-1)) / 2
    t[2] = (t[2] + t[2].flip(-1)) / 2
    t[3] = t[1].flip(-1)
    return t, np.array([0, 3, 2, 1])


@pytest.mark.parametrize("kind", ["v_prediction", "epsilon"])
@pytest.mark.parametrize("flip", [True, False])
def test_known_answer_nearest_template(kind: str, flip: bool) -> None:
    templates, mirror = _templates()
    a_bar = torch.linspace(0.999, 0.01, 1000)
    model = TemplateDenoiser(templates, a_bar, kind)
    truth = torch.tensor([0, 1, 2, 3, 1, 3, 0, 2, 2, 1])
    g = torch.Generator().manual_seed(1)
    images = templates[truth] + 0.2 * torch.randn((len(truth), 3, 8, 8), generator=g)  # noisy members of their pose
    scores = pose_scores(model, a_bar, kind, images, mirror, RelabelConfig(timesteps=3, flip=flip, batch_size=4))
    assert scores.shape == (10, 4)
    assert scores.argmin(1).tolist() == truth.tolist()
    # The score does not depend on batching.
    torch.testing.assert_close(scores, pose_scores(model, a_bar, kind, images, mirror, RelabelConfig(timesteps=3, flip=flip, batch_size=3)))


def test_flip_scores_the_mirror_pose() -> None:
    templates, mirror = _templates()
    a_bar = torch.linspace(0.999, 0.01, 1000)
    model = TemplateDenoiser(templates, a_bar, "v_prediction")
    x = templates[1:2].clone()
    both = pose_scores(model, a_bar, "v_prediction", x, mirror, RelabelConfig(timesteps=2, flip=True))
    one = pose_scores(model, a_bar, "v_prediction", x, mirror, RelabelConfig(timesteps=2, flip=False))
    mirrored = pose_scores(model, a_bar, "v_prediction", x.flip(-1), mirror, RelabelConfig(timesteps=2, flip=False))
    # flip x scored under m[k] is x's term under pose m[k] of the mirrored image: the total is one + that.
    torch.testing.assert_close(both, one + mirrored[:, mirror])
    assert int(both.argmin()) == 1 and float(both[0, 1]) < 1e-6


def test_bad_settings() -> None:
    with pytest.raises(Exception, match="timesteps"):
        RelabelConfig(timesteps=0).validate()
    with pytest.raises(Exception, match="empty"):
        RelabelConfig(t_min=800, t_max=100).validate()


def _collection(folder: Path, n: int = 6) -> Path:
    rng = np.random.default_rng(0)
    (folder / "images").mkdir(parents=True)
    for i in range(n):
        a = np.full((16, 16, 4), 255, np.uint8)
        a[..., :3] = rng.integers(0, 255, 3)
        Image.fromarray(a).save(folder / "images" / f"{i:06d}.png")
    return folder


def test_relabel_cli_end_to_end_and_errors(tmp_path: Path) -> None:
    model = make_tiny_model(tmp_path / "model")
    coll = _collection(tmp_path / "coll")
    files = [f"images/{i:06d}.png" for i in range(6)]
    poses = {"num_poses": 4, "files": files, "labels": [0, 1, 2, 3, 0, 1], "confidence": [1.0] * 6, "mirror": [0, 3, 2, 1],
             "azimuth_deg": [0.0, 90.0, 180.0, 270.0], "counts": [2, 2, 1, 1]}
    (model / "poses" / "poses.json").write_text(json.dumps(poses))
    out = tmp_path / "relabelled"
    args = ["poses", "relabel", str(model), "--collection", str(coll), "-o", str(out), "--timesteps", "2", "--device", "cpu", "--workers", "1"]
    r = runner.invoke(app, args)
    assert r.exit_code == 0, r.output
    new = json.loads((out / "poses.json").read_text())
    assert new["labels_before"] == poses["labels"] and len(new["labels"]) == 6 and all(0 <= x < 4 for x in new["labels"])
    assert sum(new["counts"]) == 6 and new["mirror"] == poses["mirror"] and new["azimuth_deg"] == poses["azimuth_deg"]
    assert (out / "cameras.json").exists() and (out / "relabel.json").exists() and (out / "poses_sheet.png").exists()
    assert all(0 < c <= 1 for c in new["confidence"])
    # Deterministic for a seed: the same labels again.
    r = runner.invoke(app, [*args, "--overwrite"])
    assert r.exit_code == 0 and json.loads((out / "poses.json").read_text())["labels"] == new["labels"]
    # An existing output without --overwrite, a collection missing the images, a folder that is no model: one line, exit 1.
    r = runner.invoke(app, args)
    assert r.exit_code == 1 and "exists" in r.output
    r = runner.invoke(app, ["poses", "relabel", str(model), "--collection", str(tmp_path), "-o", str(tmp_path / "x"), "--device", "cpu"])
    assert r.exit_code == 1 and "not in" in r.output and not (tmp_path / "x").exists()
    r = runner.invoke(app, ["poses", "relabel", str(coll), "--collection", str(coll), "-o", str(tmp_path / "y"), "--device", "cpu"])
    assert r.exit_code == 1 and "not a mirage3d model" in r.output and not (tmp_path / "y").exists()
    r = runner.invoke(app, [*args[:-4], "--timesteps", "0", "-o", str(tmp_path / "z")])
    assert r.exit_code == 1 and "timesteps" in r.output

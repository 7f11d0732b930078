"""Reference-conditioned models: objects.json, pairs in batches, the zero-initialised reference input, training
and sampling with a reference (tiny UNet, CPU)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from mirage3d.data.objects import read_objects, write_objects
from mirage3d.diffusion.model import PRESETS, build_unet, unet_config_of
from mirage3d.diffusion.reference import ensure_reference_hook, is_reference_unet, reference_image, with_reference_input
from mirage3d.diffusion.train import train
from mirage3d.diffusion.train_data import BatchSource, class_tables
from mirage3d.errors import InputError
from tests.test_train import make_collection, make_poses, tiny_cfg

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_objects_file_round_trip_and_errors(tmp_path: Path) -> None:
    names = [f"images/{i:06d}.png" for i in range(6)]
    write_objects(tmp_path, [names[:2], names[2:]])
    assert read_objects(tmp_path, names).tolist() == [0, 0, 1, 1, 1, 1]
    for groups, msg in (
        ([names[:1], names[1:]], "at least 2 views"),
        ([names[:2], names[2:5]], "in no object"),
        ([names[:3], names[2:]], "in two objects"),
        ([[*names[:2], "images/x.png"], names[2:]], "not an image"),
    ):
        write_objects(tmp_path, groups)
        with pytest.raises(InputError, match=msg):
            read_objects(tmp_path, names)
    (tmp_path / "objects.json").write_text("{")
    with pytest.raises(InputError, match="not an objects file"):
        read_objects(tmp_path, names)
    with pytest.raises(InputError, match="views-per-object"):
        read_objects(tmp_path / "nowhere", names)


def test_batches_pair_each_image_with_another_view_of_its_object() -> None:
    n = 12
    images = torch.zeros((n, 4, 8, 8), dtype=torch.uint8)
    images[:, 0] = torch.arange(n, dtype=torch.uint8)[:, None, None] * 10  # image i is recognisable by its red value
    images[:, :, :, :4] += 1  # left half differs from the right: flips are visible
    objects = torch.tensor([0, 0, 0, 1, 1, 2, 2, 2, 2, 3, 3, 1])
    classes, mirror = class_tables(n, None, 4)
    src = BatchSource(images, classes, mirror, batch_size=n, channels=3, flip=True, p_uncond=0.0, seed=0, rank=0, objects=objects, p_no_reference=0.0)
    seen_partners = set()
    for counter in range(20):
        idx = src.indices(counter)
        x, _ = src.batch(counter, torch.device("cpu"), src.generator(counter, torch.device("cpu")))
        assert x.shape == (n, 6, 8, 8)
        for b, i in enumerate(idx.tolist()):
            flipped = bool(x[b, 0, 0, 0] < x[b, 0, 0, 7])  # the brighter half moved right
            ref = x[b, 3:].flip(-1) if flipped else x[b, 3:]
            j = int(round(((float(ref[0, 0, 7]) + 1) * 255 / 2) / 10))  # the partner's red value, on the unshifted half
            assert j != i and objects[j] == objects[i], (i, j)
            assert bool(ref[0, 0, 0] > ref[0, 0, 7])  # the reference carries the target's flip
            seen_partners.add((i, j))
    assert {(0, 1), (0, 2), (3, 4), (3, 11)} <= seen_partners  # every other view of the object comes up
    none = BatchSource(
        images, classes, mirror, batch_size=n, channels=3, flip=False, p_uncond=0.0, seed=0, rank=0, objects=objects, p_no_reference=0.5
    )
    x, _ = none.batch(0, torch.device("cpu"), none.generator(0, torch.device("cpu")))
    dropped = (x[:, 3:] == 0).flatten(1).all(1)
    assert 0 < int(dropped.sum()) < n  # some references dropped to zeros ("no reference"), not all
    with pytest.raises(InputError, match="at least two views"):
        BatchSource(images, classes, mirror, batch_size=4, channels=3, flip=False, p_uncond=0.0, seed=0, rank=0, objects=torch.arange(n))


def test_a_plain_model_gains_a_reference_input_that_changes_nothing_until_trained() -> None:
    torch.manual_seed(0)
    plain = build_unet(PRESETS["tiny"]).eval()
    ref_model = with_reference_input(plain).eval()
    assert is_reference_unet(ref_model) and not is_reference_unet(plain)
    assert unet_config_of(ref_model).reference and unet_config_of(ref_model).channels == 3
    ensure_reference_hook(ref_model)
    x, t, lb = torch.randn(2, 3, 32, 32), torch.tensor([10, 500]), torch.tensor([1, 2])
    with torch.no_grad():
        base = plain(x, t, class_labels=lb).sample
        assert torch.equal(ref_model(x, t, class_labels=lb).sample, base)  # no reference: zeros appended
        with reference_image(ref_model, torch.rand(1, 3, 32, 32) * 2 - 1):
            assert torch.allclose(ref_model(x, t, class_labels=lb).sample, base, atol=1e-6)  # zero weights on the reference
        ref_model.conv_in.weight[:, 3:].normal_()
        with reference_image(ref_model, torch.rand(1, 3, 32, 32) * 2 - 1):
            moved = ref_model(x, t, class_labels=lb).sample
        assert (moved - base).abs().max() > 1e-3  # once trained, the reference reaches the output
        assert torch.equal(ref_model(x, t, class_labels=lb).sample, base)  # and outside the block it is gone again
        full = torch.cat([x, torch.zeros_like(x)], 1)
        assert torch.equal(ref_model(full, t, class_labels=lb).sample, base)  # a conditioned input passes through


def test_reference_training_and_views_follow_the_reference(tmp_path: Path) -> None:
    from mirage3d.diffusion.pipeline import MiragePipeline

    coll = make_collection(tmp_path / "coll")
    names = sorted(f"images/{p.name}" for p in (coll / "images").iterdir())
    write_objects(coll, [names[k : k + 2] for k in range(0, len(names), 2)])
    poses = make_poses(tmp_path / "poses", coll)
    plain = tmp_path / "plain"
    train(coll, plain, tiny_cfg(max_steps=2), poses=poses)
    with pytest.raises(InputError, match="objects.json"):
        train(make_collection(tmp_path / "no_objects"), tmp_path / "x", tiny_cfg(max_steps=2, reference=True))
    out = tmp_path / "ref"
    result = train(coll, out, tiny_cfg(max_steps=3, lr=1e-2, warmup_steps=0), poses=poses, init=plain)
    assert result.step == 3
    assert json.loads((out / "unet" / "config.json").read_text())["in_channels"] == 3  # without --reference: plain
    out = tmp_path / "ref2"
    train(coll, out, tiny_cfg(max_steps=3, lr=1e-2, warmup_steps=0, reference=True), poses=poses, init=plain)
    assert json.loads((out / "unet" / "config.json").read_text())["in_channels"] == 6
    with pytest.raises(InputError, match="add --reference"):
        train(coll, tmp_path / "ref3", tiny_cfg(max_steps=2), poses=poses, init=out)
    pipe = MiragePipeline.from_pretrained(out)
    pipe.set_progress_bar_config(disable=True)
    assert float(pipe.unet.conv_in.weight[:, 3:].detach().abs().max()) > 0  # the reference input was trained
    grid = pipe([0, 1], num_inference_steps=2, generator=torch.Generator().manual_seed(0), output_type="np").images
    assert grid.shape == (2, 32, 32, 3)  # plain sampling works without a reference

    def views(seed_image: int) -> np.ndarray:
        img = torch.from_numpy(np.random.default_rng(seed_image).uniform(-1, 1, (1, 3, 32, 32))).float()
        return pipe(
            [0, 1, 2], image=img, reference_pose=0, num_inference_steps=2, generator=torch.Generator().manual_seed(0), output_type="np"
        ).images

    a, b = views(1), views(2)
    assert a.shape == (3, 32, 32, 3)
    assert np.abs(a[1:] - b[1:]).max() > 1e-3  # the generated views depend on the reference image
    np.testing.assert_array_equal(a, views(1))


def test_render_groups_share_the_object_and_differ_in_the_camera(tmp_path: Path) -> None:
    import trimesh

    from mirage3d.data import render as R

    wv = np.random.default_rng(0).uniform(-0.5, 0.5, (50, 3))
    cfg = R.RenderConfig(n_per_mesh=8, res=32, deform=0.2, views_per_object=4, seed=3)
    recs = [R.sample_view(cfg, i, wv) for i in range(8)]
    alone = R.RenderConfig(n_per_mesh=8, res=32, deform=0.2, seed=3)
    for g in (0, 4):
        group = recs[g : g + 4]
        for key in ("appearance_seed", "scale", "light", "deform"):
            assert all(r[key] == group[0][key] for r in group), key
        assert len({r["azimuth_deg"] for r in group}) == 4
        assert R.sample_view(alone, g, wv) == group[0]  # the first view of a group is drawn as without groups
    assert recs[0]["appearance_seed"] != recs[4]["appearance_seed"] and recs[0]["deform"] != recs[4]["deform"]
    with pytest.raises(InputError, match="divide --n-per-mesh"):
        R.check_config(R.RenderConfig(n_per_mesh=6, views_per_object=4))

    box = trimesh.creation.box((1.0, 0.6, 0.4))
    box.export(tmp_path / "box.glb")
    out = R.render_collection(tmp_path / "box.glb", tmp_path / "coll", R.RenderConfig(n_per_mesh=4, res=32, views_per_object=2, seed=1))
    names = [f"images/{k:06d}.png" for k in range(out.n_images)]
    assert read_objects(tmp_path / "coll", names).tolist() == [0, 0, 1, 1]
    R.render_collection(tmp_path / "box.glb", tmp_path / "plain", R.RenderConfig(n_per_mesh=4, res=32, seed=1))
    assert not (tmp_path / "plain" / "objects.json").exists()

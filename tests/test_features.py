"""Feature backbones and the resumable feature cache (tiny models, CPU)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mirage3d.errors import DependencyError, InputError, ModelError
from mirage3d.poses import extract as extract_mod
from mirage3d.poses.extract import ExtractConfig, FeatureCache, extract_features
from mirage3d.poses.features import Dinov2Backbone, HogBackbone, UNetBackbone, load_backbone


def make_collection(folder: Path, n: int = 12, res: int = 32, seed: int = 0, alpha: bool = True) -> Path:
    """Ellipses whose width follows |sin az| with a red 'front' dot: a pose-dependent toy collection."""
    from PIL import ImageDraw

    rng = np.random.default_rng(seed)
    (folder / "images").mkdir(parents=True)
    records = []
    for i in range(n):
        az = float(rng.uniform(0, 360))
        a = np.deg2rad(az)
        im = Image.new("RGBA", (res, res), (255, 255, 255, 0 if alpha else 255))
        d = ImageDraw.Draw(im)
        c, w = res / 2, res * (0.12 + 0.3 * abs(np.sin(a)))
        d.ellipse([c - w, c - res * 0.18, c + w, c + res * 0.18], fill=(*(int(v) for v in rng.integers(40, 200, 3)), 255))
        if np.cos(a) > -0.2:
            fx = c + np.sin(a) * w * 0.8
            d.ellipse([fx - 2, c - 2, fx + 2, c + 2], fill=(230, 20, 20, 255))
        name = f"images/{i:06d}.png"
        im.save(folder / name)
        records.append({"file": name, "azimuth_deg": az})
    (folder / "ground_truth.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return folder


def make_unet_folder(folder: Path, in_channels: int = 3) -> Path:
    """A tiny random class-conditional UNet saved like a mirage3d model folder (unet/ + scheduler/)."""
    from diffusers import DDIMScheduler, UNet2DModel

    torch.manual_seed(0)
    unet = UNet2DModel(
        sample_size=32,
        in_channels=in_channels,
        out_channels=in_channels,
        block_out_channels=(16, 32),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D"),
        norm_num_groups=8,
        attention_head_dim=8,
        num_class_embeds=9,
    )
    unet.save_pretrained(folder / "unet")
    DDIMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2").save_pretrained(folder / "scheduler")
    return folder


@pytest.fixture(scope="module")
def unet_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_unet_folder(tmp_path_factory.mktemp("unet") / "m")


def test_unet_backbone_shapes_and_batch_independence(unet_folder):
    bb = load_backbone(str(unet_folder), timestep=100, blocks=("up0",))
    assert isinstance(bb, UNetBackbone) and bb.image_size == 32
    x = torch.rand(3, 3, 32, 32) * 2 - 1
    f = bb(x)
    assert f.shape[0] == 3 and f.shape[-1] == 32  # up_blocks[0] of channels (16, 32) → 32 channels
    torch.testing.assert_close(bb(x[1:2]), f[1:2], rtol=1e-4, atol=1e-5)  # no dependence on batch mates
    torch.testing.assert_close(bb(x), f)  # fixed noise map: deterministic
    two = load_backbone(str(unet_folder), blocks=("up0", "mid"))(x)
    assert two.shape[-1] == 32 + 32 and two.shape[1:3] == f.shape[1:3]
    with pytest.raises(InputError, match="unknown UNet block"):
        load_backbone(str(unet_folder), blocks=("up9",))
    ref = bb.reference()
    assert ref["kind"] == "unet" and ref["timestep"] == 100
    torch.testing.assert_close(load_backbone(ref)(x), f)


def test_unet_backbone_stops_early_with_the_features_of_a_full_pass(unet_folder):
    """The forward stops once the asked blocks ran; the features equal those hooked from the whole UNet."""
    bb = load_backbone(str(unet_folder), blocks=("up0", "down1"))
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    a = bb.alpha_bar
    x_t = a.sqrt() * x + (1 - a).sqrt() * bb.noise
    seen, calls = {}, []
    hooks = [
        bb.unet.up_blocks[0].register_forward_hook(lambda _m, _i, o: seen.__setitem__("up0", o)),
        bb.unet.down_blocks[1].register_forward_hook(lambda _m, _i, o: seen.__setitem__("down1", o[0])),
        bb.unet.up_blocks[1].register_forward_hook(lambda _m, _i, o: calls.append(1)),
    ]
    t = torch.full((2,), bb.timestep, dtype=torch.long)
    with torch.no_grad():
        full_out = bb.unet(x_t, t, class_labels=torch.zeros_like(t)).sample
        assert len(calls) == 1 and full_out.shape == x.shape  # the reference ran the whole UNet
        feats = bb(x)
    for h in hooks:
        h.remove()
    assert len(calls) == 1  # the backbone never reached up_blocks[1]
    size = seen["up0"].shape[-2:]
    down1 = torch.nn.functional.interpolate(seen["down1"], size=size, mode="bilinear", align_corners=False)
    expected = torch.cat([torch.nn.functional.normalize(seen["up0"], dim=1), torch.nn.functional.normalize(down1, dim=1)], 1).permute(0, 2, 3, 1)
    torch.testing.assert_close(feats, expected)


def test_removed_feature_averaging_is_refused_in_saved_references(unet_folder):
    """References written with --colour-perms / --noise-maps (options since removed) fail with one line."""
    ref = load_backbone(str(unet_folder), timestep=100).reference()
    assert ref["timestep"] == 100 and load_backbone(str(unet_folder)).reference()["timestep"] == 200  # the default
    with pytest.raises(ModelError, match="noise_maps > 1"):
        load_backbone({**ref, "noise_maps": 4})


def test_unet_backbone_with_alpha_channel(tmp_path):
    bb = load_backbone(str(make_unet_folder(tmp_path / "m4", in_channels=4)))
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    masks = torch.zeros(2, 1, 32, 32)
    assert bb(x, masks).shape[0] == 2
    assert not torch.allclose(bb(x, masks), bb(x, None))  # the mask reaches the model


def test_dinov2_from_local_folder(tmp_path):
    from transformers import Dinov2Config, Dinov2Model

    torch.manual_seed(0)
    cfg = Dinov2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, patch_size=8, image_size=32)
    Dinov2Model(cfg).save_pretrained(tmp_path / "dino")
    bb = load_backbone(str(tmp_path / "dino"), image_size=32)
    assert isinstance(bb, Dinov2Backbone)
    f = bb(torch.rand(2, 3, 48, 48) * 2 - 1)  # resized to 32 → 4×4 patches
    assert f.shape == (2, 4, 4, 32)
    assert bb.reference()["kind"] == "dinov2"


def test_dinov2_offline_without_weights_is_one_line(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(DependencyError) as e:
        load_backbone("dinov2-small")
    msg = str(e.value)
    assert "\n" not in msg and "hf download facebook/dinov2-small" in msg and "mirage3d train COLLECTION -o BACKBONE" in msg


def test_random_vit_shape_and_reference():
    a = load_backbone("random-vit", seed=1, image_size=28)
    x = torch.rand(1, 3, 28, 28) * 2 - 1
    assert a(x).shape == (1, 2, 2, 384)
    assert a.reference() == {"kind": "random-vit", "seed": 1, "image_size": 28}


def test_hog_flip_equivariance():
    hog = HogBackbone(image_size=32, cell=8, bins=9)
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    f = hog(x)
    assert f.shape == (2, 4, 4, 9)
    # Mirroring the image mirrors the cell grid and reverses the (unsigned) orientation bins.
    torch.testing.assert_close(hog(x.flip(-1)), f.flip(2).flip(3), rtol=1e-4, atol=1e-5)


def test_bad_backbone_spec():
    with pytest.raises(InputError, match="neither a folder"):
        load_backbone("no-such-thing")


def test_not_a_unet_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelError, match="mirage3d train"):
        load_backbone(str(tmp_path / "empty"))


def test_cache_resume_and_settings_guard(tmp_path):
    coll = make_collection(tmp_path / "c", n=10)
    cfg = ExtractConfig(batch_size=3, shard_size=4, num_workers=0, device="cpu")
    cache = extract_features(coll, tmp_path / "f", HogBackbone(32), cfg)
    assert cache.num_shards == 3 and sorted(p.name for p in (tmp_path / "f").glob("shard_*")) == [f"shard_0000{i}.safetensors" for i in range(3)]
    s1 = cache.load_shard(1)
    assert s1["feats"].shape == (4, 4, 4, 9) and s1["feats"].dtype == torch.float16 and "feats_flip" in s1
    assert s1["has_mask"].tolist() == [1, 1, 1, 1] and float(s1["fg"].max()) <= 1.0
    before = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "f").glob("shard_*")}
    (tmp_path / "f" / "shard_00002.safetensors").unlink()
    with pytest.raises(InputError, match="incomplete"):
        FeatureCache.open(tmp_path / "f")
    calls = []
    extract_features(coll, tmp_path / "f", HogBackbone(32), cfg, progress=lambda d, t: calls.append((d, t)))
    assert calls[-1] == (2, 2)  # only the missing shard's 2 images were extracted
    after = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "f").glob("shard_*")}
    assert after["shard_00000.safetensors"] == before["shard_00000.safetensors"]
    assert FeatureCache.open(tmp_path / "f").num_images == 10
    with pytest.raises(InputError, match="other settings"):
        extract_features(coll, tmp_path / "f", HogBackbone(32, cell=4), cfg)


def test_split_across_processes_gives_identical_cache(tmp_path, monkeypatch):
    coll = make_collection(tmp_path / "c", n=9)
    cfg = ExtractConfig(batch_size=2, shard_size=3, num_workers=0, device="cpu", flip="features")
    one = extract_features(coll, tmp_path / "one", HogBackbone(32), cfg)
    for rank in (0, 1):  # two "processes", one after the other (rank 0 writes the manifest first), one output folder
        monkeypatch.setattr(extract_mod, "_distributed", lambda r=rank: (r, 2, lambda: None))
        extract_features(coll, tmp_path / "two", HogBackbone(32), cfg)
    for i in range(one.num_shards):
        assert (tmp_path / "one" / f"shard_{i:05d}.safetensors").read_bytes() == (tmp_path / "two" / f"shard_{i:05d}.safetensors").read_bytes()
    two = FeatureCache.open(tmp_path / "two")
    assert "feats_flip" in two.load_shard(0)  # flip mode "features": flipped map made on load


def test_images_without_alpha_have_no_mask(tmp_path):
    coll = make_collection(tmp_path / "c", n=4, alpha=False)
    cache = extract_features(coll, tmp_path / "f", HogBackbone(32), ExtractConfig(num_workers=0, device="cpu", flip="none"))
    s = cache.load_shard(0)
    assert s["has_mask"].tolist() == [0, 0, 0, 0] and "feats_flip" not in s


def test_cache_of_a_retrained_unet_is_refused(tmp_path):
    """Same folder, new weights (e.g. training resumed): the old features must not be reused silently."""
    from diffusers import UNet2DModel

    coll = make_collection(tmp_path / "c", n=4)
    folder = make_unet_folder(tmp_path / "m")
    cfg = ExtractConfig(batch_size=4, shard_size=4, num_workers=0, device="cpu")
    extract_features(coll, tmp_path / "f", load_backbone(str(folder)), cfg)
    extract_features(coll, tmp_path / "f", load_backbone(str(folder)), cfg)  # unchanged weights: reused
    unet = UNet2DModel.from_pretrained(folder / "unet")
    with torch.no_grad():
        unet.conv_in.weight.add_(0.1)
    unet.save_pretrained(folder / "unet")
    with pytest.raises(InputError, match="other settings"):
        extract_features(coll, tmp_path / "f", load_backbone(str(folder)), cfg)

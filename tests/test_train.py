"""Diffusion training: label handling, batches, resume, exported pipeline, CLI, bad inputs (tiny config, CPU)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from typer.testing import CliRunner

from mirage3d.cli.main import app
from mirage3d.diffusion.labels import NULL_CLASS
from mirage3d.diffusion.model import PRESETS, build_unet, count_parameters, unet_config_from_preset
from mirage3d.diffusion.train import TrainConfig, lr_at, train, validate_config
from mirage3d.diffusion.train_data import BatchSource, class_tables, read_pose_labels
from mirage3d.errors import InputError

N_IMAGES, K = 8, 3


def tiny_cfg(**kw) -> TrainConfig:
    base = dict(
        model="tiny",
        batch_size=4,
        max_steps=4,
        checkpoint_every=2,
        sample_every=0,
        sample_steps=2,
        sample_per_pose=2,
        log_every=1,
        warmup_steps=2,
        device="cpu",
        workers=2,
    )
    base.update(kw)
    return TrainConfig(**base)


def make_collection(folder: Path, n: int = N_IMAGES) -> Path:
    rng = np.random.default_rng(0)
    (folder / "images").mkdir(parents=True)
    for i in range(n):
        a = np.zeros((40, 40, 4), np.uint8)
        a[..., :3] = rng.integers(0, 255, 3)
        a[8:32, 4 + i : 20 + i, 3] = 255  # an off-centre box: its flip is a different image
        Image.fromarray(a).save(folder / "images" / f"{i:06d}.png")
    return folder


def make_poses(folder: Path, collection: Path, labels: list[int] | None = None, files: list[str] | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    names = files if files is not None else sorted(f"images/{p.name}" for p in (collection / "images").iterdir())
    labels = labels if labels is not None else [i % K for i in range(len(names))]
    data = {"num_poses": K, "files": names, "labels": labels, "mirror": [0, 2, 1]}
    (folder / "poses.json").write_text(json.dumps(data))
    (folder / "cameras.json").write_text(json.dumps({"cameras": []}))
    return folder


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def collection(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_collection(tmp_path_factory.mktemp("coll"))


@pytest.fixture(scope="module")
def phase1(collection: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "phase1"
    train(collection, out, tiny_cfg())
    return out


# --------------------------------------------------------------------------------------------------
def test_presets_validate_and_small_is_under_20m() -> None:
    assert count_parameters(build_unet(PRESETS["tiny"])) < 250_000
    assert PRESETS["small"].res == 128 and len(PRESETS["small"].block_out_channels) == 4
    with pytest.raises(InputError, match="multiple of 2"):
        unet_config_from_preset("tiny", res=33)
    with pytest.raises(InputError, match="unknown model preset"):
        unet_config_from_preset("huge")


def _source(images: torch.Tensor, poses_labels: np.ndarray | None, mirror: list[int], p_uncond: float, flip: bool, batch: int = 64) -> BatchSource:
    from mirage3d.diffusion.train_data import PoseLabels

    pl = None if poses_labels is None else PoseLabels(Path("."), len(mirror), poses_labels, np.asarray(mirror), "")
    classes, mirror_cls = class_tables(len(images), pl, 33)
    return BatchSource(images, classes, mirror_cls, batch_size=batch, channels=3, flip=flip, p_uncond=p_uncond, seed=0, rank=0)


def test_label_dropout_and_null_class() -> None:
    images = torch.randint(0, 255, (10, 4, 8, 8), dtype=torch.uint8)
    labels = np.arange(10) % 3
    src = _source(images, labels, [0, 2, 1], p_uncond=0.3, flip=False, batch=2000)
    _, cls = src.batch(0, torch.device("cpu"), src.generator(0, torch.device("cpu")))
    idx = src.indices(0)
    dropped = cls == NULL_CLASS
    assert 0.25 < dropped.float().mean() < 0.35
    assert torch.equal(cls[~dropped], torch.from_numpy(labels)[idx][~dropped] + 1)  # pose k → class k + 1
    # phase 1: everything is the null class, whatever p_uncond says
    src1 = _source(images, None, [], p_uncond=0.0, flip=True, batch=50)
    _, cls1 = src1.batch(3, torch.device("cpu"), src1.generator(3, torch.device("cpu")))
    assert torch.all(cls1 == NULL_CLASS)
    src0 = _source(images, labels, [0, 2, 1], p_uncond=0.0, flip=False, batch=50)
    assert torch.all(src0.batch(1, torch.device("cpu"), src0.generator(1, torch.device("cpu")))[1] > 0)


def test_flip_maps_label_to_mirror() -> None:
    images = torch.randint(0, 255, (6, 4, 8, 8), dtype=torch.uint8)
    labels = np.array([0, 1, 2, 0, 1, 2])
    src = _source(images, labels, [0, 2, 1], p_uncond=0.0, flip=True, batch=200)
    x, cls = src.batch(0, torch.device("cpu"), src.generator(0, torch.device("cpu")))
    idx = src.indices(0)
    ref = images[idx, :3].float() * (2 / 255) - 1
    flipped = (x - ref.flip(-1)).abs().amax((1, 2, 3)) < 1e-6
    same = (x - ref).abs().amax((1, 2, 3)) < 1e-6
    assert torch.all(flipped ^ same) and 0.3 < flipped.float().mean() < 0.7
    mirror = torch.tensor([0, 2, 1])
    orig = torch.from_numpy(labels)[idx]
    assert torch.equal(cls[flipped], mirror[orig[flipped]] + 1)
    assert torch.equal(cls[same], orig[same] + 1)


def test_batches_cover_each_epoch_once_and_differ_by_rank() -> None:
    images = torch.zeros((10, 4, 8, 8), dtype=torch.uint8)
    src = _source(images, None, [], 0.0, False, batch=4)
    first_epoch = torch.cat([src.indices(0), src.indices(1), src.indices(2)[:2]])
    assert sorted(first_epoch.tolist()) == list(range(10))
    other = BatchSource(images, *class_tables(10, None, 33), batch_size=4, channels=3, flip=False, p_uncond=0, seed=0, rank=1)
    assert not torch.equal(src.indices(0), other.indices(0))


def test_lr_schedule() -> None:
    cfg = TrainConfig(lr=1.0, warmup_steps=10, max_steps=110, lr_schedule="cosine")
    assert lr_at(cfg, 0) == pytest.approx(0.1) and lr_at(cfg, 9) == pytest.approx(1.0)
    assert lr_at(cfg, 110) == pytest.approx(0.1)


# --------------------------------------------------------------------------------------------------
def test_resume_equals_uninterrupted_run(collection: Path, phase1: Path, tmp_path: Path) -> None:
    killed = tmp_path / "killed"
    train(collection, killed, tiny_cfg(max_steps=3))  # "killed" after step 3 (checkpoint-2 and the final checkpoint-3)
    state3 = load_file(str(killed / "checkpoints" / "checkpoint-3" / "ema.safetensors"))
    result = train(collection, killed, tiny_cfg())
    assert result.resumed_from == 3 and result.step == 4
    for name in ("model.safetensors", "ema.safetensors"):
        a = load_file(str(phase1 / "checkpoints" / "checkpoint-4" / name))
        b = load_file(str(killed / "checkpoints" / "checkpoint-4" / name))
        assert all(torch.equal(a[k], b[k]) for k in a), name
    assert any(not torch.equal(state3[k], b[k]) for k in b)  # training did move on after the resume
    assert json.loads((killed / "checkpoints" / "checkpoint-4" / "ema.json").read_text())["num_updates"] == 4
    opt = torch.load(killed / "checkpoints" / "checkpoint-4" / "optimizer.bin", weights_only=True)
    assert int(opt["state"][0]["step"]) == 4  # AdamW moments carried over the resume
    steps = [json.loads(line)["step"] for line in (killed / "loss.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4]
    assert sorted(p.name for p in (killed / "checkpoints").iterdir()) == ["checkpoint-3", "checkpoint-4"]  # keep 2


def test_exported_pipeline_reloads_and_samples_deterministically(phase1: Path) -> None:
    from mirage3d.diffusion.pipeline import MiragePipeline

    for f in (
        "model_index.json",
        "unet/diffusion_pytorch_model.safetensors",
        "scheduler/scheduler_config.json",
        "loss.png",
        "train_config.json",
        "samples/step-000004.png",
    ):
        assert (phase1 / f).exists(), f
    pipe = MiragePipeline.from_pretrained(phase1)
    pipe.set_progress_bar_config(disable=True)
    a = pipe([0, 1], num_inference_steps=2, generator=torch.Generator().manual_seed(3), output_type="np").images
    b = pipe([0, 1], num_inference_steps=2, generator=torch.Generator().manual_seed(3), output_type="np").images
    assert a.shape == (2, 32, 32, 3) and np.array_equal(a, b)
    ema = load_file(str(phase1 / "checkpoints" / "checkpoint-4" / "ema.safetensors"))
    sd = pipe.unet.state_dict()
    assert all(torch.equal(sd[k], ema[k]) for k in ema)  # the shipped UNet is the EMA
    grid = Image.open(phase1 / "samples" / "step-000004.png")
    assert grid.size == (2 * 32, 4 * 32)  # phase 1: 4 rows of unconditional samples
    # How the training images frame the object (24-pixel-high boxes in 40-pixel images), for framing inputs alike.
    framing = json.loads((phase1 / "framing.json").read_text())
    assert framing["bbox_fraction"] == pytest.approx(24 / 40, abs=0.04) and framing["images"] == N_IMAGES


def test_phase2_from_phase1_with_poses(collection: Path, phase1: Path, tmp_path: Path) -> None:
    poses = make_poses(tmp_path / "poses", collection)
    out = tmp_path / "phase2"
    result = train(collection, out, tiny_cfg(max_steps=2, save_dtype="bf16"), poses=poses, init=phase1)
    assert result.num_poses == K and result.step == 2
    assert json.loads((out / "poses" / "poses.json").read_text())["num_poses"] == K
    assert (out / "poses" / "cameras.json").exists()
    grid = Image.open(out / "samples" / "step-000002.png")
    assert grid.size == (2 * 32, K * 32)  # one row per pose
    unet = load_file(str(out / "unet" / "diffusion_pytorch_model.safetensors"))
    assert all(v.dtype == torch.bfloat16 for v in unet.values())
    # the phase-2 run started from the phase-1 weights, not from scratch
    init_w = load_file(str(phase1 / "unet" / "diffusion_pytorch_model.safetensors"))
    k = "conv_in.weight"
    assert (unet[k].float() - init_w[k]).abs().max() < 0.05


# --------------------------------------------------------------------------------------------------
def test_bad_poses_are_rejected(collection: Path, tmp_path: Path) -> None:
    names = [f"images/{i:06d}.png" for i in range(N_IMAGES)]
    with pytest.raises(InputError, match="does not match the collection: 1 collection images have no label"):
        read_pose_labels(make_poses(tmp_path / "a", collection, files=names[:-1], labels=[0] * (N_IMAGES - 1)), names)
    with pytest.raises(InputError, match=r"labels\[2\] = 7 is out of range 0..2"):
        read_pose_labels(make_poses(tmp_path / "b", collection, labels=[0, 1, 7, 0, 1, 2, 0, 1]), names)
    with pytest.raises(InputError, match="does not exist"):
        read_pose_labels(tmp_path / "nowhere", names)
    extra = [*names, "images/other.png"]
    with pytest.raises(InputError, match="1 labelled files are not in the collection"):
        read_pose_labels(make_poses(tmp_path / "c", collection, files=extra, labels=[0] * (N_IMAGES + 1)), names)


def test_bad_options_and_outputs(collection: Path, tmp_path: Path) -> None:
    with pytest.raises(InputError, match="batch size must be >= 1, got 0"):
        validate_config(tiny_cfg(batch_size=0))
    with pytest.raises(InputError, match="res 33 must be a multiple of 2"):
        train(collection, tmp_path / "o", tiny_cfg(res=33))
    (tmp_path / "file").write_text("x")
    with pytest.raises(InputError, match="is a file"):
        train(collection, tmp_path / "file", tiny_cfg())
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "notes.txt").write_text("x")
    with pytest.raises(InputError, match="holds no training run"):
        train(collection, tmp_path / "foreign", tiny_cfg())
    with pytest.raises(InputError, match="no images"):
        train(tmp_path / "foreign", tmp_path / "o2", tiny_cfg())


def test_cli_end_to_end_and_bad_input(collection: Path, tmp_path: Path) -> None:
    out = tmp_path / "model"
    args = [
        "train",
        str(collection),
        "-o",
        str(out),
        "--model",
        "tiny",
        "--batch-size",
        "4",
        "--max-steps",
        "2",
        "--checkpoint-every",
        "1",
        "--sample-steps",
        "2",
        "--device",
        "cpu",
        "--seed",
        "1",
    ]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    assert "to step 2" in r.output and (out / "model_index.json").exists() and (out / "checkpoints" / "checkpoint-2").is_dir()
    assert json.loads((out / "train_config.json").read_text())["config"]["seed"] == 1
    # same folder, different batch size: refused (not silently mixed into the old run)
    r = CliRunner().invoke(app, [*args[:7], "3", *args[8:]])
    assert r.exit_code == 1 and "holds a run with batch_size=4" in r.output
    bad = make_poses(tmp_path / "poses", collection, labels=[0, 1, 2, 0, 1, 2, 0, 9])
    r = CliRunner().invoke(app, ["train", str(collection), "--poses", str(bad), "-o", str(tmp_path / "m2"), "--model", "tiny", "--device", "cpu"])
    assert r.exit_code == 1 and "error:" in r.output and "out of range" in r.output
    assert not (tmp_path / "m2").exists()


@pytest.mark.skipif(os.environ.get("MIRAGE3D_TEST_MULTIPROC", "1") == "0", reason="multi-process test disabled")
@pytest.mark.parametrize("reference", [False, True])
def test_two_process_cpu_training(collection: Path, tmp_path: Path, reference: bool) -> None:
    """torchrun (what `accelerate launch` uses) with 2 gloo CPU processes: shards differ, one checkpoint per step.
    With --reference the processes share the objects of objects.json (each object's views in one process)."""
    out = tmp_path / "ddp"
    if reference:
        from mirage3d.data.objects import write_objects

        collection = make_collection(tmp_path / "coll")
        names = [f"images/{i:06d}.png" for i in range(N_IMAGES)]
        write_objects(collection, [names[k : k + 2] for k in range(0, N_IMAGES, 2)])
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        "-m",
        "mirage3d.cli",
        "train",
        str(collection),
        "-o",
        str(out),
        "--model",
        "tiny",
        "--batch-size",
        "2",
        "--max-steps",
        "2",
        "--checkpoint-every",
        "2",
        "--sample-steps",
        "1",
        "--device",
        "cpu",
        *(["--reference"] if reference else []),
    ]
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert p.returncode == 0, p.stderr[-2000:]
    assert json.loads((out / "train_config.json").read_text())["world_size"] == 2
    ck = out / "checkpoints" / "checkpoint-2"
    assert (ck / "random_states_0.pkl").exists() and (ck / "random_states_1.pkl").exists()
    assert p.stdout.count("trained") == 1  # only rank 0 reports
    assert json.loads((out / "unet" / "config.json").read_text())["in_channels"] == (6 if reference else 3)


def test_export_shards_the_unet_and_reloads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from diffusers import DDPMScheduler

    from mirage3d.diffusion import train_outputs
    from mirage3d.diffusion.pipeline import MiragePipeline

    unet = build_unet(PRESETS["tiny"])
    monkeypatch.setattr(train_outputs, "EXPORT_SHARD", "200KB")  # the tiny UNet is under 1 MB in fp32
    train_outputs.export_pipeline(tmp_path, unet, DDPMScheduler(num_train_timesteps=1000), "fp32")
    shards = sorted((tmp_path / "unet").glob("*.safetensors"))
    assert len(shards) >= 3 and all(p.stat().st_size <= 260_000 for p in shards)  # a tensor never splits: a little over
    loaded = MiragePipeline.from_pretrained(tmp_path).unet.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in unet.state_dict().items())

"""DiscoverConfig (grouped, checked once, read back from old flat config files) and PoseSet (poses.json)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from mirage3d.config import config_to_dict
from mirage3d.errors import InputError
from mirage3d.poses.config import DiscoverConfig, FacingConfig, PartsConfig
from mirage3d.poses.poseset import PoseSet


def test_defaults_are_the_measured_recipe_and_round_trip():
    cfg = DiscoverConfig()
    assert (cfg.num_poses, cfg.parts.num_parts, cfg.facing.w_facing, cfg.facing.component, cfg.facing.w_front) == (8, 16, 0.35, 2, 0.5)
    assert (cfg.descriptor.w_visibility, cfg.descriptor.w_location, cfg.descriptor.w_box) == (0.25, 1.0, 0.25) and cfg.facing.front
    again = DiscoverConfig.from_dict(json.loads(json.dumps(config_to_dict(cfg))))
    assert again == cfg
    tuned = DiscoverConfig(parts=PartsConfig(num_parts=8), facing=FacingConfig(w_facing=0.0))
    assert DiscoverConfig.from_dict(config_to_dict(tuned)) == tuned and not tuned.facing.front


def test_old_flat_config_files_still_load():
    """A poses folder written before the grouping (e.g. the shipped model's) keeps its settings; options since
    removed are ignored; absent scores were off then."""
    old = {
        "num_poses": 8,
        "num_parts": 8,
        "mode": "parts",
        "w_visibility": 0.0,
        "w_box": 0.0,
        "w_facing": 0.5,
        "facing_component": None,
        "w_front": 0.5,
        "front_refine": True,
        "restarts": 1,
        "part_inits": 16,
        "spacing": "sizes",
        "seed": 3,
    }
    cfg = DiscoverConfig.from_dict(old)
    assert cfg.parts.num_parts == 8 and cfg.parts.inits == 16 and cfg.descriptor.w_visibility == 0.0 and cfg.facing.component is None
    assert cfg.cameras.spacing == "sizes" and cfg.seed == 3
    older = DiscoverConfig.from_dict({"num_poses": 8, "num_parts": 16})
    assert older.facing.w_facing == 0.0 and older.facing.w_front == 0.0 and not older.facing.front


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: DiscoverConfig(num_poses=1), "--poses 1 is too small"),
        (lambda: PartsConfig(num_parts=1), "--parts 1 is too small"),
        (lambda: FacingConfig(w_facing=-1.0), "--w-facing -1.0 must be >= 0"),
        (lambda: FacingConfig(component=10), "--facing-component 10 must be in 0..9"),
        (lambda: DiscoverConfig.from_dict({"spacing": "spiral"}), "spacing 'spiral' is unknown"),
    ],
)
def test_bad_settings_are_refused_when_made(make, message):
    with pytest.raises(InputError, match=message):
        make()


def test_poseset_round_trip_and_alignment(tmp_path):
    files = [f"images/{i:06d}.png" for i in range(5)]
    ps = PoseSet(
        files, np.array([0, 1, 2, 3, 0]), np.array([0, 3, 2, 1]), np.full(5, 0.5), np.array([0.0, 90.0, 180.0, 270.0]), {"flip_agreement": 0.9}
    )
    ps.save(tmp_path)
    back = PoseSet.load(tmp_path)
    assert back.files == files and back.num_poses == 4 and back.flip_agreement == 0.9 and back.folder == tmp_path and len(back.sha256) == 64
    assert list(back.counts) == [2, 1, 1, 1] and json.loads((tmp_path / "poses.json").read_text())["counts"] == [2, 1, 1, 1]
    assert list(back.labels_for(files[::-1])) == [0, 3, 2, 1, 0]
    with pytest.raises(InputError, match="1 collection images have no label"):
        back.labels_for([*files, "images/000099.png"])
    (tmp_path / "poses.json").write_text(json.dumps({"num_poses": 2, "files": files[:2], "labels": [0, 1], "mirror": [1, 0], "azimuth_deg": [0.0]}))
    with pytest.raises(InputError, match="azimuth_deg one per pose"):
        PoseSet.load(tmp_path)

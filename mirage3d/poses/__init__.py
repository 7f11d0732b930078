"""mirage3d poses: pose labels and cameras discovered from unlabeled images (docs/poses.md).

Stages: ``features`` (backbones) → ``extract`` (feature cache) → ``parts`` / ``descriptors`` →
``cluster`` (mirror-consistent pose k-means) → ``ring`` (azimuths) → ``cameras``; ``discover`` runs them all
(settings: ``config.DiscoverConfig``) and writes a poses folder (``poseset.PoseSet`` is its ``poses.json``),
``model.PoseModel`` assigns poses to new images (``assign``), ``evaluate`` scores them.

The names below are imported on first use, so ``mirage3d.poses.config`` (the settings, which the CLI reads for
its defaults) loads without torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "Backbone": "features",
    "CameraConfig": "config",
    "DescriptorConfig": "config",
    "DiscoverConfig": "config",
    "Dinov2Backbone": "features",
    "ExtractConfig": "extract",
    "FacingConfig": "config",
    "FeatureCache": "extract",
    "HogBackbone": "features",
    "PartsConfig": "config",
    "PoseCamera": "cameras",
    "PoseMetrics": "evaluate",
    "PoseModel": "model",
    "PoseSet": "poseset",
    "RefitResult": "assign",
    "UNetBackbone": "features",
    "assign_files": "assign",
    "discover_poses": "discover",
    "evaluate_poses": "evaluate",
    "extract_features": "extract",
    "load_backbone": "features",
    "load_cameras": "cameras",
    "refit_pose_model": "assign",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'mirage3d.poses' has no attribute {name!r}")
    return getattr(importlib.import_module(f"mirage3d.poses.{_EXPORTS[name]}"), name)

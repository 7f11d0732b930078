"""mirage3d poses: pose labels and cameras discovered from unlabeled images (docs/poses.md).

Stages: ``features`` (backbones) → ``extract`` (feature cache) → ``parts`` / ``descriptors`` →
``cluster`` (mirror-consistent pose k-means) → ``ring`` (azimuths) → ``cameras``; ``discover`` runs them all
and writes a poses folder, ``model.PoseModel`` assigns poses to new images, ``evaluate`` scores them.
"""

from mirage3d.poses.cameras import CameraConfig, PoseCamera, load_cameras
from mirage3d.poses.discover import DiscoverConfig, PoseSet, RefitResult, discover_poses, refit_pose_model
from mirage3d.poses.evaluate import PoseMetrics, evaluate_poses
from mirage3d.poses.extract import ExtractConfig, FeatureCache, extract_features
from mirage3d.poses.features import Backbone, Dinov2Backbone, HogBackbone, UNetBackbone, load_backbone
from mirage3d.poses.model import PoseModel

__all__ = [
    "Backbone",
    "CameraConfig",
    "DiscoverConfig",
    "Dinov2Backbone",
    "ExtractConfig",
    "FeatureCache",
    "HogBackbone",
    "PoseCamera",
    "PoseMetrics",
    "PoseModel",
    "PoseSet",
    "RefitResult",
    "UNetBackbone",
    "discover_poses",
    "evaluate_poses",
    "extract_features",
    "load_backbone",
    "load_cameras",
    "refit_pose_model",
]

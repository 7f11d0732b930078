"""Class-label convention of the pose-conditioned UNet.

Class 0 is "no pose" (the unconditional branch for classifier-free guidance, and the only label used in
the first, pose-free training phase). Discovered pose ``k`` (0-based) is class ``k + 1``. The embedding
table is sized for ``max_poses + 1`` classes up front so that phase 1 (before poses are known) and phase 2
(with them) share one UNet.
"""

from __future__ import annotations

import torch

NULL_CLASS = 0
DEFAULT_MAX_POSES = 32


def pose_to_class(pose: torch.Tensor | int) -> torch.Tensor | int:
    return pose + 1


def class_to_pose(cls: torch.Tensor | int) -> torch.Tensor | int:
    return cls - 1

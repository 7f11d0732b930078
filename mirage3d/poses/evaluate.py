"""Scoring discovered poses against a rendered collection's ``ground_truth.jsonl`` (evaluation only).

- **ARI / NMI** between pose labels and K ground-truth azimuth bins of 360/K degrees; bins are centred on
  0° (bin 0 covers [-180/K, 180/K)), matching how the ring puts a pose at azimuth 0.
- **Azimuth error**: each image gets its pose's azimuth (``cameras.json``); the discovered frame is only
  defined up to a rotation and a reflection (front/back and left/right, see ``docs/poses.md``), so the
  error is measured after the global rotation θ and reflection s ∈ {+1, −1} that minimise the median
  circular error |s·φ_pred + θ − φ_true|.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

from mirage3d.cameras import circular_difference
from mirage3d.errors import InputError
from mirage3d.poses.cameras import load_cameras
from mirage3d.poses.poseset import PoseSet


@dataclass
class PoseMetrics:
    ari: float
    nmi: float
    median_error_deg: float
    mean_error_deg: float
    within_45_deg: float  # fraction of images within 45° after alignment
    rotation_deg: float  # best global rotation θ
    reflected: bool  # whether the best alignment mirrors the discovered azimuths
    num_images: int
    num_poses: int

    def to_json(self) -> dict:
        return asdict(self)


def read_ground_truth(collection: str | Path) -> dict[str, float]:
    """File (relative to the collection) → true azimuth in degrees, from ``ground_truth.jsonl``."""
    path = Path(collection) / "ground_truth.jsonl"
    if not path.exists():
        raise InputError(f"{path} does not exist; pose evaluation needs a collection rendered by `mirage3d data render`")
    out: dict[str, float] = {}
    with path.open() as fh:
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
                out[str(rec["file"])] = float(rec["azimuth_deg"])
            except (json.JSONDecodeError, KeyError, TypeError, ValueError):
                raise InputError(f"{path} line {n} is not a ground-truth record with 'file' and 'azimuth_deg'") from None
    return out


def azimuth_bins(azimuth_deg: np.ndarray, k: int) -> np.ndarray:
    """Bin index in 0..k-1 of each azimuth; bin 0 is centred on 0°."""
    width = 360.0 / k
    return (np.floor(np.mod(np.asarray(azimuth_deg) + width / 2, 360.0) / width).astype(np.int64)) % k


def best_alignment(pred_deg: np.ndarray, true_deg: np.ndarray) -> tuple[float, float, bool]:
    """(median error, rotation θ, reflected) minimising median |s·pred + θ − true| over θ and s ∈ {+1, −1}."""
    pred, true = np.asarray(pred_deg, dtype=np.float64), np.asarray(true_deg, dtype=np.float64)
    best = (np.inf, 0.0, False)
    for reflected in (False, True):
        p = -pred if reflected else pred
        best_r = (np.inf, 0.0)
        for thetas in (np.arange(0.0, 360.0, 1.0), None):
            if thetas is None:  # refine around the best coarse rotation of this reflection
                thetas = best_r[1] + np.arange(-1.0, 1.0 + 1e-9, 0.05)
            errs = np.array([np.median(circular_difference(p + t, true)) for t in thetas])
            i = int(np.argmin(errs))
            best_r = (float(errs[i]), float(np.mod(thetas[i], 360.0)))
        if best_r[0] < best[0] - 1e-9:
            best = (best_r[0], best_r[1], reflected)
    return best


def evaluate_poses(poses_dir: str | Path, collection: str | Path) -> PoseMetrics:
    """Score ``poses_dir`` (``poses.json`` + ``cameras.json``) against ``collection/ground_truth.jsonl``."""
    poses_dir = Path(poses_dir)
    poses = PoseSet.load(poses_dir)
    truth = read_ground_truth(collection)
    files, labels = poses.files, poses.labels
    missing = [f for f in files if f not in truth]
    if missing:
        raise InputError(
            f"{len(missing)} of {len(files)} posed images (e.g. {missing[0]}) are not in {collection}/ground_truth.jsonl; is it the same collection?"
        )
    true_az = np.array([truth[f] for f in files])
    k = poses.num_poses
    cams = {c.pose: c.azimuth_deg for c in load_cameras(poses_dir)}
    if set(cams) != set(range(k)):
        raise InputError(f"{poses_dir / 'cameras.json'} must have one camera for each of the {k} poses; run `mirage3d poses discover` again")
    pred_az = np.array([cams[int(lab)] for lab in labels])
    bins = azimuth_bins(true_az, k)
    med, rot, refl = best_alignment(pred_az, true_az)
    aligned = (-pred_az if refl else pred_az) + rot
    err = circular_difference(aligned, true_az)
    return PoseMetrics(
        ari=float(adjusted_rand_score(bins, labels)),
        nmi=float(normalized_mutual_info_score(bins, labels)),
        median_error_deg=float(med),
        mean_error_deg=float(err.mean()),
        within_45_deg=float((err <= 45.0).mean()),
        rotation_deg=rot,
        reflected=refl,
        num_images=len(files),
        num_poses=k,
    )

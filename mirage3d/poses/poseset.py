"""``POSES/poses.json``: the pose of every collection image, the contract between discovery, training and evaluation.

Written by ``mirage3d poses discover`` (and copied by ``refit`` and into ``MODEL/poses/`` by training); read by
``mirage3d train --poses``, ``mirage3d eval poses`` and ``mirage3d poses refit``, all through :class:`PoseSet`.

Required keys: ``num_poses`` (K), ``files`` (image paths relative to the collection), ``labels`` (a pose
0..K-1 per file), ``mirror`` (K: the pose of the horizontally flipped image of each pose). Written beside them
by discovery: ``confidence`` (per file), ``azimuth_deg`` and ``counts`` (per pose), and what the run measured
(``flip_agreement``, ``mirror_residual_deg``, ``objective``, ``assign_agreement``, ``ring_order``, facing
records): kept in :attr:`PoseSet.record`, written back as they are.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mirage3d.errors import InputError
from mirage3d.io import atomic_write_json

POSES_FILE = "poses.json"


@dataclass
class PoseSet:
    """Pose labels of a collection's images (the contents of ``poses.json``)."""

    files: list[str]
    """image paths relative to the collection (forward slashes)"""
    labels: np.ndarray
    """(N,) int: the pose 0..K-1 of each file"""
    mirror: np.ndarray
    """(K,) int: the pose of the horizontally flipped image of pose k (an involution)"""
    confidence: np.ndarray | None = None
    """(N,) confidence of each label in (0, 1], when discovery wrote it"""
    azimuth_deg: np.ndarray | None = None
    """(K,) azimuth of each pose's camera, when discovery wrote it"""
    record: dict[str, Any] = field(default_factory=dict)
    """what the discovery run measured (flip agreement, mirror residual, ...), kept as written"""
    folder: Path | None = None
    """the folder the set was read from or written to"""
    sha256: str = ""
    """hash of the ``poses.json`` bytes read (training refuses to resume with other poses)"""

    @property
    def num_poses(self) -> int:
        return len(self.mirror)

    @property
    def counts(self) -> np.ndarray:
        """(K,) images per pose."""
        return np.bincount(self.labels, minlength=self.num_poses)

    @property
    def flip_agreement(self) -> float:
        """Share of images whose flip alone is nearest the mirror pose of their label (NaN if not recorded)."""
        return float(self.record.get("flip_agreement", float("nan")))

    @property
    def mirror_residual_deg(self) -> float:
        return float(self.record.get("mirror_residual_deg", float("nan")))

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"num_poses": self.num_poses, "files": list(self.files), "labels": [int(x) for x in self.labels]}
        if self.confidence is not None:
            out["confidence"] = [round(float(x), 5) for x in self.confidence]
        out["mirror"] = [int(x) for x in self.mirror]
        if self.azimuth_deg is not None:
            out["azimuth_deg"] = [float(a) for a in self.azimuth_deg]
        out["counts"] = [int(c) for c in self.counts]
        return {**out, **{k: v for k, v in self.record.items() if k not in out}}

    def save(self, folder: str | Path) -> Path:
        """Write ``folder/poses.json`` atomically; returns its path."""
        path = Path(folder) / POSES_FILE
        atomic_write_json(path, self.to_json())
        return path

    @classmethod
    def load(cls, path: str | Path) -> PoseSet:
        """Read and check ``POSES/poses.json`` (or the file itself); one line :class:`InputError` if it is not valid."""
        path = Path(path)
        file = path / POSES_FILE if path.is_dir() or not path.suffix else path
        if not file.exists():
            raise InputError(f"{file} does not exist; pass the folder written by `mirage3d poses discover` (with poses.json)")
        raw = file.read_bytes()
        try:
            data = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise InputError(f"{file} is not valid JSON ({type(e).__name__})") from None
        if not isinstance(data, dict) or not all(k in data for k in ("num_poses", "files", "labels", "mirror")):
            raise InputError(f"{file} must be an object with num_poses, files, labels and mirror")
        k, files, labels, mirror = data["num_poses"], data["files"], data["labels"], data["mirror"]
        if not isinstance(k, int) or k < 1:
            raise InputError(f"{file}: num_poses must be a positive integer, got {k!r}")
        if not isinstance(files, list) or not isinstance(labels, list) or len(files) != len(labels):
            raise InputError(f"{file}: files and labels must be lists of equal length")
        if not isinstance(mirror, list) or len(mirror) != k:
            raise InputError(f"{file}: mirror must list {k} poses (one per pose), got {len(mirror) if isinstance(mirror, list) else mirror!r}")

        def ints(v: object) -> bool:
            return isinstance(v, list) and all(isinstance(x, int) and not isinstance(x, bool) for x in v)

        def finite(v: object) -> bool:
            return v is None or (isinstance(v, list) and all(isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) for x in v))

        if not ints(labels) or not ints(mirror) or not finite(data.get("confidence")) or not finite(data.get("azimuth_deg")):
            raise InputError(f"{file}: labels and mirror must be integers, confidence and azimuth_deg finite numbers")
        try:
            labels_arr = np.asarray(labels, dtype=np.int64)
            mirror_arr = np.asarray(mirror, dtype=np.int64)
            confidence = None if data.get("confidence") is None else np.asarray(data["confidence"], dtype=np.float64)
            azimuth = None if data.get("azimuth_deg") is None else np.asarray(data["azimuth_deg"], dtype=np.float64)
        except (TypeError, ValueError):
            raise InputError(f"{file}: labels and mirror must be integers, confidence and azimuth_deg numbers") from None
        for name, arr in (("labels", labels_arr), ("mirror", mirror_arr)):
            bad = np.flatnonzero((arr < 0) | (arr >= k))
            if bad.size:
                raise InputError(f"{file}: {name}[{bad[0]}] = {arr[bad[0]]} is out of range 0..{k - 1}")
        if (confidence is not None and confidence.shape != labels_arr.shape) or (azimuth is not None and azimuth.shape != mirror_arr.shape):
            raise InputError(f"{file}: confidence must have one entry per file and azimuth_deg one per pose")
        names = [str(f).replace("\\", "/") for f in files]
        if len(set(names)) != len(names):
            raise InputError(f"{file}: files lists some image twice")
        known = {"num_poses", "files", "labels", "mirror", "confidence", "azimuth_deg", "counts"}
        record = {key: v for key, v in data.items() if key not in known}
        return cls(names, labels_arr, mirror_arr, confidence, azimuth, record, file.parent, hashlib.sha256(raw).hexdigest())

    def labels_for(self, names: list[str]) -> np.ndarray:
        """(len(names),) labels of the collection images ``names`` (relative paths), which must be exactly ``files``."""
        by_name = {f: i for i, f in enumerate(self.files)}
        missing = [n for n in names if n not in by_name]
        extra = sorted(set(by_name) - set(names))
        if missing or extra:
            what = (
                f"{len(missing)} collection images have no label (e.g. {missing[0]})"
                if missing
                else f"{len(extra)} labelled files are not in the collection (e.g. {extra[0]})"
            )
            raise InputError(
                f"{self.folder / POSES_FILE if self.folder else POSES_FILE} does not match the collection: {what}; run pose discovery on this collection again"
            )
        return self.labels[[by_name[n] for n in names]]

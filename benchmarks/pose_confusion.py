"""Where discovered poses go wrong: azimuth-error histogram and each pose's true-azimuth bins (Markdown).

    python3 benchmarks/pose_confusion.py POSES COLLECTION

POSES is a `mirage3d poses discover` folder, COLLECTION a rendered collection with ground_truth.jsonl. The
poses' azimuths are aligned with the truth by the best rotation/reflection (as `mirage3d eval poses` does);
then it prints the histogram of per-image errors in 30° bins, and for each pose how many of its images fall in
each of 8 true-azimuth bins of 45° (bin 0 centred on 0°). Two peaks 4 bins apart in one row mean the pose
holds views from φ and φ + 180° (front/back confusion).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mirage3d.cameras import circular_difference  # noqa: E402
from mirage3d.poses.evaluate import best_alignment, read_ground_truth  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("poses", type=Path)
    ap.add_argument("collection", type=Path)
    a = ap.parse_args()
    p = json.loads((a.poses / "poses.json").read_text())
    gt = read_ground_truth(a.collection)
    true = np.array([gt[f] for f in p["files"]])
    labels = np.array(p["labels"])
    az = np.array(p["azimuth_deg"])
    pred = az[labels]
    _, rot, refl = best_alignment(pred, true)  # (median error, rotation, reflected)
    aligned = np.mod((-pred if refl else pred) + rot, 360.0)
    err = np.abs(circular_difference(aligned, true))
    hist = np.histogram(err, bins=6, range=(0, 180))[0]
    print(f"{len(err)} images, median error {np.median(err):.1f} deg")
    print("| error | " + " | ".join(f"{30 * i}–{30 * (i + 1)}°" for i in range(6)) + " |")
    print("|---|" + "---|" * 6)
    print("| images | " + " | ".join(str(int(h)) for h in hist) + " |")
    bins = np.mod(np.round(true / 45.0).astype(int), 8)
    print("\n| pose | azimuth | " + " | ".join(f"{45 * b}°" for b in range(8)) + " |")
    print("|---|---|" + "---|" * 8)
    for k in range(int(p["num_poses"])):
        counts = np.bincount(bins[labels == k], minlength=8)
        print(f"| {k} | {az[k]:.0f}° | " + " | ".join(str(int(c)) for c in counts) + " |")


if __name__ == "__main__":
    main()

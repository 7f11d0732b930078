"""How often the offline cut-out finds the object in real photos (docs/photos.md, "Import quality").

    python benchmarks/bench_import.py PHOTOS --boxes BOXES.csv [--every 1] [--variants box,auto,prior] [--sheet OUT.png]

PHOTOS: a folder of photos; BOXES.csv: ``file,x0,y0,x1,y1`` (the object's true box per photo, used to score
every variant and as the input of the ``box`` variant). A photo counts as found when the box of its mask
(alpha > 0.5) has an intersection over union of at least ``--iou`` (0.7) with the true box.

Variants:
- ``box``: GrabCut from the true box (``mirage3d.foreground.grabcut_box``), what ``data import --boxes`` does;
- ``auto``: GrabCut from the automatic prior (``grabcut_auto``), what ``data import`` does without boxes;
- ``prior``: the trivial baseline, the automatic prior's ellipse itself (no GrabCut).
``--work-side`` and ``--centre`` override those ``ForegroundConfig`` fields for every variant.

Prints one row per variant (share found, median IoU, seconds per photo) and writes an optional contact sheet
of the cut-outs (``--sheet``: for ``--sheet-count`` photos spread over the set, one tile per GrabCut variant
side by side, each on grey with its IoU).
"""

from __future__ import annotations

import argparse
import csv
import os
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from mirage3d.foreground import ForegroundConfig, auto_prior, box_iou, check_box, grabcut_auto, grabcut_box, mask_box


def prior_mask(rgb: np.ndarray, cfg: ForegroundConfig) -> np.ndarray:
    import cv2

    h, w = rgb.shape[:2]
    return (auto_prior(h, w, cfg) == cv2.GC_PR_FGD).astype(np.float32)


VARIANTS = {
    "box": lambda rgb, box, cfg: grabcut_box(rgb, box, cfg),
    "auto": lambda rgb, box, cfg: grabcut_auto(rgb, cfg),
    "prior": lambda rgb, box, cfg: prior_mask(rgb, cfg),
}


def read_boxes(path: Path) -> dict[str, tuple[float, float, float, float]]:
    with path.open(newline="") as fh:
        return {r["file"]: (float(r["x0"]), float(r["y0"]), float(r["x1"]), float(r["y1"])) for r in csv.DictReader(fh)}


def tile(rgb: np.ndarray, mask: np.ndarray, iou: float, side: int = 96) -> Image.Image:
    """The cut-out on grey, scaled to ``side`` wide, with its IoU written in the corner."""
    grey = np.full_like(rgb, 0.5)
    out = rgb * mask[..., None] + grey * (1 - mask[..., None])
    im = Image.fromarray((out * 255 + 0.5).astype(np.uint8))
    im = im.resize((side, round(side * im.height / im.width)), Image.Resampling.LANCZOS)
    ImageDraw.Draw(im).text((2, 1), f"{iou:.2f}", fill=(255, 255, 0) if iou >= 0.7 else (255, 60, 60))
    return im


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("photos", type=Path)
    ap.add_argument("--boxes", type=Path, required=True)
    ap.add_argument("--variants", default="box,auto,prior")
    ap.add_argument("--every", type=int, default=1, help="score every N-th photo (sorted by name)")
    ap.add_argument("--iou", type=float, default=0.7)
    ap.add_argument("--work-side", type=int, default=None)
    ap.add_argument("--centre", type=float, default=None)
    ap.add_argument("--sheet", type=Path, default=None, help="contact sheet of cut-outs to write (PNG)")
    ap.add_argument("--sheet-count", type=int, default=48)
    ap.add_argument("--tile", type=int, default=96, help="contact sheet tile width (pixels)")
    args = ap.parse_args()

    cfg = ForegroundConfig()
    if args.work_side is not None:
        cfg.work_side = args.work_side
    if args.centre is not None:
        cfg.centre = args.centre
    boxes = read_boxes(args.boxes)
    files = sorted(boxes)[:: args.every]
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    ious = {v: [] for v in variants}
    secs = {v: 0.0 for v in variants}
    sheet_variants = [v for v in variants if v != "prior"] or variants
    pick = set(np.linspace(0, len(files) - 1, min(args.sheet_count, len(files))).round().astype(int).tolist())
    tiles = []
    for n, name in enumerate(files):
        rgb = np.asarray(Image.open(args.photos / name).convert("RGB"), dtype=np.float32) / 255.0
        truth = check_box(boxes[name], rgb.shape[1], rgb.shape[0], name)
        for v in variants:
            t0 = time.perf_counter()
            mask = VARIANTS[v](rgb, truth, cfg)
            secs[v] += time.perf_counter() - t0
            found = mask_box(mask)
            ious[v].append(0.0 if found is None else box_iou(found, truth))
            if v in sheet_variants and n in pick and args.sheet is not None:
                tiles.append(tile(rgb, mask, ious[v][-1], args.tile))
    load = os.getloadavg()[0]
    print(f"{len(files)} photos of {args.photos}; found = IoU(mask box, true box) >= {args.iou}; load average {load:.1f}")
    print("| variant | found | median IoU | s / photo |")
    print("|---|---|---|---|")
    for v in variants:
        a = np.array(ious[v])
        print(f"| {v} | {(a >= args.iou).mean():.3f} ({int((a >= args.iou).sum())}/{len(a)}) | {np.median(a):.3f} | {secs[v] / len(a):.3f} |")
    if tiles:
        cols = 4 * len(sheet_variants)
        w, h = tiles[0].width, max(t.height for t in tiles)
        sheet = Image.new("RGB", (cols * w, -(-len(tiles) // cols) * h), (128, 128, 128))
        for i, t in enumerate(tiles):
            sheet.paste(t, ((i % cols) * w, (i // cols) * h))
        sheet.save(args.sheet)
        print(f"wrote {args.sheet} (per photo: {', '.join(sheet_variants)})")


if __name__ == "__main__":
    main()

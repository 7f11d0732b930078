"""Pose discovery on real photos (docs/photos.md, "Poses on real photos"): ARI / NMI / azimuth error per method.

    python benchmarks/bench_photo_poses.py --data ../shared/photos/epfl-cars-dev --scratch /tmp/photo-poses \
        [--model assets/models/car] [--res 128] [--every 1] [--methods hog,unet,...] [--seeds 0,1,2]

--data: a folder with ``images/`` and ``azimuth_per_image.csv`` (``file, ..., azimuth_deg, bbox "x0,y0,x1,y1"``),
as the EPFL multi-view cars. --scratch: a folder OUTSIDE the repository (the photos are research-licensed and
must not enter it) where everything is written and cached between runs:

1. ``boxes.csv`` (``file,x0,y0,x1,y1`` from the CSV's bbox column) and ``import-r<res>/``: the photos imported
   with their boxes by ``mirage3d.data.photos.import_photos`` (GrabCut from the box), made once and reused;
2. ``ground_truth.jsonl`` in the collection (``{"file": "images/<stem>.png", "azimuth_deg": ...}``, the form
   ``mirage3d eval poses`` reads from rendered collections); ``--every N`` makes a sub-collection of every
   N-th imported image (hard links) for quick runs;
3. per method: ``mirage3d features extract`` into the collection's default feature cache (kept, so a second
   run or another method on the same features pays nothing; the seconds it took when made are kept in the
   cache as ``bench_seconds.json`` and reported), then per seed ``mirage3d poses discover --features ...``
   (K = 8, every other setting the default) and ``mirage3d eval poses``: the real commands, in this process.

Methods (``--methods``, comma-separated):
- ``hog``: the HOG baseline backbone (colour-blind gradients) on the cut-outs;
- ``unet``: the current method: the shipped model's UNet (``--model``, trained on renders only) on the cut-outs;
- ``unet-auto``: the same features, facing axis chosen by the automatic rule (``--facing-component auto``);
- ``unet-gray``: the UNet on grayscale cut-outs (a derived collection: luminance in R = G = B, alpha kept);
- ``unet-centred``: the UNet features with each image's mean foreground feature subtracted (per image, image
  and mirror image alike) before parts: an image-wide offset (colour, identity) cancels;
- ``hog-silhouette``: HOG of the silhouettes only (a derived collection: one grey over the object, alpha kept);
- ``hog-layout``, ``unet-layout``: ``hog`` and ``unet`` with the layout block in the descriptor (``--w-layout 1``);
- ``hog-by-object``: ``poses discover --by-object``: the poses of each car's ring of views (``mirage3d.poses.rings``,
  its own HOG descriptors), from ``objects.json`` (one object per turntable sequence, written beside the ground
  truth; no pose information); the backbone (here HOG) only makes the pose model that labels new images.
The background is already out of every method: the cut-outs carry alpha, and discovery takes foreground
patches from alpha. ``--probe`` (on by default) adds, per method, the ARI of a leave-one-car-out linear probe on
the same features (``probe``; true labels used, an upper bound on the features, not a method), and the ARI / NMI
of a label-free baseline on them, ``layout``: k-means (K = 8, the discovery seeds) on the same box-pooled features
(4 x 4 split of the object's box, PCA to 64 dimensions), no parts, no mirror handling, no ring (so no azimuth
error). Prints one Markdown table with the machine, load and date; writes
``SCRATCH/runs/bench_photo_poses.json``.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import json
import os
import platform
import shutil
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors.torch import save_file
from typer.testing import CliRunner

from mirage3d.cli.main import app
from mirage3d.data.objects import write_objects
from mirage3d.data.photos import ImportConfig, import_photos
from mirage3d.io import atomic_path, atomic_write_json, atomic_write_text
from mirage3d.poses.extract import MANIFEST, FeatureCache, default_cache_dir
from mirage3d.poses.features import load_backbone

# method → (collection variant, backbone ("model" = --model), feature transform, extra `poses discover` args)
METHODS = {
    "hog": ("cutout", "hog", None, []),
    "unet": ("cutout", "model", None, []),
    "unet-auto": ("cutout", "model", None, ["--facing-component", "auto"]),
    "unet-gray": ("gray", "model", None, []),
    "unet-centred": ("cutout", "model", "centred", []),
    "hog-silhouette": ("silhouette", "hog", None, []),
    "hog-layout": ("cutout", "hog", None, ["--w-layout", "1"]),
    "unet-layout": ("cutout", "model", None, ["--w-layout", "1"]),
    "hog-by-object": ("cutout", "hog", None, ["--by-object"]),
}


def cli(*args: str) -> tuple[int, str]:
    r = CliRunner().invoke(app, list(args))
    return r.exit_code, r.output


def write_boxes(data: Path, scratch: Path) -> tuple[Path, dict[str, float], dict[str, int]]:
    """``boxes.csv`` for ``data import --boxes``, the true azimuth of each photo stem (evaluation only) and its
    turntable sequence (which photos show one car, for ``objects.json``)."""
    boxes, azimuth, sequence = scratch / "boxes.csv", {}, {}
    with (data / "azimuth_per_image.csv").open(newline="") as fh, boxes.open("w", newline="") as out:
        w = csv.writer(out)
        w.writerow(["file", "x0", "y0", "x1", "y1"])
        for r in csv.DictReader(fh):
            w.writerow([r["file"], *r["bbox"].split(",")])
            azimuth[Path(r["file"]).stem] = float(r["azimuth_deg"])
            sequence[Path(r["file"]).stem] = int(r["seq"])
    return boxes, azimuth, sequence


def write_truth(folder: Path, images: list[Path], azimuth: dict[str, float], sequence: dict[str, int]) -> None:
    """``ground_truth.jsonl`` (evaluation only) and ``objects.json`` (one object per turntable: no pose information,
    what ``poses discover --by-object`` reads) of a collection holding ``images``."""
    lines = [json.dumps({"file": f"images/{p.name}", "azimuth_deg": azimuth[p.stem]}) + "\n" for p in images]
    atomic_write_text(folder / "ground_truth.jsonl", "".join(lines))
    groups: dict[int, list[str]] = {}
    for p in images:
        groups.setdefault(sequence[p.stem], []).append(f"images/{p.name}")
    write_objects(folder, list(groups.values()))


def imported(data: Path, scratch: Path, res: int, boxes: Path) -> Path:
    """The photos imported with their boxes (made once; an existing import of the same resolution is reused)."""
    out = scratch / f"import-r{res}"
    if (out / "import.json").exists() and json.loads((out / "config.json").read_text()).get("res") == res:
        return out
    t0 = time.perf_counter()
    result = import_photos(data / "images", out, ImportConfig(res=res, workers=os.cpu_count() or 1), boxes=boxes, overwrite=True)
    print(f"imported {result.n_images} photos ({len(result.skipped)} skipped) to {out} in {time.perf_counter() - t0:.0f} s", flush=True)
    return out


def derived(base: Path, scratch: Path, variant: str, every: int, azimuth: dict[str, float], sequence: dict[str, int]) -> Path:
    """The collection of one input variant: cut-outs as imported, grayscale or silhouettes; every N-th image."""
    images = sorted((base / "images").glob("*.png"))[::every]
    if variant == "cutout" and every == 1:  # the import itself (its feature caches live in it)
        write_truth(base, images, azimuth, sequence)
        return base
    out = scratch / f"{variant}-{base.name}-every{every}"
    if not (out / "ground_truth.jsonl").exists():
        tmp = out.with_name(out.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        (tmp / "images").mkdir(parents=True)
        for p in images:
            dst = tmp / "images" / p.name
            if variant == "cutout":
                os.link(p, dst)
                continue
            rgba = np.asarray(Image.open(p).convert("RGBA"))
            rgb = rgba[..., :3].astype(np.float32)
            if variant == "gray":  # ITU-R 601 luma, as PIL's "L"
                grey = rgb @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
            else:  # silhouette: one grey over the whole object; its shape is all that is left
                grey = np.full(rgb.shape[:2], 96.0, dtype=np.float32)
            rgb = np.repeat(grey[..., None], 3, -1).round().astype(np.uint8)
            Image.fromarray(np.concatenate([rgb, rgba[..., 3:]], -1), "RGBA").save(dst)
        write_truth(tmp, images, azimuth, sequence)
        shutil.rmtree(out, ignore_errors=True)
        tmp.rename(out)
    return out


def centred_cache(cache: FeatureCache, out: Path) -> Path:
    """A copy of ``cache`` with each image's foreground-weighted mean feature subtracted from its patches."""
    if (out / MANIFEST).exists():
        return out
    out.mkdir(parents=True, exist_ok=True)
    for i in range(cache.num_shards):
        data = cache.load_shard(i)
        w = data["fg"].float()[..., None]  # (n, h, w, 1)
        for key in ("feats", "feats_flip"):
            if key in data:
                f = data[key].float()  # (n, h, w, C)
                w_k = w if key == "feats" else w.flip(2)
                mean = (f * w_k).sum((1, 2), keepdim=True) / w_k.sum((1, 2), keepdim=True).clamp_min(1e-6)
                data[key] = (f - mean).half().contiguous()
        with atomic_path(out / cache.shard_path(i).name) as tmp:
            save_file(data, str(tmp))
    manifest = json.loads((cache.folder / MANIFEST).read_text())
    manifest["backbone"] = {**manifest["backbone"], "centred_per_image": True}  # benchmark-only: no backbone rebuilds this
    atomic_write_json(out / MANIFEST, manifest)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True, type=Path, help="folder with images/ and azimuth_per_image.csv")
    ap.add_argument("--scratch", required=True, type=Path, help="work folder outside the repository (cached between runs)")
    ap.add_argument("--model", default="assets/models/car", help="mirage3d model folder whose UNet is the backbone")
    ap.add_argument("--res", type=int, default=128, help="import resolution")
    ap.add_argument("--every", type=int, default=1, help="use every N-th imported photo")
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--seeds", default="0,1,2", help="discovery seeds, comma-separated ('' = none: features and probe only)")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--probe", action=argparse.BooleanOptionalAction, default=True, help="also the leave-one-car-out linear probe (labels used)")
    args = ap.parse_args()
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    seeds = [int(x) for x in args.seeds.split(",") if x.strip()]
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        ap.error(f"unknown method(s) {unknown}; choose from {', '.join(METHODS)}")
    repo = Path(__file__).resolve().parents[1]
    scratch = args.scratch.resolve()
    if scratch == repo or repo in scratch.parents:
        ap.error("--scratch must lie outside the repository (the photos are research-licensed)")
    scratch.mkdir(parents=True, exist_ok=True)

    boxes, azimuth, sequence = write_boxes(args.data, scratch)
    base = imported(args.data, scratch, args.res, boxes)
    rows = []
    layouts: dict[str, list[tuple[float, float]]] = {}
    for name in methods:
        variant, spec, transform, extra = METHODS[name]
        coll = derived(base, scratch, variant, args.every, azimuth, sequence)
        spec = args.model if spec == "model" else spec
        bb = load_backbone(spec)
        feats = default_cache_dir(coll, bb, "image")
        del bb
        t_feat = extract(coll, feats, spec, args.batch_size)
        if t_feat is None:
            print(f"{name}: feature extraction failed", flush=True)
            continue
        if transform == "centred":
            t0 = time.perf_counter()
            feats = centred_cache(FeatureCache.open(feats), feats.with_name(feats.name + "-centred"))
            t_feat += time.perf_counter() - t0
        cache = FeatureCache.open(feats)
        pooled = box_pooled(cache)  # read once: the probe and the layout baseline share it
        probe_ari = probe(pooled, cache, azimuth) if args.probe else float("nan")
        if args.probe:
            print(f"{name}: leave-one-car-out probe ARI {probe_ari:.3f}", flush=True)
        lay = layout_kmeans(pooled, cache, azimuth, seeds)
        layouts[name] = lay
        print(f"{name}: layout k-means ARI {pm([a for a, _ in lay], 3)}, NMI {pm([n for _, n in lay], 3)}", flush=True)
        for seed in seeds:
            poses = scratch / "runs" / f"{coll.name}-{name}-seed{seed}"
            t0 = time.perf_counter()
            code, out = cli(
                "poses",
                "discover",
                str(coll),
                "-o",
                str(poses),
                "--features",
                str(feats),
                "--poses",
                "8",
                "--seed",
                str(seed),
                "--device",
                "cpu",
                "--overwrite",
                *extra,
            )
            t_disc = time.perf_counter() - t0
            if code != 0 or cli("eval", "poses", str(poses), "--collection", str(coll))[0] != 0:
                print(f"{name} seed {seed}: discovery or evaluation failed: {out.strip().splitlines()[-1:]}", flush=True)
                continue
            m = json.loads((poses / "eval.json").read_text())
            rows.append(
                {"method": name, "seed": seed, "collection": str(coll), "features_s": t_feat, "discover_s": t_disc, "probe_ari": probe_ari, **m}
            )
            print(
                f"{name} seed {seed}: ARI {m['ari']:.3f}, NMI {m['nmi']:.3f}, median error {m['median_error_deg']:.1f} deg "
                f"(features {t_feat:.0f} s, discovery {t_disc:.0f} s)",
                flush=True,
            )

    load = os.getloadavg()
    print()
    print(
        f"{platform.node()} ({os.cpu_count()} CPUs, torch {torch.__version__}), load average {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f}, "
        f"{datetime.date.today()}; {rows[0]['num_images'] if rows else 0} photos at {args.res}² (every {args.every}), K = 8, "
        f"discovery seeds {args.seeds}; mean ± sd over seeds"
    )
    print(
        "| method | ARI | NMI | median azimuth error (deg) | seconds: features (once) + discovery (per seed) | probe ARI (labels) "
        "| layout k-means ARI / NMI |"
    )
    print("|---|---|---|---|---|---|---|")
    for name in methods:
        rs = [r for r in rows if r["method"] == name]
        if rs:
            cols = [pm([r[k] for r in rs], d) for k, d in (("ari", 3), ("nmi", 3), ("median_error_deg", 1))]
            print(
                f"| {name} | {' | '.join(cols)} | {rs[0]['features_s']:.0f} + {np.mean([r['discover_s'] for r in rs]):.0f} | {rs[0]['probe_ari']:.3f} "
                f"| {pm([a for a, _ in layouts[name]], 3)} / {pm([n for _, n in layouts[name]], 3)} |"
            )
    (scratch / "runs").mkdir(exist_ok=True)
    (scratch / "runs" / "bench_photo_poses.json").write_text(json.dumps(rows, indent=2) + "\n")


def box_pooled(cache: FeatureCache) -> np.ndarray:
    """(N, 16 C) every cached image's features pooled over a 4 x 4 split of the object's box (``box_pool``)."""
    from mirage3d.poses.facing import box_pool

    return torch.cat([box_pool(d["feats"].float(), d["fg"].float(), 4).flatten(1) for _, d in cache.iter_shards()]).numpy()


def probe(x: np.ndarray, cache: FeatureCache, azimuth: dict[str, float]) -> float:
    """ARI of a leave-one-car-out linear probe: a logistic regression on the true azimuth bins (K = 8) of the other
    cars, applied to the held-out car. Labels are used: it is an upper bound on what the features tell about the
    viewpoint of an unseen car, not a discovery method. ``x``: the box-pooled features (:func:`box_pooled`),
    PCA-reduced to 256 dimensions on the training cars."""
    from sklearn.decomposition import PCA
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import adjusted_rand_score

    from mirage3d.poses.evaluate import azimuth_bins

    stems = [Path(f).stem for f in cache.files]
    car = np.array([s.rsplit("_", 1)[0] for s in stems])  # tripod_seq_SS_FFF → one car per sequence
    bins = azimuth_bins(np.array([azimuth[s] for s in stems]), 8)
    pred = np.zeros_like(bins)
    for c in np.unique(car):
        train = car != c
        pca = PCA(min(256, x.shape[1], int(train.sum()) - 1), random_state=0).fit(x[train])
        clf = LogisticRegression(C=0.1, max_iter=2000).fit(pca.transform(x[train]), bins[train])
        pred[~train] = clf.predict(pca.transform(x[~train]))
    return float(adjusted_rand_score(bins, pred))


def layout_kmeans(x: np.ndarray, cache: FeatureCache, azimuth: dict[str, float], seeds: list[int]) -> list[tuple[float, float]]:
    """(ARI, NMI) per seed of a label-free baseline: k-means (K = 8) on the box-pooled features ``x``
    (:func:`box_pooled`), PCA-reduced to 64 dimensions: the image's coarse layout, no parts."""
    from sklearn.cluster import KMeans
    from sklearn.decomposition import PCA
    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

    from mirage3d.poses.evaluate import azimuth_bins

    bins = azimuth_bins(np.array([azimuth[Path(f).stem] for f in cache.files]), 8)
    z = PCA(min(64, *x.shape), random_state=0).fit_transform(x)
    out = []
    for seed in seeds or [0]:
        labels = KMeans(8, n_init=10, random_state=seed).fit_predict(z)
        out.append((float(adjusted_rand_score(bins, labels)), float(normalized_mutual_info_score(bins, labels))))
    return out


def pm(values: list[float], digits: int) -> str:
    """ "mean ± sd" (sd over seeds; just the value for one seed)."""
    return f"{np.mean(values):.{digits}f}" + (f" ± {np.std(values, ddof=1):.{digits}f}" if len(values) > 1 else "")


def extract(coll: Path, feats: Path, spec: str, batch_size: int) -> float | None:
    """Seconds ``mirage3d features extract`` took to fill the cache, recorded beside it (``bench_seconds.json``) so a
    later run that finds the cache whole reports the time the features cost when they were made; None on failure."""
    record = feats / "bench_seconds.json"
    t0 = time.perf_counter()
    code, _ = cli("features", "extract", str(coll), "-o", str(feats), "--backbone", spec, "--device", "cpu", "--batch-size", str(batch_size))
    seconds = time.perf_counter() - t0
    if code != 0:
        return None
    if record.exists():
        return float(json.loads(record.read_text())["seconds"])
    atomic_write_json(record, {"seconds": seconds, "load_average": os.getloadavg()[0]})
    return seconds


if __name__ == "__main__":
    main()

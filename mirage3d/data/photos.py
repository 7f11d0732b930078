"""Importing ordinary photos as a collection: find the object, cut it out, frame it as the renders are.

``import_photos(photos, output, config, boxes=...)`` turns a folder of photos into the folder layout that
``mirage3d data render`` writes and the other commands read (``docs/photos.md``):

- ``images/<stem>.png``: RGBA, ``res``², the object's cut-out (alpha = its mask; colour composited on white
  under the mask's soft edge), cropped square around the mask's box so that the box's longer side is
  ``fill`` of the frame, centred;
- ``import.json``: per imported photo its source file, where the mask came from, the object's box in the
  photo and the square crop (photo pixels; the crop may reach outside the photo, that part is transparent);
  and every skipped photo with the reason;
- ``contact_sheet.png``, ``config.json`` (the ``ImportConfig`` with its ``ForegroundConfig``, the source
  folder and the boxes file).

There is no ``ground_truth.jsonl``: photos carry no cameras. The object is found by
:func:`mirage3d.foreground.find_object` (alpha, a box from ``--boxes``, a plain background, rembg when
installed, else GrabCut from the automatic prior). A photo is skipped, and reported, when it cannot be read
or when its cut-out is unusable (too small, or nearly the whole photo). The whole folder is built in a
temporary sibling and renamed into place.
"""

from __future__ import annotations

import csv
import multiprocessing
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from mirage3d.config import save_config
from mirage3d.data.objects import write_objects
from mirage3d.errors import InputError
from mirage3d.foreground import Box, ForegroundConfig, check_box, find_object, mask_box
from mirage3d.io import IMAGE_SUFFIXES, atomic_dir, atomic_write_json, load_image, rgba_to_array


@dataclass
class ImportConfig:
    """How photos become a collection (saved as ``config.json`` beside it)."""

    res: int = 128
    """Image side in pixels (square)."""
    fill: float = 0.71
    """Longer side of the object's box / frame side: the median over the default car model's training renders
    (``assets/models/car/framing.json``), so imported photos are framed as the renders are."""
    min_object: float = 0.01
    """A cut-out covering less than this share of the photo is refused (nothing found)."""
    max_object: float = 0.9
    """A cut-out covering more than this share of the photo is refused (the background was not separated)."""
    contact_sheet: int = 64
    """Images shown on ``contact_sheet.png``."""
    workers: int = 1
    """Processes cutting out photos (GrabCut is single-threaded)."""
    seed: int = 0
    """Seed of GrabCut's colour-model initialisation (OpenCV's k-means); the same seed gives the same images."""
    foreground: ForegroundConfig = field(default_factory=ForegroundConfig)
    """How the object is found (mirage3d.foreground)."""

    def __post_init__(self) -> None:
        if isinstance(self.foreground, dict):  # rebuilt from config.json
            self.foreground = ForegroundConfig(**self.foreground)
        checks = [
            (16 <= self.res <= 2048, f"--res must be between 16 and 2048, got {self.res}"),
            (0.0 < self.fill <= 1.0, f"--fill must be in (0, 1], got {self.fill}"),
            (0.0 <= self.min_object < self.max_object <= 1.0, f"need 0 <= min_object < max_object <= 1, got {self.min_object}, {self.max_object}"),
            (self.workers >= 1, f"--workers must be at least 1, got {self.workers}"),
            (self.seed >= 0, f"--seed must be 0 or more, got {self.seed}"),
        ]
        for ok, msg in checks:
            if not ok:
                raise InputError(msg)


@dataclass
class ImportResult:
    """What ``import_photos`` wrote."""

    output: Path
    n_images: int
    skipped: list[dict[str, str]]  # {"file", "reason"}
    sources: dict[str, int]  # mask source → number of images
    seconds: float


def find_photos(folder: str | Path) -> list[Path]:
    """The photos of ``folder`` (not recursive), sorted; other files are ignored."""
    folder = Path(folder)
    if not folder.exists():
        raise InputError(f"photo folder {folder} does not exist")
    if not folder.is_dir():
        raise InputError(f"{folder} is not a folder; give a folder of photos")
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith("."))
    if not files:
        raise InputError(f"no photos ({', '.join(IMAGE_SUFFIXES)}) found in {folder}")
    return files


def _csv_rows(path: str | Path, what: str, columns: list[str]) -> Iterator[tuple[str, str, dict[str, str]]]:
    """(where, file name, row) of each row of a photo CSV with the header ``columns`` (the first is ``file``);
    a missing file or header is a one-line error."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{what} file {path} does not exist")
    with path.open(newline="") as fh:
        reader = csv.DictReader(fh)
        if reader.fieldnames is None or any(c not in reader.fieldnames for c in columns):
            raise InputError(f"{path} must be a CSV with the header {','.join(columns)} (got {','.join(reader.fieldnames or [])})")
        for row in reader:
            yield f"{path} line {reader.line_num}", (row["file"] or "").strip(), row


def read_boxes(path: str | Path, photos: list[Path]) -> dict[str, Box]:
    """Boxes from a CSV with the header ``file,x0,y0,x1,y1`` (pixels, x1/y1 exclusive; ``file`` is a name in
    the photo folder). Every row is checked against its photo before any work; a bad row is a one-line error."""
    by_name = {p.name: p for p in photos}
    out: dict[str, Box] = {}
    need = ["file", "x0", "y0", "x1", "y1"]
    for where, name, row in _csv_rows(path, "boxes", need):
        if name not in by_name:
            hint = " (the photo exists but is not a PNG/JPEG/WebP/BMP)" if (by_name and (next(iter(by_name.values())).parent / name).exists()) else ""
            raise InputError(f"{where}: photo {name!r} is not in {next(iter(by_name.values())).parent}{hint}; fix the file name or remove the row")
        if name in out:
            raise InputError(f"{where}: a second box for {name}; give one row per photo")
        try:
            box = tuple(float(row[c]) for c in need[1:])
        except (TypeError, ValueError):
            raise InputError(f"{where}: x0,y0,x1,y1 must be numbers, got {','.join(str(row[c]) for c in need[1:])}") from None
        with Image.open(by_name[name]) as im:
            w, h = im.size
        # Boxes from other tools may overshoot the image by a fraction of a pixel: allow up to 1 px, clip.
        if box[0] < -1 or box[1] < -1 or box[2] > w + 1 or box[3] > h + 1:
            raise InputError(
                f"{where}: box {','.join(f'{v:g}' for v in box)} lies outside the {w}x{h} photo {name}; give pixel coordinates inside it"
            )
        clipped = (max(0.0, box[0]), max(0.0, box[1]), min(float(w), box[2]), min(float(h), box[3]))
        out[name] = check_box(clipped, w, h, where)
    return out


def read_object_rows(path: str | Path, photos: list[Path]) -> dict[str, str]:
    """Which photos show one object, from a CSV with the header ``file,object`` (``file``: a name in the photo
    folder; ``object``: any name, e.g. the turntable or video the photo comes from). Every photo needs a row;
    a bad row or a missing photo is a one-line error before any work."""
    names = {p.name for p in photos}
    out: dict[str, str] = {}
    for where, name, row in _csv_rows(path, "objects", ["file", "object"]):
        obj = (row["object"] or "").strip()
        if name not in names:
            raise InputError(f"{where}: photo {name!r} is not one of the photos to import; fix the file name or remove the row")
        if name in out:
            raise InputError(f"{where}: a second row for {name}; give one object per photo")
        if not obj:
            raise InputError(f"{where}: the object of {name} is empty")
        out[name] = obj
    missing = sorted(names - set(out))
    if missing:
        raise InputError(f"{path} gives no object for {len(missing)} photos (e.g. {missing[0]}); give every photo a row")
    return out


def square_crop(box: Box, fill: float) -> tuple[int, int, int]:
    """(left, top, side) of the square, centred on ``box``, in which the box's longer side is ``fill`` of the side."""
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    side = max(1, round(max(box[2] - box[0], box[3] - box[1]) / fill))
    return round(cx - side / 2), round(cy - side / 2), side


def crop_rgba(rgb: np.ndarray, mask: np.ndarray, crop: tuple[int, int, int], res: int) -> np.ndarray:
    """RGBA uint8 (res, res, 4): ``rgb`` (H, W, 3) composited on white under ``mask`` (H, W), cut to the square
    ``crop`` (which may reach outside the photo: transparent white there) and resized."""
    left, top, side = crop
    h, w = mask.shape
    canvas = np.zeros((side, side, 4), dtype=np.float32)
    canvas[..., :3] = 1.0
    sx0, sy0, sx1, sy1 = max(0, left), max(0, top), min(w, left + side), min(h, top + side)
    if sx1 > sx0 and sy1 > sy0:
        m = mask[sy0:sy1, sx0:sx1, None]
        canvas[sy0 - top : sy1 - top, sx0 - left : sx1 - left, :3] = rgb[sy0:sy1, sx0:sx1] * m + (1 - m)
        canvas[sy0 - top : sy1 - top, sx0 - left : sx1 - left, 3] = m[..., 0]
    u8 = (canvas * 255.0 + 0.5).astype(np.uint8)
    # Colour and alpha resized separately: PIL's RGBA resize would premultiply.
    size = (res, res)
    rgb_out = np.asarray(Image.fromarray(u8[..., :3], "RGB").resize(size, Image.Resampling.LANCZOS))
    a_out = np.asarray(Image.fromarray(u8[..., 3], "L").resize(size, Image.Resampling.LANCZOS))
    return np.concatenate([rgb_out, a_out[..., None]], axis=-1)


def cut_out_photo(path: Path, box: Box | None, cfg: ImportConfig) -> tuple[np.ndarray | None, dict[str, Any]]:
    """One photo → (RGBA uint8 (res, res, 4), record) or (None, {"file", "reason"}) when unusable."""
    try:
        rgba = rgba_to_array(load_image(path))
    except InputError as e:
        return None, {"file": path.name, "reason": str(e)}
    cut = find_object(rgba, box, cfg.foreground, name=path.name, seed=cfg.seed)
    share = float((cut.mask > 0.5).mean())
    found = mask_box(cut.mask)
    hint = "check its box in --boxes" if box is not None else "give its box in --boxes"
    if found is None or share < cfg.min_object:
        return None, {"file": path.name, "reason": f"no object found (the {cut.source} cut-out covers {100 * share:.1f}% of the photo); {hint}"}
    if share > cfg.max_object:
        return None, {
            "file": path.name,
            "reason": f"the {cut.source} cut-out covers {100 * share:.0f}% of the photo (background not separated); {hint}",
        }
    crop = square_crop(found, cfg.fill)
    image = crop_rgba(rgba[..., :3], cut.mask, crop, cfg.res)
    return image, {"file": f"images/{path.stem}.png", "source": path.name, "mask_source": cut.source, "box": list(found), "crop": list(crop)}


def _work(job: tuple[str, Box | None, ImportConfig, str]) -> dict[str, Any]:
    path, box, cfg, images_dir = job
    image, record = cut_out_photo(Path(path), box, cfg)
    if image is not None:
        Image.fromarray(image).save(Path(images_dir) / Path(record["file"]).name)
    return record


def contact_sheet(images: list[Path], res: int, cols: int = 8) -> Image.Image:
    """Grid of collection images over light grey (thumbnails at most 128 px), as ``data render`` writes it."""
    t = min(res, 128)
    sheet = Image.new("RGB", (cols * t, max(1, -(-len(images) // cols)) * t), (220, 220, 220))
    for k, path in enumerate(images):
        with Image.open(path) as im:
            thumb = im.convert("RGBA").resize((t, t), Image.Resampling.LANCZOS)
        sheet.paste(thumb, ((k % cols) * t, (k // cols) * t), thumb)
    return sheet


def import_photos(
    photos: str | Path,
    output: str | Path,
    config: ImportConfig | None = None,
    boxes: str | Path | None = None,
    overwrite: bool = False,
    progress: Callable[[int, int], None] | None = None,
    objects: str | Path | None = None,
) -> ImportResult:
    """Import the photos of ``photos`` into the collection folder ``output`` (module docstring); with ``objects``
    (a ``file,object`` CSV, :func:`read_object_rows`) also ``objects.json``, the imported images of each object."""
    cfg = config or ImportConfig()
    t0 = time.perf_counter()
    files = find_photos(photos)
    box_of = read_boxes(boxes, files) if boxes is not None else {}
    object_of = read_object_rows(objects, files) if objects is not None else None
    skipped: list[dict[str, str]] = []
    by_stem: dict[str, Path] = {}
    todo = []
    for p in files:
        if p.stem in by_stem:
            skipped.append({"file": p.name, "reason": f"same stem as {by_stem[p.stem].name} (images are named by stem)"})
            continue
        by_stem[p.stem] = p
        todo.append(p)
    with atomic_dir(output, overwrite=overwrite) as tmp:
        (tmp / "images").mkdir()
        jobs = [(str(p), box_of.get(p.name), cfg, str(tmp / "images")) for p in todo]
        records: list[dict[str, Any]] = []
        pool = multiprocessing.get_context("spawn").Pool(min(cfg.workers, len(jobs))) if cfg.workers > 1 and len(jobs) > 1 else None
        try:
            results = map(_work, jobs) if pool is None else pool.imap(_work, jobs, chunksize=4)
            for n, rec in enumerate(results, 1):
                (records if "reason" not in rec else skipped).append(rec)
                if progress is not None:
                    progress(n, len(jobs))
        finally:
            if pool is not None:
                pool.terminate()
                pool.join()
        if not records:
            first = skipped[0]["reason"] if skipped else "no photos"
            raise InputError(f"no photo of {photos} could be imported (e.g. {skipped[0]['file'] if skipped else ''}: {first})")
        skipped.sort(key=lambda r: r["file"])
        sources: dict[str, int] = {}
        for r in records:
            sources[r["mask_source"]] = sources.get(r["mask_source"], 0) + 1
        atomic_write_json(tmp / "import.json", {"images": records, "skipped": skipped, "mask_sources": sources})
        if object_of is not None:
            groups: dict[str, list[str]] = {}
            for r in sorted(records, key=lambda r: r["file"]):
                groups.setdefault(object_of[Path(r["source"]).name], []).append(r["file"])
            write_objects(tmp, list(groups.values()))
        n_sheet = min(cfg.contact_sheet, len(records))
        pick = np.linspace(0, len(records) - 1, n_sheet).round().astype(int) if n_sheet else []
        contact_sheet([tmp / records[i]["file"] for i in pick], cfg.res).save(tmp / "contact_sheet.png")
        save_config(
            cfg,
            tmp / "config.json",
            photos_source=str(Path(photos).resolve()),
            boxes=None if boxes is None else str(Path(boxes).resolve()),
            objects=None if objects is None else str(Path(objects).resolve()),
            n_images=len(records),
            n_skipped=len(skipped),
        )
    return ImportResult(Path(output), len(records), skipped, sources, time.perf_counter() - t0)

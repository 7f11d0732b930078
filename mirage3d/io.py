"""Files that cross stage boundaries: atomic writes, validated images and ``transforms.json``.

Every artifact mirage3d writes goes through a temporary file (or folder) that is renamed into place only
when complete, so an interrupted command never leaves a half-written file that looks whole.
The camera conventions behind ``transforms.json`` are written down in ``docs/conventions.md``.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from mirage3d.cameras import Camera, Intrinsics
from mirage3d.errors import InputError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
MIN_IMAGE_SIDE = 16
MAX_IMAGE_SIDE = 8192
MAX_IMAGE_PIXELS = 64_000_000
_UMASK = os.umask(0)
os.umask(_UMASK)


# --------------------------------------------------------------------------------------------------
# Atomic writes
# --------------------------------------------------------------------------------------------------
@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str], suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success rename it onto ``path``, else delete it.

    The temporary name keeps the final suffix (``.x.tmp1234.png``) so libraries that pick a format from
    the extension (PIL, trimesh) still do the right thing.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = path.suffix if suffix is None else suffix
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=f".tmp{suffix}", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        if tmp_path.exists():
            os.chmod(tmp_path, 0o666 & ~_UMASK)  # mkstemp creates 0600; give the file the usual permissions
        os.replace(tmp_path, path)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike[str], data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2) + "\n")


def atomic_save_image(path: str | os.PathLike[str], image: Image.Image | np.ndarray, **kwargs: Any) -> None:
    """Save a PIL image or uint8/float array (H, W[, C]) atomically; format from the suffix."""
    if isinstance(image, np.ndarray):
        image = array_to_pil(image)
    with atomic_path(path) as tmp:
        image.save(tmp, **kwargs)


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike[str], overwrite: bool = False) -> Iterator[Path]:
    """Build an output folder in a temporary sibling and move it to ``path`` only when complete.

    If ``path`` exists and is not empty, raises :class:`InputError` unless ``overwrite``; with
    ``overwrite`` the old folder is replaced only after the new one is complete.
    """
    path = Path(path)
    check_output_dir(path, overwrite)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield tmp
        if path.exists():
            old = path.with_name(f".{path.name}.old-{os.getpid()}")
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def check_output_dir(path: Path, overwrite: bool) -> None:
    """Refuse to clobber a non-empty output folder (or a file) unless ``overwrite``."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise InputError(f"output {path} exists and is a file; choose a folder path")
    if path.is_dir() and any(path.iterdir()) and not overwrite:
        raise InputError(f"output folder {path} already exists and is not empty; pass --overwrite or choose another -o")
    check_writable_parent(path)


def check_writable_parent(path: str | os.PathLike[str]) -> None:
    """Raise :class:`InputError` if ``path`` could not be created (its nearest existing parent is read-only)."""
    parent = Path(path).parent
    probe = parent
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not os.access(probe, os.W_OK):
        raise InputError(f"cannot write to {parent}: permission denied; choose another -o")


# --------------------------------------------------------------------------------------------------
# Images
# --------------------------------------------------------------------------------------------------
def array_to_pil(image: np.ndarray) -> Image.Image:
    """uint8 or float in [0, 1] array (H, W), (H, W, 3) or (H, W, 4) → PIL image."""
    if image.dtype != np.uint8:
        image = (np.clip(image, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    return Image.fromarray(image)


def load_image(path: str | os.PathLike[str], *, min_side: int = MIN_IMAGE_SIDE, max_side: int = MAX_IMAGE_SIDE) -> Image.Image:
    """Open an image as RGBA, rejecting missing, corrupt, empty or absurdly sized files with one line."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"image {path} does not exist")
    if path.is_dir():
        raise InputError(f"{path} is a folder, expected an image file")
    if path.stat().st_size == 0:
        raise InputError(f"image {path} is an empty file")
    try:
        with Image.open(path) as im:
            w, h = im.size
            if min(w, h) < min_side:
                raise InputError(f"image {path} is {w}x{h}; it must be at least {min_side}x{min_side} pixels")
            if max(w, h) > max_side or w * h > MAX_IMAGE_PIXELS:
                raise InputError(f"image {path} is {w}x{h}; the largest accepted side is {max_side} pixels - resize it first")
            im.load()
            rgba = im.convert("RGBA")
    except InputError:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise InputError(f"cannot read {path} as an image ({type(e).__name__}); is it a valid PNG/JPEG?") from None
    return rgba


def rgba_to_array(image: Image.Image) -> np.ndarray:
    """PIL RGBA → float32 array (H, W, 4) in [0, 1]."""
    return np.asarray(image.convert("RGBA"), dtype=np.float32) / 255.0


def composite_on_white(rgba: np.ndarray) -> np.ndarray:
    """(H, W, 4) float RGBA → (H, W, 3) RGB over a white background."""
    a = rgba[..., 3:4]
    return rgba[..., :3] * a + (1.0 - a)


def list_images(folder: str | os.PathLike[str]) -> list[Path]:
    """Sorted image files of a collection: ``folder/images/`` if it exists, else ``folder`` itself."""
    folder = Path(folder)
    if not folder.exists():
        raise InputError(f"folder {folder} does not exist")
    if not folder.is_dir():
        raise InputError(f"{folder} is not a folder")
    root = folder / "images" if (folder / "images").is_dir() else folder
    files = sorted(p for p in root.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith("."))
    if not files:
        raise InputError(f"no images ({', '.join(IMAGE_SUFFIXES)}) found in {root}")
    return files


# --------------------------------------------------------------------------------------------------
# transforms.json (nerfstudio format)
# --------------------------------------------------------------------------------------------------
@dataclass
class Frame:
    """One view: image path relative to the folder, camera-to-world (4, 4), optional per-frame extras."""

    file_path: str
    transform_matrix: np.ndarray  # (4, 4) float64, OpenGL camera axes, world +Z up
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class Transforms:
    """A nerfstudio ``transforms.json``: shared pinhole intrinsics in pixels and a list of frames."""

    w: int
    h: int
    fl_x: float
    fl_y: float
    cx: float
    cy: float
    frames: list[Frame]
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_intrinsics(cls, intrinsics: Intrinsics, frames: list[Frame], extra: dict[str, Any] | None = None) -> Transforms:
        i = intrinsics
        return cls(i.w, i.h, i.fl_x, i.fl_y, i.cx, i.cy, frames, dict(extra or {}))

    @property
    def intrinsics(self) -> Intrinsics:
        return Intrinsics(self.fl_x, self.fl_y, self.cx, self.cy, self.w, self.h)

    @property
    def K(self) -> np.ndarray:
        """(3, 3) intrinsics matrix in pixels."""
        return self.intrinsics.K

    def c2w(self) -> np.ndarray:
        """(N, 4, 4) stacked camera-to-world matrices."""
        return np.stack([f.transform_matrix for f in self.frames])

    def cameras(self) -> list[Camera]:
        """One :class:`mirage3d.cameras.Camera` per frame."""
        return [Camera(np.asarray(f.transform_matrix, dtype=np.float64), self.intrinsics) for f in self.frames]


_INTRINSIC_KEYS = ("w", "h", "fl_x", "fl_y", "cx", "cy")


def _check_rigid(m: np.ndarray, where: str, path: Path) -> None:
    if m.shape != (4, 4):
        raise InputError(f"{path}: {where} transform_matrix must be 4x4, got shape {m.shape}")
    if not np.all(np.isfinite(m)):
        raise InputError(f"{path}: {where} transform_matrix has NaN or infinite entries")
    if not np.allclose(m[3], [0, 0, 0, 1], atol=1e-5):
        raise InputError(f"{path}: {where} transform_matrix last row must be [0, 0, 0, 1]")
    r = m[:3, :3]
    if not np.allclose(r.T @ r, np.eye(3), atol=1e-3) or np.linalg.det(r) < 0:
        raise InputError(f"{path}: {where} transform_matrix rotation is not orthonormal (scaled or mirrored camera?)")


def read_transforms(path: str | os.PathLike[str], check_images: bool = True) -> Transforms:
    """Read and validate a nerfstudio ``transforms.json`` (or the folder holding one)."""
    path = Path(path)
    if path.is_dir():
        path = path / "transforms.json"
    if not path.exists():
        raise InputError(f"{path} does not exist; a views folder needs a transforms.json (nerfstudio format)")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise InputError(f"{path} is not valid JSON ({e.msg} at line {e.lineno})") from None
    except UnicodeDecodeError:
        raise InputError(f"{path} is not a text file") from None
    if not isinstance(data, dict):
        raise InputError(f"{path} must hold a JSON object with 'frames' and intrinsics")
    frames_raw = data.get("frames")
    if not isinstance(frames_raw, list) or not frames_raw:
        raise InputError(f"{path} has no 'frames' list (or it is empty)")
    shared: dict[str, float] = {}
    for k in _INTRINSIC_KEYS:
        if k in data:
            shared[k] = data[k]
    frames: list[Frame] = []
    per_frame_intr: list[dict[str, float]] = []
    for i, fr in enumerate(frames_raw):
        if not isinstance(fr, dict):
            raise InputError(f"{path}: frame {i} is not an object")
        if "file_path" not in fr or not isinstance(fr["file_path"], str):
            raise InputError(f"{path}: frame {i} has no 'file_path'")
        if "transform_matrix" not in fr:
            raise InputError(f"{path}: frame {i} has no 'transform_matrix'")
        try:
            m = np.asarray(fr["transform_matrix"], dtype=np.float64)
        except (TypeError, ValueError):
            raise InputError(f"{path}: frame {i} transform_matrix is not a numeric 4x4 array") from None
        _check_rigid(m, f"frame {i}", path)
        intr = {k: fr[k] for k in _INTRINSIC_KEYS if k in fr}
        per_frame_intr.append(intr)
        extra = {k: v for k, v in fr.items() if k not in ("file_path", "transform_matrix")}
        frames.append(Frame(fr["file_path"], m, extra))
        if check_images and not (path.parent / fr["file_path"]).exists():
            raise InputError(f"{path}: frame {i} image {fr['file_path']} does not exist")
    merged = dict(shared)
    for k in _INTRINSIC_KEYS:
        if k not in merged:
            vals = {intr.get(k) for intr in per_frame_intr}
            if len(vals) == 1 and None not in vals:
                merged[k] = vals.pop()
    missing = [k for k in _INTRINSIC_KEYS if k not in merged]
    if missing:
        raise InputError(f"{path} is missing intrinsics {missing}; give fl_x, fl_y, cx, cy, w, h in pixels")
    try:
        w, h = int(merged["w"]), int(merged["h"])
        fl_x, fl_y, cx, cy = (float(merged[k]) for k in ("fl_x", "fl_y", "cx", "cy"))
    except (TypeError, ValueError):
        raise InputError(f"{path}: intrinsics must be numbers") from None
    if w <= 0 or h <= 0 or fl_x <= 0 or fl_y <= 0:
        raise InputError(f"{path}: w, h, fl_x and fl_y must be positive (got w={w}, h={h}, fl_x={fl_x}, fl_y={fl_y})")
    extra = {k: v for k, v in data.items() if k not in ("frames", *_INTRINSIC_KEYS)}
    return Transforms(w, h, fl_x, fl_y, cx, cy, frames, extra)


def write_transforms(path: str | os.PathLike[str], t: Transforms) -> None:
    """Write a nerfstudio ``transforms.json`` atomically (pinhole ``OPENCV`` model, no distortion)."""
    data: dict[str, Any] = {
        "camera_model": "OPENCV",
        "w": int(t.w),
        "h": int(t.h),
        "fl_x": float(t.fl_x),
        "fl_y": float(t.fl_y),
        "cx": float(t.cx),
        "cy": float(t.cy),
        "k1": 0.0,
        "k2": 0.0,
        "p1": 0.0,
        "p2": 0.0,
    }
    data.update({k: v for k, v in t.extra.items() if k not in data})
    data["frames"] = [
        {"file_path": f.file_path, "transform_matrix": np.asarray(f.transform_matrix, dtype=float).tolist(), **f.extra}
        for f in t.frames
    ]
    atomic_write_json(path, data)

"""Files that cross stage boundaries: atomic writes, validated images and ``transforms.json``.

Every artifact mirage3d writes goes through a temporary file (or folder) that is renamed into place only
when complete, so an interrupted command never leaves a half-written file that looks whole.
The camera conventions behind ``transforms.json`` are written down in ``docs/conventions.md``.
"""

from __future__ import annotations

import contextlib
import hashlib
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
from mirage3d.errors import InputError, raise_if_terminated

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
    suffix = path.suffix if suffix is None else suffix
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=f".tmp{suffix}", dir=path.parent)
    except OSError as e:  # name the user's path, not the temporary one
        raise InputError(f"cannot write {path} ({e.strerror or type(e).__name__}); choose another output path") from None
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        raise_if_terminated()
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
    ``overwrite`` the old folder is replaced only after the new one is complete. Holds :func:`output_lock`
    on ``path`` throughout, so a second writer of the same folder is refused instead of racing.
    """
    path = Path(path)
    with claim_output(path, overwrite, kind="dir"):
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
        except OSError as e:  # name the user's path, not the temporary one
            raise InputError(f"cannot write {path} ({e.strerror or type(e).__name__}); choose another output path") from None
        try:
            os.chmod(tmp, 0o777 & ~_UMASK)  # mkdtemp creates 0700; the finished folder gets the usual permissions
            yield tmp
            raise_if_terminated()
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


def check_output_path(path: str | os.PathLike[str], overwrite: bool = False, kind: str = "file", option: str = "-o") -> Path:
    """Refuse, before any work is done, an output that cannot or must not be written (one-line errors).

    Every writer calls this first: a path below a file (``-o photo.png/x``), a read-only parent, a folder
    where a file is meant (``kind="file"``) or a file where a folder is meant (``kind="dir"``, or
    ``"resume"`` for a folder a run may continue in), and an existing output without ``overwrite`` (a file
    that exists; a folder that is not empty). ``option`` is the flag named in the hint.
    """
    path = Path(path)
    _check_parents(path, option)
    if kind == "resume":
        if path.exists() and not path.is_dir():
            raise InputError(f"output {path} exists and is a file; choose a folder path for {option}")
    elif kind == "dir":
        if path.exists() and not path.is_dir():
            raise InputError(f"output {path} exists and is a file; choose a folder path for {option}")
        if path.is_dir() and any(path.iterdir()) and not overwrite:
            raise InputError(f"output folder {path} already exists and is not empty; pass --overwrite or choose another {option}")
    elif kind == "file":
        if path.is_dir():
            raise InputError(f"output {path} is a folder; give a file path for {option}")
        if path.exists() and not overwrite:
            raise InputError(f"{path} already exists; pass --overwrite or choose another {option}")
    else:
        raise ValueError(f"kind must be 'file', 'dir' or 'resume', not {kind!r}")
    return path


@contextlib.contextmanager
def claim_output(path: str | os.PathLike[str], overwrite: bool = False, kind: str = "file", option: str = "-o") -> Iterator[Path]:
    """:func:`check_output_path`, then hold :func:`output_lock` on ``path`` while the caller writes it (checked
    again once locked: another run may have finished meanwhile). What every command wraps its work in."""
    path = check_output_path(path, overwrite, kind, option)
    with output_lock(path):
        yield check_output_path(path, overwrite, kind, option)


def check_output_dir(path: Path, overwrite: bool) -> None:
    """Refuse to clobber a non-empty output folder (or a file) unless ``overwrite`` (:func:`check_output_path`)."""
    check_output_path(path, overwrite, kind="dir")


def check_writable_parent(path: str | os.PathLike[str]) -> None:
    """Raise :class:`InputError` if ``path`` could not be created (a file or a read-only folder above it)."""
    _check_parents(Path(path), "-o")


def _check_parents(path: Path, option: str) -> None:
    for parent in path.parents:  # the nearest existing ancestor decides whether the path can be created
        if parent.exists():
            if not parent.is_dir():
                raise InputError(f"cannot create {path}: {parent} is a file, not a folder; choose another {option}")
            if not os.access(parent, os.W_OK | os.X_OK):
                raise InputError(f"cannot write to {parent}: permission denied; choose another {option}")
            return


# --------------------------------------------------------------------------------------------------
# One writer per output
# --------------------------------------------------------------------------------------------------
_HELD_LOCKS: dict[str, list[int]] = {}  # resolved output path → [lock file descriptor, depth] (re-entrant per process)


def _lock_file(key: str) -> Path:
    # Lock files live in a per-user folder of the system temp dir, not beside the output: nothing is created
    # next to an output before it is written, and a lock never needs the output's parent to exist.
    folder = Path(tempfile.gettempdir()) / f"mirage3d-locks-{os.getuid()}"
    folder.mkdir(mode=0o700, exist_ok=True)
    return folder / (hashlib.sha1(key.encode()).hexdigest()[:24] + ".lock")


@contextlib.contextmanager
def output_lock(path: str | os.PathLike[str]) -> Iterator[None]:
    """Hold an exclusive lock on the output ``path`` (an advisory ``flock``, released when the process ends,
    even by SIGKILL); a second run that asks for the same output meanwhile gets :class:`InputError`.

    Re-entrant within one process. Only rank 0 of an ``accelerate launch`` job locks: the other ranks write
    the same output under its lock.
    """
    try:
        import fcntl
    except ImportError:  # (not POSIX: no locking)
        yield
        return
    if os.environ.get("RANK", "0") != "0":
        yield
        return
    key = str(Path(path).resolve())
    if key in _HELD_LOCKS:
        _HELD_LOCKS[key][1] += 1
        try:
            yield
        finally:
            _HELD_LOCKS[key][1] -= 1
        return
    lock = _lock_file(key)
    while True:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 64).decode(errors="replace").strip()
            os.close(fd)
            who = f" (process {holder})" if holder.isdigit() else ""
            raise InputError(f"another run{who} holds the output {path}; wait for it to finish or choose another output path") from None
        try:  # the holder before us may have removed the file between our open and our lock: lock the new one
            same = os.stat(lock).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    os.ftruncate(fd, 0)
    os.write(fd, str(os.getpid()).encode())
    _HELD_LOCKS[key] = [fd, 1]
    try:
        yield
    finally:
        del _HELD_LOCKS[key]
        with contextlib.suppress(OSError):
            os.unlink(lock)
        os.close(fd)


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
    rgba = _read_image(Path(path), min_side, max_side, decode=True)
    assert rgba is not None
    return rgba


def check_image_headers(files: list[Path]) -> None:
    """:func:`load_image`'s checks on every file's header (no decoding): a command that reads a whole collection
    refuses a non-image, an empty or a tiny file before it creates any output."""
    for f in files:
        _read_image(Path(f), MIN_IMAGE_SIDE, MAX_IMAGE_SIDE, decode=False)


def _read_image(path: Path, min_side: int, max_side: int, decode: bool) -> Image.Image | None:
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
            if not decode:
                return None
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
        image = _inside(path.parent, fr["file_path"], f"{path}: frame {i} image")
        if check_images and not image.exists():
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


def _inside(root: Path, relative: str, what: str) -> Path:
    """``root / relative``, refused unless it stays inside ``root`` once resolved (``..``, absolute paths and
    symbolic links pointing out are all refused): a views folder never makes a command read other files."""
    if "\x00" in relative:
        raise InputError(f"{what} path {relative!r} contains a NUL byte")
    target = root / relative
    base = root.resolve()
    if Path(relative).is_absolute() or not target.resolve().is_relative_to(base):
        raise InputError(f"{what} {relative!r} lies outside {root}; image paths must stay inside the views folder")
    return target


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
        {"file_path": f.file_path, "transform_matrix": np.asarray(f.transform_matrix, dtype=float).tolist(), **f.extra} for f in t.frames
    ]
    atomic_write_json(path, data)

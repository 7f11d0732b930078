"""``objects.json``: which images of a collection show the same object (views of one drawn object in a
render, one turntable of photos). No pose or 3D information: ``train --reference`` pairs views by it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from mirage3d.errors import InputError
from mirage3d.io import atomic_write_text

OBJECTS_FILE = "objects.json"


def write_objects(folder: Path, groups: list[list[str]]) -> None:
    """Write ``folder/objects.json``: ``{"objects": [[file, ...], ...]}``, the images of each object (paths
    relative to the collection folder)."""
    atomic_write_text(Path(folder) / OBJECTS_FILE, json.dumps({"objects": groups}) + "\n")


def read_objects(folder: Path, names: list[str]) -> np.ndarray:
    """Object id per image of ``names`` (relative paths, the collection's order) from ``folder/objects.json``.

    Every image must be in exactly one object of at least two images; otherwise :class:`InputError` naming the
    problem (a missing file says how to make one: ``data render --views-per-object`` or ``data import --objects``).
    """
    path = Path(folder) / OBJECTS_FILE
    if not path.exists():
        raise InputError(
            f"{folder} has no {OBJECTS_FILE} (which images show the same object); make it with `data render --views-per-object 8` "
            "or `data import --objects objects.csv`"
        )
    try:
        groups = json.loads(path.read_text())["objects"]
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError):
        groups = None
    if not isinstance(groups, list) or not all(isinstance(g, list) for g in groups):
        raise InputError(f"{path} is not an objects file ({{'objects': [[file, ...], ...]}}); make the collection again")
    where = {n: k for k, n in enumerate(names)}
    ids = np.full(len(names), -1, dtype=np.int64)
    for g, files in enumerate(groups):
        if len(files) < 2:
            raise InputError(f"{path}: object {g} has {len(files)} image; each object needs at least 2 views")
        for f in files:
            k = where.get(str(f))
            if k is None:
                raise InputError(f"{path}: object {g} lists {f}, which is not an image of the collection")
            if ids[k] >= 0:
                raise InputError(f"{path}: {f} is listed in two objects ({ids[k]} and {g})")
            ids[k] = g
    if (ids < 0).any():
        raise InputError(f"{path}: {int((ids < 0).sum())} images (e.g. {names[int(np.argmax(ids < 0))]}) are in no object")
    return ids

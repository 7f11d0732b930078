"""Saving and loading dataclass configs next to the artifacts they produced."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, TypeVar

from mirage3d.errors import InputError
from mirage3d.io import atomic_write_json

T = TypeVar("T")


def config_to_dict(cfg: Any) -> dict[str, Any]:
    """A JSON-ready dict of a (possibly nested) config dataclass; paths become strings."""

    def convert(v: Any) -> Any:
        if dataclasses.is_dataclass(v) and not isinstance(v, type):
            return {f.name: convert(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, Path):
            return str(v)
        if isinstance(v, (list, tuple)):
            return [convert(x) for x in v]
        if isinstance(v, dict):
            return {str(k): convert(x) for k, x in v.items()}
        return v

    return convert(cfg)


def save_config(cfg: Any, path: Path, **extra: Any) -> None:
    """Write ``cfg`` (a dataclass) as JSON atomically, with optional extra top-level keys."""
    data = config_to_dict(cfg)
    data.update(extra)
    atomic_write_json(path, data)


def config_from_dict(cls: type[T], data: dict[str, Any]) -> T:
    """Rebuild ``cls`` from a dict, ignoring unknown keys and converting lists back to tuples."""
    if not isinstance(data, dict):
        raise InputError(f"config for {cls.__name__} must be a JSON object, got {type(data).__name__}")
    kwargs = {}
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        if f.name not in data:
            continue
        v = data[f.name]
        default = f.default if f.default is not dataclasses.MISSING else None
        if isinstance(default, tuple) and isinstance(v, list):
            v = tuple(v)
        kwargs[f.name] = v
    return cls(**kwargs)


def load_config(cls: type[T], path: Path) -> T:
    """Load a config JSON written by :func:`save_config`."""
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise InputError(f"config file {path} does not exist") from None
    except json.JSONDecodeError as e:
        raise InputError(f"config file {path} is not valid JSON ({e.msg} at line {e.lineno})") from None
    return config_from_dict(cls, data)

"""Saving and loading dataclass configs next to the artifacts they produced."""

from __future__ import annotations

import dataclasses
import functools
import json
import typing
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


def config_from_dict(cls: type[T], data: dict[str, Any], base: T | None = None) -> T:
    """Rebuild ``cls`` from a dict, ignoring unknown keys and converting lists back to tuples. A nested config
    is rebuilt from its dict on top of the field's default (``base``: start from this instance instead)."""
    if not isinstance(data, dict):
        raise InputError(f"config for {cls.__name__} must be a JSON object, got {type(data).__name__}")
    kwargs = {}
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        if f.name not in data:
            continue
        v = data[f.name]
        if base is not None:
            default = getattr(base, f.name)
        elif f.default is not dataclasses.MISSING:
            default = f.default
        else:
            default = f.default_factory() if f.default_factory is not dataclasses.MISSING else None
        if dataclasses.is_dataclass(default) and isinstance(v, dict):
            v = config_from_dict(type(default), v, base=default)
        elif isinstance(default, tuple) and isinstance(v, list):
            v = tuple(v)
        kwargs[f.name] = v
    return dataclasses.replace(base, **kwargs) if base is not None else cls(**kwargs)


def config_fields(cls: type) -> dict[str, Any]:
    """The leaf fields of a config dataclass and of the configs nested in it, by dotted path
    (``"views.consistency.rounds"``), with their resolved type hints."""
    hints = typing.get_type_hints(cls)
    out: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        kind = hints[f.name]
        if dataclasses.is_dataclass(kind):
            out.update({f"{f.name}.{path}": sub for path, sub in config_fields(kind).items()})
        else:
            out[f.name] = kind
    return out


def get_field(cfg: Any, path: str) -> Any:
    """The value at a dotted path of :func:`config_fields`."""
    return functools.reduce(getattr, path.split("."), cfg)


def replace_fields(cfg: T, changes: dict[str, Any]) -> T:
    """A copy of ``cfg`` with the fields at the dotted paths of ``changes`` set (nested configs are copied,
    never shared with ``cfg``)."""
    top: dict[str, Any] = {}
    nested: dict[str, dict[str, Any]] = {}
    for path, value in changes.items():
        head, _, rest = path.partition(".")
        if rest:
            nested.setdefault(head, {})[rest] = value
        else:
            top[head] = value
    for head, sub in nested.items():
        top[head] = replace_fields(getattr(cfg, head), sub)
    return dataclasses.replace(cfg, **top)  # type: ignore[type-var]


def load_config(cls: type[T], path: Path) -> T:
    """Load a config JSON written by :func:`save_config`."""
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise InputError(f"config file {path} does not exist") from None
    except json.JSONDecodeError as e:
        raise InputError(f"config file {path} is not valid JSON ({e.msg} at line {e.lineno})") from None
    return config_from_dict(cls, data)

"""mirage3d recon: views with cameras → signed-distance field (+ refined cameras) → textured mesh (GLB / OBJ / PLY).

Public API: :func:`reconstruct` (the whole stage) and its pieces :func:`fit_field`, :func:`extract_mesh`,
:func:`bake_texture`, :func:`export`; metrics in :mod:`mirage3d.recon.metrics`. See ``docs/recon.md``.

Only :class:`ReconConfig` is imported with the package; the rest (torch, the mesh libraries) on first use
(PEP 562), so that ``make-asset``'s checks and the ``serve`` client can build a ReconConfig without torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from mirage3d.recon.config import ReconConfig

if TYPE_CHECKING:
    from mirage3d.recon.fit import FitResult, fit_field
    from mirage3d.recon.mesh import TexturedMesh, export, extract_mesh
    from mirage3d.recon.pipeline import ReconResult, reconstruct
    from mirage3d.recon.texture import bake_texture
    from mirage3d.recon.views import ViewSet, load_views

_LAZY = {
    "FitResult": "fit",
    "fit_field": "fit",
    "TexturedMesh": "mesh",
    "export": "mesh",
    "extract_mesh": "mesh",
    "ReconResult": "pipeline",
    "reconstruct": "pipeline",
    "bake_texture": "texture",
    "ViewSet": "views",
    "load_views": "views",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "FitResult",
    "ReconConfig",
    "ReconResult",
    "TexturedMesh",
    "ViewSet",
    "bake_texture",
    "export",
    "extract_mesh",
    "fit_field",
    "load_views",
    "reconstruct",
]

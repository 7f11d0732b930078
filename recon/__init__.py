"""mirage3d recon: views with cameras → signed-distance field (+ refined cameras) → textured mesh (GLB / OBJ / PLY).

Public API: :func:`reconstruct` (the whole stage) and its pieces :func:`fit_field`, :func:`extract_mesh`,
:func:`bake_texture`, :func:`export`; metrics in :mod:`mirage3d.recon.metrics`. See ``docs/recon.md``.
"""

from mirage3d.recon.config import ReconConfig
from mirage3d.recon.fit import FitResult, fit_field
from mirage3d.recon.mesh import TexturedMesh, export, extract_mesh
from mirage3d.recon.pipeline import ReconResult, reconstruct
from mirage3d.recon.texture import bake_texture
from mirage3d.recon.views import ViewSet, load_views

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

"""mirage3d: one photo of an object to a 3D asset, with no 3D or pose labels.

Stages (one subpackage each, named by what it produces):
- ``mirage3d.data``: rendered single-category image collections with ground truth.
- ``mirage3d.poses``: pose labels and cameras discovered from unlabeled images.
- ``mirage3d.diffusion``: pose-conditioned diffusion model and consistent novel views.
- ``mirage3d.recon``: radiance field, mesh and textured GLB from views with cameras.
"""

__version__ = "0.1.0"

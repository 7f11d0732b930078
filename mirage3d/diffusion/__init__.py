"""mirage3d diffusion."""

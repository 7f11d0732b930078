"""mirage3d poses."""

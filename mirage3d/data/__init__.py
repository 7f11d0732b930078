"""mirage3d data."""

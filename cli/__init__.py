"""mirage3d cli."""

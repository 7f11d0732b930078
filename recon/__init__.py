"""mirage3d recon."""

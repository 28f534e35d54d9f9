"""Helpers that know nothing of diffusion: latent caches, image files, output folders, bilinear resampling."""

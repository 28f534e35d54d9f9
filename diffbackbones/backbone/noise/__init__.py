"""Noise stages: how a clean latent becomes the denoiser input (sampled noise, DDIM inversion, none)."""

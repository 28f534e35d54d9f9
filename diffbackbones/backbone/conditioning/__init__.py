"""Conditioning stages: the denoiser's context (prompt embeddings, text encoders, learned and VPD contexts)."""

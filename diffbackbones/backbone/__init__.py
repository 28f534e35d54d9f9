"""The backbone: `DiffusionBackbone` and the stages its forward chains, input to feature pyramid.

The folders follow the data flow: `encoding` (image and VAE latent), `noise/` (sampled, DDIM inversion,
clean), `conditioning/` (prompt, text encoders, learned and VPD contexts), `denoiser/` (the forward with
capture, pruning, LoRA, ControlNet), `fusion`. `stages` composes them; `presets` says which activations.
Layer: imports `models`, `data` and `utils` only.
"""

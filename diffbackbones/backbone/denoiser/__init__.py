"""The denoiser stage and what changes its forward: capture hooks, pruning, LoRA, ControlNet."""

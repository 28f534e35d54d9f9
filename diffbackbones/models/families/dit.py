"""DiTTransformer2DModel: class-conditioned DiT, PixArt's block walker without cross-attention."""
from __future__ import annotations

import torch

from .pixart import PixArtFamily

__all__ = ['DiTFamily']


class DiTFamily(PixArtFamily):
    """DiTTransformer2DModel: class-conditioned, no cross-attention (its label is the 'prompt')."""

    name, class_name = 'dit', 'DiTTransformer2DModel'

    def inputs(self, denoiser, noisy, timesteps, conditioning, image_hw):
        labels = torch.full((noisy.shape[0],), conditioning.class_label, device=noisy.device, dtype=torch.long)
        return dict(hidden_states=noisy, timestep=timesteps, class_labels=labels)

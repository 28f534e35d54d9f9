"""PixArtTransformer2DModel (PixArt-alpha, PixArt-Sigma): BasicTransformerBlocks on patch tokens, T5 text."""
from __future__ import annotations

import torch

from ..points import _Points
from .base import DenoiserFamily, ceil_div, text_context

__all__ = ['PixArtFamily']


class PixArtFamily(DenoiserFamily):
    """PixArtTransformer2DModel (PixArt-alpha / Sigma): BasicTransformerBlocks on patch tokens, T5 text."""

    name, class_name = 'pixart', 'PixArtTransformer2DModel'
    blocks = 'transformer_blocks'
    maps = 'standard'  # diffusers' reference attention math holds

    def walk(self, denoiser, latent_hw, n_text_tokens):
        p = self.latent_multiple(denoiser)
        grid = ceil_div(latent_hw, p)
        pts = _Points(n_text_tokens)
        for k, block in enumerate(getattr(denoiser, self.blocks)):
            pts.transformer_block(f'vit-block{k}', f'{self.blocks}.{k}', block, grid, grid='', grid_patch=p,
                                  attn_out=True, maps=self.maps)
        return pts.points

    def inputs(self, denoiser, noisy, timesteps, conditioning, image_hw):
        b, dtype = noisy.shape[0], noisy.dtype
        added = {'resolution': None, 'aspect_ratio': None}
        if denoiser.use_additional_conditions:  # the 1024-MS checkpoints condition on size and aspect
            h, w = image_hw
            added = {'resolution': torch.tensor([[h, w]], device=noisy.device, dtype=dtype).expand(b, -1),
                     'aspect_ratio': torch.tensor([[h / w]], device=noisy.device, dtype=dtype).expand(b, -1)}
        kwargs = dict(hidden_states=noisy, encoder_hidden_states=text_context(conditioning, b, dtype),
                      timestep=timesteps, added_cond_kwargs=added)
        if conditioning.attention_mask is not None:
            kwargs['encoder_attention_mask'] = conditioning.attention_mask.expand(b, -1)
        return kwargs

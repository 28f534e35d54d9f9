"""Lumina2Transformer2DModel (Lumina-Image 2.0): refiner blocks per stream, then one joint [text; image] sequence."""
from __future__ import annotations

import torch

from ..points import _Points
from .base import DenoiserFamily, batch_rows, ceil_div, text_context

__all__ = ['Lumina2Family']


class Lumina2Family(DenoiserFamily):
    """Lumina2Transformer2DModel: context refiners (text only), noise refiners (image only), joint layers.

    The context refiners see no image token and offer nothing; the blocks are numbered over the noise refiners,
    then the joint layers. A joint layer's sequence is [the caption's unpadded tokens; the image tokens; padding up
    to the longest row]: with one caption length for the whole batch (``inputs`` insists) the image is its last N
    tokens. No attention maps: the maps' explicit path knows neither grouped-query attention nor Lumina's complex
    RoPE, and a joint map would need the caption length per row.
    """

    name, class_name = 'lumina2', 'Lumina2Transformer2DModel'

    def walk(self, denoiser, latent_hw, n_text_tokens):
        p = self.latent_multiple(denoiser)
        grid = ceil_div(latent_hw, p)
        pts = _Points(n_text_tokens)
        blocks = [(f'noise_refiner.{j}', b, 'all') for j, b in enumerate(denoiser.noise_refiner)]
        blocks += [(f'layers.{j}', b, 'last') for j, b in enumerate(denoiser.layers)]
        for k, (path, block, where) in enumerate(blocks):
            prefix, attn, ff = f'vit-block{k}', block.attn, block.feed_forward
            on_grid = dict(grid_module='', grid_patch=p, image_tokens=where)
            # grouped-query attention: k and v are narrower than q
            pts.self_projections(prefix, f'{path}.attn', attn, grid, **on_grid)
            pts.add(f'{prefix}-attn-out', 'attn-out', attn.to_out[0].out_features, grid, f'{path}.attn', 'tokens',
                    **on_grid)
            # the feed-forward's input is the (scale-)modulated RMS norm; linear_2's input the SwiGLU product
            pts.add(f'{prefix}-norm-out', 'norm-out', ff.linear_1.in_features, grid, f'{path}.feed_forward',
                    'tokens-input', **on_grid)
            pts.add(f'{prefix}-ffn-inner', 'ffn-inner', ff.linear_2.in_features, grid, f'{path}.feed_forward.linear_2',
                    'tokens-input', **on_grid)
            pts.add(f'{prefix}-out', 'vit-block-out', ff.linear_2.out_features, grid, path, 'tokens', **on_grid)
        return pts.points

    def inputs(self, denoiser, noisy, timesteps, conditioning, image_hw):
        b, dtype = noisy.shape[0], noisy.dtype
        text = text_context(conditioning, b, dtype)
        mask = conditioning.attention_mask
        if mask is None:
            mask = torch.ones(text.shape[:2], dtype=torch.long, device=noisy.device)
        mask = batch_rows(mask, b, noisy.device)
        lengths = mask.sum(1)
        # the image tokens would sit at a different place in each row (meta tensors hold no lengths to compare)
        if not lengths.is_meta and bool((lengths != lengths[0]).any()):
            raise ValueError('Lumina 2 captions of different token lengths in one batch are not supported: '
                             'the joint sequence puts each image after its own caption')
        # Lumina's time runs the other way: 0 is pure noise, 1 the clean image (the pipeline feeds 1 - sigma)
        return dict(hidden_states=noisy, encoder_hidden_states=text, encoder_attention_mask=mask,
                    timestep=1 - timesteps.float() / 1000)

    def prediction(self, output, noisy):
        # ... and so does its velocity: x0 - noise; the pipeline negates it before the Euler step
        return -super().prediction(output, noisy)

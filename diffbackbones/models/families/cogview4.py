"""CogView4Transformer2DModel (CogView4): joint attention over [text; image] through shared projections."""
from __future__ import annotations

import math

import torch

from ..points import _Points
from .base import DenoiserFamily, batch_rows, ceil_div, text_context

__all__ = ['CogView4Family', 'unshifted_sigma']

# the scheduler's resolution-dependent shift (CogView4-6B's scheduler config, and its trainers')
BASE_SEQ_LEN, BASE_SHIFT, MAX_SHIFT = 256, 0.25, 0.75


def unshifted_sigma(sigma: torch.Tensor, n_tokens: int) -> torch.Tensor:
    """The timestep fraction u whose shifted sigma mu / (mu + 1/u - 1) is ``sigma``, for ``n_tokens`` image tokens.

    CogView4 is conditioned on the timestep before the shift and noised at the shifted sigma (its pipeline passes
    the linear timesteps with shifted sigmas; its trainers noise with the shifted sigma, feed the plain timestep).
    """
    mu = math.sqrt(n_tokens / BASE_SEQ_LEN) * MAX_SHIFT + BASE_SHIFT
    return sigma / (sigma + mu * (1 - sigma))


class CogView4Family(DenoiserFamily):
    """CogView4Transformer2DModel: one attention over [text; image] with shared q / k / v (text first).

    The blocks and the attention return (image, text). The feed-forward is shared too and runs twice per block,
    image then text, so a hook on it would see the text last: no ffn-inner / norm-out. No attention maps: the
    maps' explicit path has no joint attention through shared projections with RoPE on the image part only.
    """

    name, class_name = 'cogview4', 'CogView4Transformer2DModel'

    def walk(self, denoiser, latent_hw, n_text_tokens):
        p = self.latent_multiple(denoiser)
        grid = ceil_div(latent_hw, p)
        pts = _Points(n_text_tokens)
        on_grid = dict(grid_module='', grid_patch=p)
        for k, block in enumerate(denoiser.transformer_blocks):
            path, prefix, attn = f'transformer_blocks.{k}', f'vit-block{k}', block.attn1
            pts.self_projections(prefix, f'{path}.attn1', attn, grid, image_tokens='last', **on_grid)
            pts.add(f'{prefix}-attn-out', 'attn-out', attn.to_out[0].out_features, grid, f'{path}.attn1', 'tokens',
                    pick=0, **on_grid)
            pts.add(f'{prefix}-out', 'vit-block-out', block.ff.net[-1].out_features, grid, path, 'tokens', pick=0,
                    **on_grid)
        return pts.points

    def inputs(self, denoiser, noisy, timesteps, conditioning, image_hw):
        b, dtype, device, p = noisy.shape[0], noisy.dtype, noisy.device, denoiser.config.patch_size
        n_tokens = (noisy.shape[-2] // p) * (noisy.shape[-1] // p)
        u = unshifted_sigma(timesteps.float() / 1000, n_tokens)
        size = torch.tensor([image_hw], device=device, dtype=dtype).expand(b, -1)
        kwargs = dict(hidden_states=noisy, encoder_hidden_states=text_context(conditioning, b, dtype),
                      timestep=u * 1000, original_size=size, target_size=size,
                      crop_coords=torch.zeros(b, 2, device=device, dtype=dtype))
        if conditioning.attention_mask is not None:  # the pipeline pads without a mask; a padded text can have one
            kwargs['attention_mask'] = batch_rows(conditioning.attention_mask, b, device)
        return kwargs

"""SanaTransformer2DModel (SANA): linear self-attention, softmax cross-attention to the text, a convolutional FFN."""
from __future__ import annotations

from ..points import _Points
from .base import DenoiserFamily, batch_rows, ceil_div, text_context

__all__ = ['SanaFamily']


class SanaFamily(DenoiserFamily):
    """SanaTransformer2DModel: one token sequence (the image), cross-attention to the text.

    Self-attention is ReLU linear attention (no softmax, never an N x N matrix): q / k / v are offered, no self-map.
    The cross-attention is plain softmax attention with the text padding mask: its map comes from diffusers'
    reference math (``'standard'``), as long as there is no qk-norm (SANA 1.0; SANA 1.5 / Sprint normalise q, k).
    The feed-forward (GLUMBConv) runs on (B, C, h, w), so its input and gated inner activation are spatial already.
    """

    name, class_name = 'sana', 'SanaTransformer2DModel'

    def walk(self, denoiser, latent_hw, n_text_tokens):
        p = self.latent_multiple(denoiser)
        grid = ceil_div(latent_hw, p)
        pts = _Points(n_text_tokens)
        on_grid = dict(grid_module='', grid_patch=p)
        for k, block in enumerate(denoiser.transformer_blocks):
            path, prefix, attn1, attn2 = f'transformer_blocks.{k}', f'vit-block{k}', block.attn1, block.attn2
            pts.self_projections(prefix, f'{path}.attn1', attn1, grid, **on_grid)
            pts.add(f'{prefix}-attn-out', 'attn-out', attn1.to_out[0].out_features, grid, f'{path}.attn1', 'tokens',
                    **on_grid)
            if attn2 is not None:
                pts.add(f'{prefix}-cross-q', 'cross-q', attn2.to_q.out_features, grid, f'{path}.attn2.to_q', 'tokens',
                        **on_grid)
                if attn2.norm_q is None:  # the reference processor has no qk-norm
                    pts.add(f'{prefix}-cross-map', 'cross-map', n_text_tokens, grid, f'{path}.attn2', 'attn-map',
                            **on_grid)
            ff = block.ff  # the block hands it the modulated norm as (B, C, h, w)
            pts.add(f'{prefix}-norm-out', 'norm-out', ff.conv_inverted.in_channels, grid, f'{path}.ff', 'input')
            pts.add(f'{prefix}-ffn-inner', 'ffn-inner', ff.conv_point.in_channels, grid, f'{path}.ff.conv_point',
                    'input')  # after the SiLU gate
            pts.add(f'{prefix}-out', 'vit-block-out', ff.conv_point.out_channels, grid, path, 'tokens', **on_grid)
        return pts.points

    def inputs(self, denoiser, noisy, timesteps, conditioning, image_hw):
        b, dtype, config = noisy.shape[0], noisy.dtype, denoiser.config
        if config.guidance_embeds:
            raise NotImplementedError('SANA-Sprint (guidance-embedded, TrigFlow timesteps) is not supported')
        kwargs = dict(hidden_states=noisy, encoder_hidden_states=text_context(conditioning, b, dtype),
                      # the pipeline's timestep is sigma * 1000 (our integer t), times the model's timestep_scale
                      timestep=timesteps.float() * config.timestep_scale)
        if conditioning.attention_mask is not None:  # the Gemma padding, masked in the cross-attention
            kwargs['encoder_attention_mask'] = batch_rows(conditioning.attention_mask, b, noisy.device)
        return kwargs

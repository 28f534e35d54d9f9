"""SD3Transformer2DModel (SD3, SD3.5): joint attention with image tokens first; SD3.5's dual attention layers."""
from __future__ import annotations

from ..points import _Points
from .base import DenoiserFamily, ceil_div, pooled_text, text_context

__all__ = ['SD3Family']


class SD3Family(DenoiserFamily):
    """SD3Transformer2DModel (SD3, SD3.5): joint attention, image tokens first; SD3.5 dual layers."""

    name, class_name = 'sd3', 'SD3Transformer2DModel'

    def walk(self, denoiser, latent_hw, n_text_tokens):
        p = self.latent_multiple(denoiser)
        grid = ceil_div(latent_hw, p)
        n = grid[0] * grid[1]
        pts = _Points(n_text_tokens)
        on_grid = dict(grid_module='', grid_patch=p)
        for k, block in enumerate(denoiser.transformer_blocks):
            path, prefix, attn = f'transformer_blocks.{k}', f'vit-block{k}', block.attn
            pts.self_projections(prefix, f'{path}.attn', attn, grid, **on_grid)
            pts.add(f'{prefix}-attn-out', 'attn-out', attn.to_out[0].out_features, grid, f'{path}.attn', 'tokens',
                    pick=0, **on_grid)
            joint = dict(image_tokens='first', attention='explicit', **on_grid)
            pts.add(f'{prefix}-self-map', 'self-map', n, grid, f'{path}.attn', 'attn-map', **joint)
            pts.add(f'{prefix}-cross-map', 'cross-map', n_text_tokens, grid, f'{path}.attn', 'attn-map', **joint)
            if block.attn2 is not None:  # SD3.5 dual-attention layers: a second, image-only self-attention
                attn2 = block.attn2
                for proj in 'qkv':
                    pts.add(f'{prefix}-self2-{proj}', f'self-{proj}', getattr(attn2, f'to_{proj}').out_features, grid,
                            f'{path}.attn2.to_{proj}', 'tokens', **on_grid)
                pts.add(f'{prefix}-self2-map', 'self-map', n, grid, f'{path}.attn2', 'attn-map',
                        image_tokens='all', attention='explicit', **on_grid)
            dim = block.ff.net[-1].out_features
            pts.add(f'{prefix}-norm-out', 'norm-out', dim, grid, f'{path}.ff', 'tokens-input', **on_grid)
            pts.add(f'{prefix}-ffn-inner', 'ffn-inner', block.ff.net[0].proj.out_features, grid, f'{path}.ff.net.0',
                    'tokens', **on_grid)
            pts.add(f'{prefix}-out', 'vit-block-out', dim, grid, path, 'tokens', pick=1, **on_grid)
        return pts.points

    def inputs(self, denoiser, noisy, timesteps, conditioning, image_hw):
        b, dtype = noisy.shape[0], noisy.dtype
        # SD3's timestep input is sigma * 1000: our integer t is exactly that (s = t / 1000).
        return dict(hidden_states=noisy, encoder_hidden_states=text_context(conditioning, b, dtype),
                    pooled_projections=pooled_text(conditioning, b, dtype), timestep=timesteps.to(dtype))

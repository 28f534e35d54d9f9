"""HunyuanImageTransformer2DModel (HunyuanImage 2.1): (B, C, h, w) latents, double- then single-stream blocks."""
from __future__ import annotations

import torch

from ..points import _Points
from .base import DenoiserFamily, batch_rows, ceil_div, text_context

__all__ = ['HunyuanImageFamily']


class HunyuanImageFamily(DenoiserFamily):
    """HunyuanImageTransformer2DModel: double-stream blocks, then single-stream blocks, counted on in one sequence.

    The joint sequence is [image; text] (image first). Single blocks project q, k, v over the whole sequence, but
    their attention module (pre_only) returns the image part of the attention output before any projection.
    Attention maps are not offered: the processor applies RoPE to the image tokens only and masks padded text
    tokens, neither of which capture's explicit map path does.
    """

    name, class_name = 'hunyuan_image', 'HunyuanImageTransformer2DModel'

    def token_patch(self, config):
        p = config['patch_size']  # (h, w); (t, h, w) for the refiner's 3-D variant, which this family does not take
        if len(p) != 2 or p[0] != p[1]:
            raise ValueError(f'HunyuanImage family expects a square 2-D patch_size, got {p}')
        return p[0]

    def walk(self, denoiser, latent_hw, n_text_tokens):
        p = self.latent_multiple(denoiser)
        grid = ceil_div(latent_hw, p)
        pts = _Points(n_text_tokens)
        on_grid = dict(grid_module='', grid_patch=p)  # the denoiser's (B, C, h, w) input gives the grid
        double = len(denoiser.transformer_blocks)
        for k, block in enumerate(denoiser.transformer_blocks):
            path, prefix, attn = f'transformer_blocks.{k}', f'vit-block{k}', block.attn
            # the image stream's projections (the text stream has add_*_proj)
            pts.self_projections(prefix, f'{path}.attn', attn, grid, **on_grid)
            pts.add(f'{prefix}-attn-out', 'attn-out', attn.to_out[0].out_features, grid, f'{path}.attn', 'tokens',
                    pick=0, **on_grid)  # the processor returns (image, text)
            dim = block.ff.net[-1].out_features
            pts.add(f'{prefix}-norm-out', 'norm-out', dim, grid, f'{path}.ff', 'tokens-input', **on_grid)
            pts.add(f'{prefix}-ffn-inner', 'ffn-inner', block.ff.net[0].proj.out_features, grid, f'{path}.ff.net.0',
                    'tokens', **on_grid)
            pts.add(f'{prefix}-out', 'vit-block-out', dim, grid, path, 'tokens', pick=0, **on_grid)  # (image, text)
        for j, block in enumerate(denoiser.single_transformer_blocks):
            path, prefix, attn = f'single_transformer_blocks.{j}', f'vit-block{double + j}', block.attn
            first = dict(image_tokens='first', **on_grid)  # these see [image; text]
            pts.self_projections(prefix, f'{path}.attn', attn, grid, **first)
            pts.add(f'{prefix}-attn-out', 'attn-out', attn.inner_dim, grid, f'{path}.attn', 'tokens', pick=0,
                    **on_grid)  # (image, text) attention outputs, unprojected: proj_out merges them with the MLP
            dim = block.proj_out.out_features
            pts.add(f'{prefix}-norm-out', 'norm-out', dim, grid, f'{path}.proj_mlp', 'tokens-input', **first)
            pts.add(f'{prefix}-ffn-inner', 'ffn-inner', block.proj_mlp.out_features, grid, f'{path}.act_mlp',
                    'tokens', **first)
            pts.add(f'{prefix}-out', 'vit-block-out', dim, grid, path, 'tokens', pick=0, **on_grid)  # (image, text)
        return pts.points

    def read_prompt(self, output):
        embeds, mask, glyph_embeds, glyph_mask = output[:4]
        if glyph_mask is not None and glyph_mask.any():
            # quoted text goes to ByT5 as a second stream (and the pipeline to its OCR guider): not carried here
            raise NotImplementedError('HunyuanImage encodes quoted text ("...") as glyphs with ByT5, a second text '
                                      'stream diffbackbones does not carry yet; remove the quotes from the prompt.')
        return embeds, None if mask is None else mask.long(), None

    def inputs(self, denoiser, noisy, timesteps, conditioning, image_hw):
        b, dtype, device = noisy.shape[0], noisy.dtype, noisy.device
        text = text_context(conditioning, b, dtype)
        mask = conditioning.attention_mask
        mask = (torch.ones(text.shape[:2], dtype=torch.long, device=device) if mask is None
                else batch_rows(mask, b, device))
        t = timesteps.to(dtype)  # HunyuanImage takes t = sigma * 1000 itself
        kwargs = dict(hidden_states=noisy, timestep=t, encoder_hidden_states=text, encoder_attention_mask=mask)
        if denoiser.context_embedder_2 is not None:
            # the glyph (ByT5) stream: the pipeline passes zeros with an all-zero mask when the prompt quotes no text
            width = denoiser.config.text_embed_2_dim
            kwargs['encoder_hidden_states_2'] = torch.zeros(b, 128, width, device=device, dtype=dtype)
            kwargs['encoder_attention_mask_2'] = torch.zeros(b, 128, device=device, dtype=torch.long)
        if denoiser.config.guidance_embeds:  # the distilled variant: the scale times 1000, as its pipeline passes
            kwargs['guidance'] = torch.full((b,), conditioning.guidance * 1000.0, device=device, dtype=dtype)
        if denoiser.config.use_meanflow:  # MeanFlow's average velocity over [r, t]; r = t is the instantaneous one
            kwargs['timestep_r'] = t
        return kwargs

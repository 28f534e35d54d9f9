"""Flux2Transformer2DModel (FLUX.2 dev, klein): 2x2-patchified latents, double-stream then fused single-stream
blocks."""
from __future__ import annotations

import torch

from ..points import _Points
from .base import DenoiserFamily, ceil_div, text_context
from .flux import grid_from_ids, pack_latents, unpack_latents

__all__ = ['Flux2Family', 'image_ids', 'text_ids']


def image_ids(grid: tuple[int, int], device, dtype) -> torch.Tensor:
    """(h*w, 4) position ids [t=0, row, col, l=0] of a row-major token grid (the pipeline's ``_prepare_latent_ids``).

    Columns 1 and 2 are row and column, as in Flux.1's 3-axis ids, so ``grid_from_ids`` reads them unchanged."""
    rows = torch.arange(grid[0], device=device, dtype=dtype).repeat_interleave(grid[1])
    cols = torch.arange(grid[1], device=device, dtype=dtype).repeat(grid[0])
    zeros = torch.zeros_like(rows)
    return torch.stack([zeros, rows, cols, zeros], dim=1)


def text_ids(n_tokens: int, device, dtype) -> torch.Tensor:
    """(L, 4) ids [0, 0, 0, l]: unlike Flux.1 (all zeros), FLUX.2 gives text tokens their index on the 4th axis."""
    ids = torch.zeros(n_tokens, 4, device=device, dtype=dtype)
    ids[:, 3] = torch.arange(n_tokens, device=device, dtype=dtype)
    return ids


class Flux2Family(DenoiserFamily):
    """Flux2Transformer2DModel: double-stream blocks, then single-stream blocks, counted on in one sequence.

    The latent this family takes is the VAE's (B, 32, H/8, W/8), already normalised by the VAE's batch-norm
    statistics (which live on the 2x2-patchified 128 channels). The pipeline's own layout, (B, 128, H/16, W/16)
    patchified then flattened row-major, is exactly Flux.1's 2x2 packing of it, so Flux.1's pack / unpack serve.

    Single blocks compute q, k, v and the MLP input in one fused projection (``to_qkv_mlp_proj``) and attention
    plus MLP in one output projection: no module holds q, k, v or the attention output alone, so single blocks
    offer their modulated norm, MLP inner activation and output only, and attention maps only the double blocks.
    """

    name, class_name = 'flux2', 'Flux2Transformer2DModel'

    def token_patch(self, config):
        return 2  # 2x2 latent patches per token (the pipeline patchifies; the model's patch_size is 1)

    def token_grid(self, args, kwargs, patch):
        return grid_from_ids(kwargs)

    def walk(self, denoiser, latent_hw, n_text_tokens):
        grid = ceil_div(latent_hw, 2)
        n = grid[0] * grid[1]
        pts = _Points(n_text_tokens)
        on_grid = dict(grid_module='', grid_patch=2)  # the grid comes from img_ids rows / cols
        double = len(denoiser.transformer_blocks)
        for k, block in enumerate(denoiser.transformer_blocks):
            path, prefix, attn = f'transformer_blocks.{k}', f'vit-block{k}', block.attn
            # the image stream's projections (the text stream has add_*_proj)
            pts.self_projections(prefix, f'{path}.attn', attn, grid, **on_grid)
            pts.add(f'{prefix}-attn-out', 'attn-out', attn.to_out[0].out_features, grid, f'{path}.attn', 'tokens',
                    pick=0, **on_grid)  # the processor returns (image, text)
            # joint softmax over [text; image] keys with qk-norm and 4-axis RoPE: the explicit path's math
            joint = dict(image_tokens='last', attention='explicit', **on_grid)
            pts.add(f'{prefix}-self-map', 'self-map', n, grid, f'{path}.attn', 'attn-map', **joint)
            pts.add(f'{prefix}-cross-map', 'cross-map', n_text_tokens, grid, f'{path}.attn', 'attn-map', **joint)
            dim = block.ff.linear_out.out_features
            pts.add(f'{prefix}-norm-out', 'norm-out', dim, grid, f'{path}.ff', 'tokens-input', **on_grid)
            pts.add(f'{prefix}-ffn-inner', 'ffn-inner', block.ff.linear_out.in_features, grid, f'{path}.ff.act_fn',
                    'tokens', **on_grid)  # after the SwiGLU gate
            pts.add(f'{prefix}-out', 'vit-block-out', dim, grid, path, 'tokens', pick=1, **on_grid)  # (text, image)
        for j, block in enumerate(denoiser.single_transformer_blocks):
            path, prefix, attn = f'single_transformer_blocks.{j}', f'vit-block{double + j}', block.attn
            last = dict(image_tokens='last', **on_grid)  # single blocks see [text; image]
            pts.add(f'{prefix}-norm-out', 'norm-out', attn.query_dim, grid, f'{path}.attn', 'tokens-input', **last)
            pts.add(f'{prefix}-ffn-inner', 'ffn-inner', attn.mlp_hidden_dim, grid, f'{path}.attn.mlp_act_fn',
                    'tokens', **last)
            pts.add(f'{prefix}-out', 'vit-block-out', attn.out_dim, grid, path, 'tokens', **last)  # one tensor
        return pts.points

    def inputs(self, denoiser, noisy, timesteps, conditioning, image_hw):
        b, dtype = noisy.shape[0], noisy.dtype
        grid = (noisy.shape[-2] // 2, noisy.shape[-1] // 2)
        # the pipeline passes no attention mask: padded text tokens are attended, so none is passed here either
        text = text_context(conditioning, b, dtype)
        kwargs = dict(hidden_states=pack_latents(noisy), encoder_hidden_states=text,
                      timestep=timesteps.to(dtype) / 1000,  # FLUX.2 takes sigma in [0, 1] (it multiplies by 1000)
                      # int64 ids, as the pipeline's: bf16 would round positions past 256
                      img_ids=image_ids(grid, noisy.device, torch.long),
                      txt_ids=text_ids(text.shape[1], noisy.device, torch.long))
        if denoiser.config.guidance_embeds:  # dev: guidance-distilled (the scale itself, e.g. 4.0); klein: none
            kwargs['guidance'] = torch.full((b,), conditioning.guidance, device=noisy.device, dtype=dtype)
        return kwargs

    def prediction(self, output, noisy):
        return unpack_latents(output.sample if hasattr(output, 'sample') else output[0], noisy.shape)

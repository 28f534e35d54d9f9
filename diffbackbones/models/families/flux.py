"""FluxTransformer2DModel (FLUX.1): packed 2x2 latent patches, double-stream then single-stream blocks."""
from __future__ import annotations

import math

import torch

from ..points import _Points
from .base import DenoiserFamily, ceil_div, pooled_text, text_context

__all__ = ['FluxFamily', 'pack_latents', 'unpack_latents', 'image_ids', 'grid_from_ids']


def pack_latents(latents: torch.Tensor) -> torch.Tensor:
    """(B, C, h, w) -> (B, h/2 * w/2, 4C): Flux's 2x2 patches, row-major (as its pipeline packs them)."""
    b, c, h, w = latents.shape
    x = latents.view(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5)
    return x.reshape(b, (h // 2) * (w // 2), c * 4)


def unpack_latents(tokens: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """(B, h/2 * w/2, 4C) -> (B, C, h, w) of ``shape``: the inverse of ``pack_latents``."""
    b, c, h, w = shape
    x = tokens.reshape(b, h // 2, w // 2, c, 2, 2).permute(0, 3, 1, 4, 2, 5)
    return x.reshape(b, c, h, w)


def image_ids(grid: tuple[int, int], device, dtype) -> torch.Tensor:
    """(h*w, 3) position ids [0, row, col] of a row-major token grid (Flux's ``img_ids``)."""
    rows = torch.arange(grid[0], device=device, dtype=dtype).repeat_interleave(grid[1])
    cols = torch.arange(grid[1], device=device, dtype=dtype).repeat(grid[0])
    return torch.stack([torch.zeros_like(rows), rows, cols], dim=1)


def grid_from_ids(kwargs) -> tuple[int, int]:
    """The token grid of packed (B, N, C) tokens: the rows and columns of their ``img_ids`` (N, 3) = [0, row, col]
    (FLUX.2's (N, 4) ids hold them in the same columns). Never guessed from sqrt(N)."""
    ids = kwargs.get('img_ids')
    if ids is None:
        raise RuntimeError('packed (B, N, C) tokens need img_ids to give their grid; never guessed from sqrt(N)')
    ids = ids[0] if ids.ndim == 3 else ids
    if ids.is_meta:  # no values on the meta device: only shape probes run there, and they are square
        side = math.isqrt(ids.shape[0])
        if side * side != ids.shape[0]:
            raise RuntimeError('on the meta device, packed tokens are only supported on a square grid')
        return side, side
    return int(ids[:, 1].max()) + 1, int(ids[:, 2].max()) + 1


class FluxFamily(DenoiserFamily):
    """FluxTransformer2DModel: double-stream blocks, then single-stream blocks, counted on in one sequence.

    Single blocks see [text; image] tokens in every projection: the first T (text) tokens are sliced off.
    """

    name, class_name = 'flux', 'FluxTransformer2DModel'
    maps = True                       # attention maps through the explicit (joint softmax) processor
    single_out = dict(pick=1)         # a single block returns (text, image)

    def token_patch(self, config):
        return 2  # the pipeline packs 2x2 latent patches into one token (the model's patch_size is 1)

    def token_grid(self, args, kwargs, patch):
        return grid_from_ids(kwargs)

    def walk(self, denoiser, latent_hw, n_text_tokens):
        grid = ceil_div(latent_hw, 2)
        n = grid[0] * grid[1]
        pts = _Points(n_text_tokens)
        on_grid = dict(grid_module='', grid_patch=2)
        double = len(denoiser.transformer_blocks)

        def attention(prefix, path, attn, image_tokens, out_pick):
            pts.self_projections(prefix, f'{path}.attn', attn, grid, image_tokens=image_tokens, **on_grid)
            pts.add(f'{prefix}-attn-out', 'attn-out', attn.inner_dim, grid, f'{path}.attn', 'tokens', pick=out_pick,
                    image_tokens=image_tokens, **on_grid)
            if self.maps:
                joint = dict(image_tokens='last', attention='explicit', **on_grid)
                pts.add(f'{prefix}-self-map', 'self-map', n, grid, f'{path}.attn', 'attn-map', **joint)
                pts.add(f'{prefix}-cross-map', 'cross-map', n_text_tokens, grid, f'{path}.attn', 'attn-map', **joint)

        for k, block in enumerate(denoiser.transformer_blocks):
            path, prefix = f'transformer_blocks.{k}', f'vit-block{k}'
            attention(prefix, path, block.attn, 'all', 0)  # the processor returns (image, text)
            dim = block.ff.net[-1].out_features
            pts.add(f'{prefix}-norm-out', 'norm-out', dim, grid, f'{path}.ff', 'tokens-input', **on_grid)
            pts.add(f'{prefix}-ffn-inner', 'ffn-inner', block.ff.net[0].proj.out_features, grid, f'{path}.ff.net.0',
                    'tokens', **on_grid)
            pts.add(f'{prefix}-out', 'vit-block-out', dim, grid, path, 'tokens', pick=1, **on_grid)
        for j, block in enumerate(denoiser.single_transformer_blocks):
            path, prefix = f'single_transformer_blocks.{j}', f'vit-block{double + j}'
            attention(prefix, path, block.attn, 'last', None)
            pts.add(f'{prefix}-ffn-inner', 'ffn-inner', block.proj_mlp.out_features, grid, f'{path}.act_mlp', 'tokens',
                    image_tokens='last', **on_grid)
            pts.add(f'{prefix}-out', 'vit-block-out', block.proj_out.out_features, grid, path, 'tokens',
                    **self.single_out, **on_grid)
        return pts.points

    def inputs(self, denoiser, noisy, timesteps, conditioning, image_hw):
        b, dtype = noisy.shape[0], noisy.dtype
        grid = (noisy.shape[-2] // 2, noisy.shape[-1] // 2)
        text = text_context(conditioning, b, dtype)
        kwargs = dict(hidden_states=pack_latents(noisy), encoder_hidden_states=text,
                      pooled_projections=pooled_text(conditioning, b, dtype),
                      timestep=timesteps.to(dtype) / 1000,  # Flux takes sigma itself, in [0, 1]
                      img_ids=image_ids(grid, noisy.device, dtype),
                      txt_ids=torch.zeros(text.shape[1], 3, device=noisy.device, dtype=dtype))
        if denoiser.config.guidance_embeds:
            kwargs['guidance'] = torch.full((b,), conditioning.guidance, device=noisy.device, dtype=dtype)
        return kwargs

    def prediction(self, output, noisy):
        return unpack_latents(output.sample if hasattr(output, 'sample') else output[0], noisy.shape)

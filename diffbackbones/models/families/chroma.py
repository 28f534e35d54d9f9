"""ChromaTransformer2DModel (Chroma1): FLUX.1-schnell pruned of its modulation MLPs, T5 text only, a masked prompt."""
from __future__ import annotations

import torch

from ..points import _Points
from .base import ceil_div, text_context
from .flux import FluxFamily, image_ids, pack_latents

__all__ = ['ChromaFamily', 'chroma_attention_mask']


def chroma_attention_mask(text_mask: torch.Tensor, batch: int, n_image: int) -> torch.Tensor:
    """(B, T + N) boolean keep-mask of the joint [text; image] sequence from the prompt's (1, T) or (b, T) mask as
    ``ChromaPipeline.encode_prompt`` returns it: the prompt's tokens and the first padding token (Chroma's rule).

    Boolean on purpose: diffusers <= 0.42 casts the mask to float 0/1 before SDPA, which *adds* it to the scores,
    so its pipeline masks nothing (checked on the installed version); the boolean mask is what Chroma was trained
    with. Casting it to float here would reproduce the pipeline's numbers, 3 % apart on the tiny model.
    """
    keep = text_mask.to(torch.bool)
    keep = keep.expand(batch, -1) if keep.shape[0] == 1 else keep.repeat(batch // keep.shape[0], 1)
    return torch.cat([keep, torch.ones(batch, n_image, dtype=torch.bool, device=keep.device)], dim=1)


class ChromaFamily(FluxFamily):
    """ChromaTransformer2DModel: Flux's double- and single-stream blocks, counted on in one sequence.

    Differences from Flux that the catalog sees: a single block returns the joint [text; image] tensor
    (not a (text, image) tuple), so its image tokens are the last N. No pooled text, no guidance input.
    Attention maps are not offered: the explicit map processor ignores the attention mask, and Chroma
    masks the padding tokens, so its maps would not be the model's.
    """

    name, class_name = 'chroma', 'ChromaTransformer2DModel'

    def walk(self, denoiser, latent_hw, n_text_tokens):
        grid = ceil_div(latent_hw, 2)
        pts = _Points(n_text_tokens)
        on_grid = dict(grid_module='', grid_patch=2)
        double = len(denoiser.transformer_blocks)

        def attention(prefix, path, attn, image_tokens, out_pick):
            for proj in 'qkv':
                pts.add(f'{prefix}-self-{proj}', f'self-{proj}', getattr(attn, f'to_{proj}').out_features, grid,
                        f'{path}.attn.to_{proj}', 'tokens', image_tokens=image_tokens, aliases=(f'{prefix}-{proj}',),
                        **on_grid)
            pts.add(f'{prefix}-attn-out', 'attn-out', attn.inner_dim, grid, f'{path}.attn', 'tokens', pick=out_pick,
                    image_tokens=image_tokens, **on_grid)

        for k, block in enumerate(denoiser.transformer_blocks):
            path, prefix = f'transformer_blocks.{k}', f'vit-block{k}'
            attention(prefix, path, block.attn, 'all', 0)  # the processor returns (image, text)
            dim = block.ff.net[-1].out_features
            pts.add(f'{prefix}-norm-out', 'norm-out', dim, grid, f'{path}.ff', 'tokens-input', **on_grid)
            pts.add(f'{prefix}-ffn-inner', 'ffn-inner', block.ff.net[0].proj.out_features, grid, f'{path}.ff.net.0',
                    'tokens', **on_grid)
            pts.add(f'{prefix}-out', 'vit-block-out', dim, grid, path, 'tokens', pick=1, **on_grid)  # (text, image)
        for j, block in enumerate(denoiser.single_transformer_blocks):
            path, prefix = f'single_transformer_blocks.{j}', f'vit-block{double + j}'
            attention(prefix, path, block.attn, 'last', None)
            pts.add(f'{prefix}-ffn-inner', 'ffn-inner', block.proj_mlp.out_features, grid, f'{path}.act_mlp', 'tokens',
                    image_tokens='last', **on_grid)
            pts.add(f'{prefix}-out', 'vit-block-out', block.proj_out.out_features, grid, path, 'tokens',
                    image_tokens='last', **on_grid)  # one tensor: [text; image]
        return pts.points

    def inputs(self, denoiser, noisy, timesteps, conditioning, image_hw):
        b, dtype = noisy.shape[0], noisy.dtype
        grid = (noisy.shape[-2] // 2, noisy.shape[-1] // 2)
        text = text_context(conditioning, b, dtype)
        kwargs = dict(hidden_states=pack_latents(noisy), encoder_hidden_states=text,
                      timestep=timesteps.to(dtype) / 1000,  # sigma itself, in [0, 1], as Flux
                      img_ids=image_ids(grid, noisy.device, dtype),
                      txt_ids=torch.zeros(text.shape[1], 3, device=noisy.device, dtype=dtype))
        if conditioning.attention_mask is not None:  # encode_prompt's: the prompt and one pad token
            kwargs['attention_mask'] = chroma_attention_mask(conditioning.attention_mask.to(noisy.device), b,
                                                             grid[0] * grid[1])
        return kwargs

    def read_prompt(self, output):
        embeds, _, mask = output[:3]  # (embeds, text_ids, mask, ...): the mask is float, Chroma's rule applied
        return embeds, mask.long(), None

"""ZImageTransformer2DModel (Z-Image): a single-stream DiT on lists of per-sample latents and captions.

The forward takes ``x``, a list of (C, 1, h, w) latents, and ``cap_feats``, a list of (L_i, D) caption
states (the prompt's unpadded tokens). It patchifies each latent into 2 x 2 tokens (row-major), pads the
image tokens and the caption tokens to multiples of 32 with learned pad tokens, and runs:

- ``noise_refiner`` blocks on [image; image pad] (timestep-modulated),
- ``context_refiner`` blocks on [caption; caption pad] alone (no image tokens: nothing to offer here),
- ``layers`` on the joint [image; image pad; caption; caption pad], padded across the batch.

So in every block that sees the image, its N = h/2 * w/2 tokens come first (``image_tokens='first'``).
"""
from __future__ import annotations

import torch

from ..points import _Points
from .base import DenoiserFamily, batch_rows, ceil_div, text_context

__all__ = ['ZImageFamily']


class ZImageFamily(DenoiserFamily):
    """ZImageTransformer2DModel: noise-refiner blocks, then the main single-stream blocks, numbered on in one
    sequence (the caption-only context refiner in between gets no ids).

    Attention maps are not offered: the attention takes its RoPE as ``freqs_cis`` (complex), which the explicit
    map processor neither names nor applies (diffusers' Attention would then drop it from the original call),
    and the keys after the image tokens hold the image padding as well as the caption.
    """

    name, class_name = 'zimage', 'ZImageTransformer2DModel'

    def token_patch(self, config):
        return config['all_patch_size'][0]  # the forward's patch_size (2 on every released checkpoint)

    def walk(self, denoiser, latent_hw, n_text_tokens):
        p = self.token_patch(denoiser.config)
        grid = ceil_div(latent_hw, p)
        pts = _Points(n_text_tokens)
        on_grid = dict(grid_module='', grid_patch=p, image_tokens='first')
        paths = [f'noise_refiner.{k}' for k in range(len(denoiser.noise_refiner))]
        paths += [f'layers.{k}' for k in range(len(denoiser.layers))]
        for k, path in enumerate(paths):
            block, prefix = denoiser.get_submodule(path), f'vit-block{k}'
            attn, ffn = block.attention, block.feed_forward
            pts.self_projections(prefix, f'{path}.attention', attn, grid, **on_grid)
            pts.add(f'{prefix}-attn-out', 'attn-out', attn.to_out[0].out_features, grid, f'{path}.attention',
                    'tokens', **on_grid)
            # the modulated norm feeding the SwiGLU feed-forward, and its gated product silu(w1 x) * w3 x
            pts.add(f'{prefix}-norm-out', 'norm-out', ffn.w1.in_features, grid, f'{path}.feed_forward',
                    'tokens-input', **on_grid)
            pts.add(f'{prefix}-ffn-inner', 'ffn-inner', ffn.w2.in_features, grid, f'{path}.feed_forward.w2',
                    'tokens-input', **on_grid)
            pts.add(f'{prefix}-out', 'vit-block-out', block.dim, grid, path, 'tokens', **on_grid)
        return pts.points

    def inputs(self, denoiser, noisy, timesteps, conditioning, image_hw):
        b, dtype = noisy.shape[0], noisy.dtype
        text = text_context(conditioning, b, dtype)
        captions = list(text.unbind(0))
        if conditioning.attention_mask is not None:  # the pipeline passes the prompt's tokens only, unpadded
            mask = batch_rows(conditioning.attention_mask.to(torch.bool), b, text.device)
            captions = [c[m] for c, m in zip(captions, mask)]
        return dict(x=list(noisy.unsqueeze(2).unbind(0)),  # (C, F=1, h, w) each
                    # Z-Image's time runs the other way: 0 is pure noise, 1 the clean image (t = 1 - sigma),
                    # in float32 as the pipeline passes it
                    t=(1000 - timesteps.float()) / 1000,
                    cap_feats=captions, patch_size=self.token_patch(denoiser.config), f_patch_size=1)

    def prediction(self, output, noisy):
        sample = output.sample if hasattr(output, 'sample') else output[0]
        # a list of (C, 1, h, w); the model predicts x0 - noise, the pipeline negates it into the velocity
        return -torch.stack(list(sample), dim=0).squeeze(2).to(noisy.dtype)

    def token_grid(self, args, kwargs, patch):
        x = args[0] if args else kwargs['x']  # a list of per-sample (C, F, H, W) latents
        return super().token_grid((x[0].flatten(0, 1)[None],), {}, patch)

"""WanTransformer3DModel (Wan 2.1 text-to-video): an image is a one-frame video (B, C, 1, h, w)."""
from __future__ import annotations

import math

from ..points import _Points
from .base import DenoiserFamily, batch_rows, ceil_div, text_context

__all__ = ['WanFamily']


class WanFamily(DenoiserFamily):
    """WanTransformer3DModel: blocks of self-attention (3-D RoPE, qk-norm), cross-attention to the text, feed-forward.

    The patch embedding is a (1, 2, 2) Conv3d; tokens are frame-major, then rows, then columns. With one frame
    the token grid is the (h/2, w/2) of the 5-D input (B, C, 1, h, w).

    No attention maps: ``WanAttention`` normalises q and k across all heads before splitting them (the explicit
    map path normalises per head) and its RoPE is a (1, N, 1, D) cos / sin pair the explicit path cannot apply.
    """

    name, class_name = 'wan', 'WanTransformer3DModel'

    def token_patch(self, config):
        return config['patch_size'][-1]  # (t, h, w) = (1, 2, 2)

    def token_grid(self, args, kwargs, patch):
        x = args[0] if args else kwargs['hidden_states']  # (B, C, F, H, W)
        if x.ndim != 5:
            raise RuntimeError(f'{type(self).__name__}: expected a (B, C, F, H, W) input; got {tuple(x.shape)}')
        # tokens are frame-major (F x h x w, row-major): F frames read as one grid of F * h rows, which the video
        # path (backbone/video.py) cuts back into frames; an image is the one-frame case
        return x.shape[2] * math.ceil(x.shape[-2] / patch), math.ceil(x.shape[-1] / patch)

    def video_inputs(self, denoiser, noisy, timesteps, conditioning):
        """Keyword arguments of one call on a clip's noisy latents (B, C, F, h, w)."""
        kwargs = self.inputs(denoiser, noisy[:, :, 0], timesteps, conditioning, None)
        return dict(kwargs, hidden_states=noisy.to(kwargs['hidden_states'].dtype))

    def walk(self, denoiser, latent_hw, n_text_tokens):
        p = self.latent_multiple(denoiser)
        grid = ceil_div(latent_hw, p)
        pts = _Points(n_text_tokens)
        on_grid = dict(grid_module='', grid_patch=p)
        for k, block in enumerate(denoiser.blocks):
            path, prefix = f'blocks.{k}', f'vit-block{k}'
            pts.self_projections(prefix, f'{path}.attn1', block.attn1, grid, **on_grid)
            pts.add(f'{prefix}-attn-out', 'attn-out', block.attn1.to_out[0].out_features, grid, f'{path}.attn1',
                    'tokens', **on_grid)
            pts.add(f'{prefix}-cross-q', 'cross-q', block.attn2.to_q.out_features, grid, f'{path}.attn2.to_q',
                    'tokens', **on_grid)
            dim = block.ffn.net[-1].out_features
            pts.add(f'{prefix}-norm-out', 'norm-out', dim, grid, f'{path}.ffn', 'tokens-input', **on_grid)
            pts.add(f'{prefix}-ffn-inner', 'ffn-inner', block.ffn.net[0].proj.out_features, grid,
                    f'{path}.ffn.net.0', 'tokens', **on_grid)
            pts.add(f'{prefix}-out', 'vit-block-out', dim, grid, path, 'tokens', **on_grid)
        return pts.points

    def inputs(self, denoiser, noisy, timesteps, conditioning, image_hw):
        if denoiser.config.added_kv_proj_dim is not None or denoiser.config.in_channels != noisy.shape[1]:
            raise NotImplementedError('Wan image-to-video checkpoints (CLIP image context, concatenated '
                                      'condition latents) are not supported; use a text-to-video one')
        b, dtype = noisy.shape[0], noisy.dtype
        text = text_context(conditioning, b, dtype)
        if conditioning.attention_mask is not None:
            # the pipeline zeroes the encoder's states past each prompt's end (and passes no mask)
            mask = batch_rows(conditioning.attention_mask.to(dtype), b, text.device)
            text = text * mask[..., None]
        # Wan's timestep input is sigma * 1000: our integer t is exactly that (s = t / 1000)
        return dict(hidden_states=noisy.unsqueeze(2), timestep=timesteps.float(), encoder_hidden_states=text)

    def prediction(self, output, noisy):
        sample = output.sample if hasattr(output, 'sample') else output[0]
        return sample[:, :, 0]  # (B, C, 1, h, w) -> (B, C, h, w)

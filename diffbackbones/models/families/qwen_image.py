"""QwenImageTransformer2DModel (Qwen-Image): packed 2x2 latent patches, 60 dual-stream MMDiT blocks."""
from __future__ import annotations

from ..points import _Points
from .base import DenoiserFamily, batch_rows, ceil_div, text_context
from .flux import pack_latents, unpack_latents

__all__ = ['QwenImageFamily', 'image_shapes']


def image_shapes(grid: tuple[int, int], batch: int) -> list[list[tuple[int, int, int]]]:
    """The ``img_shapes`` kwarg: per sample, [(frames, rows, cols)] of each image in the packed sequence."""
    return [[(1, grid[0], grid[1])]] * batch


class QwenImageFamily(DenoiserFamily):
    """QwenImageTransformer2DModel: every block is dual-stream (image and text streams, one joint attention).

    The image stream never holds text tokens; its tokens come first in its sequence so that the Edit variants,
    which append the reference image's tokens after the generated image's, read the generated image only.
    The token grid is the (rows, cols) of ``img_shapes[0][0]`` (there are no ``img_ids``).

    No attention maps: the explicit map path would apply RoPE as diffusers' real (cos, sin) pairs, but Qwen's is
    complex and separate for text and image, and diffusers' ``Attention`` drops ``encoder_hidden_states_mask``
    for any processor whose signature does not name it, so a padded prompt would change the features.
    """

    name, class_name = 'qwen_image', 'QwenImageTransformer2DModel'

    def token_patch(self, config):
        return 2  # the pipeline packs 2x2 latent patches into one token (as the model's patch_size says)

    def token_grid(self, args, kwargs, patch):
        # the denoiser's img_shapes: per sample, [(frames, rows, cols)] of each image; the generated one first
        fhw = kwargs['img_shapes'] if 'img_shapes' in kwargs else args[4]
        while isinstance(fhw[0], (list, tuple)):
            fhw = fhw[0]
        return int(fhw[1]), int(fhw[2])

    def walk(self, denoiser, latent_hw, n_text_tokens):
        grid = ceil_div(latent_hw, 2)
        pts = _Points(n_text_tokens)
        on_grid = dict(grid_module='', grid_patch=2, image_tokens='first')
        for k, block in enumerate(denoiser.transformer_blocks):
            path, prefix, attn = f'transformer_blocks.{k}', f'vit-block{k}', block.attn
            # to_q/k/v project the image stream only (add_*_proj the text stream)
            pts.self_projections(prefix, f'{path}.attn', attn, grid, **on_grid)
            # the processor returns (image, text), the image part already through to_out
            pts.add(f'{prefix}-attn-out', 'attn-out', attn.to_out[0].out_features, grid, f'{path}.attn', 'tokens',
                    pick=0, **on_grid)
            dim = block.img_mlp.net[-1].out_features
            pts.add(f'{prefix}-norm-out', 'norm-out', dim, grid, f'{path}.img_mlp', 'tokens-input', **on_grid)
            pts.add(f'{prefix}-ffn-inner', 'ffn-inner', block.img_mlp.net[0].proj.out_features, grid,
                    f'{path}.img_mlp.net.0', 'tokens', **on_grid)
            pts.add(f'{prefix}-out', 'vit-block-out', dim, grid, path, 'tokens', pick=1, **on_grid)  # (text, image)
        return pts.points

    def inputs(self, denoiser, noisy, timesteps, conditioning, image_hw):
        b, dtype = noisy.shape[0], noisy.dtype
        text = text_context(conditioning, b, dtype)
        mask = conditioning.attention_mask
        if mask is not None:
            mask = batch_rows(mask, b, noisy.device)
            if bool(mask.all()):
                mask = None  # as encode_prompt: an all-valid mask is dropped (the fused attention then runs)
        # guidance is never passed: Qwen-Image is not guidance-distilled (its forward breaks when it is given)
        return dict(hidden_states=pack_latents(noisy), encoder_hidden_states=text, encoder_hidden_states_mask=mask,
                    timestep=timesteps.to(dtype) / 1000,  # sigma itself: the time projection scales by 1000
                    img_shapes=image_shapes((noisy.shape[-2] // 2, noisy.shape[-1] // 2), b))

    def prediction(self, output, noisy):
        return unpack_latents(output.sample if hasattr(output, 'sample') else output[0], noisy.shape)

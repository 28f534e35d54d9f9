"""ChromaTransformer2DModel (Chroma1): FLUX.1-schnell pruned of its modulation MLPs, T5 text only, a masked prompt."""
from __future__ import annotations

import torch

from .base import batch_rows, text_context
from .flux import FluxFamily, image_ids, pack_latents

__all__ = ['ChromaFamily', 'chroma_attention_mask']


def chroma_attention_mask(text_mask: torch.Tensor, batch: int, n_image: int) -> torch.Tensor:
    """(B, T + N) boolean keep-mask of the joint [text; image] sequence from the prompt's (1, T) or (b, T) mask as
    ``ChromaPipeline.encode_prompt`` returns it: the prompt's tokens and the first padding token (Chroma's rule).

    Boolean on purpose: diffusers <= 0.42 casts the mask to float 0/1 before SDPA, which *adds* it to the scores,
    so its pipeline masks nothing (checked on the installed version); the boolean mask is what Chroma was trained
    with. Casting it to float here would reproduce the pipeline's numbers, 3 % apart on the tiny model.
    """
    keep = batch_rows(text_mask.to(torch.bool), batch)
    return torch.cat([keep, torch.ones(batch, n_image, dtype=torch.bool, device=keep.device)], dim=1)


class ChromaFamily(FluxFamily):
    """ChromaTransformer2DModel: Flux's double- and single-stream blocks, counted on in one sequence.

    Differences from Flux that the catalog sees: a single block returns the joint [text; image] tensor
    (not a (text, image) tuple), so its image tokens are the last N. No pooled text, no guidance input.
    Attention maps are not offered: the explicit map processor ignores the attention mask, and Chroma
    masks the padding tokens, so its maps would not be the model's.
    """

    name, class_name = 'chroma', 'ChromaTransformer2DModel'
    maps = False                            # (see above)
    single_out = dict(image_tokens='last')  # one [text; image] tensor

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

"""Prompt conditioning, encoded once and cached; the text encoders are not kept.

SD1.x/2.x condition on the last hidden state of one CLIP text encoder; SDXL and Playground v2 on the
penultimate hidden states of two encoders concatenated, plus the second encoder's pooled projection
and the micro-conditioning time ids (original size, crop offset, target size) of the working size.
Which applies is data in the zoo entry (``TextEncoderSpec``, ``ModelSpec.time_ids``).
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn

from .zoo import ModelSpec

__all__ = ['PromptConditioning', 'encode_prompt']


@torch.no_grad()
def encode_prompt(spec: ModelSpec, text_encoders: Sequence[nn.Module], tokenizers: Sequence,
                  prompt: str) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(1, L, D) prompt embeddings and the (1, P) pooled embedding (None when the model has none)."""
    hidden, pooled = [], None
    for te_spec, encoder, tokenize in zip(spec.text_encoders, text_encoders, tokenizers):
        device = next(encoder.parameters()).device
        out = encoder(tokenize(prompt).to(device), output_hidden_states=True)
        hidden.append(out.last_hidden_state if te_spec.hidden_layer == 'last' else out.hidden_states[-2])
        if te_spec.pooled:
            pooled = out.text_embeds
    return torch.cat(hidden, dim=-1).float(), (None if pooled is None else pooled.float())


class PromptConditioning(nn.Module):
    """Cached conditioning for one prompt, expanded to any batch at call time.

    The embeddings are non-persistent buffers: they follow ``.to()`` but are not written into
    checkpoints (they are recomputed from the prompt when the backbone is built).
    """

    def __init__(self, spec: ModelSpec, text_encoders: Sequence[nn.Module], tokenizers: Sequence, prompt: str):
        super().__init__()
        self.prompt = prompt
        self.time_ids = spec.time_ids
        embeds, pooled = encode_prompt(spec, text_encoders, tokenizers, prompt)
        self.register_buffer('prompt_embeds', embeds, persistent=False)
        self.register_buffer('pooled_embeds', pooled, persistent=False)

    @property
    def n_tokens(self) -> int:
        return self.prompt_embeds.shape[1]

    def denoiser_kwargs(self, batch: int, image_hw: tuple[int, int], dtype: torch.dtype) -> dict:
        """Keyword arguments for the denoiser forward, for ``batch`` images of working size ``image_hw``."""
        kwargs = {'encoder_hidden_states': self.prompt_embeds.to(dtype).expand(batch, -1, -1)}
        if self.pooled_embeds is not None or self.time_ids:
            added = {}
            if self.pooled_embeds is not None:
                added['text_embeds'] = self.pooled_embeds.to(dtype).expand(batch, -1)
            if self.time_ids:
                h, w = image_hw  # original size, crop (0, 0), target size: the working size itself
                ids = torch.tensor([h, w, 0, 0, h, w], device=self.prompt_embeds.device, dtype=dtype)
                added['time_ids'] = ids.expand(batch, -1)
            kwargs['added_cond_kwargs'] = added
        return kwargs

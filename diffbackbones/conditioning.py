"""Prompt conditioning, encoded once and cached; the text encoders are not kept.

SD1.x/2.x condition on the last hidden state of one CLIP text encoder; SDXL and Playground v2 on the
penultimate hidden states of two encoders concatenated, plus the second encoder's pooled projection
and the micro-conditioning time ids (original size, crop offset, target size) of the working size.
Which applies is data in the zoo entry (``TextEncoderSpec``, ``ModelSpec.time_ids``).
"""
from __future__ import annotations

import contextlib
from typing import Iterator, Sequence

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
    """Cached conditioning for one prompt (or a few named up front), expanded to any batch at call time.

    ``prompt`` is a string, or a sequence of strings all encoded here (the text encoders are gone
    afterwards); the first is active until ``using(p)`` selects another, e.g. one prompt per category
    ("a photo of a {category}", DIFT's correspondence protocol).

    The embeddings are non-persistent buffers: they follow ``.to()`` but are not written into
    checkpoints (they are recomputed from the prompt when the backbone is built).
    """

    def __init__(self, spec: ModelSpec, text_encoders: Sequence[nn.Module], tokenizers: Sequence,
                 prompt: str | Sequence[str]):
        super().__init__()
        prompts = (prompt,) if isinstance(prompt, str) else tuple(dict.fromkeys(prompt))
        if not prompts or not all(isinstance(p, str) for p in prompts):
            raise ValueError(f'prompt must be a string or a non-empty list of strings; got {prompt!r}')
        self.prompts, self.active = prompts, 0
        self.time_ids = spec.time_ids
        encoded = [encode_prompt(spec, text_encoders, tokenizers, p) for p in prompts]
        self.register_buffer('embeds_table', torch.cat([e for e, _ in encoded]), persistent=False)
        pooled = None if encoded[0][1] is None else torch.cat([p for _, p in encoded])
        self.register_buffer('pooled_table', pooled, persistent=False)

    @property
    def prompt(self) -> str:
        return self.prompts[self.active]

    @property
    def prompt_embeds(self) -> torch.Tensor:
        """(1, L, D) embeddings of the active prompt."""
        return self.embeds_table[self.active:self.active + 1]

    @property
    def pooled_embeds(self) -> torch.Tensor | None:
        return None if self.pooled_table is None else self.pooled_table[self.active:self.active + 1]

    @contextlib.contextmanager
    def using(self, prompt: str) -> Iterator[None]:
        """Condition on ``prompt`` (one of those given at construction) inside the block."""
        if prompt not in self.prompts:
            raise ValueError(f'prompt {prompt!r} was not encoded when the backbone was built (the text encoders are '
                             f'released then); encoded: {list(self.prompts)}. Pass every prompt you need as '
                             'prompt=[...] at construction.')
        previous, self.active = self.active, self.prompts.index(prompt)
        try:
            yield
        finally:
            self.active = previous

    @property
    def n_tokens(self) -> int:
        return self.embeds_table.shape[1]

    def denoiser_kwargs(self, batch: int, image_hw: tuple[int, int], dtype: torch.dtype) -> dict:
        """Keyword arguments for the denoiser forward, for ``batch`` images of working size ``image_hw``."""
        kwargs = {'encoder_hidden_states': self.prompt_embeds.to(dtype).expand(batch, -1, -1)}
        if self.pooled_table is not None or self.time_ids:
            added = {}
            if self.pooled_table is not None:
                added['text_embeds'] = self.pooled_embeds.to(dtype).expand(batch, -1)
            if self.time_ids:
                h, w = image_hw  # original size, crop (0, 0), target size: the working size itself
                ids = torch.tensor([h, w, 0, 0, h, w], device=self.embeds_table.device, dtype=dtype)
                added['time_ids'] = ids.expand(batch, -1)
            kwargs['added_cond_kwargs'] = added
        return kwargs

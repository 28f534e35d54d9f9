"""Prompt conditioning, encoded once (``text_encoders.py``) and kept as buffers; no text encoder is kept.

What a denoiser takes besides the noisy latent: the prompt's token embeddings, a pooled embedding
(SDXL, SD3, Flux), the T5 attention mask (PixArt), SDXL's micro-conditioning time ids, Flux-dev's
guidance scale, DiT's class label. Which apply is data in the zoo entry; how they become keyword
arguments is the denoiser family's business (``models/families/``).
"""
from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from typing import Any, Iterator, Literal, Mapping, Sequence

import torch
import torch.nn as nn

from .text_encoders import LONG_PROMPT_MODES, PromptEmbedding, encode_prompts
from diffbackbones.models.zoo import ModelSpec
from diffbackbones.utils.dtypes import as_dtype

__all__ = ['PromptConditioning', 'ConditioningStage']

NULL_CLASS = 1000  # DiT's "no class" label (classifier-free guidance's unconditional input)


class PromptConditioning(nn.Module):
    """Cached conditioning for one prompt (or a few named up front), expanded to any batch at call time.

    ``prompts`` and their ``embeddings`` (``text.encode_prompts``) were computed before; the first
    prompt is active until ``using(p)`` selects another, e.g. one prompt per category ("a photo of a
    {category}", DIFT's correspondence protocol).

    The embeddings are non-persistent buffers: they follow ``.to()`` but are not written into
    checkpoints (they are recomputed, or read from the prompt cache, when the backbone is built).
    """

    def __init__(self, spec: ModelSpec, prompts: Sequence[str], embeddings: Sequence[PromptEmbedding],
                 class_label: int | None = None):
        super().__init__()
        self.prompts, self.active = tuple(prompts), 0
        self.time_ids = spec.time_ids
        self.guidance = spec.guidance
        if class_label is not None and not spec.class_conditional:
            raise ValueError(f'class_label is for class-conditioned models (DiT); {spec.name!r} takes a prompt.')
        label = NULL_CLASS if class_label is None else class_label
        if not (isinstance(label, int) and 0 <= label <= NULL_CLASS):
            raise ValueError(f'class_label must be an ImageNet class in [0, 1000) or {NULL_CLASS} (the null class); '
                             f'got {class_label!r}')
        self.class_label = label
        # On the device the model is built on: embeddings read from the prompt cache are CPU tensors, and
        # a backbone built under `with torch.device('meta')` (or 'cuda') needs them beside its weights.
        device = torch.get_default_device()
        table = lambda parts: None if parts[0] is None else torch.cat(parts).to(device)  # noqa: E731
        self.register_buffer('embeds_table', table([e.embeds for e in embeddings]), persistent=False)
        self.register_buffer('pooled_table', table([e.pooled for e in embeddings]), persistent=False)
        self.register_buffer('mask_table', table([e.mask for e in embeddings]), persistent=False)

    @classmethod
    def given(cls, spec: ModelSpec, prompt: str | Sequence[str], embeds) -> 'PromptConditioning':
        """Conditioning from embeddings computed elsewhere (``ConditioningStage.prompt_embeds``): no text encoder."""
        prompts = (prompt,) if isinstance(prompt, str) else tuple(prompt)
        return cls(spec, prompts, _given_embeddings(spec, embeds, len(prompts)))

    @classmethod
    def encode(cls, spec: ModelSpec, source: str | None, prompt: str | Sequence[str], dtype: torch.dtype,
               cache: bool | str = True, class_label: int | None = None,
               long_prompt: str = 'truncate', encoder_dtype: torch.dtype | None = None,
               encoder_device: str | None = None) -> 'PromptConditioning':
        """Encode ``prompt`` (one or a list) with the model's text encoders (``text.encode_prompts``:
        one at a time, or none when the embeddings are cached) from ``source`` (None: random weights);
        ``long_prompt`` as ``ConditioningStage``'s."""
        from diffbackbones.models.loading import from_pretrained
        prompts = (prompt,) if isinstance(prompt, str) else tuple(dict.fromkeys(prompt))
        if not prompts or not all(isinstance(p, str) for p in prompts):
            raise ValueError(f'prompt must be a string or a non-empty list of strings; got {prompt!r}')
        embeddings = encode_prompts(spec, source, prompts, dtype, from_pretrained, cache, long_prompt, encoder_dtype,
                                    encoder_device)
        return cls(spec, prompts, embeddings, class_label)

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

    @property
    def attention_mask(self) -> torch.Tensor | None:
        """(1, L) token mask of the active prompt, for denoisers that take one (PixArt)."""
        return None if self.mask_table is None else self.mask_table[self.active:self.active + 1]

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

    # VPD's class_embed_select: a conditioning that picks each image's context by a class id sets this
    # (mmseg's DepthEstimator then passes (images, category ids) to the backbone)
    selects_per_image = False

    @contextlib.contextmanager
    def per_image(self, class_ids: torch.Tensor | None, batch: int) -> Iterator[None]:
        """Condition image i of the batch on class ``class_ids[i]`` inside the block (``selects_per_image``
        conditionings); ``None``: the conditioning as built, for every image."""
        if class_ids is not None:
            raise ValueError(f'per-image class ids were given with the images, but {type(self).__name__} does not '
                             "select a context per image: use conditioning=dict(type='vpd-classes', "
                             'class_names=[...], class_embed_select=True), or pass the images alone.')
        yield

    @property
    def n_tokens(self) -> int:
        """Tokens of the text sequence (the cross-attention context): the zoo's count, or more for a
        long prompt with ``long_prompt='chunks'`` / ``'rewrap'``."""
        return self.embeds_table.shape[1]


@dataclass
class ConditioningStage:
    """The conditioning stage: what the denoiser is conditioned on; ``conditioning=dict(prompt='a photo')``.

    Args:
        prompt: Text prompt, encoded once at construction; the text encoders are loaded one at a time
            and released. A list of prompts encodes them all; the first is active until
            ``backbone.conditioning.using(p)`` selects another (per-category prompts, as DIFT's protocol).
        cache: Cache the prompt embeddings on disk (True: ``$DIFFBACKBONES_CACHE/prompts``, or a folder),
            keyed by model, weights source, dtype, prompt and long-prompt mode: a second build with the
            same ones loads no text encoder. False: always encode.
        class_label: Class-conditioned models (DiT): the ImageNet class, 1000 (the null class) by default.
        long_prompt: A prompt longer than a CLIP encoder's window (77 tokens): ``'truncate'`` cuts it
            there, as the diffusers pipelines do; ``'chunks'`` encodes its ids in consecutive windows of 77
            and joins them along tokens (the paper's ``encode_long_prompt.py``: 200 tokens give 200);
            ``'rewrap'`` puts BOS/EOS around each 75 tokens and pads each window to 77 (A1111/compel: 200
            tokens give 231). The pooled embedding (SDXL) is the first window's; every prompt of a list
            is encoded to the longest one's count. T5/mT5/BERT encoders always cut at their own limit.
            A ``LongPromptWarning`` names each cut, once per prompt.
        prompt_embeds: Embeddings encoded elsewhere, instead of any text encoder: a (N, L, D) tensor (one row per
            prompt of ``prompt``), or a dict with ``embeds`` and, where the model takes them, ``mask`` (N, L) and
            ``pooled`` (N, P), or the path of a ``.safetensors`` file with those keys (the prompt cache's format).
        encoder_dtype: Where the model's own pipeline encodes (the language-model encoders of Qwen-Image, FLUX.2,
            Z-Image, ...): their dtype, ``'bf16'`` by default for pretrained weights (the backbone's for random ones).
        encoder_device: And where they run: ``'cpu'``, ``'cuda'``, ``'cuda:1'``; None: the GPU when there is one. FLUX.2
            [dev]'s Mistral takes 43.5 GiB in bf16: on a 48 GB GPU, encode on the CPU once (the cache keeps it).
    """

    prompt: str | Sequence[str] = ''
    cache: bool | str = True
    class_label: int | None = None
    long_prompt: Literal['truncate', 'chunks', 'rewrap'] = 'truncate'
    prompt_embeds: Any = None
    encoder_dtype: str | torch.dtype | None = None
    encoder_device: str | None = None

    def __post_init__(self):
        prompts = (self.prompt,) if isinstance(self.prompt, str) else tuple(self.prompt or ())
        if not prompts or not all(isinstance(p, str) for p in prompts):
            raise ValueError(f'prompt must be a string or a non-empty list of strings; got {self.prompt!r}')
        if self.encoder_dtype is not None:
            self.encoder_dtype = as_dtype(self.encoder_dtype, 'encoder_dtype')
        if self.long_prompt not in LONG_PROMPT_MODES:
            raise ValueError(f'long_prompt must be one of {list(LONG_PROMPT_MODES)} (chunks: the paper\'s '
                             f'encode_long_prompt.py); got {self.long_prompt!r}')

    def build(self, spec: ModelSpec, source: str | None, dtype: torch.dtype) -> PromptConditioning:
        """Encode the prompts with the model's text encoders from ``source`` (None: random weights)."""
        if self.prompt_embeds is not None:
            return PromptConditioning.given(spec, self.prompt, self.prompt_embeds)
        return PromptConditioning.encode(spec, source, self.prompt, dtype, self.cache, self.class_label,
                                         self.long_prompt, self.encoder_dtype, self.encoder_device)


def _given_embeddings(spec: ModelSpec, embeds, n_prompts: int) -> list[PromptEmbedding]:
    """``prompt_embeds`` (a tensor, a dict or a .safetensors path) as one ``PromptEmbedding`` per prompt, checked."""
    if isinstance(embeds, (str, os.PathLike)):
        from safetensors.torch import load_file
        embeds = load_file(os.fspath(embeds))
    parts = dict(embeds) if isinstance(embeds, Mapping) else {'embeds': embeds}
    unknown = set(parts) - {'embeds', 'mask', 'pooled'}
    if unknown or not torch.is_tensor(parts.get('embeds')) or parts['embeds'].ndim != 3:
        raise ValueError('prompt_embeds must be a (N, L, D) tensor, or a dict (or .safetensors file) with "embeds" '
                         f'(N, L, D) and optionally "mask" (N, L) and "pooled" (N, P); got {_describe(embeds)}')
    n, length, width = parts['embeds'].shape
    if n != n_prompts:
        raise ValueError(f'prompt_embeds has {n} rows for {n_prompts} prompt(s): give one row per prompt of '
                         '`prompt` (the prompts name the rows for conditioning.using(...)).')
    if spec.prompt_pipeline is not None:
        from diffbackbones.models.families import family_by_class
        from diffbackbones.models.zoo import load_config
        expected = family_by_class(spec.architecture).text_channels(load_config(spec, spec.denoiser_component))
        if width != expected:
            raise ValueError(f'prompt_embeds are {width} wide; {spec.name!r} takes {expected}-wide embeddings from '
                             f'{spec.prompt_pipeline.pipeline}.encode_prompt.')
    if any(te.pooled for te in spec.text_encoders) and parts.get('pooled') is None:
        raise ValueError(f'{spec.name!r} also takes a pooled text embedding: give prompt_embeds=dict(embeds=..., '
                         'pooled=...).')
    mask = parts.get('mask')
    if mask is not None and tuple(mask.shape) != (n, length):
        raise ValueError(f'prompt_embeds["mask"] must be (N, L) = {(n, length)}; got {tuple(mask.shape)}')
    pick = lambda x, i: None if x is None else x[i:i + 1]  # noqa: E731
    return [PromptEmbedding(parts['embeds'][i:i + 1].float(), pick(parts.get('pooled'), i),
                            pick(None if mask is None else mask.long(), i)) for i in range(n)]


def _describe(value) -> str:
    if torch.is_tensor(value):
        return f'a tensor of shape {tuple(value.shape)}'
    if isinstance(value, Mapping):
        return f'a dict with keys {sorted(value)}'
    return f'a {type(value).__name__}'

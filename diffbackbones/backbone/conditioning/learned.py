"""Conditioning that trains: the cross-attention context as parameters (the VPD line).

Two variants of the conditioning stage (``stages.py``), each building a ``PromptConditioning`` the
families already read (``prompt_embeds``, ``pooled_embeds``, ``attention_mask``, ``n_tokens``,
``time_ids``, ``guidance``), whose context is computed from parameters with their graph kept:

- ``conditioning=dict(type='learned', tokens=8, init='prompt', prompt='a photo')``: N context tokens
  that are parameters, initialised from the prompt's first N encoded tokens or at random at the scale
  of its embedding;
- ``conditioning=dict(type='vpd-classes', class_names=[...], gamma=1e-4)``: VPD's form (Zhao et al.
  2023): one fixed embedding per class, read through a trained ``TextAdapter``, x + gamma * MLP(x).

The trained tensors are persistent: they are in ``state_dict()`` (lean checkpoints keep them, being
outside the frozen ``vae.``/``denoiser.`` prefixes) and load back. The pooled embedding that SDXL, SD3
and Flux also take stays the prompt's, fixed (``learn_pooled=True`` trains it too, 'learned' only): it
modulates every block through the timestep embedding (AdaLN in SD3/Flux), a global lever VPD leaves
alone, where the context tokens act only through cross-attention.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Literal, Sequence

import torch
import torch.nn as nn

from .prompt import PromptConditioning
from .text_encoders import PromptEmbedding, _tokenizer, encode_prompts
from diffbackbones.models.zoo import ModelSpec

__all__ = ['LearnedConditioning', 'LearnedConditioningStage', 'TextAdapter', 'VpdClassConditioning',
           'VpdClassesStage', 'VPD_TEMPLATES', 'class_embeddings']

# The 80 CLIP ImageNet prompt templates VPD averages each class's embedding over
# (wl-zhao/VPD depth/dump_nyu_text_embeddings.py).
VPD_TEMPLATES: tuple[str, ...] = (
    'a bad photo of a {}.', 'a photo of many {}.', 'a sculpture of a {}.', 'a photo of the hard to see {}.',
    'a low resolution photo of the {}.', 'a rendering of a {}.', 'graffiti of a {}.', 'a bad photo of the {}.',
    'a cropped photo of the {}.', 'a tattoo of a {}.', 'the embroidered {}.', 'a photo of a hard to see {}.',
    'a bright photo of a {}.', 'a photo of a clean {}.', 'a photo of a dirty {}.', 'a dark photo of the {}.',
    'a drawing of a {}.', 'a photo of my {}.', 'the plastic {}.', 'a photo of the cool {}.',
    'a close-up photo of a {}.', 'a black and white photo of the {}.', 'a painting of the {}.',
    'a painting of a {}.', 'a pixelated photo of the {}.', 'a sculpture of the {}.', 'a bright photo of the {}.',
    'a cropped photo of a {}.', 'a plastic {}.', 'a photo of the dirty {}.', 'a jpeg corrupted photo of a {}.',
    'a blurry photo of the {}.', 'a photo of the {}.', 'a good photo of the {}.', 'a rendering of the {}.',
    'a {} in a video game.', 'a photo of one {}.', 'a doodle of a {}.', 'a close-up photo of the {}.',
    'a photo of a {}.', 'the origami {}.', 'the {} in a video game.', 'a sketch of a {}.', 'a doodle of the {}.',
    'a origami {}.', 'a low resolution photo of a {}.', 'the toy {}.', 'a rendition of the {}.',
    'a photo of the clean {}.', 'a photo of a large {}.', 'a rendition of a {}.', 'a photo of a nice {}.',
    'a photo of a weird {}.', 'a blurry photo of a {}.', 'a cartoon {}.', 'art of a {}.', 'a sketch of the {}.',
    'a embroidered {}.', 'a pixelated photo of a {}.', 'itap of the {}.', 'a jpeg corrupted photo of the {}.',
    'a good photo of a {}.', 'a plushie {}.', 'a photo of the nice {}.', 'a photo of the small {}.',
    'a photo of the weird {}.', 'the cartoon {}.', 'art of the {}.', 'a drawing of the {}.',
    'a photo of the large {}.', 'a black and white photo of a {}.', 'the plushie {}.', 'a dark photo of a {}.',
    'itap of a {}.', 'graffiti of the {}.', 'a toy {}.', 'itap of my {}.', 'a photo of a cool {}.',
    'a photo of a small {}.', 'a tattoo of the {}.',
)

# Denoiser classes whose context is not one free-length token sequence: Hunyuan-DiT splits it into
# 77 BERT and 256 mT5 tokens, and attention-pools the mT5 part with a positional table of that length.
_FIXED_CONTEXT = {'HunyuanDiT2DModel': 'its context is 77 BERT + 256 mT5 tokens of fixed lengths '
                                       '(the mT5 part is attention-pooled with a positional table of that length)'}
_CLASS_BATCH = 400  # prompts encoded per encode_prompts call (memory: each keeps its whole sequence)


def _check_text_model(spec: ModelSpec, variant: str) -> None:
    if spec.class_conditional or not any(te.sequence for te in spec.text_encoders):
        raise ValueError(f"conditioning type {variant!r} trains the cross-attention context, and {spec.name!r} has "
                         "none (a class-conditioned model, DiT): use conditioning=dict(class_label=...) instead.")
    reason = _FIXED_CONTEXT.get(spec.architecture)
    if reason:
        raise ValueError(f'conditioning type {variant!r} is not supported on {spec.name!r}: {reason}. '
                         "Use conditioning=dict(prompt=...) there.")


def _encode_one(spec: ModelSpec, source: str | None, prompt: str, dtype: torch.dtype,
                cache: bool | str) -> PromptEmbedding:
    from diffbackbones.models.loading import from_pretrained
    return encode_prompts(spec, source, [prompt], dtype, from_pretrained, cache)[0]


class TrainedContext(PromptConditioning):
    """A context that is trained rather than encoded from a prompt: one context of ``n_tokens`` tokens."""

    @property
    def attention_mask(self) -> torch.Tensor | None:
        """All ones over the tokens, for denoisers that take a mask (PixArt); None otherwise."""
        if self.mask_table is None:
            return None
        return torch.ones(1, self.n_tokens, dtype=self.mask_table.dtype, device=self.mask_table.device)

    @contextlib.contextmanager
    def using(self, prompt: str) -> Iterator[None]:
        raise ValueError(f'{type(self).__name__} has one trained context, not one per prompt (asked for {prompt!r}); '
                         "per-prompt conditioning needs conditioning=dict(prompt=[...]).")
        yield  # pragma: no cover


class LearnedConditioning(TrainedContext):
    """N context tokens that are parameters (``tokens``, fp32 whatever the backbone's dtype: they are the
    master copy an optimizer updates; the families cast them per call, with the graph).

    The prompt it was built from stays as ``prompt`` (its encoding in the non-persistent ``embeds_table``);
    its pooled embedding, fixed, is ``pooled_embeds`` unless ``learn_pooled``. T5 families get an
    all-ones attention mask over the N tokens; ``n_tokens`` is N, so the catalog's cross-attention maps
    have N columns.
    """

    def __init__(self, spec: ModelSpec, prompt: str, embedding: PromptEmbedding, tokens: int,
                 init: str = 'prompt', seed: int = 0, learn_pooled: bool = False):
        super().__init__(spec, (prompt,), (embedding,))
        device, source = self.embeds_table.device, self.embeds_table[0].float()
        if init == 'prompt':
            if tokens > source.shape[0]:
                raise ValueError(f"init='prompt' copies the first tokens={tokens} of the encoded prompt, which has "
                                 f"{source.shape[0]} on {spec.name!r}: use tokens<={source.shape[0]}, or init='random'.")
            value = source[:tokens].clone()
        else:  # seeded, at the scale of a real embedding (the prompt's; the empty prompt by default)
            g = torch.Generator().manual_seed(seed)
            std = source.std().item() if source.device.type != 'meta' else 1.0  # meta: shapes only
            value = (torch.randn(tokens, source.shape[-1], generator=g, device='cpu') * std).to(device)
        self.tokens = nn.Parameter(value)
        self.pooled = None
        if learn_pooled:
            if self.pooled_table is None:
                raise ValueError(f'learn_pooled=True: {spec.name!r} takes no pooled embedding (only SDXL, SD3 and '
                                 'Flux do); leave learn_pooled False.')
            self.pooled = nn.Parameter(self.pooled_table.float().clone())

    @property
    def prompt_embeds(self) -> torch.Tensor:
        """(1, N, D) the learned tokens, with their graph (gradients reach ``tokens``)."""
        return self.tokens[None]

    @property
    def pooled_embeds(self) -> torch.Tensor | None:
        return self.pooled if self.pooled is not None else super().pooled_embeds

    @property
    def n_tokens(self) -> int:
        return self.tokens.shape[0]



class TextAdapter(nn.Module):
    """VPD's adapter: x + gamma * MLP(x), MLP = Linear, GELU, Linear at the embedding width; ``gamma`` is a
    per-channel parameter (VPD: 1e-4), so training starts at the class embeddings themselves."""

    def __init__(self, width: int, gamma: float = 1e-4):
        super().__init__()
        self.fc = nn.Sequential(nn.Linear(width, width), nn.GELU(), nn.Linear(width, width))
        self.gamma = nn.Parameter(torch.full((width,), float(gamma)))

    def forward(self, texts: torch.Tensor) -> torch.Tensor:
        return texts + self.gamma * self.fc(texts)


class VpdClassConditioning(TrainedContext):
    """VPD's context: the K class embeddings (a persistent buffer, so a checkpoint carries the embeddings its
    adapter was trained on) through a trained ``TextAdapter``; K context tokens (``n_tokens``).

    With ``select`` (VPD's ``class_embed_select``) each image gets one token instead: the adapted embedding
    of its own class, chosen by the class ids given with the batch (``per_image``); class -1, or no ids,
    takes the mean of the K embeddings, as VPD's table row K does.

    ``pooled_embeds`` (SDXL, SD3, Flux) is the fixed pooled embedding of the stage's ``prompt``.
    """

    def __init__(self, spec: ModelSpec, prompt: str, embedding: PromptEmbedding, embeddings: torch.Tensor,
                 gamma: float = 1e-4, select: bool = False):
        super().__init__(spec, (prompt,), (embedding,))
        width = self.embeds_table.shape[-1]
        if embeddings.ndim != 2 or embeddings.shape[0] == 0 or embeddings.shape[1] != width:
            raise ValueError(f'class embeddings must be a (K, D) tensor with D={width}, the context width of '
                             f'{spec.name!r}; got shape {tuple(embeddings.shape)}.')
        self.register_buffer('class_embeddings', embeddings.float().to(self.embeds_table.device))
        self.text_adapter = TextAdapter(width, gamma).to(self.embeds_table.device)
        self.selects_per_image = bool(select)
        self.selected: torch.Tensor | None = None  # class ids of the batch being extracted (per_image)

    @property
    def prompt_embeds(self) -> torch.Tensor:
        """The adapted class embeddings, with their graph (gradients reach the adapter): (1, K, D), or with
        ``select`` (B, 1, D), one per image (1 row, the mean's, when no ids were given)."""
        if not self.selects_per_image:
            return self.text_adapter(self.class_embeddings)[None]
        table = torch.cat([self.class_embeddings, self.class_embeddings.mean(0, keepdim=True)])  # row K = row -1
        ids = self.selected if self.selected is not None else torch.full((1,), -1, device=table.device)
        return self.text_adapter(table[ids.to(table.device)])[:, None]

    @contextlib.contextmanager
    def per_image(self, class_ids: torch.Tensor | None, batch: int) -> Iterator[None]:
        if class_ids is None or not self.selects_per_image:
            with super().per_image(class_ids, batch):
                yield
            return
        ids = (class_ids if torch.is_tensor(class_ids) else torch.tensor(class_ids, device='cpu')).long().reshape(-1)
        k = self.class_embeddings.shape[0]
        if ids.numel() != batch or bool(((ids < -1) | (ids >= k)).any()):
            raise ValueError(f'class ids must be one per image ({batch}), each in [0, {k}) or -1 (unknown: the mean '
                             f'embedding); got {ids.tolist()}')
        previous, self.selected = self.selected, ids
        try:
            yield
        finally:
            self.selected = previous

    @property
    def n_tokens(self) -> int:
        return 1 if self.selects_per_image else self.class_embeddings.shape[0]


def cached_class_embeddings(spec: ModelSpec, source: str | None, class_names: Sequence[str], dtype: torch.dtype,
                            templates: Sequence[str] = VPD_TEMPLATES, cache: bool | str = True) -> torch.Tensor:
    """``class_embeddings``, kept as one file per (model, weights, dtype, names, templates) once computed:
    K x 80 text-encoder runs (NYU's 27 scenes: 2160) happen once, as VPD dumps its table once.

    ``cache``: True (the prompt cache's folder, ``$DIFFBACKBONES_CACHE``), a folder, or False (always encode).
    """
    if cache is False:
        return class_embeddings(spec, source, class_names, dtype, templates)
    from safetensors.torch import load_file
    from diffbackbones.utils.cache import save_atomically
    from .text_encoders import prompt_cache_dir
    folder = prompt_cache_dir() if cache is True else Path(cache)
    key = hashlib.sha256(json.dumps([spec.name, 'random' if source is None else source, str(dtype),
                                     list(class_names), list(templates)]).encode()).hexdigest()[:32]
    path = folder / f'classes-{key}.safetensors'
    try:
        return load_file(path)['class_embeddings']
    except Exception:  # absent, truncated or corrupted: encode again
        pass
    table = class_embeddings(spec, source, class_names, dtype, templates)
    if not table.is_meta:  # built on the meta device: no values to keep
        path.parent.mkdir(parents=True, exist_ok=True)
        save_atomically({'class_embeddings': table.contiguous()}, path)
    return table


def class_embeddings(spec: ModelSpec, source: str | None, class_names: Sequence[str], dtype: torch.dtype,
                     templates: Sequence[str] = VPD_TEMPLATES, cache: bool | str = False) -> torch.Tensor:
    """(K, D) one embedding per class, as VPD makes them: each template filled with the class name,
    encoded, the end-of-text token's hidden state taken, and averaged over the templates.

    The token is read from the context the denoiser sees (``text.encode_prompts``), at the end-of-text
    position of the first encoder of the sequence: for SD1.x that is CLIP's ``pooler_output``, exactly
    VPD's; SDXL, SD3 (its CLIP part, zero-padded to the T5 width), PixArt and Flux (T5's ``</s>``) take
    the same token of their own context.

    Args:
        spec: The zoo entry.
        source: Weights source (None: random weights, as ``pretrained=False``).
        class_names: The K class names.
        dtype: Encoder dtype.
        templates: Prompt templates with one ``{}``; VPD's 80 by default.
        cache: The prompt cache (``encode_prompts``): off by default, K x templates files would be written.
    """
    first = min((te for te in spec.text_encoders if te.sequence), key=lambda te: te.group)
    tokenizer = _tokenizer(spec, first, source)
    prompts = [t.format(name) for name in class_names for t in templates]
    from diffbackbones.models.loading import from_pretrained
    rows = []
    for start in range(0, len(prompts), _CLASS_BATCH):  # each call loads the encoders once
        chunk = prompts[start:start + _CLASS_BATCH]
        for prompt, emb in zip(chunk, encode_prompts(spec, source, chunk, dtype, from_pretrained, cache)):
            eos = min(len(tokenizer.full(prompt)), first.max_length) - 1
            rows.append(emb.embeds[0, eos].float())
    return torch.stack(rows).view(len(class_names), len(templates), -1).mean(1)


@dataclass
class LearnedConditioningStage:
    """``conditioning=dict(type='learned', tokens=8)``: the cross-attention context is N trained tokens.

    Args:
        tokens: N, the learned context tokens (the cross-attention maps then have N columns).
        init: ``'prompt'``: the first N tokens of ``prompt``'s encoding (the text encoders run once, as
            for a prompt); ``'random'``: seeded Gaussian values at the standard deviation of ``prompt``'s
            encoding (the empty prompt by default: the scale of a real embedding).
        prompt: The prompt the tokens start from (``init='prompt'``) or take their scale from; its pooled
            embedding is what SDXL, SD3 and Flux get.
        seed: The seed of ``init='random'``.
        learn_pooled: Train the pooled embedding too (SDXL, SD3, Flux), starting from ``prompt``'s. Off by
            default: it modulates every block, not just cross-attention.
        cache: The prompt cache, as ``ConditioningStage``'s.
    """

    tokens: int = 8
    init: Literal['prompt', 'random'] = 'prompt'
    prompt: str = ''
    seed: int = 0
    learn_pooled: bool = False
    cache: bool | str = True

    def __post_init__(self):
        if isinstance(self.tokens, bool) or not isinstance(self.tokens, int) or self.tokens < 1:
            raise ValueError(f"learned conditioning tokens must be a positive integer (the context's length); "
                             f'got {self.tokens!r}')
        if self.init not in ('prompt', 'random'):
            raise ValueError(f"learned conditioning init must be 'prompt' or 'random'; got {self.init!r}")
        if not isinstance(self.prompt, str):
            raise ValueError(f'learned conditioning prompt must be one string; got {self.prompt!r}')

    def build(self, spec: ModelSpec, source: str | None, dtype: torch.dtype) -> LearnedConditioning:
        _check_text_model(spec, 'learned')
        embedding = _encode_one(spec, source, self.prompt, dtype, self.cache)
        return LearnedConditioning(spec, self.prompt, embedding, self.tokens, self.init, self.seed, self.learn_pooled)


@dataclass
class VpdClassesStage:
    """``conditioning=dict(type='vpd-classes', class_names=[...])``: VPD's class-embedding context.

    Args:
        class_names: The dataset's class names, encoded with the model's own text encoders
            (``class_embeddings``: VPD's 80 templates averaged, by default).
        class_embeddings: Or a ``.pth`` file holding a (K, D) tensor (VPD ships its ADE20K and NYU ones), D
            the model's context width. Give one of the two.
        gamma: The adapter's initial per-channel gamma (VPD: 1e-4; 0 starts at the raw embeddings exactly).
        templates: Prompt templates with one ``{}``, averaged per class; VPD's 80 by default (K x 80 text
            encoder runs, once: save ``conditioning.class_embeddings`` and pass the file next time).
        class_embed_select: VPD's per-image selection: each image's context is its own class's adapted
            embedding (one token), the class ids coming with the batch as mmseg's ``DepthEstimator`` passes
            them, ``backbone((images, ids))``; id -1 (an unknown scene) takes the mean embedding.
        prompt: Whose pooled embedding SDXL, SD3 and Flux get (fixed).
        cache: Where the (K, D) table is kept once encoded from ``class_names`` (``cached_class_embeddings``):
            True (the prompt cache's folder), a folder, or False. ``prompt``'s embedding uses the prompt cache.
    """

    class_names: Sequence[str] | None = None
    class_embeddings: str | None = None
    gamma: float = 1e-4
    templates: Sequence[str] = VPD_TEMPLATES
    class_embed_select: bool = False
    prompt: str = ''
    cache: bool | str = True

    def __post_init__(self):
        if (self.class_names is None) == (self.class_embeddings is None):
            raise ValueError("vpd-classes conditioning needs class_names=[...] or class_embeddings='file.pth' "
                             f'(one of the two); got class_names={self.class_names!r}, '
                             f'class_embeddings={self.class_embeddings!r}')
        if self.class_names is not None:
            if isinstance(self.class_names, str) or not self.class_names or not all(
                    isinstance(n, str) and n for n in self.class_names):
                raise ValueError(f'class_names must be a non-empty list of non-empty strings; got {self.class_names!r}')
            self.class_names = tuple(self.class_names)
        self.templates = (self.templates,) if isinstance(self.templates, str) else tuple(self.templates)
        if not self.templates or not all(isinstance(t, str) and t.count('{}') == 1 for t in self.templates):
            raise ValueError(f"templates must be strings with one '{{}}' for the class name, e.g. 'a photo of a {{}}.'; "
                             f'got {self.templates!r}')
        if isinstance(self.gamma, bool) or not isinstance(self.gamma, (int, float)):
            raise ValueError(f'gamma must be a number (VPD: 1e-4); got {self.gamma!r}')
        if not isinstance(self.class_embed_select, bool):
            raise ValueError(f'class_embed_select must be True or False; got {self.class_embed_select!r}')

    def build(self, spec: ModelSpec, source: str | None, dtype: torch.dtype) -> VpdClassConditioning:
        _check_text_model(spec, 'vpd-classes')
        embedding = _encode_one(spec, source, self.prompt, dtype, self.cache)
        if self.class_embeddings is not None:
            path = Path(self.class_embeddings)
            if not path.is_file():
                raise ValueError(f'class_embeddings file {str(path)!r} not found (a .pth holding a (K, D) tensor)')
            embeddings = torch.load(path, map_location='cpu', weights_only=True)
            if not isinstance(embeddings, torch.Tensor):
                raise ValueError(f'{str(path)!r} holds a {type(embeddings).__name__}; class_embeddings must be a '
                                 'file holding one (K, D) tensor (torch.save(tensor, path)).')
        else:
            embeddings = cached_class_embeddings(spec, source, self.class_names, dtype, self.templates, self.cache)
        return VpdClassConditioning(spec, self.prompt, embedding, embeddings, self.gamma, self.class_embed_select)

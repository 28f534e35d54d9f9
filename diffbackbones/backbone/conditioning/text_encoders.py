"""Prompt embeddings with as little text encoder in memory as possible, cached on disk.

T5-XXL alone is 4.8 B parameters, more than most denoisers. So each encoder is loaded on its own, in
the backbone's dtype, run on every prompt, and released before the next is loaded; the assembled
embeddings are written to a cache keyed by model, weights source, dtype and prompt, so building the
same backbone again loads no text encoder at all.

Prompts longer than an encoder's window (77 tokens for CLIP): ``long_prompt='truncate'`` cuts them
there, as the pipelines do; ``'chunks'`` encodes a CLIP encoder's untruncated ids in consecutive slices
of its window and joins the slices along tokens (the paper's ``encode_long_prompt.py``, after diffusers
issue #2136); ``'rewrap'`` wraps each run of 75 tokens in BOS/EOS and pads it to 77 (the A1111 / compel
convention). T5, mT5 and BERT encoders are always cut at their own limit. Wherever a prompt is cut, a
``LongPromptWarning`` says so, once per process, model and prompt; the cache file records the cut, so
a cached prompt warns too.

How a pipeline combines its encoders is data (``TextEncoderSpec``): encoders of one group are joined
along channels (SDXL's two CLIPs), groups along tokens after zero-padding to the widest (SD3's
[CLIP-L + CLIP-G; T5]); pooled embeddings are joined along channels (SD3: CLIP-L's and CLIP-G's).

Cache: ``$DIFFBACKBONES_CACHE/prompts`` (default ``~/.cache/diffbackbones/prompts``), one safetensors
file per prompt; ``prompt_cache=False`` on the backbone turns it off. With random weights
(``pretrained=False``) an encoder over ``RANDOM_ENCODER_LIMIT`` parameters is not built: its
embeddings are seeded Gaussian values of the exact shape (a random T5-XXL's output means nothing
either, and building one costs minutes and 19 GB). On the meta device no encoder is built at all.
"""
from __future__ import annotations

import gc
import hashlib
import json
import os
import re
import sys
import warnings
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import torch
import torch.nn.functional as F

from diffbackbones.models.zoo import ModelSpec, TextEncoderSpec, load_config

__all__ = ['PromptEmbedding', 'encode_prompts', 'prompt_cache_dir', 'TEXT_ENCODER_LOADS', 'HashTokenizer',
           'RANDOM_ENCODER_LIMIT', 'build_text_encoder', 'encoder_parameters', 'LONG_PROMPT_MODES',
           'LongPromptWarning']

RANDOM_ENCODER_LIMIT = 1_000_000_000
RANDOM_INIT_SEED = 0
# Every text encoder built or loaded, by (model, subfolder): tests count these to prove the cache works.
TEXT_ENCODER_LOADS: list[tuple[str, str]] = []
# How a prompt longer than a CLIP encoder's window is encoded (see the module docstring).
LONG_PROMPT_MODES = ('truncate', 'chunks', 'rewrap')
_WARNED: set[tuple[str, str, str]] = set()  # (model, mode, prompt) already warned about in this process
POOLED = ":pooled"  # suffix of a cut entry for the pooled embedding of a lengthened encoder


class LongPromptWarning(UserWarning):
    """A prompt was cut at a text encoder's token limit."""


@dataclass
class PromptEmbedding:
    """One prompt's conditioning: (1, L, D) sequence, (1, P) pooled or None, (1, L) mask or None."""

    embeds: torch.Tensor
    pooled: torch.Tensor | None
    mask: torch.Tensor | None
    cut: tuple[tuple[str, int], ...] = ()  # (encoder subfolder, the prompt's token count) where it was cut


class HashTokenizer:
    """Stand-in tokenizer for random-weight models (``pretrained=False``), which ship no vocabulary.

    A random text encoder gives meaningless embeddings whatever the ids, so exact BPE is moot; this
    maps each word to a stable id so different prompts still give different conditioning. Real
    weights always use the pipeline's own tokenizer.
    """

    def __init__(self, vocab_size: int, model_max_length: int = 77):
        self.vocab_size, self.model_max_length = vocab_size, model_max_length
        self.bos, self.eos = vocab_size - 2, vocab_size - 1  # as CLIP: eos is the largest id

    @property
    def pad_id(self) -> int:
        return self.eos

    def full(self, prompt: str) -> list[int]:
        """All the prompt's ids, BOS and EOS included, not truncated."""
        words = [zlib.crc32(w.encode()) % (self.vocab_size - 2) for w in re.findall(r"\w+|[^\w\s]", prompt.lower())]
        return [self.bos] + words + [self.eos]

    def __call__(self, prompt: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(1, model_max_length) ids, truncated and padded, and their mask."""
        words = self.full(prompt)[1:-1]
        ids = [self.bos] + words[: self.model_max_length - 2] + [self.eos]
        mask = [1] * len(ids) + [0] * (self.model_max_length - len(ids))
        ids += [self.eos] * (self.model_max_length - len(ids))
        return torch.tensor([ids]), torch.tensor([mask])


class _PipelineTokenizer:
    """A pipeline's own tokenizer with ``HashTokenizer``'s interface: ``(ids, mask) = tok(prompt)``
    truncated and padded to ``max_length`` as the pipelines call it; ``tok.full(prompt)`` all ids."""

    def __init__(self, tok, max_length: int):
        self.tok, self.model_max_length = tok, max_length
        self.bos, self.eos, self.pad_id = tok.bos_token_id, tok.eos_token_id, tok.pad_token_id

    def full(self, prompt: str) -> list[int]:
        return self.tok(prompt, truncation=False, verbose=False).input_ids  # verbose: no length warning

    def __call__(self, prompt: str) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.tok(prompt, padding='max_length', max_length=self.model_max_length, truncation=True,
                       return_tensors='pt')
        return out.input_ids, out.attention_mask


def prompt_cache_dir() -> Path:
    return Path(os.environ.get('DIFFBACKBONES_CACHE', Path.home() / '.cache' / 'diffbackbones')) / 'prompts'


def _cache_key(spec: ModelSpec, source: str, dtype: torch.dtype, prompt: str, layout: str = '') -> str:
    # layout: '' for long_prompt='truncate' (the keys of earlier releases stay valid), else the mode and,
    # for several prompts, a digest of them all (they share one token count)
    return hashlib.sha256(f'{spec.name}|{source}|{dtype}|{prompt}{layout}'.encode()).hexdigest()[:32]


def _read_cached(path: Path) -> PromptEmbedding | None:
    from safetensors import safe_open
    try:
        with safe_open(path, 'pt') as f:
            data = {k: f.get_tensor(k) for k in f.keys()}
            cut = json.loads((f.metadata() or {}).get('cut', '[]'))  # files of earlier releases have none
    except Exception:  # absent, truncated or corrupted: encode again
        return None
    return PromptEmbedding(data['embeds'], data.get('pooled'), data.get('mask'), tuple(map(tuple, cut)))


def _write_cached(path: Path, emb: PromptEmbedding) -> None:
    from diffbackbones.utils.cache import save_atomically
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.contiguous() for k, v in (('embeds', emb.embeds), ('pooled', emb.pooled), ('mask', emb.mask))
               if v is not None}
    save_atomically(tensors, path, metadata={'cut': json.dumps(emb.cut)})  # so a cached prompt still warns


_CLASSES = {'t5': 'T5EncoderModel', 'mt5': 'MT5EncoderModel', 'bert': 'BertModel'}
_CONFIGS = {'t5': 'T5Config', 'mt5': 'MT5Config', 'bert': 'BertConfig', 'clip': 'CLIPTextConfig'}


def _encoder_class(te: TextEncoderSpec):
    import transformers
    if te.kind == 'clip':
        return transformers.CLIPTextModelWithProjection if te.pooled == 'projected' else transformers.CLIPTextModel
    return getattr(transformers, _CLASSES[te.kind])


def _config(spec: ModelSpec, te: TextEncoderSpec):
    import transformers
    cfg = {k: v for k, v in load_config(spec, te.subfolder).items() if k not in ('architectures', 'model_type')}
    return getattr(transformers, _CONFIGS[te.kind])(**cfg)


def build_text_encoder(spec: ModelSpec, te: TextEncoderSpec, config=None):
    """One text encoder's architecture from its embedded config (random init; allocates nothing under
    ``torch.device('meta')``)."""
    return _encoder_class(te)(config if config is not None else _config(spec, te))


def encoder_parameters(spec: ModelSpec, te: TextEncoderSpec, config=None) -> int:
    """Parameter count of one text encoder, built on the meta device (nothing allocated)."""
    with torch.device('meta'):
        return sum(p.numel() for p in build_text_encoder(spec, te, config).parameters())


def _tokenizer(spec: ModelSpec, te: TextEncoderSpec, source: str | None) -> HashTokenizer | _PipelineTokenizer:
    """The encoder's tokenizer: the pipeline's own, or ``HashTokenizer`` for random weights."""
    if source is None:
        return HashTokenizer(_config(spec, te).vocab_size, te.max_length)
    from transformers import AutoTokenizer, CLIPTokenizer
    try:  # CLIP's slow tokenizer, as the pipelines (and earlier versions of this package) use it
        tok = (CLIPTokenizer if te.kind == 'clip' else AutoTokenizer).from_pretrained(
            source, subfolder=te.tokenizer_subfolder)
    except (OSError, ValueError) as e:
        from diffbackbones.models.loading import WeightsNotFoundError
        raise WeightsNotFoundError(f'Could not load the tokenizer {te.tokenizer_subfolder!r} of {spec.name!r} '
                                   f'from {source!r}: {e}') from e
    return _PipelineTokenizer(tok, te.max_length)


class _Loaded:
    """One text encoder and its tokenizer; ``run(prompt, seed, mode, length)`` encodes."""

    def __init__(self, spec: ModelSpec, te: TextEncoderSpec, source: str | None, dtype: torch.dtype,
                 load: Callable | None, tokenizer: HashTokenizer | _PipelineTokenizer):
        self.te, self.tokenize, self.random_shape = te, tokenizer, None
        if source is None:  # random weights
            config = _config(spec, te)
            # On the meta device (a backbone built to count or catalog) nothing holds values to run
            # (BERT's mask handling reads one): every encoder is then its output's shape only.
            on_meta = torch.empty(0).device.type == 'meta'
            if on_meta or encoder_parameters(spec, te, config) > RANDOM_ENCODER_LIMIT:
                width = getattr(config, 'd_model', None) or config.hidden_size
                pooled = config.projection_dim if te.pooled == 'projected' else width
                self.random_shape, self.pooled_width, self.model = width, pooled, None
            else:
                with torch.random.fork_rng(devices=[]):
                    torch.manual_seed(RANDOM_INIT_SEED)
                    self.model = build_text_encoder(spec, te, config).to(dtype).eval()
                TEXT_ENCODER_LOADS.append((spec.name, te.subfolder))
        else:
            self.model = load(_encoder_class(te), source, te.subfolder, spec, torch_dtype=dtype).eval()
            TEXT_ENCODER_LOADS.append((spec.name, te.subfolder))

    def _pieces(self, prompt: str, mode: str, length: int) -> list[tuple[list[int], list[int]]]:
        """The windows (ids, mask) that encode ``prompt`` to ``length`` tokens in ``mode``."""
        tok, window = self.tokenize, self.te.max_length
        full = tok.full(prompt)
        if mode == 'chunks':  # the paper's: consecutive slices of the window; the last may be shorter
            ids = full + [tok.pad_id] * (length - len(full))
            mask = [1] * len(full) + [0] * (length - len(full))
            return [(ids[i:i + window], mask[i:i + window]) for i in range(0, length, window)]
        body, run, pieces = full[1:-1], window - 2, []  # 'rewrap': BOS + 75 tokens + EOS, padded
        for start in range(0, length // window * run, run):
            piece = [tok.bos] + body[start:start + run] + [tok.eos]
            pad = window - len(piece)
            pieces.append((piece + [tok.pad_id] * pad, [1] * len(piece) + [0] * pad))
        return pieces

    def _encode(self, ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        device = next(self.model.parameters()).device
        kwargs = {'attention_mask': mask.to(device)} if self.te.mask else {}
        out = self.model(ids.to(device), output_hidden_states=True, **kwargs)
        hidden = out.last_hidden_state if self.te.hidden_layer == 'last' else out.hidden_states[-2]
        pooled = None
        if self.te.pooled == 'projected':
            pooled = out.text_embeds
        elif self.te.pooled == 'pooler':
            pooled = out.pooler_output
        return hidden, pooled

    @torch.no_grad()
    def run(self, prompt: str, seed: int, mode: str = 'truncate', length: int | None = None
            ) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor]:
        """(1, L, D) hidden states (None when not part of the sequence), (1, P) pooled or None, (1, L) mask.

        ``length``: the tokens to encode a long prompt to in ``mode`` (``'chunks'``, ``'rewrap'``); None:
        the window, the prompt cut there. The pooled embedding is always the window's (the prompt cut
        at the window, which is also the first chunk of ``'rewrap'``): one window is what it was trained on.
        """
        ids, mask = self.tokenize(prompt)
        pieces = None if length is None else self._pieces(prompt, mode, length)
        full_mask = mask if pieces is None else torch.tensor([[m for _, piece in pieces for m in piece]])
        if self.model is None:  # an oversized random encoder (or meta): seeded values of the right shape
            g = torch.Generator().manual_seed(seed)
            hidden = torch.randn(1, full_mask.shape[1], self.random_shape, generator=g)
            pooled = torch.randn(1, self.pooled_width, generator=g) if self.te.pooled else None
            return (hidden if self.te.sequence else None), pooled, full_mask
        hidden = pooled = None
        if pieces is None or self.te.pooled:
            hidden, pooled = self._encode(ids, mask)
        if pieces is not None:
            hidden = torch.cat([self._encode(torch.tensor([i]), torch.tensor([m]))[0] for i, m in pieces], dim=1)
        return (hidden.float() if self.te.sequence else None), (None if pooled is None else pooled.float()), full_mask


def _assemble(spec: ModelSpec, parts: Sequence[tuple]) -> PromptEmbedding:
    groups: dict[int, list[torch.Tensor]] = {}
    masks: dict[int, torch.Tensor] = {}
    pooled = []
    for te, (hidden, pool, m) in zip(spec.text_encoders, parts):
        if hidden is not None:
            groups.setdefault(te.group, []).append(hidden)
            if te.mask:
                masks[te.group] = m
        if pool is not None:
            pooled.append(pool)
    joined = [torch.cat(groups[g], dim=-1) for g in sorted(groups)]
    if joined:
        width = max(x.shape[-1] for x in joined)
        embeds = torch.cat([F.pad(x, (0, width - x.shape[-1])) for x in joined], dim=1)
    else:  # class-conditioned models (DiT) have no text
        embeds = torch.zeros(1, 0, 0)
    mask = None
    if masks:  # the groups' masks end to end (Hunyuan: [BERT; mT5]); a group without one attends to all
        mask = torch.cat([masks[g].to(torch.long) if g in masks else torch.ones(1, x.shape[1], dtype=torch.long)
                          for g, x in zip(sorted(groups), joined)], dim=1)
    return PromptEmbedding(embeds, torch.cat(pooled, dim=-1) if pooled else None, mask)


def _long_prompt_lengths(spec: ModelSpec, counts: Sequence[Sequence[int]], mode: str) -> list[int | None]:
    """Per encoder, the tokens every prompt is encoded to (None: its window, the prompt cut there).

    ``counts[e][p]``: prompt p's token count under encoder e's tokenizer. Only the CLIP encoders of the
    sequence are lengthened; all encoders of one group get one length (SDXL joins its two CLIPs along
    channels), and so do all prompts (one conditioning table; a shorter prompt is padded with its
    tokenizer's pad token before it is encoded, as the paper pads its negative prompt).
    """
    if mode == 'truncate':
        return [None] * len(spec.text_encoders)
    need: dict[int, int] = {}
    for te, c in zip(spec.text_encoders, counts):
        if _extends(spec, te):
            window = te.max_length
            n = max(c) if mode == 'chunks' else window * max(1, -(-(max(c) - 2) // (window - 2)))
            need[te.group] = max(need.get(te.group, window), n)
    return [need[te.group] if _extends(spec, te) and need[te.group] > te.max_length else None
            for te in spec.text_encoders]


def _extends(spec: ModelSpec, te: TextEncoderSpec) -> bool:
    """A long-prompt mode can lengthen this encoder: a CLIP encoder of the sequence in a group of CLIPs."""
    return te.kind == 'clip' and te.sequence and all(
        o.kind == 'clip' for o in spec.text_encoders if o.group == te.group and o.sequence)


def _warn_cut(spec: ModelSpec, prompt: str, mode: str, cut: Sequence[tuple[str, int]]) -> None:
    """Say once per process, model, mode and prompt where ``prompt`` was cut, and what avoids it."""
    if not cut or (spec.name, mode, prompt) in _WARNED:
        return
    _WARNED.add((spec.name, mode, prompt))
    encoders = {te.subfolder: te for te in spec.text_encoders}
    parts, avoidable, pooled = [], False, []
    for subfolder, count in cut:
        if subfolder.endswith(POOLED):  # the sequence was lengthened; its pooled embedding cannot be
            te = encoders[subfolder.removesuffix(POOLED)]
            pooled.append(te.subfolder)
            parts.append(f'the pooled embedding of {te.subfolder} ({te.kind.upper()}) is its first window\'s, '
                         f'the first {te.max_length} of {count} tokens')
            continue
        te = encoders[subfolder]
        what = f'{subfolder} ({te.kind.upper()}{"" if te.sequence else ", pooled embedding only"})'
        parts.append(f'{what} reads at most {te.max_length} tokens and keeps the first {te.max_length} of {count}')
        avoidable |= _extends(spec, te)
    shown = prompt if len(prompt) <= 60 else prompt[:57] + '...'
    sequence_cuts = [s for s, _ in cut if not s.endswith(POOLED)]
    advice = (" Pass conditioning=dict(prompt=..., long_prompt='chunks') to encode all of it in windows of "
              f"{max(encoders[s].max_length for s in sequence_cuts)} tokens (the paper's encode_long_prompt.py), "
              "or long_prompt='rewrap' (BOS/EOS around each 75 tokens, A1111/compel)." if avoidable else '')
    if pooled:
        advice += (' A pooled embedding is one window by design (the pipelines and compel pool the first): no '
                   'long-prompt mode lengthens it.')
    others = [s for s in sequence_cuts if not _extends(spec, encoders[s])]
    if others:
        advice += (f" {', '.join(others)}: no long-prompt mode lengthens it (only CLIP encoders of the token "
                   'sequence are chunked); shorten the prompt to keep all of it.')
    # the whole package, not this folder: a call from any of its modules is not the user's line
    level, frame, package = 1, sys._getframe(), str(Path(__file__).parents[2])
    while frame is not None and frame.f_code.co_filename.startswith(package):  # point at the caller's code
        frame, level = frame.f_back, level + 1
    warnings.warn(f'{spec.name}: the prompt {shown!r} is cut: ' + '; '.join(parts) + '.' + advice,
                  LongPromptWarning, stacklevel=level)


def encode_prompts(spec: ModelSpec, source: str | None, prompts: Sequence[str], dtype: torch.dtype,
                   load: Callable | None = None, cache: bool | str | Path = True,
                   long_prompt: str = 'truncate', encoder_dtype: torch.dtype | None = None,
                   encoder_device: str | None = None) -> list[PromptEmbedding]:
    """Embeddings of ``prompts``: from the cache, else from the text encoders, one loaded at a time.

    Args:
        spec: The zoo entry (its ``text_encoders`` say what to load and how to combine them).
        source: Hub id or local folder of the weights; None for random weights.
        prompts: The prompts.
        dtype: Encoder dtype (the backbone's).
        load: ``load(cls, source, subfolder, spec, torch_dtype=...)`` for pretrained encoders.
        cache: True (``prompt_cache_dir()``), a folder, or False.
        long_prompt: A prompt over a CLIP encoder's window: ``'truncate'`` (cut, as the pipelines),
            ``'chunks'`` (the paper's consecutive windows) or ``'rewrap'`` (BOS/EOS around each 75
            tokens). Every prompt is encoded to the longest one's token count.
        encoder_dtype: The text encoders' dtype where the model's pipeline encodes (``PipelinePrompt``); None:
            bfloat16 for pretrained weights, ``dtype`` for random ones.
        encoder_device: Where the model's pipeline encodes; None: the GPU when there is one.
    """
    if long_prompt not in LONG_PROMPT_MODES:
        raise ValueError(f'long_prompt must be one of {LONG_PROMPT_MODES}; got {long_prompt!r}')
    if spec.prompt_pipeline is not None and long_prompt != 'truncate':
        raise ValueError(f"long_prompt={long_prompt!r} lengthens CLIP encoders; {spec.name!r} encodes with a language "
                         f'model through {spec.prompt_pipeline.pipeline}, which reads up to '
                         f'{spec.prompt_pipeline.max_length} tokens. Use the default, long_prompt=\'truncate\'.')
    if spec.prompt_pipeline is not None and encoder_dtype is not None:
        encoder_key = f'|encoder-{encoder_dtype}'
    else:
        encoder_key = ''
    folder = None if cache is False else prompt_cache_dir() if cache is True else Path(cache)
    source_key = 'random' if source is None else source
    # The key holds what the embedding depends on: the mode, and (several prompts) the others, since
    # all are encoded to the longest one's length. 'truncate' keeps the keys of earlier releases.
    layout = encoder_key if long_prompt == 'truncate' else f'|{long_prompt}' + (
        '' if len(prompts) == 1 else '|' + hashlib.sha256('\n'.join(sorted(prompts)).encode()).hexdigest())
    paths = [None if folder is None else folder / f'{_cache_key(spec, source_key, dtype, p, layout)}.safetensors'
             for p in prompts]
    found = [None if path is None else _read_cached(path) for path in paths]
    missing = [i for i, emb in enumerate(found) if emb is None]
    if missing and spec.prompt_pipeline is not None:  # a language-model pipeline encodes its own prompts
        from diffbackbones.models.loading import WeightsNotFoundError, offline_note
        from .pipeline_prompt import PIPELINE_ENCODER_LOADS, encode_with_pipeline

        def load_error(spec, source, e):
            return WeightsNotFoundError(
                f'Could not load the text encoders of {spec.name!r} ({spec.prompt_pipeline.pipeline}) from '
                f'{source!r}{offline_note()}: {e}\nFix: download the model once into the Hugging Face cache, pass '
                'pretrained="/path/to/local/diffusers/folder", or give the embeddings yourself: '
                'conditioning=dict(prompt_embeds=...) (encoded elsewhere with the same pipeline).')
        try:
            encoded = encode_with_pipeline(spec, source, [prompts[i] for i in missing], dtype, encoder_dtype,
                                           RANDOM_ENCODER_LIMIT, load_error, encoder_device)
        finally:  # what was loaded counts, whether or not encoding then failed
            TEXT_ENCODER_LOADS.extend(PIPELINE_ENCODER_LOADS)
            PIPELINE_ENCODER_LOADS.clear()
        for i, (embeds, mask, pooled) in zip(missing, encoded):
            found[i] = PromptEmbedding(embeds, pooled, mask)
            if paths[i] is not None and not embeds.is_meta:  # built on the meta device: no values
                _write_cached(paths[i], found[i])
    elif missing and spec.text_encoders:
        tokenizers = [_tokenizer(spec, te, source) for te in spec.text_encoders]
        counts = [[len(tok.full(p)) for p in prompts] for tok in tokenizers]
        lengths = _long_prompt_lengths(spec, counts, long_prompt)
        outputs: list[list[tuple]] = [[] for _ in missing]
        for index, te in enumerate(spec.text_encoders):
            encoder = _Loaded(spec, te, source, dtype, load, tokenizers[index])
            for slot, i in enumerate(missing):
                seed = zlib.crc32(f'{spec.name}|{index}|{prompts[i]}'.encode())
                outputs[slot].append(encoder.run(prompts[i], seed, long_prompt, lengths[index]))
            del encoder  # released before the next encoder is loaded
            gc.collect()
        for slot, i in enumerate(missing):
            found[i] = _assemble(spec, outputs[slot])
            found[i].cut = tuple((te.subfolder, c[i]) for te, c, n in zip(spec.text_encoders, counts, lengths)
                                 if n is None and c[i] > te.max_length) + tuple(
                # a lengthened encoder's pooled embedding is still its first window's (SDXL's CLIP-G, SD3)
                (te.subfolder + POOLED, c[i]) for te, c, n in zip(spec.text_encoders, counts, lengths)
                if n is not None and te.pooled and c[i] > te.max_length)
            if paths[i] is not None and not found[i].embeds.is_meta:  # built on the meta device: no values
                _write_cached(paths[i], found[i])
    elif missing:
        for i in missing:
            found[i] = _assemble(spec, [])
    for prompt, emb in zip(prompts, found):
        _warn_cut(spec, prompt, long_prompt, emb.cut)
    return same_length(found)


def same_length(embeddings: list[PromptEmbedding]) -> list[PromptEmbedding]:
    """Prompts of a list padded to one token count (a language-model pipeline keeps each prompt's own length):
    zero embeddings after the shorter ones, masked out."""
    length = max(e.embeds.shape[1] for e in embeddings)
    if all(e.embeds.shape[1] == length for e in embeddings):
        return embeddings
    padded = []
    for e in embeddings:
        n = e.embeds.shape[1]
        mask = torch.ones(1, n, dtype=torch.long) if e.mask is None else e.mask.long()
        padded.append(PromptEmbedding(F.pad(e.embeds, (0, 0, 0, length - n)), e.pooled, F.pad(mask, (0, length - n)),
                                      e.cut))
    return padded

"""Prompt embeddings with as little text encoder in memory as possible, cached on disk.

T5-XXL alone is 4.8 B parameters, more than most denoisers. So each encoder is loaded on its own, in
the backbone's dtype, run on every prompt, and released before the next is loaded; the assembled
embeddings are written to a cache keyed by model, weights source, dtype and prompt, so building the
same backbone again loads no text encoder at all.

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
import os
import re
import uuid
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import torch
import torch.nn.functional as F

from .zoo import ModelSpec, TextEncoderSpec, load_config

__all__ = ['PromptEmbedding', 'encode_prompts', 'prompt_cache_dir', 'TEXT_ENCODER_LOADS', 'HashTokenizer',
           'RANDOM_ENCODER_LIMIT', 'build_text_encoder', 'encoder_parameters']

RANDOM_ENCODER_LIMIT = 1_000_000_000
RANDOM_INIT_SEED = 0
# Every text encoder built or loaded, by (model, subfolder): tests count these to prove the cache works.
TEXT_ENCODER_LOADS: list[tuple[str, str]] = []


@dataclass
class PromptEmbedding:
    """One prompt's conditioning: (1, L, D) sequence, (1, P) pooled or None, (1, L) mask or None."""

    embeds: torch.Tensor
    pooled: torch.Tensor | None
    mask: torch.Tensor | None


class HashTokenizer:
    """Stand-in tokenizer for random-weight models (``pretrained=False``), which ship no vocabulary.

    A random text encoder gives meaningless embeddings whatever the ids, so exact BPE is moot; this
    maps each word to a stable id so different prompts still give different conditioning. Real
    weights always use the pipeline's own tokenizer.
    """

    def __init__(self, vocab_size: int, model_max_length: int = 77):
        self.vocab_size, self.model_max_length = vocab_size, model_max_length
        self.bos, self.eos = vocab_size - 2, vocab_size - 1  # as CLIP: eos is the largest id

    def __call__(self, prompt: str) -> tuple[torch.Tensor, torch.Tensor]:
        words = [zlib.crc32(w.encode()) % (self.vocab_size - 2) for w in re.findall(r"\w+|[^\w\s]", prompt.lower())]
        ids = [self.bos] + words[: self.model_max_length - 2] + [self.eos]
        mask = [1] * len(ids) + [0] * (self.model_max_length - len(ids))
        ids += [self.eos] * (self.model_max_length - len(ids))
        return torch.tensor([ids]), torch.tensor([mask])


def prompt_cache_dir() -> Path:
    return Path(os.environ.get('DIFFBACKBONES_CACHE', Path.home() / '.cache' / 'diffbackbones')) / 'prompts'


def _cache_key(spec: ModelSpec, source: str, dtype: torch.dtype, prompt: str) -> str:
    return hashlib.sha256(f'{spec.name}|{source}|{dtype}|{prompt}'.encode()).hexdigest()[:32]


def _read_cached(path: Path) -> PromptEmbedding | None:
    from safetensors.torch import load_file
    try:
        data = load_file(path)
    except Exception:  # absent, truncated or corrupted: encode again
        return None
    return PromptEmbedding(data['embeds'], data.get('pooled'), data.get('mask'))


def _write_cached(path: Path, emb: PromptEmbedding) -> None:
    from safetensors.torch import save_file
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.contiguous() for k, v in (('embeds', emb.embeds), ('pooled', emb.pooled), ('mask', emb.mask))
               if v is not None}
    tmp = path.with_name(f'{path.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp')
    save_file(tensors, tmp)
    tmp.replace(path)  # atomic: a concurrent reader never sees half a file


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


class _Loaded:
    """One text encoder and its tokenizer: ``(ids, mask) = tokenize(prompt)``; ``run(prompt, seed)`` encodes."""

    def __init__(self, spec: ModelSpec, te: TextEncoderSpec, source: str | None, dtype: torch.dtype,
                 load: Callable | None):
        self.te, self.random_shape = te, None
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
            self.tokenize = HashTokenizer(config.vocab_size, te.max_length)
        else:
            self.model = load(_encoder_class(te), source, te.subfolder, spec, torch_dtype=dtype).eval()
            TEXT_ENCODER_LOADS.append((spec.name, te.subfolder))
            from transformers import AutoTokenizer, CLIPTokenizer
            try:  # CLIP's slow tokenizer, as the pipelines (and earlier versions of this package) use it
                tok = (CLIPTokenizer if te.kind == 'clip' else AutoTokenizer).from_pretrained(
                    source, subfolder=te.tokenizer_subfolder)
            except (OSError, ValueError) as e:
                from .loading import WeightsNotFoundError
                raise WeightsNotFoundError(f'Could not load the tokenizer {te.tokenizer_subfolder!r} of {spec.name!r} '
                                           f'from {source!r}: {e}') from e

            def tokenize(prompt):
                out = tok(prompt, padding='max_length', max_length=te.max_length, truncation=True,
                          return_tensors='pt')
                return out.input_ids, out.attention_mask
            self.tokenize = tokenize

    @torch.no_grad()
    def run(self, prompt: str, seed: int) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor]:
        """(1, L, D) hidden states (None when not part of the sequence), (1, P) pooled or None, (1, L) mask."""
        ids, mask = self.tokenize(prompt)
        if self.model is None:  # an oversized random encoder (or meta): seeded values of the right shape
            g = torch.Generator().manual_seed(seed)
            hidden = torch.randn(1, self.te.max_length, self.random_shape, generator=g)
            pooled = torch.randn(1, self.pooled_width, generator=g) if self.te.pooled else None
            return (hidden if self.te.sequence else None), pooled, mask
        device = next(self.model.parameters()).device
        kwargs = {'attention_mask': mask.to(device)} if self.te.mask else {}
        out = self.model(ids.to(device), output_hidden_states=True, **kwargs)
        hidden = out.last_hidden_state if self.te.hidden_layer == 'last' else out.hidden_states[-2]
        pooled = None
        if self.te.pooled == 'projected':
            pooled = out.text_embeds
        elif self.te.pooled == 'pooler':
            pooled = out.pooler_output
        return (hidden.float() if self.te.sequence else None), (None if pooled is None else pooled.float()), mask


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


def encode_prompts(spec: ModelSpec, source: str | None, prompts: Sequence[str], dtype: torch.dtype,
                   load: Callable | None = None, cache: bool | str | Path = True) -> list[PromptEmbedding]:
    """Embeddings of ``prompts``: from the cache, else from the text encoders, one loaded at a time.

    Args:
        spec: The zoo entry (its ``text_encoders`` say what to load and how to combine them).
        source: Hub id or local folder of the weights; None for random weights.
        prompts: The prompts.
        dtype: Encoder dtype (the backbone's).
        load: ``load(cls, source, subfolder, spec, torch_dtype=...)`` for pretrained encoders.
        cache: True (``prompt_cache_dir()``), a folder, or False.
    """
    folder = None if cache is False else prompt_cache_dir() if cache is True else Path(cache)
    source_key = 'random' if source is None else source
    paths = [None if folder is None else folder / f'{_cache_key(spec, source_key, dtype, p)}.safetensors'
             for p in prompts]
    found = [None if path is None else _read_cached(path) for path in paths]
    missing = [i for i, emb in enumerate(found) if emb is None]
    if missing and spec.text_encoders:
        outputs: list[list[tuple]] = [[] for _ in missing]
        for index, te in enumerate(spec.text_encoders):
            encoder = _Loaded(spec, te, source, dtype, load)
            for slot, i in enumerate(missing):
                seed = zlib.crc32(f'{spec.name}|{index}|{prompts[i]}'.encode())
                outputs[slot].append(encoder.run(prompts[i], seed))
            del encoder  # released before the next encoder is loaded
            gc.collect()
        for slot, i in enumerate(missing):
            found[i] = _assemble(spec, outputs[slot])
            if paths[i] is not None and not found[i].embeds.is_meta:  # built on the meta device: no values
                _write_cached(paths[i], found[i])
    elif missing:
        for i in missing:
            found[i] = _assemble(spec, [])
    return found

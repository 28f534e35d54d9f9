"""Prompt embeddings made by the model's own diffusers pipeline (``encode_prompt``), for language-model text encoders.

Qwen-Image wraps the prompt in a chat template and drops the template's tokens from the hidden states; FLUX.2 stacks
three hidden layers of Mistral; Z-Image applies Qwen3's chat template and keeps only the unmasked tokens. Rewriting each
of those would drift from the pipelines; calling the pipeline cannot. So the zoo entry names the pipeline class
(``PipelinePrompt``), and only its text encoders and tokenizers are loaded: the pipeline is built with every other
component left out, asked for one prompt at a time, and dropped.

- One encoder at a time: a pipeline with several (HiDream's four, HunyuanImage's two) gets them on the meta device,
  each loading its weights when called and dropping them after (``one_at_a_time.py``).
- Weights: ``pipeline.from_pretrained(source, transformer=None, vae=None, ...)`` in bfloat16 by default (the released
  language models are bf16; fp32 doubles their memory for nothing), on the GPU when there is one; the embeddings come
  back to the CPU in float32 and are cached on disk by the caller (``text_encoders.encode_prompts``).
- Random weights (test models): each text encoder is built from its embedded config with seeded weights and given the
  byte-level tokenizer (``byte_tokenizer.py``); an encoder over ``RANDOM_ENCODER_LIMIT`` parameters, or any encoder on
  the meta device, is not built: the embeddings are seeded Gaussian values of the width the denoiser takes.
"""
from __future__ import annotations

import gc
import inspect
import zlib
from typing import Callable, Sequence

import torch

from diffbackbones.models.zoo import ModelSpec, load_config

__all__ = ['encode_with_pipeline', 'text_components', 'pipeline_class', 'PIPELINE_ENCODER_LOADS',
           'text_encoders_on_meta']


def pipeline_class(spec: ModelSpec):
    import diffusers
    return getattr(diffusers, spec.prompt_pipeline.pipeline)


def text_components(spec: ModelSpec) -> list[str]:
    """The pipeline's text encoders by component name (``text_encoder``, ``text_encoder_2``, ...)."""
    params = inspect.signature(pipeline_class(spec).__init__).parameters
    return [name for name in params if name.startswith('text_encoder')]


def _encoder_config(spec: ModelSpec, component: str):
    from transformers import AutoConfig
    config = dict(load_config(spec, component))
    architecture = config.pop('architectures')[0]
    return architecture, AutoConfig.for_model(config.pop('model_type'), **config)


# Every text encoder built or loaded here, by (model, component), as text_encoders.TEXT_ENCODER_LOADS records
# the others'; that module adds this list to its own (no import back: the dependency points one way).
PIPELINE_ENCODER_LOADS: list[tuple[str, str]] = []
RANDOM_INIT_SEED = 0


def text_encoders_on_meta(spec: ModelSpec) -> dict:
    """The pipeline's text encoders by component name, built from the embedded configs on the meta device (sizes)."""
    import transformers
    encoders = {}
    with torch.device('meta'):
        for component in text_components(spec):
            architecture, config = _encoder_config(spec, component)
            encoders[component] = getattr(transformers, architecture)(config)
    return encoders


def _family(spec: ModelSpec):
    from diffbackbones.models.families import family_by_class
    return family_by_class(spec.architecture)


def _parameters(spec: ModelSpec, component: str) -> int:
    return sum(p.numel() for p in _on_meta(spec, component, torch.float32).parameters())


def _random_encoder(spec: ModelSpec, component: str, dtype: torch.dtype):
    """A seeded random encoder from the embedded config (``_random_pipeline`` has checked its size)."""
    import transformers
    architecture, config = _encoder_config(spec, component)
    cls = getattr(transformers, architecture)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(RANDOM_INIT_SEED)
        model = cls(config).to(dtype).eval()
    PIPELINE_ENCODER_LOADS.append((spec.name, component))
    return model


def _on_meta(spec: ModelSpec, component: str, dtype: torch.dtype):
    """The encoder's module tree, config and dtype without weights (``one_at_a_time.py`` loads them on call)."""
    import transformers
    architecture, config = _encoder_config(spec, component)
    with torch.device('meta'):
        return getattr(transformers, architecture)(config).to(dtype).eval()


def _random_pipeline(spec: ModelSpec, dtype: torch.dtype, limit: int, one_at_a_time: bool = False):
    """The pipeline with seeded random text encoders and byte-level tokenizers, or None when an encoder is not built;
    ``one_at_a_time``: the encoders start on meta and are built (seeded) when called."""
    from .byte_tokenizer import byte_tokenizer
    cls = pipeline_class(spec)
    components = {}
    for name, param in inspect.signature(cls.__init__).parameters.items():
        if name == 'self' or param.kind in (param.VAR_KEYWORD, param.VAR_POSITIONAL):
            continue
        if name.startswith('text_encoder'):
            if torch.empty(0).device.type == 'meta' or _parameters(spec, name) > limit:
                return None
            components[name] = _on_meta(spec, name, dtype) if one_at_a_time else _random_encoder(spec, name, dtype)
        elif name.startswith('tokenizer'):
            components[name] = byte_tokenizer(spec.prompt_pipeline.max_length)
        elif param.default is inspect.Parameter.empty:
            components[name] = None
    return cls(**components)


def _pretrained_pipeline(spec: ModelSpec, source: str, dtype: torch.dtype, load_error: Callable,
                         one_at_a_time: bool = False):
    """The pipeline's text encoders and tokenizers from ``source``; ``one_at_a_time``: the encoders start on meta
    (their weights load when called, ``_load_pretrained_encoder``), the tokenizers load now."""
    cls = pipeline_class(spec)
    skipped = {name: None for name, param in inspect.signature(cls.__init__).parameters.items()
               if name != 'self' and param.default is inspect.Parameter.empty
               and not name.startswith(('text_encoder', 'tokenizer', 'processor'))}
    extra_repos = dict(spec.prompt_pipeline.components)
    try:
        # components the checkpoint does not ship (HiDream's Llama): from their own repositories
        extra = {name: _load_extra(spec, name, repo, dtype) for name, repo in extra_repos.items()
                 if not (one_at_a_time and name.startswith('text_encoder'))}
        if one_at_a_time:
            extra.update({name: _on_meta(spec, name, dtype) for name in text_components(spec)})
        pipe = cls.from_pretrained(source, torch_dtype=dtype, **skipped, **extra)
    except (OSError, ValueError) as e:
        raise load_error(spec, source, e) from e
    if not one_at_a_time:
        PIPELINE_ENCODER_LOADS.extend((spec.name, name) for name in text_components(spec))
    return pipe


def _load_encoder(spec: ModelSpec, source: str | None, name: str, dtype: torch.dtype, load_error: Callable):
    """One encoder's weights, when ``one_at_a_time.py`` calls for them: seeded random, or from the checkpoint."""
    if source is None:
        return _random_encoder(spec, name, dtype)
    import transformers
    architecture, _ = _encoder_config(spec, name)
    repo = dict(spec.prompt_pipeline.components).get(name)
    try:
        model = getattr(transformers, architecture).from_pretrained(
            repo or source, **({} if repo else {'subfolder': name}), torch_dtype=dtype).eval()
    except (OSError, ValueError) as e:
        raise load_error(spec, repo or source, e) from e
    PIPELINE_ENCODER_LOADS.append((spec.name, name))
    return model


# encode_prompt keywords that are about the call, not about how a prompt is encoded
_CALL_ONLY = {'prompt', 'negative_prompt', 'device', 'dtype', 'num_images_per_prompt', 'num_videos_per_prompt',
              'do_classifier_free_guidance', 'lora_scale', 'batch_size'}


def _load_extra(spec: ModelSpec, name: str, repo: str, dtype: torch.dtype):
    import transformers
    if name.startswith('tokenizer'):
        return transformers.AutoTokenizer.from_pretrained(repo)
    architecture, _ = _encoder_config(spec, name)
    return getattr(transformers, architecture).from_pretrained(repo, torch_dtype=dtype)


def _call(pipe, spec: ModelSpec, prompt: str, device: torch.device):
    """``encode_prompt`` for one prompt as the pipeline's own ``__call__`` would call it: every keyword both take
    gets ``__call__``'s default (SANA's complex human instruction is one), then the entry's ``max_sequence_length``
    and options; no classifier-free guidance (one conditional call)."""
    accepted = inspect.signature(pipe.encode_prompt).parameters
    call_defaults = {name: p.default for name, p in inspect.signature(type(pipe).__call__).parameters.items()
                     if name in accepted and name not in _CALL_ONLY and not name.endswith(('_embeds', '_mask'))
                     and p.default is not inspect.Parameter.empty}
    wanted = dict(call_defaults, device=device, do_classifier_free_guidance=False,
                  max_sequence_length=spec.prompt_pipeline.max_length, **dict(spec.prompt_pipeline.options))
    kwargs = {k: v for k, v in wanted.items() if k in accepted}
    with torch.no_grad():
        return pipe.encode_prompt(prompt, **kwargs)


def encode_with_pipeline(spec: ModelSpec, source: str | None, prompts: Sequence[str], dtype: torch.dtype,
                         encoder_dtype: torch.dtype | None, limit: int, load_error: Callable,
                         encoder_device: str | None = None) -> list[tuple]:
    """(embeds (1, L, D), mask (1, L) or None, pooled or None) per prompt, float32 on the CPU.

    ``encoder_dtype``: None is bfloat16 for pretrained weights and ``dtype`` for random ones. ``encoder_device``:
    None is the GPU when there is one (pretrained weights), else the CPU.
    """
    from diffbackbones.models.families import family_of
    family = family_of(spec.prompt_pipeline.instance.transformer) if spec.prompt_pipeline.instance is not None else \
        _family(spec)
    live = spec.prompt_pipeline.instance is not None
    # a pipeline with several encoders holds one at a time: each loads when called and is dropped after it
    one_at_a_time = not live and len(text_components(spec)) > 1
    if live:  # a live pipeline (from_pipeline): its encoders as they are
        if encoder_dtype is not None or encoder_device is not None:
            raise ValueError('encoder_dtype and encoder_device do not apply to a pipeline handed to from_pipeline: its '
                             'text encoders run where and as they are; move or cast them on the pipeline itself.')
        pipe = spec.prompt_pipeline.instance
    else:
        encoder_dtype = encoder_dtype or (dtype if source is None else torch.bfloat16)
        pipe = _random_pipeline(spec, encoder_dtype, limit, one_at_a_time) if source is None else \
            _pretrained_pipeline(spec, source, encoder_dtype, load_error, one_at_a_time)
    if pipe is None:  # shape only: seeded values of the shapes the denoiser takes (the family's placeholder)
        config = load_config(spec, spec.denoiser_component)
        return [family.placeholder_prompt(config, spec.prompt_pipeline.max_length,
                                          torch.Generator().manual_seed(zlib.crc32(f'{spec.name}|{prompt}'.encode())))
                for prompt in prompts]
    device = pipe._execution_device if live else torch.device(encoder_device or (
        'cuda' if torch.cuda.is_available() and source is not None else 'cpu'))
    handles = []
    if one_at_a_time:
        from .one_at_a_time import load_on_call
        handles = load_on_call({name: getattr(pipe, name) for name in text_components(spec)},
                               lambda name: _load_encoder(spec, source, name, encoder_dtype, load_error), device)
    elif not live:
        pipe.to(device)
    outputs = []
    for prompt in prompts:
        embeds, mask, pooled = family.read_prompt(_call(pipe, spec, prompt, device))
        outputs.append(tuple(None if x is None else (x.float() if x.is_floating_point() else x.long()).cpu()
                             for x in (embeds, mask, pooled)))
    for handle in handles:
        handle.remove()
    if live:
        return outputs
    del pipe
    gc.collect()
    if device.type == 'cuda':
        torch.cuda.empty_cache()
    return outputs

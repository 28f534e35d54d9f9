"""Build or load the parts of a diffusion pipeline a backbone needs: denoiser, VAE encoder, text encoders.

``pretrained=True`` loads the zoo entry's hub id with diffusers/transformers ``from_pretrained`` (the
local Hugging Face cache when offline); a path loads a local diffusers folder; ``False`` builds the
exact architecture from the embedded configs with seeded random weights (same seed, same weights).
The VAE decoder is dropped as soon as the VAE is built and never becomes part of a backbone.
"""
from __future__ import annotations

import os
import re
import zlib
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
from diffusers import AutoencoderKL, UNet2DConditionModel
from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

from .zoo import ModelSpec, load_config

__all__ = ['WeightsNotFoundError', 'VaeEncoder', 'Components', 'load_components', 'HashTokenizer']

RANDOM_INIT_SEED = 0


class WeightsNotFoundError(OSError):
    """Pretrained weights could not be found (offline without a local copy, or a wrong folder)."""


class VaeEncoder(nn.Module):
    """The encoder half of an ``AutoencoderKL``: image in [-1, 1] -> scaled latent."""

    def __init__(self, vae: AutoencoderKL):
        super().__init__()
        self.encoder = vae.encoder
        self.quant_conv = vae.quant_conv  # None when the VAE was trained without it
        self.scaling_factor = float(vae.config.scaling_factor)
        self.shift_factor = float(getattr(vae.config, 'shift_factor', None) or 0.0)
        self.downsample_factor = 2 ** (len(vae.config.block_out_channels) - 1)
        self.latent_channels = int(vae.config.latent_channels)

    def forward(self, images: torch.Tensor, sample: bool = False,
                generator: torch.Generator | None = None) -> torch.Tensor:
        moments = self.encoder(images)
        if self.quant_conv is not None:
            moments = self.quant_conv(moments)
        posterior = DiagonalGaussianDistribution(moments)
        latent = posterior.sample(generator) if sample else posterior.mode()
        return (latent - self.shift_factor) * self.scaling_factor


class HashTokenizer:
    """Stand-in tokenizer for random-weight models (``pretrained=False``), which ship no vocabulary.

    A random text encoder gives meaningless embeddings whatever the ids, so exact CLIP BPE is moot;
    this maps each word to a stable id so different prompts still give different conditioning.
    Real weights always use the pipeline's own CLIP tokenizer.
    """

    def __init__(self, vocab_size: int, model_max_length: int = 77):
        self.vocab_size, self.model_max_length = vocab_size, model_max_length
        self.bos, self.eos = vocab_size - 2, vocab_size - 1  # as CLIP: eos is the largest id

    def __call__(self, prompt: str) -> torch.Tensor:
        words = [zlib.crc32(w.encode()) % (self.vocab_size - 2) for w in re.findall(r"\w+|[^\w\s]", prompt.lower())]
        ids = [self.bos] + words[: self.model_max_length - 2] + [self.eos]
        ids += [self.eos] * (self.model_max_length - len(ids))
        return torch.tensor([ids])


@dataclass
class Components:
    denoiser: nn.Module
    vae: VaeEncoder
    text_encoders: list[nn.Module]
    tokenizers: list  # callables: prompt -> (1, L) input ids


def _clip_tokenizer(source: str, subfolder: str):
    from transformers import CLIPTokenizer
    tok = CLIPTokenizer.from_pretrained(source, subfolder=subfolder)
    return lambda prompt: tok(prompt, padding='max_length', max_length=tok.model_max_length, truncation=True,
                              return_tensors='pt').input_ids


def _resolve_source(spec: ModelSpec, pretrained: bool | str) -> str:
    if pretrained is True:
        if spec.weights_dir is not None:  # shipped inside the package: no hub, no network
            return str(spec.weights_dir)
        if spec.hub_id is None:
            raise ValueError(f'{spec.name!r} is a random-weight test model with no pretrained weights; '
                             'use pretrained=False.')
        return spec.hub_id
    source = os.fspath(pretrained)
    if Path(source).is_dir() or re.fullmatch(r'[\w.-]+/[\w.-]+', source):
        return source
    raise WeightsNotFoundError(
        f'pretrained={source!r} is neither a local diffusers folder nor a hub id (org/name). '
        f'Pass True for {spec.hub_id!r}, False for random weights, or the path of a folder made by '
        'DiffusionPipeline.save_pretrained / huggingface-cli download.')


def _from_pretrained(cls, source: str, subfolder: str, spec: ModelSpec, **kwargs):
    try:
        return cls.from_pretrained(source, subfolder=subfolder, **kwargs)
    except (OSError, ValueError) as e:  # hub/cache misses surface as OSError subclasses or ValueError
        offline = os.environ.get('HF_HUB_OFFLINE', '0') not in ('0', 'false', 'False', '')
        raise WeightsNotFoundError(
            f'Could not load {subfolder!r} of {spec.name!r} from {source!r}'
            f'{" (HF_HUB_OFFLINE is set, so only the local cache is searched)" if offline else ""}: {e}\n'
            f'Fix: download the model once (`huggingface-cli download {spec.hub_id or source}`) into the Hugging '
            'Face cache, or pass pretrained="/path/to/local/diffusers/folder" (a folder with unet/, vae/, '
            'text_encoder/ and tokenizer/ subfolders), or pretrained=False for random weights.') from e


def load_components(spec: ModelSpec, pretrained: bool | str, dtype: torch.dtype = torch.float32,
                    vae_dtype: torch.dtype | None = None) -> Components:
    """Denoiser, VAE encoder and text encoders (with tokenizers) of a zoo model.

    Args:
        spec: The zoo entry.
        pretrained: True (hub id of the entry), a local diffusers folder / hub id, or False (random).
        dtype: Denoiser dtype.
        vae_dtype: VAE encoder dtype (defaults to ``dtype``).
    """
    vae_dtype = vae_dtype or dtype
    if pretrained is False:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(RANDOM_INIT_SEED)
            denoiser = UNet2DConditionModel.from_config(load_config(spec, 'unet'))
            vae = AutoencoderKL.from_config(load_config(spec, 'vae'))
            text_encoders, tokenizers = [], []
            for te in spec.text_encoders:
                config = CLIPTextConfig(**load_config(spec, te.subfolder))
                text_encoders.append((CLIPTextModelWithProjection if te.pooled else CLIPTextModel)(config))
                tokenizers.append(HashTokenizer(config.vocab_size, config.max_position_embeddings))
    else:
        source = _resolve_source(spec, pretrained)
        denoiser = _from_pretrained(UNet2DConditionModel, source, 'unet', spec)
        vae = _from_pretrained(AutoencoderKL, source, 'vae', spec)
        text_encoders = [_from_pretrained(CLIPTextModelWithProjection if te.pooled else CLIPTextModel,
                                          source, te.subfolder, spec) for te in spec.text_encoders]
        tokenizers = []
        for te in spec.text_encoders:
            try:
                tokenizers.append(_clip_tokenizer(source, te.tokenizer_subfolder))
            except (OSError, ValueError) as e:
                raise WeightsNotFoundError(f'Could not load the tokenizer {te.tokenizer_subfolder!r} of '
                                           f'{spec.name!r} from {source!r}: {e}') from e
    vae_encoder = VaeEncoder(vae)
    del vae  # the decoder goes with it
    return Components(_cast(denoiser, dtype), _cast(vae_encoder, vae_dtype), [te.eval() for te in text_encoders],
                      tokenizers)


def _cast(module: nn.Module, dtype: torch.dtype) -> nn.Module:
    # nn.Module.to directly: diffusers' ModelMixin.to warns about "modules to keep in float32" on every
    # dtype cast, even when that list is empty (UNets and VAEs have none).
    return module if next(module.parameters()).dtype == dtype else nn.Module.to(module, dtype)

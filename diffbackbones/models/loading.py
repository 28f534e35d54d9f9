"""Build or load the parts of a diffusion pipeline a backbone needs: denoiser, VAE encoder, text encoders.

``pretrained=True`` loads the zoo entry's hub id with diffusers/transformers ``from_pretrained`` (the
local Hugging Face cache when offline); a path loads a local diffusers folder; ``False`` builds the
exact architecture from the embedded configs with seeded random weights (same seed, same weights).
A ``.gguf`` file loads the denoiser alone from it, quantized as the file is (diffusers' ``from_single_file``
with ``GGUFQuantizationConfig``; the community format of FLUX and Qwen-Image downloads); the VAE and the text
encoders then come from the zoo entry as with ``pretrained=True`` (seeded random ones for a test model).
The VAE decoder is dropped as soon as the VAE is built and never becomes part of a backbone.
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
from .latents import PixelSpace, VaeEncoder, latent_encoder
from .zoo import ModelSpec, load_config

__all__ = ['WeightsNotFoundError', 'VaeEncoder', 'PixelSpace', 'Components', 'load_components', 'build_denoiser', 'denoiser_class',
           'resolve_source', 'from_pretrained', 'is_gguf', 'load_gguf_denoiser']

RANDOM_INIT_SEED = 0


class WeightsNotFoundError(OSError):
    """Pretrained weights could not be found (offline without a local copy, or a wrong folder)."""


@dataclass
class Components:
    denoiser: nn.Module
    vae: VaeEncoder
    source: str | None  # where the text encoders load from (None: random weights)


def denoiser_class(spec: ModelSpec):
    """The diffusers class of a zoo entry's denoiser (named in its embedded config)."""
    import diffusers
    return getattr(diffusers, spec.architecture)


def vae_class(spec: ModelSpec):
    """The diffusers class of a zoo entry's VAE (``AutoencoderKL`` unless its embedded config names another)."""
    import diffusers
    return getattr(diffusers, load_config(spec, 'vae').get('_class_name', 'AutoencoderKL'))


def build_denoiser(spec: ModelSpec, device: str | torch.device | None = None) -> nn.Module:
    """The exact architecture from the embedded config; ``device='meta'`` allocates nothing (catalogs of
    the 12 B-parameter models), otherwise seeded random weights."""
    config = load_config(spec, spec.denoiser_component)
    if device is not None and torch.device(device).type == 'meta':
        with torch.device('meta'):
            return denoiser_class(spec).from_config(config)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(RANDOM_INIT_SEED)
        return denoiser_class(spec).from_config(config)


def resolve_source(spec: ModelSpec, pretrained: bool | str) -> str:
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


def hub_offline() -> bool:
    """Whether HF_HUB_OFFLINE is set: hub ids then resolve from the local cache only."""
    return os.environ.get('HF_HUB_OFFLINE', '0') not in ('0', 'false', 'False', '')


def offline_note() -> str:
    """What a 'not found' message adds when the hub is off."""
    return ' (HF_HUB_OFFLINE is set, so only the local Hugging Face cache is searched)' if hub_offline() else ''


def from_pretrained(cls, source: str, subfolder: str, spec: ModelSpec, **kwargs):
    try:
        return cls.from_pretrained(source, subfolder=subfolder, **kwargs)
    except (OSError, ValueError) as e:  # hub/cache misses surface as OSError subclasses or ValueError
        raise WeightsNotFoundError(
            f'Could not load {subfolder!r} of {spec.name!r} from {source!r}{offline_note()}: {e}\n'
            f'Fix: download the model once (`huggingface-cli download {spec.hub_id or source}`) into the Hugging '
            f'Face cache, or pass pretrained="/path/to/local/diffusers/folder" (a folder with {spec.denoiser_component}/, '
            'vae/ and the text encoder and tokenizer subfolders), or pretrained=False for random weights. Text '
            'encoders are not needed when the prompt embeddings are cached (DIFFBACKBONES_CACHE): a backbone built '
            'once with the same model, weights and prompt reads them from there.') from e


def load_components(spec: ModelSpec, pretrained: bool | str, dtype: torch.dtype = torch.float32,
                    vae_dtype: torch.dtype | None = None) -> Components:
    """Denoiser and VAE encoder of a zoo model, and where its text encoders come from.

    Text encoders are not loaded here: ``text.encode_prompts`` loads them one at a time, or not at all
    when the prompt embeddings are cached.

    Args:
        spec: The zoo entry.
        pretrained: True (hub id of the entry), a local diffusers folder / hub id, or False (random).
        dtype: Denoiser dtype.
        vae_dtype: VAE encoder dtype (defaults to ``dtype``).
    """
    vae_dtype = vae_dtype or dtype
    gguf = is_gguf(pretrained)
    # a GGUF file holds the denoiser alone: the VAE and the text encoders come from the zoo entry
    rest = (spec.weights_dir is not None or spec.hub_id is not None) if gguf else pretrained
    source = None if rest is False else resolve_source(spec, rest)
    if gguf:
        denoiser = load_gguf_denoiser(spec, pretrained, dtype)
    elif source is None:
        denoiser = build_denoiser(spec)
    else:
        denoiser = from_pretrained(denoiser_class(spec), source, spec.denoiser_component, spec)
    if spec.pixel_space:
        vae = None
    elif source is None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(RANDOM_INIT_SEED)
            vae = vae_class(spec).from_config(load_config(spec, 'vae'))
    else:
        vae = from_pretrained(vae_class(spec), source, 'vae', spec)
    if vae is None:
        return Components(_cast(denoiser, dtype), PixelSpace(), source)
    vae_encoder = latent_encoder(vae)
    del vae  # the decoder goes with it
    return Components(_cast(denoiser, dtype), _cast(vae_encoder, vae_dtype), source)


def is_gguf(pretrained: bool | str) -> bool:
    """Whether ``pretrained`` names a GGUF file."""
    return isinstance(pretrained, (str, os.PathLike)) and os.fspath(pretrained).lower().endswith('.gguf')


def load_gguf_denoiser(spec: ModelSpec, path: str | os.PathLike, dtype: torch.dtype) -> nn.Module:
    """The denoiser from a GGUF file, its layers quantized as stored (dequantized on the fly to ``dtype``);
    its architecture from the entry's embedded config, so no hub access is needed."""
    import tempfile

    from diffusers import GGUFQuantizationConfig
    path = Path(path)
    if not path.is_file():
        raise WeightsNotFoundError(f'pretrained={os.fspath(path)!r}: no such GGUF file. Give the path of a .gguf '
                                   f'file holding the {spec.architecture} of {spec.name!r} (diffusers or original key '
                                   'names).')
    with tempfile.TemporaryDirectory() as folder:  # from_single_file reads the config from a folder
        config_dir = Path(folder) / spec.denoiser_component
        config_dir.mkdir()
        (config_dir / 'config.json').write_text(json.dumps(load_config(spec, spec.denoiser_component)))
        try:
            return denoiser_class(spec).from_single_file(
                os.fspath(path), config=folder, subfolder=spec.denoiser_component,
                quantization_config=GGUFQuantizationConfig(compute_dtype=dtype), torch_dtype=dtype)
        except (ValueError, KeyError, RuntimeError) as e:
            raise WeightsNotFoundError(f'{os.fspath(path)!r} did not load as the {spec.architecture} of {spec.name!r}: '
                                       f'{e}\nIs it a GGUF of this model (same architecture and size)?') from e


def _cast(module: nn.Module, dtype: torch.dtype) -> nn.Module:
    # nn.Module.to directly: diffusers' ModelMixin.to warns about "modules to keep in float32" on every
    # dtype cast, even when that list is empty (UNets and VAEs have none).
    return module if next(module.parameters()).dtype == dtype else nn.Module.to(module, dtype)

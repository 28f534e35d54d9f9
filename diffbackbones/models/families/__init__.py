"""Denoiser families: what differs between a UNet (SD, SDXL, DeepFloyd IF), PixArt, DiT, Hunyuan-DiT, SD3, Flux,
and the families that followed (Chroma, FLUX.2, Qwen-Image, SANA, Lumina 2, HiDream, CogView4, Z-Image,
HunyuanImage, Wan), in one small object each.

A family knows three things about its denoiser class and nothing else:

- ``walk``: the activation catalog (names, channels, token grids, where each hook sits), in execution
  order, derived from the module tree alone (works on the meta device);
- ``latent_multiple``: what every latent side must divide by (UNet downsamplings, patch size, packing);
- ``inputs``: the denoiser's keyword arguments for a batch of noisy latents, timesteps and cached
  conditioning (Flux packs 2x2 latent patches into tokens and passes their grid as ``img_ids``).

The backbone, capture and pruning code never ask which model they hold. A new family is one module
here (a walker plus its inputs), one line in ``FAMILIES`` below, and its zoo entries as data.
"""
from __future__ import annotations

import torch.nn as nn

from .base import DenoiserFamily
from .chroma import ChromaFamily
from .cogview4 import CogView4Family
from .dit import DiTFamily
from .flux import FluxFamily, image_ids, pack_latents, unpack_latents
from .flux2 import Flux2Family
from .hidream import HiDreamFamily
from .hunyuan import HunyuanFamily
from .hunyuan_image import HunyuanImageFamily
from .lumina2 import Lumina2Family
from .pixart import PixArtFamily
from .qwen_image import QwenImageFamily
from .sana import SanaFamily
from .sd3 import SD3Family
from .unet import UNetFamily
from .wan import WanFamily
from .zimage import ZImageFamily

__all__ = ['DenoiserFamily', 'FAMILIES', 'ADOPTED', 'family_of', 'family_by_class', 'pack_latents',
           'unpack_latents', 'image_ids']

FAMILIES: dict[str, DenoiserFamily] = {f.name: f for f in (
    UNetFamily(), PixArtFamily(), DiTFamily(), HunyuanFamily(), SD3Family(), FluxFamily(),
    # the families that followed the paper's list
    ChromaFamily(), ZImageFamily(), QwenImageFamily(), WanFamily(), SanaFamily(), Lumina2Family(), CogView4Family(),
    Flux2Family(), HunyuanImageFamily(), HiDreamFamily())}


def family_by_class(class_name: str) -> DenoiserFamily:
    for family in FAMILIES.values():
        if family.class_name == class_name:
            return family
    raise TypeError(f'{class_name} is not a supported denoiser; supported diffusers classes: '
                    f'{sorted(f.class_name for f in FAMILIES.values())}.')


# attribute of a denoiser that a family object was given to by hand (the generic path: from_pipeline.py)
ADOPTED = '_diffbackbones_family'


def family_of(denoiser: nn.Module) -> DenoiserFamily:
    """The family of a diffusers denoiser; unsupported classes raise ``TypeError`` listing the supported ones."""
    adopted = getattr(denoiser, ADOPTED, None)
    if adopted is not None:
        return adopted
    for family in FAMILIES.values():
        if family.matches(denoiser):
            return family
    raise TypeError(f'{type(denoiser).__name__} is not a supported denoiser; supported diffusers classes: '
                    f'{sorted(f.class_name for f in FAMILIES.values())}.')

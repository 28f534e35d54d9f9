"""Backbone features of correspondence images: resized to the working size, one prompt per category.

Both protocols read each image at the model's working size (DIFT: 768 x 768 for SD2.1; the paper: 512 for
SD1.5, 1024 for SDXL), resized with PIL's bicubic filter as DIFT does, whatever its aspect ratio; the
levels stay on the working grid (``resize_features=False``) and the matcher upsamples them to the image.
"""
from __future__ import annotations

import contextlib
from collections import OrderedDict
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn as nn
from PIL import Image

from diffbackbones.backbone.conditioning.prompt import PromptConditioning
from diffbackbones.backbone.diffusion_backbone import DiffusionBackbone
from diffbackbones.backbone.stages import set_default_option
from diffbackbones.models.zoo import default_weights, get_model_spec

__all__ = ['load_image', 'FeatureSource', 'build_feature_source', 'weights_label', 'PAPER_PROMPT', 'DIFT_PROMPT']

# The paper's correspondence code conditions every image on one prompt naming SPair-71k's categories.
PAPER_PROMPT = ('a highly realistic photo that may contain an aeroplane, a bicycle, a bird, a boat, a bottle, a bus, '
                'a car, a cat, a chair, a cow, a dog, a horse, a motorbike, a person, a plant within a pot, a sheep, '
                'a train, or a tv monitor.')
DIFT_PROMPT = 'a photo of a {category}'


def load_image(path: Path, size: tuple[int, int] | None = None) -> torch.Tensor:
    """(1, 3, H, W) in [-1, 1]; resized (bicubic) to ``size`` = (w, h) when given."""
    with Image.open(path) as image:
        image = image.convert('RGB')
        if size is not None and image.size != tuple(size):
            image = image.resize(tuple(size), Image.BICUBIC)
        pixels = torch.from_numpy(np.asarray(image).copy())
    return pixels.permute(2, 0, 1)[None].float() / 127.5 - 1


class FeatureSource:
    """``source(path, category)`` -> the backbone's levels for that image, (C_i, h_i, w_i) each, fp32 CPU.

    Args:
        backbone: A ``DiffusionBackbone``/``CombinedDiffusionBackbone`` built with every prompt the
            template gives (``prompt=[template.format(category=c) for c in categories]``).
        size: Working size (w, h) every image is resized to.
        prompt: The prompt template; ``{category}`` is replaced by the pair's category.
        cache_mb: Levels of recently used images kept in memory (least recently used dropped first).
        settings: How the backbone was built, for the tasks' records (``build_feature_source`` fills it in).
    """

    def __init__(self, backbone: nn.Module, size: tuple[int, int], prompt: str, cache_mb: float = 2048,
                 settings: dict | None = None):
        self.backbone, self.size, self.prompt = backbone, tuple(size), prompt
        self.settings = dict(settings or {})
        self.cache: OrderedDict = OrderedDict()
        self.budget, self.used = cache_mb * 2 ** 20, 0
        self.device = next(backbone.parameters()).device

    @torch.no_grad()
    def compute(self, path: Path, category: str) -> list[torch.Tensor]:
        prompt = self.prompt.format(category=category)
        image = load_image(path, self.size).to(self.device)
        with contextlib.ExitStack() as stack:  # every member of a combined backbone holds its own prompts
            for conditioning in self.backbone.modules():
                if isinstance(conditioning, PromptConditioning):
                    stack.enter_context(conditioning.using(prompt))
            levels = self.backbone(image)
        return [level[0].float().cpu() for level in levels]

    def __call__(self, path: Path, category: str) -> list[torch.Tensor]:
        key = (str(path), category)
        if key in self.cache:
            self.cache.move_to_end(key)
            return self.cache[key]
        levels = self.compute(path, category)
        size = sum(level.numel() * 4 for level in levels)
        if size <= self.budget:
            while self.used + size > self.budget:
                _, dropped = self.cache.popitem(last=False)
                self.used -= sum(level.numel() * 4 for level in dropped)
            self.cache[key], self.used = levels, self.used + size
        return levels


def build_feature_source(model: str, activations: str | Sequence = 'practical', levels: Sequence[int] | None = None,
                         pretrained: bool | str | None = None, prompt: str = '', prompts: Sequence[str] = ('',),
                         cache_mb: float = 2048, **options: Any) -> FeatureSource:
    """The backbone every correspondence task reads, built the same way for all three: the zoo's weights
    unless told (random for test models), the model's working size, levels on the working grid
    (``resize_features=False``) unless ``options`` say otherwise; one layer id may be given as a string.

    ``prompts`` are every prompt the tasks will use (encoded once); ``prompt`` is the template that picks one
    per image (``{category}`` filled in). ``options`` are ``DiffusionBackbone``'s, flat or as stage dicts.
    The source's ``settings`` records the options as resolved and ``pretrained``.
    """
    spec = get_model_spec(model)
    pretrained = default_weights(spec, pretrained)
    options = dict(options)
    if options.get('image_size', 0) is None:
        del options['image_size']  # None: the model's own size, as when left out
    set_default_option(options, 'image_size', spec.image_size)
    set_default_option(options, 'resize_features', False)
    if isinstance(activations, str) and '-' in activations and not activations.endswith('.json'):
        activations = [activations]  # one layer id (ids have hyphens, preset names never do)
    backbone = DiffusionBackbone(model, activations, pretrained=pretrained, prompt=list(prompts), **options)
    if levels is not None:
        backbone.select_levels(levels)
    h, w = backbone.stages.image.size
    return FeatureSource(backbone, (w, h), prompt, cache_mb,
                         settings=dict(pretrained=pretrained, activations=activations, backbone_options=options))


def weights_label(model: str, pretrained: bool | str | None) -> str:
    """How a result table names a run: the model, marked when its weights are random."""
    return f'{model} (random)' if pretrained is False else model

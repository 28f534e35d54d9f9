"""UNet2DConditionModel: SD1.x, SD2.x, SDXL, Playground v2 and DeepFloyd IF (its SimpleCrossAttn blocks are
bare ``Attention`` modules); the UNet walker and the call inputs."""
from __future__ import annotations

import math

import torch
import torch.nn as nn
from diffusers.models.attention_processor import Attention

from ..points import ActivationPoint, _Points
from .base import DenoiserFamily, pooled_text, text_context

__all__ = ['UNetFamily', 'walk_unet']


class UNetFamily(DenoiserFamily):
    """UNet2DConditionModel: SD1.x, SD2.x, SDXL, Playground v2, DeepFloyd IF (the walker below)."""

    name, class_name = 'unet', 'UNet2DConditionModel'

    def walk(self, denoiser, latent_hw, n_text_tokens):
        return walk_unet(denoiser, latent_hw, n_text_tokens)

    def latent_multiple(self, denoiser):
        return 2 ** sum(1 for b in denoiser.down_blocks if getattr(b, 'downsamplers', None))

    def inputs(self, denoiser, noisy, timesteps, conditioning, image_hw):
        b, dtype = noisy.shape[0], noisy.dtype
        kwargs = dict(sample=noisy, timestep=timesteps, encoder_hidden_states=text_context(conditioning, b, dtype))
        added = {}
        if conditioning.pooled_embeds is not None:
            added['text_embeds'] = pooled_text(conditioning, b, dtype)
        if conditioning.time_ids:
            h, w = image_hw  # original size, crop (0, 0), target size: the working size itself
            added['time_ids'] = torch.tensor([h, w, 0, 0, h, w], device=noisy.device, dtype=dtype).expand(b, -1)
        if added:
            kwargs['added_cond_kwargs'] = added
        return kwargs


def _half(hw: tuple[int, int]) -> tuple[int, int]:
    # A stride-2 conv with padding 1 (Downsample2D) maps r -> ceil(r / 2).
    return (math.ceil(hw[0] / 2), math.ceil(hw[1] / 2))


def _double(hw: tuple[int, int]) -> tuple[int, int]:
    return (hw[0] * 2, hw[1] * 2)


def walk_unet(unet: nn.Module, latent_hw: tuple[int, int], n_text_tokens: int) -> list[ActivationPoint]:
    """UNet2DConditionModel-style denoisers (SD1.x, SD2.x, SDXL, Playground v2)."""
    pts = _Points(n_text_tokens)
    hw = tuple(latent_hw)
    pts.add('unet-in', 'unet-in', unet.conv_in.in_channels, hw, 'conv_in', 'input')
    pts.add('unet-after-conv-in', 'after-conv-in', unet.conv_in.out_channels, hw, 'conv_in', 'output')

    def attend(prefix: str, path: str, attention: nn.Module, hw, index: str = ''):
        if isinstance(attention, Attention):  # IF: a bare attention, named {prefix}-attn{index}-*
            pts.simple_attention(f'{prefix}-attn{index}', path, attention, hw)
        else:  # a Transformer2DModel, named {prefix}-vit{index}-*
            pts.vit(f'{prefix}-vit{index}', path, attention, hw)

    def stage(prefix: str, path: str, block: nn.Module, hw):
        attentions = getattr(block, 'attentions', None) or []
        for j, resnet in enumerate(block.resnets):
            pts.resnet(f'{prefix}-repeat{j}', f'{path}.resnets.{j}', resnet, hw)
            if j < len(attentions):
                attend(f'{prefix}-repeat{j}', f'{path}.attentions.{j}', attentions[j], hw)

    for i, block in enumerate(unet.down_blocks):
        stage(f'down-level{i}', f'down_blocks.{i}', block, hw)
        if getattr(block, 'downsamplers', None):
            hw = _half(hw)
            pts.add(f'down-level{i}-downsampler-out', 'resampler-out', block.downsamplers[0].out_channels, hw,
                    f'down_blocks.{i}.downsamplers.0', 'output')

    mid = unet.mid_block
    if mid is not None:
        # UNetMidBlock2DCrossAttn runs resnets[0], then (attentions[j], resnets[j + 1]) pairs.
        pts.resnet('mid-repeat0', 'mid_block.resnets.0', mid.resnets[0], hw)
        for j, attention in enumerate(getattr(mid, 'attentions', None) or []):
            attend('mid', f'mid_block.attentions.{j}', attention, hw, str(j) if j else '')
            pts.resnet(f'mid-repeat{j + 1}', f'mid_block.resnets.{j + 1}', mid.resnets[j + 1], hw)

    for i, block in enumerate(unet.up_blocks):
        stage(f'up-level{i}', f'up_blocks.{i}', block, hw)
        if getattr(block, 'upsamplers', None):
            hw = _double(hw)
            pts.add(f'up-level{i}-upsampler-out', 'resampler-out', block.upsamplers[0].out_channels, hw,
                    f'up_blocks.{i}.upsamplers.0', 'output')
    pts.add('unet-out', 'unet-out', unet.conv_out.out_channels, hw, 'conv_out', 'output')
    return pts.points

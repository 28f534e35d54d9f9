"""Sharded fine-tuning through mmengine: what FSDP wraps, as a function mmengine's configs can name.

``configs/depth/vpd-diffusers_sdxl-practical_fsdp-8xb4-25k_nyu-480x480.py`` fine-tunes SDXL's denoiser with
mmengine's ``FlexibleRunner`` and ``FSDPStrategy`` (PyTorch FSDP); its model wrapper names
``auto_wrap_policy=dict(type='diffusion_block_wrap_policy')``: every UNet ResNet block and every transformer block
of the denoiser becomes its own FSDP unit, so one block's full weights are gathered at a time, and what is left
(the VAE, the embeddings, the head) forms the root unit.

Except the blocks that hold one of the backbone's activations (``mark_capture_holders`` tags them when the
backbone is built): FSDP starts a unit's backward from the unit's outputs, and a query or key captured inside a
block reaches the loss around them, so such a block stays in the root unit, whose weights are gathered for the
whole step. With the 'practical' presets that is a few blocks of the denoiser's dozens.
"""
from __future__ import annotations

import torch.nn as nn
from mmengine.registry import FUNCTIONS

from diffbackbones.backbone.denoiser.capture import HOLDS_CAPTURE

__all__ = ['is_diffusion_block', 'diffusion_block_wrap_policy']

# diffusers' block classes by name: UNets' ResnetBlock2D; BasicTransformerBlock (UNets, PixArt, DiT),
# JointTransformerBlock (SD3), FluxTransformerBlock / FluxSingleTransformerBlock, HunyuanDiTBlock, ...
BLOCK_NAMES = ('ResnetBlock2D',)
BLOCK_SUFFIXES = ('TransformerBlock', 'DiTBlock')


def is_diffusion_block(module: nn.Module) -> bool:
    """Whether ``module`` is one of the repeated blocks of a diffusers denoiser."""
    name = type(module).__name__
    return type(module).__module__.startswith('diffusers.') and (name in BLOCK_NAMES or name.endswith(BLOCK_SUFFIXES))


@FUNCTIONS.register_module(name='diffusion_block_wrap_policy')
def diffusion_block_wrap_policy(module: nn.Module, recurse: bool, nonwrapped_numel: int = 0, **kwargs) -> bool:
    """FSDP's auto-wrap policy: look inside every module, wrap each diffusers block that holds no captured
    activation in its own unit."""
    return True if recurse else is_diffusion_block(module) and not getattr(module, HOLDS_CAPTURE, False)

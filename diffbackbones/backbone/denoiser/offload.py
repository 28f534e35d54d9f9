"""Offload: a denoiser larger than the GPU stays in CPU memory and its blocks visit the GPU in turn, through
diffusers' own group offloading (``ModelMixin.enable_group_offload``), not a loop of the package's own.

``denoiser=dict(offload='block')`` (or ``dict(offload=dict(type='block', blocks_per_group=2, use_stream=True))``):

- ``'block'``: groups of ``blocks_per_group`` transformer or UNet blocks, each moved to the GPU just before it
  runs and back after it (diffusers' ``block_level``); ``'leaf'``: every leaf module on its own (``leaf_level``,
  the least GPU memory, the most transfers). ``use_stream`` overlaps the next group's transfer with compute
  (CUDA streams).
- The GPU is the device of the images the backbone gets: the hooks are attached at the first forward, so
  ``backbone.to('cuda')`` moves everything but the offloaded denoiser, whose weights stay in CPU memory.
- The features are those of the same denoiser without offload (a test checks it on the CPU, where the hooks run
  and move nothing); the speed is a GPU matter (``tools/gpu_checks.py``).
"""
from __future__ import annotations

import types
from dataclasses import dataclass
from typing import Any, Mapping

import torch
import torch.nn as nn

__all__ = ['Offload', 'normalize_offload', 'OFFLOAD_TYPES']

OFFLOAD_TYPES = {'block': 'block_level', 'leaf': 'leaf_level'}   # ours -> diffusers' offload_type


@dataclass
class Offload:
    """Group offloading of the denoiser onto the device its inputs arrive on."""

    type: str = 'block'
    blocks_per_group: int = 1
    use_stream: bool = False

    def __post_init__(self):
        if self.type not in OFFLOAD_TYPES:
            raise ValueError(f'offload type must be one of {list(OFFLOAD_TYPES)}; got {self.type!r}')
        if not (isinstance(self.blocks_per_group, int) and self.blocks_per_group >= 1):
            raise ValueError(f'offload blocks_per_group must be a positive integer; got {self.blocks_per_group!r}')
        self.device: torch.device | None = None  # where the hooks load the weights; fixed at the first forward

    @staticmethod
    def pin(denoiser: nn.Module) -> None:
        """Leave ``denoiser`` out of its parents' ``.to()``, ``.cuda()`` and ``.half()``, which reach every
        submodule through ``_apply``: its weights stay in CPU memory, and diffusers' hooks move its blocks."""
        denoiser._apply = types.MethodType(_stay, denoiser)

    def attach(self, denoiser: nn.Module, device: torch.device) -> None:
        """Attach diffusers' hooks for ``device`` at the first call; later calls must come on the same device."""
        if self.device is None:
            if not hasattr(denoiser, 'enable_group_offload'):
                raise ValueError(f'offload needs a diffusers model; {type(denoiser).__name__} has no group offloading')
            options = dict(num_blocks_per_group=self.blocks_per_group) if self.type == 'block' else {}
            denoiser.enable_group_offload(onload_device=device, offload_device=torch.device('cpu'),
                                          offload_type=OFFLOAD_TYPES[self.type], use_stream=self.use_stream, **options)
            self.device = device
        elif device != self.device:
            raise RuntimeError(f'the offloaded denoiser loads its blocks onto {self.device}, fixed at the first '
                               f'forward; got images on {device}. Build a new backbone for another device.')


def _stay(module: nn.Module, fn, recurse: bool = True) -> nn.Module:
    return module


def normalize_offload(value: Any) -> Offload | None:
    """``None``/``False``, ``True`` or a type name (``'block'``, ``'leaf'``), a dict of ``Offload``'s options, or
    an ``Offload``."""
    if value is None or value is False or isinstance(value, Offload):
        return value or None
    if value is True:
        return Offload()
    if isinstance(value, str):
        return Offload(type=value)
    if isinstance(value, Mapping):
        unknown = set(value) - {'type', 'blocks_per_group', 'use_stream'}
        if unknown:
            raise ValueError(f'unknown offload option(s) {sorted(unknown)}; options: type, blocks_per_group, '
                             'use_stream')
        return Offload(**value)
    raise ValueError(f"offload must be None, True, 'block', 'leaf' or a dict of options; got {value!r}")

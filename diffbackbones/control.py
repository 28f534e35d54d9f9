"""The control stage: an optional ControlNet whose residuals join the denoiser call.

``control=dict(model=<hub id or folder>, image='canny', scale=1.0)`` in a backbone's options. Without a
model (the default) the stage is a pass-through: the denoiser call is unchanged.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.nn as nn

__all__ = ['ControlStage', 'NoControl']


class NoControl(nn.Module):
    """The denoiser's keyword arguments, unchanged (no ControlNet)."""

    def forward(self, kwargs: dict, images: torch.Tensor | None) -> dict:
        return kwargs


@dataclass
class ControlStage:
    """A ControlNet beside the denoiser.

    Args:
        model: Hub id or local diffusers folder of a ControlNet for this denoiser; None: no ControlNet.
        image: How the control image is made from the RGB input: a preprocessor name (``'canny'``) or a
            callable from the (B, 3, H, W) batch in [-1, 1] to the control batch.
        scale: ControlNet conditioning scale (diffusers' ``controlnet_conditioning_scale``).
    """

    model: str | None = None
    image: str | Callable[[torch.Tensor], torch.Tensor] = 'canny'
    scale: float = 1.0

    @property
    def trainable(self) -> bool:
        return False

    def build(self, spec, pretrained: bool | str, dtype: torch.dtype, denoiser: nn.Module,
              capture: Any) -> nn.Module:
        """The module that adds the ControlNet's residuals to a denoiser call's keyword arguments."""
        if self.model is None:
            return NoControl()
        raise NotImplementedError('ControlNet support is being built')

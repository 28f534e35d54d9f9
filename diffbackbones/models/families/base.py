"""What every denoiser family provides (the base class), and the conditioning readers the families share."""
from __future__ import annotations

import math

import torch
import torch.nn as nn

from ..points import ActivationPoint

__all__ = ['DenoiserFamily', 'ceil_div', 'text_context', 'pooled_text']


def ceil_div(hw: tuple[int, int], p: int) -> tuple[int, int]:
    return math.ceil(hw[0] / p), math.ceil(hw[1] / p)


class DenoiserFamily:
    """Base class: a family is identified by its diffusers class name."""

    name = ''
    class_name = ''

    def matches(self, denoiser: nn.Module) -> bool:
        return type(denoiser).__name__ == self.class_name

    def walk(self, denoiser: nn.Module, latent_hw: tuple[int, int], n_text_tokens: int) -> list[ActivationPoint]:
        raise NotImplementedError

    def latent_multiple(self, denoiser: nn.Module) -> int:
        return self.token_patch(denoiser.config)

    def token_patch(self, config) -> int:
        """Latent pixels per token side (transformers), from the denoiser's config."""
        return config['patch_size']

    def inputs(self, denoiser: nn.Module, noisy: torch.Tensor, timesteps: torch.Tensor, conditioning,
               image_hw: tuple[int, int]) -> dict:
        """Keyword arguments of one denoiser call on ``noisy`` (B, C, h, w) at integer ``timesteps`` (B,)."""
        raise NotImplementedError

    def prediction(self, output, noisy: torch.Tensor) -> torch.Tensor:
        """The model's prediction from a whole forward's ``output``, in the layout of ``noisy`` (B, C, h, w)."""
        sample = output.sample if hasattr(output, 'sample') else output[0]
        return sample[:, :noisy.shape[1]]  # learned-sigma models (PixArt, DiT, IF) append a variance


def text_context(conditioning, batch: int, dtype: torch.dtype) -> torch.Tensor:
    text = conditioning.prompt_embeds.to(dtype)
    if text.shape[0] == 1:
        return text.expand(batch, -1, -1)
    # one context per image (VPD's class_embed_select): the rows are member-major (every noise member
    # holds a copy of the batch), so the B contexts tile
    return text.repeat(batch // text.shape[0], 1, 1)


def pooled_text(conditioning, batch: int, dtype: torch.dtype) -> torch.Tensor:
    return conditioning.pooled_embeds.to(dtype).expand(batch, -1)

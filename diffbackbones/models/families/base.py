"""What every denoiser family provides (the base class), and the conditioning readers the families share."""
from __future__ import annotations

import math

import torch
import torch.nn as nn

from ..points import ActivationPoint

__all__ = ['DenoiserFamily', 'ceil_div', 'text_context', 'pooled_text', 'batch_rows']


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

    def token_grid(self, args, kwargs, patch: int) -> tuple[int, int]:
        """The image-token grid of a call of the module a point names as ``grid_module`` (its positional ``args`` and
        keyword ``kwargs``): (H / patch, W / patch) of a (B, C, H, W) input. Families whose tokens arrive packed
        read the grid off their position inputs instead (Flux's ``img_ids``, Qwen-Image's ``img_shapes``)."""
        x = args[0] if args else kwargs.get('hidden_states', kwargs.get('sample'))
        if x.ndim != 4:
            raise RuntimeError(f'{type(self).__name__}: the token grid needs a (B, C, H, W) input; '
                               f'got {tuple(x.shape)}')
        return math.ceil(x.shape[-2] / patch), math.ceil(x.shape[-1] / patch)

    # the denoiser config key of its text-feature width, by family: where no text encoder is built (the meta device,
    # an oversized random one) the conditioning is a tensor of that width
    TEXT_WIDTH_KEYS = ('joint_attention_dim', 'caption_channels', 'cap_feat_dim', 'text_embed_dim', 'text_dim',
                       'cross_attention_dim')

    def text_channels(self, config) -> int:
        """Width of the prompt embeddings the denoiser takes, read off its config."""
        for key in self.TEXT_WIDTH_KEYS:
            if config.get(key):
                return int(config[key])
        raise KeyError(f'{self.class_name}: none of {self.TEXT_WIDTH_KEYS} in its config gives the text width')

    def placeholder_prompt(self, config, length: int, generator: torch.Generator):
        """Seeded stand-ins of ``read_prompt``'s output where no text encoder is built (the meta device, an encoder
        over the random-weight limit): (1, ``length``, text width) embeddings, every token attended."""
        return torch.randn(1, length, self.text_channels(config), generator=generator), None, None

    def read_prompt(self, output) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """(embeds (1, L, D), mask (1, L) or None, pooled (1, P) or None) from what the pipeline's ``encode_prompt``
        returned for one prompt: the embeddings first, then the first (1, L) tensor after them as their mask
        (Chroma, SANA, Lumina 2, Qwen-Image); a list of per-prompt (L, D) tensors (Z-Image) is one prompt's."""
        items = list(output) if isinstance(output, (tuple, list)) else [output]
        embeds = items[0][0].unsqueeze(0) if isinstance(items[0], list) else items[0]
        mask = next((x for x in items[1:] if torch.is_tensor(x) and x.ndim == 2 and x.shape == embeds.shape[:2]
                     and not x.is_meta and ((x == 0) | (x == 1)).all()), None)  # 0/1, of any dtype (Chroma's float)
        return embeds, None if mask is None else mask.long(), None

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


def batch_rows(rows: torch.Tensor, batch: int, device: torch.device | None = None) -> torch.Tensor:
    """A (1, L) or (b, L) per-prompt tensor (a text mask) for ``batch`` rows, tiled as ``text_context`` tiles the
    contexts (member-major), on ``device``."""
    rows = rows if device is None else rows.to(device)
    return rows.expand(batch, -1) if rows.shape[0] == 1 else rows.repeat(batch // rows.shape[0], 1)


def pooled_text(conditioning, batch: int, dtype: torch.dtype) -> torch.Tensor:
    return conditioning.pooled_embeds.to(dtype).expand(batch, -1)

"""Activation points: where a capturable activation lives in a denoiser, and the builder the walkers share.

Names follow the original implementation (generic-diffusion-feature) so published layer configs work
as-is; see DESIGN.md, "Activation names". The catalog is derived from the module tree alone (shapes
follow from the known latent size), so it works on the meta device and never runs the model.

Each `ActivationPoint` says *where* an activation lives (which module, input or output, NCHW or
tokens, attention probabilities) and `capture.py` turns that into hooks. A new denoiser family only
needs a walker (a module in ``families/``) that yields points in execution order; capture and the backbone stay
unchanged.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch.nn as nn
from diffusers.models.activations import GEGLU, SwiGLU
from diffusers.models.attention_processor import Attention

__all__ = ['ActivationPoint']

# How a hook reads the activation off its module.
#   output        the module's output, already (B, C, h, w)
#   input         the module's first input, already (B, C, h, w)
#   tokens        the module's output, (B, N, C) tokens, on the grid of `grid_module`'s input
#   tokens-input  the module's first input, (B, N, C) tokens (a modulated norm feeding a feed-forward)
#   attn-map      attention probabilities of an attention module (an explicit path computes them)
Layout = Literal['output', 'input', 'tokens', 'tokens-input', 'attn-map']
# Where the image tokens sit in a token sequence: all of it, or after / before the text tokens
# (joint attention: Flux puts text first, SD3 puts it last).
ImageTokens = Literal['all', 'last', 'first']


@dataclass(frozen=True)
class ActivationPoint:
    """One capturable activation.

    Attributes:
        name: Layer id, e.g. ``'up-level1-repeat0-vit-block0-cross-q'``.
        kind: What it is, e.g. ``'res-out'``, ``'self-k'``, ``'cross-map'``.
        channels: Channel count C of the captured (B, C, h, w) tensor.
        size: (h, w) at the latent size the catalog was built for.
        module: Dotted path of the module the hook sits on.
        layout: How the hook reads it (see ``Layout``).
        grid_module: Dotted path of the module whose input gives the token grid ('' is the denoiser):
            (h, w) of a (B, C, h, w) input divided by ``grid_patch``, or Flux's ``img_ids`` rows.
        order: Position in execution order (0 is first).
        pick: Index of the image tokens in a tuple output (SD3 / Flux blocks return (text, image)).
        image_tokens: Where the image tokens sit in the sequence (the rest are text tokens).
        grid_patch: Patch size between ``grid_module``'s (B, C, H, W) input and the token grid.
        attention: For ``attn-map``: ``'standard'`` (diffusers' reference processor math) or ``'explicit'``
            (recomputed with the model's own math: joint text + image softmax, qk-norm, RoPE).
        aliases: Other ids accepted for this activation (the original implementation's own).
    """

    name: str
    kind: str
    channels: int
    size: tuple[int, int]
    module: str
    layout: Layout
    grid_module: str | None = None
    order: int = 0
    pick: int | None = None
    image_tokens: ImageTokens = 'all'
    grid_patch: int = 1
    attention: Literal['standard', 'explicit'] = 'standard'
    aliases: tuple[str, ...] = ()

    def stride(self, latent_hw: tuple[int, int]) -> int:
        """Latent stride of this activation for the latent size the catalog was built with."""
        return latent_hw[0] // self.size[0]


class _Points:
    """Collects points in execution order while a walker descends the module tree."""

    def __init__(self, n_text_tokens: int):
        self.points: list[ActivationPoint] = []
        self.n_text_tokens = n_text_tokens

    def add(self, name, kind, channels, size, module, layout, grid_module=None, **extra):
        self.points.append(ActivationPoint(name, kind, int(channels), tuple(size), module, layout, grid_module,
                                           order=len(self.points), **extra))

    def self_projections(self, prefix: str, path: str, attn: nn.Module, hw, **extra):
        """An attention's query, key and value projections (``{path}.to_q`` ...) as ``{prefix}-self-{q,k,v}``, also
        accepted as ``{prefix}-{q,k,v}`` (the original implementation's Flux ids); ``extra``: where their tokens sit."""
        for proj in 'qkv':
            self.add(f'{prefix}-self-{proj}', f'self-{proj}', getattr(attn, f'to_{proj}').out_features, hw,
                     f'{path}.to_{proj}', 'tokens', aliases=(f'{prefix}-{proj}',), **extra)

    def resnet(self, prefix: str, path: str, block: nn.Module, hw):
        self.add(f'{prefix}-res-increment', 'res-increment', block.conv2.out_channels, hw, f'{path}.conv2', 'output')
        self.add(f'{prefix}-res-out', 'res-out', block.conv2.out_channels, hw, path, 'output')

    def vit(self, prefix: str, path: str, model: nn.Module, hw):
        """A Transformer2DModel (spatial in, spatial out) and the blocks inside it."""
        for k, block in enumerate(model.transformer_blocks):
            self.transformer_block(f'{prefix}-block{k}', f'{path}.transformer_blocks.{k}', block, hw, grid=path)
        out_channels = model.proj_out.out_features if isinstance(model.proj_out, nn.Linear) else model.proj_out.out_channels
        self.add(f'{prefix}-out', 'vit-out', out_channels, hw, path, 'output')

    def transformer_block(self, prefix: str, path: str, block: nn.Module, hw, grid: str, grid_patch: int = 1,
                          attn_out: bool = False, maps: str = 'standard'):
        """A BasicTransformerBlock-like block: self-attention, cross-attention, feed-forward.

        UNet transformer blocks and PixArt / DiT / Hunyuan blocks share this layout; ``attn_out`` adds the
        self-attention output (offered for the transformer denoisers); ``maps`` is how attention maps
        are computed (``'explicit'`` where the processor adds qk-norm or RoPE: Hunyuan)."""
        n_pixels = hw[0] * hw[1]
        on_grid = dict(grid_module=grid, grid_patch=grid_patch)
        attn1, attn2 = getattr(block, 'attn1', None), getattr(block, 'attn2', None)
        if isinstance(attn1, Attention):
            is_cross = attn1.is_cross_attention  # only_cross_attention blocks: attn1 looks at text
            tag = 'cross' if is_cross else 'self'
            names = ('q',) if is_cross else ('q', 'k', 'v')
            for proj in names:
                lin = getattr(attn1, f'to_{proj}')
                self.add(f'{prefix}-{tag}-{proj}', f'{tag}-{proj}', lin.out_features, hw, f'{path}.attn1.to_{proj}',
                         'tokens', **on_grid)
            if attn_out:
                self.add(f'{prefix}-attn-out', 'attn-out', attn1.to_out[0].out_features, hw, f'{path}.attn1', 'tokens',
                         **on_grid)
            self.add(f'{prefix}-{tag}-map', f'{tag}-map', self.n_text_tokens if is_cross else n_pixels, hw,
                     f'{path}.attn1', 'attn-map', attention=maps, **on_grid)
        if isinstance(attn2, Attention):
            self.add(f'{prefix}-cross-q', 'cross-q', attn2.to_q.out_features, hw, f'{path}.attn2.to_q', 'tokens',
                     **on_grid)
            self.add(f'{prefix}-cross-map', 'cross-map', self.n_text_tokens, hw, f'{path}.attn2', 'attn-map',
                     attention=maps, **on_grid)
        ff = getattr(block, 'ff', None)
        if ff is not None:
            act = ff.net[0]  # GEGLU / GELU / ApproximateGELU: the first projection (+ gating)
            inner = act.proj.out_features // (2 if isinstance(act, (GEGLU, SwiGLU)) else 1)  # gated: half
            self.add(f'{prefix}-ffn-inner', 'ffn-inner', inner, hw, f'{path}.ff.net.0', 'tokens', **on_grid)
        self.add(f'{prefix}-out', 'vit-block-out', _block_dim(block), hw, path, 'tokens', **on_grid)

    def simple_attention(self, prefix: str, path: str, attn: Attention, hw):
        """A bare ``Attention`` on (B, C, H, W) input (DeepFloyd IF's SimpleCrossAttn blocks): its keys are
        [text (added k/v); image], one softmax; queries are the image's."""
        on_grid = dict(grid_module=path, grid_patch=1)
        for proj in ('q', 'k', 'v'):
            self.add(f'{prefix}-self-{proj}', f'self-{proj}', getattr(attn, f'to_{proj}').out_features, hw,
                     f'{path}.to_{proj}', 'tokens', **on_grid)
        maps = dict(image_tokens='last', attention='explicit', **on_grid)
        self.add(f'{prefix}-self-map', 'self-map', hw[0] * hw[1], hw, path, 'attn-map', **maps)
        self.add(f'{prefix}-cross-map', 'cross-map', self.n_text_tokens, hw, path, 'attn-map', **maps)
        self.add(f'{prefix}-out', 'attn-out', attn.to_out[0].out_features, hw, path, 'output')


def _block_dim(block: nn.Module) -> int:
    return block.attn1.to_out[0].out_features

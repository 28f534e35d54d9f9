"""Learnable fusion of frozen diffusion activations: zero-initialised residual blocks.

At initialisation every block is the identity, so training starts from the raw diffusion features and
learns a correction, as the paper's segmentor did. One block per activation (before concatenation)
and one per level (after it). Two block styles:

- ``'residual'`` (``fusion=True``, the package's default): x + f(x), f = GN -> 1x1 (C -> C/4) -> SiLU ->
  3x3 -> SiLU -> 1x1, only the last 1x1 zero-initialised, so every weight gets a gradient from the
  first step on.
- ``'paper'``: the paper code's ``ResBlock``, x + BN(conv3x3(ReLU(BN(conv3x3(x))))) with *every* weight
  and bias of both convolutions and both BatchNorms set to 0. Kept exactly for the paper configs. Note
  what that init does: the second conv's input is always 0 and the second BN's scale is 0, so the
  gradient reaches only that BN's bias; the block stays x + (a learned per-channel bias) however long
  it trains (``tests/test_combined.py`` checks this). ``repeats`` applies one block several times with
  shared weights, as the paper's combined run does (``nn.ModuleList([ResBlock(c)] * n)`` there).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ['FusionStage', 'ResidualFusion', 'PaperResBlock', 'LevelFusion', 'FUSION_STYLES', 'fusion_block']


class ResidualFusion(nn.Module):
    """x + f(x), f = GN -> 1x1 (C -> C/r) -> SiLU -> 3x3 -> SiLU -> 1x1 (-> C, zero-initialised)."""

    def __init__(self, channels: int, reduction: int = 4, groups: int = 32):
        super().__init__()
        hidden = max(channels // reduction, 8)
        self.body = nn.Sequential(
            nn.GroupNorm(_groups(channels, groups), channels), nn.Conv2d(channels, hidden, 1), nn.SiLU(),
            nn.Conv2d(hidden, hidden, 3, padding=1), nn.SiLU(), nn.Conv2d(hidden, channels, 1))
        nn.init.zeros_(self.body[-1].weight)
        nn.init.zeros_(self.body[-1].bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x.to(self.body[1].weight.dtype))


class PaperResBlock(nn.Module):
    """The paper's fusion block, applied ``repeats`` times with one set of weights (see the module doc)."""

    def __init__(self, channels: int, repeats: int = 1):
        super().__init__()
        if not (isinstance(repeats, int) and repeats >= 1):
            raise ValueError(f'repeats must be a positive integer; got {repeats!r}')
        self.repeats = repeats
        self.conv1 = nn.Sequential(nn.Conv2d(channels, channels, 3, 1, 1), nn.BatchNorm2d(channels))
        self.conv2 = nn.Sequential(nn.Conv2d(channels, channels, 3, 1, 1), nn.BatchNorm2d(channels))
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.BatchNorm2d)):
                nn.init.zeros_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.conv1[0].weight.dtype)  # fp32 blocks on fp16 features, as the paper's cast
        for _ in range(self.repeats):
            x = x + self.conv2(F.relu(self.conv1(x)))
        return x

    def extra_repr(self) -> str:
        return f'repeats={self.repeats}'


FUSION_STYLES = ('residual', 'paper')


def fusion_block(style: str, channels: int, repeats: int = 1) -> nn.Module:
    """One zero-initialised fusion block of ``style`` (``'residual'`` or ``'paper'``)."""
    if style == 'paper':
        return PaperResBlock(channels, repeats)
    if style == 'residual':
        if repeats != 1:
            raise ValueError("fusion_repeats apply to fusion='paper' blocks (the paper's weight-shared repeats); "
                             f"the 'residual' style takes (1, 1), got repeats={repeats}")
        return ResidualFusion(channels)
    raise ValueError(f'fusion must be False, True (the {FUSION_STYLES[0]!r} style) or one of {FUSION_STYLES}; '
                     f'got {style!r}')


def _groups(channels: int, groups: int) -> int:
    while channels % groups:
        groups //= 2
    return groups


class LevelFusion(nn.Module):
    """Fuses the activations of one level: a block per activation, concatenation, a block per level.

    Args:
        channels: Channels of each activation of the level.
        style: ``'residual'`` or ``'paper'`` (see the module doc).
        repeats: (per-activation, per-level) weight-shared repeats of ``'paper'`` blocks.
    """

    def __init__(self, channels: Sequence[int], style: str = 'residual', repeats: Sequence[int] = (1, 1)):
        super().__init__()
        self.per_activation = nn.ModuleList(fusion_block(style, c, repeats[0]) for c in channels)
        self.per_level = fusion_block(style, sum(channels), repeats[1])

    def forward(self, activations: list[torch.Tensor]) -> torch.Tensor:
        return self.per_level(torch.cat([f(a) for f, a in zip(self.per_activation, activations)], dim=1))


@dataclass
class FusionStage:
    """The levels stage: how a level's activations become one map. ``fusion=True`` (residual blocks),
    ``fusion='paper'``, or ``fusion=dict(style='paper', repeats=(4, 2))``; ``style=None`` concatenates.

    Args:
        style: None (concatenate, nothing learned), ``'residual'`` or ``'paper'`` (see the module doc).
        repeats: (per activation, per level) weight-shared repeats of ``'paper'`` blocks; the paper's
            combined run (Ours-XL-t) uses (4, 2).
    """

    style: str | None = None
    repeats: Sequence[int] = (1, 1)

    def __post_init__(self):
        if self.style is True:
            self.style = FUSION_STYLES[0]
        elif self.style is False:
            self.style = None
        if self.style is not None and self.style not in FUSION_STYLES:
            raise ValueError(f'fusion must be False, True (the {FUSION_STYLES[0]!r} style) or one of {FUSION_STYLES}; '
                             f'got {self.style!r}')
        repeats = tuple(self.repeats) if isinstance(self.repeats, (list, tuple)) else ()
        if not (len(repeats) == 2 and all(isinstance(r, int) and r >= 1 for r in repeats)):
            raise ValueError(f'fusion_repeats must be two positive integers (per activation, per level); '
                             f'got {self.repeats!r}')
        if self.style == 'residual' and repeats != (1, 1):
            raise ValueError("fusion_repeats apply to fusion='paper' blocks (the paper's weight-shared repeats); "
                             f"the 'residual' style takes (1, 1), got {repeats}")
        self.repeats = repeats

    def build(self, level_channels: Sequence[Sequence[int]]) -> nn.ModuleList | None:
        """One ``LevelFusion`` per level (channels of each activation), or None to concatenate."""
        if self.style is None:
            return None
        return nn.ModuleList(LevelFusion(channels, self.style, self.repeats) for channels in level_channels)

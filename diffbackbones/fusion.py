"""Learnable fusion of frozen diffusion activations: zero-initialised residual blocks.

At initialisation every block is the identity (its last conv is zero), so training starts from the
raw diffusion features and learns a correction, as the paper's segmentor did. One block per
activation (before concatenation) and one per level (after it).
"""
from __future__ import annotations

import torch
import torch.nn as nn

__all__ = ['ResidualFusion', 'LevelFusion']


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


def _groups(channels: int, groups: int) -> int:
    while channels % groups:
        groups //= 2
    return groups


class LevelFusion(nn.Module):
    """Fuses the activations of one level: a block per activation, concatenation, a block per level."""

    def __init__(self, channels: list[int]):
        super().__init__()
        self.per_activation = nn.ModuleList(ResidualFusion(c) for c in channels)
        self.per_level = ResidualFusion(sum(channels))

    def forward(self, activations: list[torch.Tensor]) -> torch.Tensor:
        return self.per_level(torch.cat([f(a) for f, a in zip(self.per_activation, activations)], dim=1))

"""Bilinear upsampling read in pieces: the values ``F.interpolate(mode='bilinear', align_corners=False)``
would give at chosen pixels or rows, without materialising the whole upsampled map.

Both evaluation protocols upsample low-resolution activations to image resolution (256 x 256 x 3,520
per image in the label-scarce probe, an image's full size x 1,280 in correspondence); upsampling is
linear and separable, so any pixel of the result is a weighted sum of four grid values.
"""
from __future__ import annotations

import torch

__all__ = ['bilinear_index', 'gather_bilinear', 'UpsampledMap']


def bilinear_index(in_size: int, out_size: int) -> tuple[torch.Tensor, ...]:
    """Per output index along one axis: the two source indices and their weights (i0, i1, w0, w1)."""
    # align_corners=False: src = (dst + 0.5) * in / out - 0.5, clamped at 0; neighbours floor(src) and the
    # next one (clamped to the edge), weights by distance. Float32 like torch.
    scale = torch.tensor(in_size, dtype=torch.float32) / out_size
    src = ((torch.arange(out_size, dtype=torch.float32) + 0.5) * scale - 0.5).clamp_(min=0)
    i0 = src.long()
    i1 = torch.where(i0 < in_size - 1, i0 + 1, i0)
    w1 = src - i0
    return i0, i1, 1 - w1, w1


def gather_bilinear(maps: torch.Tensor, tables: tuple, n: torch.Tensor | int, y: torch.Tensor,
                    x: torch.Tensor) -> torch.Tensor:
    """(B, C) upsampled values of ``maps`` (N, C, h, w) at pixels (y, x) of images n.

    ``tables`` is ``(bilinear_index(h, H), bilinear_index(w, W))`` for the output size (H, W).
    """
    (y0, y1, a0, a1), (x0, x1, b0, b1) = tables
    ty0, ty1, ta0, ta1 = y0[y], y1[y], a0[y, None], a1[y, None]
    tx0, tx1, tb0, tb1 = x0[x], x1[x], b0[x, None], b1[x, None]
    top = tb0 * maps[n, :, ty0, tx0] + tb1 * maps[n, :, ty0, tx1]
    bottom = tb0 * maps[n, :, ty1, tx0] + tb1 * maps[n, :, ty1, tx1]
    return ta0 * top + ta1 * bottom


class UpsampledMap:
    """One (C, h, w) map read as if upsampled bilinearly to ``out_hw``: at pixels, or a band of rows."""

    def __init__(self, feature: torch.Tensor, out_hw: tuple[int, int]):
        self.feature = feature.float()
        self.out_hw = (int(out_hw[0]), int(out_hw[1]))
        self.tables = (bilinear_index(feature.shape[1], self.out_hw[0]), bilinear_index(feature.shape[2], self.out_hw[1]))

    def at(self, y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """(K, C) values at integer pixels (y, x) of the upsampled map."""
        y, x = y.long(), x.long()
        return gather_bilinear(self.feature[None], self.tables, torch.zeros_like(y), y, x)

    def rows(self, start: int, stop: int) -> torch.Tensor:
        """(C, stop - start, W): rows [start, stop) of the upsampled map."""
        (y0, y1, a0, a1), (x0, x1, b0, b1) = self.tables
        band = (a0[start:stop, None] * self.feature[:, y0[start:stop]] +
                a1[start:stop, None] * self.feature[:, y1[start:stop]])            # (C, r, w)
        return b0 * band[:, :, x0] + b1 * band[:, :, x1]

"""The paper's trained correspondence protocol: one 3x3 convolution on the concatenated activations.

Every level is resized (bilinear) to 128 x 128 and concatenated; a Conv2d(C, C, 3, padding=1, bias=False)
maps it to the matching features. Training pairs are drawn as the paper's code draws them (each epoch a
permutation of the training pairs, its first ``steps_per_epoch``), one pair per step, with a symmetric
CLIP-style cross-entropy at the ground-truth keypoints (temperature 0.07, source -> target and back) and
AdamW (lr 5e-4, weight decay 0.01). For evaluation the 128 x 128 maps are upsampled to 512 x 512 (the
paper's load size), keypoints matched there and mapped back to the target image.

The loss only needs the similarity rows of the K keypoints: (K, 128^2) logits per direction, not the
(128^2, 128^2) matrix the original builds and then indexes; the values are the same.
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from .matching import _pixel_index, rescale_points

__all__ = ['CorrespondenceHead', 'clip_loss', 'keypoint_index', 'training_schedule', 'train_steps']


class CorrespondenceHead(nn.Module):
    """Levels -> (C, S, S): each level resized to ``size`` x ``size``, concatenated, one 3x3 convolution."""

    def __init__(self, channels: int, size: int = 128):
        super().__init__()
        self.size = size
        self.conv = nn.Conv2d(channels, channels, kernel_size=3, padding=1, bias=False)

    def resize(self, levels: Sequence[torch.Tensor]) -> torch.Tensor:
        return torch.cat([F.interpolate(level[None].float(), (self.size, self.size), mode='bilinear',
                                        align_corners=False)[0] for level in levels])

    def forward(self, levels: Sequence[torch.Tensor]) -> torch.Tensor:
        return self.conv(self.resize(levels)[None])[0]


def keypoint_index(points: np.ndarray, image_wh: tuple[int, int], size: int) -> torch.Tensor:
    """Flat indices into a size x size grid of (x, y) image keypoints (rescaled, rounded, clipped)."""
    y, x = _pixel_index(rescale_points(points, image_wh, (size, size)), (size, size))
    return y * size + x


def clip_loss(source: torch.Tensor, target: torch.Tensor, source_index: torch.Tensor, target_index: torch.Tensor,
              temperature: float = 0.07) -> torch.Tensor:
    """Symmetric cross-entropy of cosine similarities / temperature at matching keypoints.

    ``source``/``target``: (C, S, S) maps; indices: (K,) flat positions of corresponding keypoints.
    """
    a = F.normalize(source.flatten(1).T, dim=1)      # (S^2, C)
    b = F.normalize(target.flatten(1).T, dim=1)
    forward = F.cross_entropy(a[source_index] @ b.T / temperature, target_index)
    backward = F.cross_entropy(b[target_index] @ a.T / temperature, source_index)
    return (forward + backward) / 2


def training_schedule(n_pairs: int, steps_per_epoch: int, epochs: int, generator: np.random.Generator) -> list[int]:
    """Pair indices in training order: per epoch a permutation, its first ``steps_per_epoch`` (the paper's draw)."""
    return [int(i) for _ in range(epochs) for i in generator.permutation(n_pairs)[:steps_per_epoch]]


def train_steps(head: CorrespondenceHead, levels_of: Callable, pairs: Sequence, order: Sequence[int],
                optimizer: torch.optim.Optimizer, temperature: float = 0.07,
                on_step: Callable[[int, float], None] | None = None) -> list[float]:
    """Run one optimiser step per pair index in ``order``; ``levels_of(path, category)`` gives an image's
    levels. Returns the losses; ``on_step(step, loss)`` is called after each step (validation hooks)."""
    losses = []
    head.train()
    for step, i in enumerate(order):
        pair = pairs[i]
        source = head(levels_of(pair.source, pair.category))
        target = head(levels_of(pair.target, pair.category))
        loss = clip_loss(source, target, keypoint_index(pair.source_points, pair.source_size, head.size),
                         keypoint_index(pair.target_points, pair.target_size, head.size), temperature)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        if on_step is not None:
            on_step(step, losses[-1])
    return losses

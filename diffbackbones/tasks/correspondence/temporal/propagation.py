"""Label propagation through a video by feature affinity: DINO's protocol (``eval_video_segmentation.py``).

For every frame t >= 1, the context is frame 0 (its given labels, one channel per label id, background
included) and the last ``context`` predicted frames (their soft labels, as predicted on the feature grid).
Each target position takes the cosine similarity of its L2-normalised feature with every context position,
exp(similarity / temperature); positions outside a square of +-``radius`` grid cells around it count zero
(in every context frame); the ``topk`` largest over all context frames together are kept (ties too), the
rest set to zero, and the kept weights normalised to sum to 1. The target's soft labels are the weighted
sum of the context labels. DINO's defaults: 7 frames, radius 12, top 5, temperature 0.1.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Iterable, Iterator

import torch
import torch.nn.functional as F

__all__ = ['Propagation', 'propagate', 'neighbourhood_mask', 'one_hot']


@dataclass(frozen=True)
class Propagation:
    """The protocol's parameters (DINO's defaults)."""
    context: int = 7          # the last n predicted frames kept beside frame 0 (n_last_frames)
    radius: int = 12          # half-width of the square neighbourhood, in grid cells (size_mask_neighborhood; 0: all)
    topk: int = 5
    temperature: float = 0.1


def neighbourhood_mask(h: int, w: int, radius: int) -> torch.Tensor:
    """(h*w target, h*w source) bool: source within +-radius rows and columns of the target."""
    rows, cols = torch.arange(h).repeat_interleave(w), torch.arange(w).repeat(h)
    return ((rows[:, None] - rows[None]).abs() <= radius) & ((cols[:, None] - cols[None]).abs() <= radius)


def one_hot(labels: torch.Tensor, classes: int) -> torch.Tensor:
    """(h, w) integer ids -> (classes, h, w) float one-hot."""
    return F.one_hot(labels.long(), classes).permute(2, 0, 1).float()


def _step(target: torch.Tensor, features: list[torch.Tensor], labels: list[torch.Tensor], mask: torch.Tensor | None,
          protocol: Propagation) -> torch.Tensor:
    c, h, w = target.shape
    query = F.normalize(target.reshape(c, -1), dim=0)                                   # (C, hw)
    keys = F.normalize(torch.stack([f.reshape(c, -1) for f in features]), dim=1)         # (n, C, hw)
    affinity = torch.exp(torch.einsum('ct,ncs->nst', query, keys) / protocol.temperature)  # (n, hw source, hw target)
    if mask is not None:
        affinity = affinity * mask.T[None]
    affinity = affinity.reshape(-1, h * w)                                               # (n*hw source, hw target)
    kth = torch.topk(affinity, k=min(protocol.topk, affinity.shape[0]), dim=0).values.min(0).values
    affinity = torch.where(affinity < kth, torch.zeros_like(affinity), affinity)
    affinity = affinity / affinity.sum(0, keepdim=True)
    sources = torch.stack(labels)                                                        # (n, K, h, w)
    n, k = sources.shape[:2]
    return (sources.reshape(n, k, -1).permute(1, 0, 2).reshape(k, -1) @ affinity).reshape(k, h, w)


@torch.no_grad()
def propagate(first_labels: torch.Tensor, features: Iterable[torch.Tensor],
              protocol: Propagation = Propagation()) -> Iterator[torch.Tensor]:
    """Soft labels (K, h, w) of frames 1, 2, ... from frame 0's ``first_labels`` (K, h, w), given each
    frame's (C, h, w) features in order (frame 0 first). A generator: features may be computed lazily."""
    features = iter(features)
    first = next(features).float()
    recent: deque = deque(maxlen=protocol.context)
    mask = None
    for target in features:
        target = target.float()
        if mask is None and protocol.radius > 0:
            mask = neighbourhood_mask(*target.shape[1:], protocol.radius)
        predicted = _step(target, [first] + [f for f, _ in recent], [first_labels.float()] + [l for _, l in recent],
                          mask, protocol)
        recent.append((target, predicted))
        yield predicted

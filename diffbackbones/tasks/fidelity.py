"""How far one backbone's features are from another's on the same images: per level, the relative L2 error and
the mean cosine similarity of the per-pixel feature vectors (what a probe or a decode head compares)."""
from __future__ import annotations

from typing import Iterable

import torch
import torch.nn.functional as F

__all__ = ['feature_fidelity']


@torch.no_grad()
def feature_fidelity(reference: torch.nn.Module, other: torch.nn.Module, batches: Iterable[torch.Tensor]
                     ) -> list[dict[str, float]]:
    """Per level of ``reference``: ``relative_error`` (||other - reference|| / ||reference|| over all images) and
    ``cosine`` (the mean over images and pixels of the cosine between the two channel vectors)."""
    squared_error = squared_norm = cosine_sum = None
    pixels = 0
    for images in batches:
        ref, out = reference(images), other(images)
        if squared_error is None:
            squared_error, squared_norm, cosine_sum = [0.0] * len(ref), [0.0] * len(ref), [0.0] * len(ref)
        for i, (r, o) in enumerate(zip(ref, out)):
            squared_error[i] += float((o.float() - r.float()).square().sum())
            squared_norm[i] += float(r.float().square().sum())
            cosine_sum[i] += float(F.cosine_similarity(o.float(), r.float(), dim=1).sum())
        pixels_per_level = [r.shape[0] * r.shape[-2] * r.shape[-1] for r in ref]
        pixels = [p + q for p, q in zip(pixels, pixels_per_level)] if pixels else pixels_per_level
    if squared_error is None:
        raise ValueError('feature_fidelity needs at least one batch of images')
    return [dict(relative_error=(e / n) ** 0.5, cosine=c / p)
            for e, n, c, p in zip(squared_error, squared_norm, cosine_sum, pixels)]

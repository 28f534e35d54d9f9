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
    sums = None   # per level: [squared error, squared norm of the reference, sum of cosines, pixels]
    for images in batches:
        ref, out = reference(images), other(images)
        sums = sums or [[0.0, 0.0, 0.0, 0] for _ in ref]
        for level, r, o in zip(sums, ref, out):
            r, o = r.float(), o.float()
            level[0] += float((o - r).square().sum())
            level[1] += float(r.square().sum())
            level[2] += float(F.cosine_similarity(o, r, dim=1).sum())
            level[3] += r.shape[0] * r.shape[-2] * r.shape[-1]
    if sums is None:
        raise ValueError('feature_fidelity needs at least one batch of images')
    return [dict(relative_error=(error / norm) ** 0.5, cosine=cosines / pixels)
            for error, norm, cosines, pixels in sums]

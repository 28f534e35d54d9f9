"""The activation catalog: every capturable activation of a denoiser, named, in execution order.

The catalog is the public face of the denoiser families (``families/``, one module each): each family walks its
module tree into ``ActivationPoint``s (``points.py``); this module asks the family of a denoiser, and
lists, indexes and resolves the layer ids. Dependencies point one way: points <- families <- catalog.
"""
from __future__ import annotations

import difflib
from dataclasses import dataclass, replace
from typing import Sequence

import torch.nn as nn

from .families import family_of
from .points import ActivationPoint

__all__ = ['ActivationPoint', 'ActivationInfo', 'list_activations', 'activation_points', 'resolve_names',
           'latent_multiple', 'catalog_index']


def latent_multiple(denoiser: nn.Module) -> int:
    """The factor every latent side must be a multiple of for the denoiser to run unpadded."""
    return family_of(denoiser).latent_multiple(denoiser)


def activation_points(denoiser: nn.Module, latent_hw: tuple[int, int] = (64, 64),
                      n_text_tokens: int = 77) -> list[ActivationPoint]:
    """Every capturable activation of ``denoiser`` in execution order (the full record per point)."""
    return family_of(denoiser).walk(denoiser, tuple(latent_hw), n_text_tokens)


@dataclass(frozen=True)
class ActivationInfo:
    """A catalog row: layer id, kind, channels and (h, w) at the requested latent size."""

    name: str
    kind: str
    channels: int
    size: tuple[int, int]


def list_activations(denoiser: nn.Module, latent_hw: tuple[int, int] = (64, 64), *,
                     n_text_tokens: int = 77) -> list[ActivationInfo]:
    """The catalog of a denoiser, without running it.

    Args:
        denoiser: A diffusers denoiser (``UNet2DConditionModel``); may live on the meta device.
        latent_hw: Latent (h, w) to report sizes for (image size / 8 for latent-diffusion models).
        n_text_tokens: Text sequence length, the channel count of ``*-cross-map`` activations.

    Returns:
        One ``ActivationInfo`` per layer id, in execution order; the same ids ``ActivationCapture`` takes.
    """
    return [ActivationInfo(p.name, p.kind, p.channels, p.size) for p in
            activation_points(denoiser, latent_hw, n_text_tokens)]


def catalog_index(points: Sequence[ActivationPoint]) -> dict[str, ActivationPoint]:
    """Layer id -> point, aliases included (an alias maps to its point under the alias's name)."""
    index = {p.name: p for p in points}
    for p in points:
        for alias in p.aliases:
            index.setdefault(alias, replace(p, name=alias, aliases=()))
    return index


def resolve_names(points: Sequence[ActivationPoint], names: Sequence[str]) -> list[ActivationPoint]:
    """Look layer ids up in a catalog; unknown ids raise ``ValueError`` naming the closest valid ones.

    An alias (the original implementation's id) resolves to its point renamed to the alias, so the
    activation is stored under the id the caller asked for."""
    by_name = catalog_index(points)
    unknown = [n for n in names if n not in by_name]
    if unknown:
        lines = []
        for n in unknown:
            close = difflib.get_close_matches(n, list(by_name), n=5, cutoff=0.6)
            lines.append(f'  {n!r}: closest valid ids: {close}' if close else f'  {n!r}: no similar id')
        raise ValueError(
            'Unknown activation layer id(s) for this denoiser:\n' + '\n'.join(lines) +
            f'\n{len(points)} ids exist; list them with diffbackbones.list_activations(denoiser, latent_hw).')
    return [by_name[n] for n in names]


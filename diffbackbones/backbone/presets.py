"""Which activations a backbone returns, as levels (fine to coarse): presets by name, preset files, and
``Preset``, the object the screen's ranking returns and saves.

A preset file is JSON, ``{"model": ..., "levels": [[layer ids], ...], ...}``; extra keys (the ranking
behind it, the timestep) ride along and are kept by ``Preset.save``/``Preset.load``.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence, Union

from diffbackbones.models.catalog import ActivationPoint, resolve_names
from diffbackbones.models.zoo import MODELS, Levels, ModelSpec

__all__ = ['Preset', 'ActivationsArg', 'resolve_levels']


@dataclass(frozen=True)
class Preset:
    """Levels of layer ids, fine to coarse, for one model (topology).

    Attributes:
        model: The zoo name it was made for; a backbone of another topology refuses it.
        levels: Layer ids per level; the ids of one level share a stride.
        info: Anything else saved with it (the screen stores its ranking and timestep here).
    """

    model: str | None
    levels: Levels
    info: dict = field(default_factory=dict, compare=False)

    def __post_init__(self):
        levels = tuple(tuple(level) for level in self.levels)
        if not levels or not all(levels) or not all(isinstance(n, str) for level in levels for n in level):
            raise ValueError(f'a preset needs a non-empty list of non-empty levels of layer ids; got {self.levels!r}')
        object.__setattr__(self, 'levels', levels)

    @property
    def names(self) -> list[str]:
        """All layer ids, in level order."""
        return [n for level in self.levels for n in level]

    def save(self, path: str | Path) -> Path:
        """Write the preset as JSON (a folder gets ``preset.json`` inside); returns the file."""
        path = Path(path)
        if path.is_dir():
            path = path / 'preset.json'
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(dict(model=self.model, levels=[list(level) for level in self.levels], **self.info),
                                   indent=1))
        return path

    @classmethod
    def load(cls, path: str | Path) -> 'Preset':
        """Read a preset file (or ``preset.json`` in a folder), as ``save`` and the screen write it."""
        path = Path(path)
        if path.is_dir():
            path = path / 'preset.json'
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise FileNotFoundError(f'preset file {path} does not exist') from None
        except json.JSONDecodeError as e:
            raise ValueError(f'preset file {path} is not valid JSON: {e}') from None
        if not isinstance(data, dict) or not isinstance(data.get('levels'), list) or not data['levels']:
            raise ValueError(f'preset file {path} must hold {{"levels": [[layer ids], ...]}} (as Preset.save and '
                             '`diffbackbones screen --rank` write it)')
        info = {k: v for k, v in data.items() if k not in ('model', 'levels')}
        return cls(data.get('model'), data['levels'], info)

    def check_model(self, spec: ModelSpec, origin: str = 'preset') -> None:
        """Refuse a preset made for a model of another topology: its layer ids would not exist here."""
        if self.model and self.model in MODELS and MODELS[self.model].family != spec.family:
            raise ValueError(f'{origin} was written for {self.model!r} ({MODELS[self.model].family} topology), but this '
                             f'backbone is {spec.name!r} ({spec.family} topology), whose layer ids differ.')


ActivationsArg = Union[str, Preset, Sequence[str], Sequence[Sequence[str]]]


def _named_preset(spec: ModelSpec, preset: str) -> Levels:
    if preset.endswith('.json'):
        loaded = Preset.load(preset)
        loaded.check_model(spec, f'preset file {preset}')
        return loaded.levels
    if preset in spec.presets:
        return spec.presets[preset]
    for other in MODELS.values():
        for name, levels in other.presets.items():
            if preset == f'{other.name}_{name}':
                if other.family == spec.family:  # same topology: the layer ids are valid here
                    return levels
                raise ValueError(
                    f'Preset {preset!r} belongs to {other.name!r} ({other.family} topology), but this backbone is '
                    f'{spec.name!r} ({spec.family} topology), whose layer ids differ. Presets for {spec.name!r}: '
                    f'{sorted(spec.presets)} (also as {[f"{spec.name}_{p}" for p in spec.presets]}).')
    raise ValueError(f'Unknown preset {preset!r} for {spec.name!r}; available: {sorted(spec.presets)}. '
                     'Or pass a list of layer ids (see diffbackbones.list_activations).')


def resolve_levels(spec: ModelSpec, activations: ActivationsArg, points: Sequence[ActivationPoint],
                   stride_of: dict[str, int]) -> Levels:
    """Normalise the ``activations`` argument into levels (fine to coarse) of valid layer ids.

    Args:
        spec: Zoo entry (for presets).
        activations: A preset name or file, a ``Preset``, a flat list of layer ids (grouped by stride), or
            a list of levels.
        points: The denoiser's catalog.
        stride_of: Pixel stride of every layer id.
    """
    if isinstance(activations, Preset):
        activations.check_model(spec)
        levels = activations.levels
    elif isinstance(activations, str) and not activations.endswith('.json') and activations not in spec.presets \
            and activations in {p.name for p in points}:  # one layer id, not a preset name
        levels = ((activations,),)
    elif isinstance(activations, str):
        levels = _named_preset(spec, activations)
    elif activations and all(isinstance(a, str) for a in activations):
        resolve_names(points, activations)
        by_stride: dict[int, list[str]] = {}
        for name in dict.fromkeys(activations):
            by_stride.setdefault(stride_of[name], []).append(name)
        levels = tuple(tuple(by_stride[s]) for s in sorted(by_stride))
    elif activations and all(not isinstance(a, str) and len(a) > 0 for a in activations):
        levels = tuple(tuple(level) for level in activations)
    else:
        raise ValueError('activations must be a preset name, a non-empty list of layer ids, or a list of '
                         f'non-empty levels (lists of layer ids); got {activations!r}')
    resolve_names(points, [n for level in levels for n in level])
    strides = []
    for level in levels:
        level_strides = {stride_of[n]: n for n in level}
        if len(level_strides) > 1:
            raise ValueError(f'Activations in one level must share a stride to be concatenated; level {list(level)} '
                             f'mixes strides {sorted(level_strides)}. Put them in separate levels.')
        strides.append(stride_of[level[0]])
    if strides != sorted(strides):
        raise ValueError(f'Levels must go fine to coarse (non-decreasing stride); got strides {strides} '
                         f'for levels {[list(level) for level in levels]}.')
    return levels

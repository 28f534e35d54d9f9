"""The backbone's options, grouped by the stage of the data flow they belong to.

    image -> vae (encode) -> noise -> conditioning -> control -> denoiser (denoise and capture) -> fusion (levels)

Each stage is a small dataclass that checks its own options where it is defined (``encoding.py``,
``noise/``, ``conditioning/``, ``denoiser/control.py``, ``denoiser/stage.py``, ``fusion.py``); ``DiffusionBackbone``
composes them.
A stage option is given as a dict (what mmengine configs write), as the stage object itself, or as a
short form: ``noise=dict(t=50, seed=0, ensemble=4)``, ``vae=dict(cache='memory')``, ``fusion='paper'``.

A dict may name a ``type``: the variant of the stage to build (``register_stage`` adds variants; each
kind has one default). A new option is a new variant or a new stage, never another constructor keyword.

The flat keywords of earlier releases (``t=``, ``noise_seed=``, ``prompt=``, ``image_size=``, ...) keep
working: ``FLAT_KEYWORDS`` says which stage option each one sets.
"""
from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass
from typing import Any, Mapping

from diffbackbones.backbone.noise.clean import CleanLatentStage
from diffbackbones.backbone.conditioning.prompt import ConditioningStage
from diffbackbones.backbone.denoiser.control import ControlStage
from diffbackbones.backbone.denoiser.stage import DenoiserStage
from .encoding import ImageStage, VaeStage
from .fusion import FusionStage
from diffbackbones.backbone.noise.inversion import DdimInversionStage
from diffbackbones.backbone.conditioning.learned import LearnedConditioningStage, VpdClassesStage
from diffbackbones.backbone.noise.schedule import NoiseStage

__all__ = ['Stages', 'FLAT_KEYWORDS', 'STAGE_VARIANTS', 'register_stage', 'build_stages', 'set_default_option']

# kind -> {type name: class}; the first entry of each kind is its default
STAGE_VARIANTS: dict[str, dict[str, type]] = {
    'image': {'resize': ImageStage},
    'vae': {'encode': VaeStage},
    'noise': {'sampled': NoiseStage, 'ddim-inversion': DdimInversionStage, 'clean': CleanLatentStage},
    'conditioning': {'prompt': ConditioningStage, 'learned': LearnedConditioningStage, 'vpd-classes': VpdClassesStage},
    'control': {'controlnet': ControlStage},
    'denoiser': {'capture': DenoiserStage},
    'fusion': {'blocks': FusionStage},
}

# flat keyword of earlier releases -> (stage, option)
FLAT_KEYWORDS: dict[str, tuple[str, str]] = {
    'image_size': ('image', 'size'), 'resize_features': ('image', 'resize_features'),
    'antialias': ('image', 'antialias'), 'strict_input': ('image', 'strict'),
    'sample_posterior': ('vae', 'sample_posterior'), 'latent_cache': ('vae', 'cache'),
    'latent_scale': ('vae', 'scale'), 'trainable_vae': ('vae', 'trainable'),
    't': ('noise', 't'), 'noise_seed': ('noise', 'seed'), 'ensemble_size': ('noise', 'ensemble'),
    'prompt': ('conditioning', 'prompt'), 'prompt_cache': ('conditioning', 'cache'),
    'class_label': ('conditioning', 'class_label'),
    'trainable_denoiser': ('denoiser', 'trainable'), 'prune': ('denoiser', 'prune'),
    'compile': ('denoiser', 'compile'), 'lora': ('denoiser', 'lora'), 'fusion_repeats': ('fusion', 'repeats'),
}


def register_stage(kind: str, name: str):
    """Class decorator: add a variant of stage ``kind``, chosen by ``type=name`` in its options."""
    if kind not in STAGE_VARIANTS:
        raise ValueError(f'unknown stage kind {kind!r}; kinds: {list(STAGE_VARIANTS)}')

    def add(cls: type) -> type:
        STAGE_VARIANTS[kind][name] = cls
        return cls
    return add


@dataclass
class Stages:
    """The seven stages of one backbone, in the order the data flows through them."""

    image: ImageStage
    vae: VaeStage
    noise: NoiseStage
    conditioning: ConditioningStage
    control: ControlStage
    denoiser: DenoiserStage
    fusion: FusionStage


def _short_form(kind: str, value: Any) -> Any:
    if kind == 'fusion' and (isinstance(value, bool) or value is None or isinstance(value, str)):
        return dict(style=value or None) if value is not True else dict(style='residual')
    if kind == 'control' and isinstance(value, str):  # control='<ControlNet hub id or folder>'
        return dict(model=value)
    if isinstance(value, str):  # a variant by name: noise='ddim-inversion'
        return dict(type=value)
    return value


def _build(kind: str, value: Any) -> Any:
    variants = STAGE_VARIANTS[kind]
    value = _short_form(kind, {} if value is None else value)
    if isinstance(value, tuple(variants.values())):
        return dataclasses.replace(value)  # a fresh copy: bind() fills model facts into it
    if not isinstance(value, Mapping):
        raise ValueError(f'{kind}= takes a dict of options (or a {"/".join(c.__name__ for c in variants.values())}); '
                         f'got {value!r}')
    options = dict(value)
    name = options.pop('type', next(iter(variants)))
    if name not in variants:
        raise ValueError(f'unknown {kind} type {name!r}; available: {list(variants)}')
    cls = variants[name]
    fields = [f.name for f in dataclasses.fields(cls) if f.init]
    unknown = [k for k in options if k not in fields]
    if unknown:
        hints = {k: difflib.get_close_matches(k, fields, n=1) for k in unknown}
        raise ValueError(f'unknown {kind} option(s) ' + ', '.join(f'{k!r}' + (f' (did you mean {h[0]!r}?)' if h else '')
                                                              for k, h in hints.items()) + f'; {kind} options: {fields}')
    return cls(**options)


def build_stages(stage_options: Mapping[str, Any], flat: Mapping[str, Any]) -> Stages:
    """The stages from their options (dicts, objects or short forms) and the flat keywords.

    Raises:
        TypeError: a keyword that is neither a stage nor a flat keyword (as Python does for any unknown
            keyword argument), with the closest names.
        ValueError: one option given both ways, or an option a stage rejects.
    """
    unknown = [k for k in flat if k not in FLAT_KEYWORDS]
    if unknown:
        valid = list(STAGE_VARIANTS) + list(FLAT_KEYWORDS)
        hints = {k: difflib.get_close_matches(k, valid, n=2) for k in unknown}
        raise TypeError('DiffusionBackbone got unexpected keyword argument(s): ' +
                        '; '.join(f'{k!r}' + (f' (did you mean {" or ".join(map(repr, h))}?)' if h else '')
                                  for k, h in hints.items()) +
                        f'. Stage options: {list(STAGE_VARIANTS)}; flat keywords: {list(FLAT_KEYWORDS)}.')
    merged = {kind: stage_options.get(kind) for kind in STAGE_VARIANTS}
    for key, value in flat.items():
        kind, option = FLAT_KEYWORDS[key]
        current = _short_form(kind, {} if merged[kind] is None else merged[kind])
        if not isinstance(current, Mapping):  # a stage object: the flat keyword sets one of its fields
            current = {f.name: getattr(current, f.name) for f in dataclasses.fields(current) if f.init} | {
                'type': _type_name(kind, current)}
        if option in current:
            raise ValueError(f'{key}= and {kind}=dict({option}=...) set the same option; give it once '
                             f'(e.g. {kind}=dict({option}={value!r})).')
        merged[kind] = dict(current, **{option: value})
    return Stages(**{kind: _build(kind, value) for kind, value in merged.items()})


def _type_name(kind: str, stage: Any) -> str:
    return next(name for name, cls in STAGE_VARIANTS[kind].items() if type(stage) is cls)


def set_default_option(kwargs: dict, flat_key: str, value: Any) -> None:
    """``kwargs.setdefault`` for a backbone option that may be given flat or inside its stage's dict
    (the timm and mmseg wrappers' defaults, such as ``trainable_denoiser``)."""
    kind, option = FLAT_KEYWORDS[flat_key]
    stage = kwargs.get(kind)
    if flat_key in kwargs or (isinstance(stage, Mapping) and option in stage):
        return
    if stage is not None and not isinstance(stage, Mapping):  # a stage object holds every option
        return
    kwargs[flat_key] = value

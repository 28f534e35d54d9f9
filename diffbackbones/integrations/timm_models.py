"""timm entry points: ``timm.create_model('sd15_practical', pretrained=True, features_only=True)``.

``DiffusionNet`` is the timm face of a ``DiffusionBackbone``: ``forward_features`` gives every level on
the coarsest grid (finer levels area-pooled to it, then concatenated: each chosen activation feeds the
head, and each denoiser part that runs gets a gradient), ``forward_head`` pools that into a linear
classifier (``num_classes=0``: pooled features), and
``forward_intermediates`` / ``prune_intermediate_layers`` give the pyramid (timm's getter contract;
pruning levels lets the denoiser stop earlier).

Like every timm model, an entry is trainable (VAE encoder and denoiser) unless built with
``frozen=True``, the paper's setting for features; ``state_dict()`` is always complete.
"""
from __future__ import annotations

import sys

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import ClassifierHead
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models._features import FeatureGetterNet, feature_take_indices

from diffbackbones.backbone.diffusion_backbone import DiffusionBackbone
from diffbackbones.backbone.combined import CombinedDiffusionBackbone
from diffbackbones.backbone.stages import set_default_option
from diffbackbones.models.zoo import COMBINATIONS, MODELS, layer_stride

__all__ = ['DiffusionNet']


class DiffusionNet(nn.Module):
    """A ``DiffusionBackbone`` with timm's model interface.

    Args:
        model: Zoo name (or ``members``, for a ``CombinedDiffusionBackbone``).
        activations: As ``DiffusionBackbone``.
        members: Member dicts of a ``CombinedDiffusionBackbone`` (instead of ``model``/``activations``).
        weights: ``DiffusionBackbone``'s ``pretrained`` (True, False or a local folder).
        num_classes: Classifier classes; 0 returns pooled features.
        global_pool: Pooling of ``forward_features`` (timm pool types; ``''`` keeps it unpooled).
        drop_rate: Dropout before the classifier.
        frozen: Freeze the VAE encoder and the denoiser (the paper's setting); by default both train,
            as every timm model does until its user freezes it.
        **kwargs: Further ``DiffusionBackbone`` options (``t``, ``prompt``, ``dtype``, ``strict_input``, ...).
    """

    def __init__(self, model: str | None = None, activations='practical', weights: bool | str = True,
                 num_classes: int = 0, in_chans: int = 3, global_pool: str = 'avg', drop_rate: float = 0.0,
                 frozen: bool = False, members=None, **kwargs):
        super().__init__()
        if in_chans != 3:
            raise ValueError(f'diffusion backbones take RGB images: in_chans must be 3, got {in_chans}')
        if (model is None) == (members is None):
            raise ValueError('give either model (a zoo name) or members (a combined backbone), not both or neither')
        set_default_option(kwargs, 'trainable_denoiser', not frozen)
        set_default_option(kwargs, 'trainable_vae', not frozen)
        if members is not None:
            self.backbone = CombinedDiffusionBackbone(members, pretrained=weights, **kwargs)
        else:
            self.backbone = DiffusionBackbone(model, activations, pretrained=weights, **kwargs)
        self.num_classes = num_classes
        self.drop_rate = drop_rate
        self._set_feature_info()
        self.head = ClassifierHead(self.num_features, num_classes, pool_type=global_pool, drop_rate=drop_rate)

    def _set_feature_info(self) -> None:
        self.feature_info = [dict(info, module=f'backbone.{info["module"]}') for info in self.backbone.feature_info]
        self.num_features = self.head_hidden_size = sum(info['num_chs'] for info in self.feature_info)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.backbone.set_grad_checkpointing(enable)

    def get_classifier(self) -> nn.Module:
        return self.head.fc

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        self.num_classes = num_classes
        self.head.reset(num_classes, pool_type=global_pool)

    @staticmethod
    def _on_coarsest_grid(levels: tuple[torch.Tensor, ...]) -> torch.Tensor:
        size = levels[-1].shape[-2:]
        return torch.cat([level if level.shape[-2:] == size else F.adaptive_avg_pool2d(level, size)
                          for level in levels], dim=1)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, num_features, h, w) at the coarsest stride: all levels, finer ones area-pooled to it."""
        return self._on_coarsest_grid(self.backbone(x))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        return self.head(x, pre_logits=pre_logits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def forward_intermediates(self, x: torch.Tensor, indices=None, norm: bool = False, stop_early: bool = False,
                              output_fmt: str = 'NCHW', intermediates_only: bool = False):
        """Pyramid levels at ``indices`` (timm semantics: int = last n, sequence = those levels)."""
        if output_fmt != 'NCHW':
            raise ValueError(f"output_fmt must be 'NCHW'; got {output_fmt!r}")
        take, _ = feature_take_indices(len(self.feature_info), indices)
        levels = self.backbone(x)
        intermediates = [levels[i] for i in take]
        if intermediates_only:
            return intermediates
        return self._on_coarsest_grid(levels), intermediates

    def prune_intermediate_layers(self, indices=1, prune_norm: bool = False, prune_head: bool = True):
        """Keep only the levels at ``indices``, renumbered 0..k-1; the denoiser then stops as early as they allow.

        Unlike a chain of stages, a UNet computes its finest levels last, so pruning keeps exactly the
        requested levels rather than a prefix.
        """
        take, _ = feature_take_indices(len(self.feature_info), indices)
        self.backbone.select_levels(take)
        self._set_feature_info()
        if prune_head:
            self.reset_classifier(0, '')
        return list(range(len(self.feature_info)))


def _cfg(members: list[dict]) -> dict:
    specs = [MODELS[m['model']] for m in members]
    size = max(spec.image_size for spec in specs)
    coarsest = max(layer_stride(spec, _levels(spec, m['activations'])[-1][0]) for spec, m in zip(specs, members))
    pool = -(-size // coarsest)  # ceil: the backbone pads to its multiple and crops back
    first_conv = 'backbone.vae.encoder.conv_in' if len(members) == 1 else 'backbone.members.0.vae.encoder.conv_in'
    return dict(hf_hub_id=specs[0].hub_id if len(specs) == 1 else None, num_classes=0, input_size=(3, size, size),
                pool_size=(pool, pool), fixed_input_size=False, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5),
                interpolation='bicubic', crop_pct=1.0, license=' + '.join(dict.fromkeys(s.license for s in specs)),
                first_conv=first_conv, classifier='head.fc')


def _levels(spec, activations):
    return spec.presets[activations] if isinstance(activations, str) else activations


def _create(variant: str, pretrained: bool | str = False, **kwargs) -> nn.Module:
    members = _ENTRIES[variant]
    features_only = kwargs.pop('features_only', False)
    out_indices = kwargs.pop('out_indices', None)
    kwargs.pop('feature_cls', None)  # the getter is the only extractor that fits a UNet
    if variant in COMBINATIONS:
        kwargs.setdefault('members', [dict(m) for m in members])
    else:
        kwargs.setdefault('model', members[0]['model'])
        kwargs.setdefault('activations', members[0]['activations'])
    model = build_model_with_cfg(DiffusionNet, variant, pretrained=False, weights=pretrained, **kwargs)
    if features_only:
        pretrained_cfg = model.pretrained_cfg
        if out_indices is None:
            out_indices = tuple(range(len(model.feature_info)))
        model = FeatureGetterNet(model, out_indices=out_indices)
        model.pretrained_cfg = model.default_cfg = pretrained_cfg
    return model


# variant name -> its members (one for a single model). One entry per (model, preset) pair, one per combination.
_ENTRIES = {f'{name}_{preset}': (dict(model=name, activations=preset),) for name, spec in MODELS.items()
            if spec.available for preset in spec.presets}
_ENTRIES.update({name: combination['members'] for name, combination in COMBINATIONS.items()})
default_cfgs = generate_default_cfgs({variant: _cfg(members) for variant, members in _ENTRIES.items()})


def _make_entrypoint(variant: str):
    def entrypoint(pretrained: bool | str = False, **kwargs) -> nn.Module:
        return _create(variant, pretrained=pretrained, **kwargs)
    entrypoint.__name__ = entrypoint.__qualname__ = variant
    entrypoint.__module__ = __name__
    if variant in COMBINATIONS:
        entrypoint.__doc__ = COMBINATIONS[variant]['description'] + '.'
    else:
        member = _ENTRIES[variant][0]
        entrypoint.__doc__ = f'{MODELS[member["model"]].description}, {member["activations"]!r} feature preset.'
    return entrypoint


for _variant in _ENTRIES:
    setattr(sys.modules[__name__], _variant, register_model(_make_entrypoint(_variant)))

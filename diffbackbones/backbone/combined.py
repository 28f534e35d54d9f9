"""`CombinedDiffusionBackbone`: several diffusion models as one feature pyramid.

    image -> member 1 (a DiffusionBackbone) -> levels at strides {8, 16, 32}
          -> member 2 (a DiffusionBackbone) -> levels at strides {8, 16, 32}
          -> per stride: concatenate the members' levels (member order) -> [fusion block] -> pyramid

The paper's best segmentor (Ours-XL-t, ``ade_full.py`` / ``city_full.py`` in its code) is SDXL and
Playground v2 combined this way. Members are ordinary ``DiffusionBackbone`` objects, so each keeps its
own early exit, pruning, conditioning and frozen state; this class only routes the input, shares VAE
work, and joins levels.
"""
from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.nn as nn

from .diffusion_backbone import DiffusionBackbone
from .fusion import FUSION_STYLES, fusion_block
from .stages import FLAT_KEYWORDS, set_default_option

__all__ = ['CombinedDiffusionBackbone']


class CombinedDiffusionBackbone(nn.Module):
    """Several diffusion models' activations, matched by stride, as one pyramid (fine to coarse).

    Args:
        members: One dict per model: ``DiffusionBackbone`` arguments (``model``, ``activations``, ``t``,
            ``fusion``, ...) and optionally ``device`` (``'cuda:1'``): the member is put there and stays
            there (``.to()``/``.cuda()`` of the whole move only the members without one). The input
            is moved once per device; every level comes back on the input's device.
        fusion: One zero-initialised block per combined level, after the members' levels at that
            stride are concatenated: False, True/``'residual'``, or ``'paper'`` (the paper's
            "amalgamated" block; see ``fusion.py``).
        **common: ``DiffusionBackbone`` options for every member (``prompt``, ``pretrained``, ``dtype``,
            ...); a member's own entry wins.

    Members whose VAE encoders are identical (architecture, dtype, device, scaling, and equal weights,
    compared at construction) hold one shared encoder, and one forward encodes each distinct VAE input
    once: members with the same working size and encode settings reuse the first one's latent. With
    ``sample_posterior=True`` and ``noise_seed=None`` they then see the same posterior sample.

    ``feature_info`` lists the combined levels: ``num_chs`` sums the members' channels at that
    ``reduction``. Members whose levels sit on different grids at one stride (e.g.
    ``resize_features=False`` with different ``image_size``) cannot be concatenated: the forward says so.
    """

    def __init__(self, members: Sequence[dict[str, Any]], fusion: bool | str = False, **common):
        super().__init__()
        if not members or not all(isinstance(m, dict) and 'model' in m for m in members):
            raise ValueError("members must be a non-empty list of dicts, each with at least 'model' (and the "
                             f"other DiffusionBackbone arguments); got {members!r}")
        if fusion not in (False, None, True) and fusion not in FUSION_STYLES:
            raise ValueError(f'fusion must be False, True (the residual style) or one of {FUSION_STYLES}; '
                             f'got {fusion!r}')
        self.devices: list[torch.device | None] = []
        self.members = nn.ModuleList()
        for member_args in members:
            kwargs = dict(member_args)
            for key, value in common.items():  # the member's own options win, flat or in a stage dict
                if key in FLAT_KEYWORDS:
                    set_default_option(kwargs, key, value)
                else:
                    kwargs.setdefault(key, value)
            device = kwargs.pop('device', None)
            member = DiffusionBackbone(**kwargs)
            if device is not None:
                device = torch.device(device)
                member.to(device)
            self.devices.append(device)
            self.members.append(member)
        self.shared_vaes = self._share_vaes()
        self._set_levels()
        style = 'residual' if fusion is True else fusion
        self.fusion = nn.ModuleList(fusion_block(style, info['num_chs']) for info in self.feature_info) \
            if fusion else None

    def _share_vaes(self) -> list[tuple[int, int]]:
        """Point members with identical VAE encoders at one module; returns the (kept, replaced) pairs."""
        shared = []
        for j, later in enumerate(self.members):
            for i in range(j):
                earlier = self.members[i]
                if earlier.vae is not later.vae and self.devices[i] == self.devices[j] \
                        and _same_encoder(earlier, later):
                    later.vae = earlier.vae
                    shared.append((i, j))
                    break
        return shared

    def _set_levels(self) -> None:
        strides = sorted({info['reduction'] for m in self.members for info in m.feature_info})
        # combined level k = the (member, member level) pairs at stride k, in member order
        self.sources = [[(i, j) for i, m in enumerate(self.members) for j, info in enumerate(m.feature_info)
                         if info['reduction'] == s] for s in strides]
        self.feature_info = [dict(num_chs=sum(self.members[i].feature_info[j]['num_chs'] for i, j in source),
                                  reduction=s, module=f'levels.{k}')
                             for k, (s, source) in enumerate(zip(strides, self.sources))]

    def select_levels(self, indices: Sequence[int]) -> None:
        """Keep only the combined levels at ``indices``; members with no level left are dropped."""
        indices = sorted(set(int(i) for i in indices))
        if not indices or indices[0] < 0 or indices[-1] >= len(self.feature_info):
            raise ValueError(f'level indices must be in [0, {len(self.feature_info)}); got {indices}')
        keep: dict[int, list[int]] = {}
        for k in indices:
            for i, j in self.sources[k]:
                keep.setdefault(i, []).append(j)
        for i, member in enumerate(self.members):
            if i in keep:
                member.select_levels(keep[i])
        self.members = nn.ModuleList(self.members[i] for i in sorted(keep))
        self.devices = [self.devices[i] for i in sorted(keep)]
        if self.fusion is not None:
            self.fusion = nn.ModuleList(self.fusion[k] for k in indices)
        self._set_levels()

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        for member in self.members:
            member.set_grad_checkpointing(enable)

    def check_images(self, images) -> None:
        self.members[0].check_images(images)

    def _apply(self, fn, recurse: bool = True):
        # Members given a device= stay on it: take them out of the tree while .to()/.cuda()/.half()
        # walks it. (Shared VAEs are only shared within one device setting, so none is moved twice.)
        pinned = {str(i): m for i, (m, d) in enumerate(zip(self.members, self.devices)) if d is not None}
        for key in pinned:
            del self.members._modules[key]
        try:
            return super()._apply(fn, recurse)
        finally:
            self.members._modules.update(pinned)
            self.members._modules = dict(sorted(self.members._modules.items(), key=lambda kv: int(kv[0])))

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        self.check_images(images)
        out_device = images.device
        on_device: dict[torch.device, torch.Tensor] = {}
        encoded: list[tuple[tuple, torch.Tensor, torch.Tensor]] = []  # (key, VAE input, latent)
        per_member = []
        for member in self.members:
            device = next(member.parameters()).device
            if device not in on_device:
                on_device[device] = images.to(device)
            levels = member.features(on_device[device], encode=_shared_encoder(member, encoded))
            per_member.append([level.to(out_device) for level in levels])
        outputs = []
        for k, source in enumerate(self.sources):
            parts = [per_member[i][j] for i, j in source]
            grids = {tuple(p.shape[-2:]) for p in parts}
            if len(grids) > 1:
                raise ValueError(
                    f'combined level {k} (stride {self.feature_info[k]["reduction"]}): the members give grids '
                    f'{[tuple(p.shape[-2:]) for p in parts]} for members {[i for i, _ in source]}; levels are '
                    'concatenated, so their grids must match. Give the members the same image_size, or keep '
                    'resize_features=True (levels on the input grid).')
            parts = [p.to(torch.promote_types(parts[0].dtype, p.dtype)) for p in parts]
            feat = torch.cat(parts, dim=1)
            outputs.append(self.fusion[k](feat) if self.fusion is not None else feat)
        return tuple(outputs)

    def extra_repr(self) -> str:
        return (f'channels={[i["num_chs"] for i in self.feature_info]}, '
                f'strides={[i["reduction"] for i in self.feature_info]}, shared_vaes={self.shared_vaes}')


def _same_encoder(a: DiffusionBackbone, b: DiffusionBackbone) -> bool:
    """Identical VAE encoders: same structure, scaling, dtypes and devices, and equal weights."""
    va, vb = a.vae, b.vae
    if (type(va) is not type(vb) or (va.scaling_factor, va.shift_factor) != (vb.scaling_factor, vb.shift_factor)
            or a.stages.vae.trainable != b.stages.vae.trainable):
        return False
    sa, sb = va.state_dict(), vb.state_dict()
    if sa.keys() != sb.keys():
        return False
    for key, x in sa.items():
        y = sb[key]
        if x.shape != y.shape or x.dtype != y.dtype or x.device != y.device or x.is_meta:
            return False  # meta tensors have no values to compare
        if not torch.equal(x, y):
            return False
    return True


def _shared_encoder(member: DiffusionBackbone, encoded: list):
    """The member's encode step, reusing a latent another member computed from the same VAE input."""
    def encode(images: torch.Tensor) -> torch.Tensor:
        key = (id(member.vae), member.stages.vae.sample_posterior, member.stages.noise.seed, member.channels_last,
               member.stages.vae.latent_cache is not None)
        for other_key, other_images, latent in encoded:
            if other_key == key and other_images.shape == images.shape and other_images.device == images.device \
                    and torch.equal(other_images, images):
                return latent
        latent = member.encode(images)
        encoded.append((key, images, latent))
        return latent
    return encode

"""The first two stages: the image (checked, resized to the working size, padded) and its VAE latent.

``image=dict(size=512, antialias=True)`` and ``vae=dict(sample_posterior=False, cache='memory')`` in a
backbone's options; the flat keywords of earlier releases (``image_size``, ``latent_cache``, ...) map here
(``stages.py``).
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

from diffbackbones.utils.cache import LatentCache
from diffbackbones.models.zoo import ModelSpec

__all__ = ['ImageStage', 'VaeStage']


@dataclass
class ImageStage:
    """The input stage: what counts as an image, and the working size it is resized to.

    Args:
        size: Optional working size (int or (h, w)) the input is resized to; features are resized back
            so level i is always ceil(H / s_i) x ceil(W / s_i) of the input. Pixel-space models default
            to theirs (DeepFloyd IF-I: 64 px, the size it was trained at).
        resize_features: False keeps the levels on the working size's grids, ceil(h / s_i) for the
            working size h (the paper's code: a 512 px crop at SDXL's 1024 px gives twice the grid).
            ``feature_info`` reductions are then relative to the working size.
        antialias: Antialias the input resize to ``size`` (matters when shrinking). The paper's code
            resizes without it.
        strict: Raise on image values outside [-1, 1]. By default such input runs and warns once per
            model (the range is the VAE's, but any normalised tensor is a valid input, as for every timm
            model). NaN or inf values always raise.
        pad_to: VPD's ``pad_shape`` (int or (h, w)): the working-size input is padded at the bottom and right
            with ``pad_value`` up to this size, and the levels keep the padding, ceil(max(h, P) / s_i), as
            VPD's do (mmseg's VPD configs pad 480 px crops to 512; ``VPDDepthHead`` crops ``fmap_border``).
            None (default): features of the input only.
        pad_value: The value ``pad_to`` pads with, in the input's [-1, 1] range (VPD: 0).
    """

    size: int | tuple[int, int] | None = None
    resize_features: bool = True
    antialias: bool = True
    strict: bool = False
    pad_to: int | tuple[int, int] | None = None
    pad_value: float = 0.0
    _warned: bool = field(default=False, init=False, repr=False, compare=False)

    def __post_init__(self):
        size = (self.size, self.size) if isinstance(self.size, int) else self.size
        if size is not None and not (len(size) == 2 and all(isinstance(s, int) and s > 0 for s in size)):
            raise ValueError(f'image size (image_size) must be a positive int, (h, w) or None; got {self.size!r}')
        self.size = None if size is None else tuple(size)
        pad_to = (self.pad_to, self.pad_to) if isinstance(self.pad_to, int) else self.pad_to
        if pad_to is not None and not (len(pad_to) == 2 and all(isinstance(s, int) and s > 0 for s in pad_to)):
            raise ValueError(f"image pad_to must be a positive int, (h, w) or None (VPD's pad_shape); got {self.pad_to!r}")
        self.pad_to = None if pad_to is None else tuple(pad_to)
        if isinstance(self.pad_value, bool) or not isinstance(self.pad_value, (int, float)):
            raise ValueError(f'image pad_value must be a number in the input range [-1, 1]; got {self.pad_value!r}')

    def bind(self, spec: ModelSpec) -> None:
        if self.size is None and spec.working_size is not None:  # pixel-space models work at one size (IF: 64)
            self.size = (spec.working_size, spec.working_size)

    def check(self, images) -> None:
        """Refuse what cannot be an image batch; warn once (or raise, ``strict``) outside [-1, 1].

        Raises ``ValueError`` unless ``images`` is a float (B, 3, H, W) tensor of finite values.
        """
        if not torch.is_tensor(images) or images.ndim != 4 or images.shape[1] != 3 or not images.is_floating_point():
            got = (f'{type(images).__name__}' if not torch.is_tensor(images)
                   else f'{images.dtype} tensor of shape {tuple(images.shape)}')
            raise ValueError(f'Expected images as a float tensor of shape (B, 3, H, W) with values in [-1, 1]; '
                             f'got a {got}.')
        if images.numel() == 0:
            return
        lo, hi = (float(v) for v in torch.aminmax(images.detach()))
        if not (math.isfinite(lo) and math.isfinite(hi)):
            n_bad = int((~torch.isfinite(images.detach())).sum())
            raise ValueError(f'The images contain NaN or inf values ({n_bad} of {images.numel()}); check the '
                             'data loading and augmentation that produced them.')
        if lo < -1.001 or hi > 1.001:
            message = (f'Expected image values in [-1, 1]; got values in [{lo:.4g}, {hi:.4g}]. Diffusion VAEs take '
                       'x / 127.5 - 1 for 0..255 images (normalise with mean = std = 127.5, or 0.5 for 0..1 images), '
                       'not ImageNet mean/std.')
            if self.strict:
                raise ValueError(message)
            if not self._warned:  # once per model: a training loop would repeat it every step
                self._warned = True
                # stacklevel: past this stage, the backbone's check, forward and nn.Module's call wrappers
                warnings.warn(message + ' (Warned once per model; strict_input=True makes this an error.)',
                              stacklevel=6)

    def working_input(self, images: torch.Tensor, multiple: int) -> tuple[torch.Tensor, tuple[int, int]]:
        """Images resized to the working size and padded (replicate) to ``multiple``; and the working size
        itself, which the activations are cropped back to."""
        if self.size is not None and self.size != tuple(images.shape[-2:]):
            images = F.interpolate(images, size=self.size, mode='bilinear', align_corners=False,
                                   antialias=self.antialias)
        if self.pad_to is not None:  # VPD's pad_shape: constant padding the features keep
            pad_h, pad_w = (max(0, p - s) for p, s in zip(self.pad_to, images.shape[-2:]))
            if pad_h or pad_w:
                images = F.pad(images, (0, pad_w, 0, pad_h), value=float(self.pad_value))
        work_hw = tuple(images.shape[-2:])
        pad_h, pad_w = (-work_hw[0]) % multiple, (-work_hw[1]) % multiple
        if pad_h or pad_w:
            images = F.pad(images, (0, pad_w, 0, pad_h), mode='replicate')
        return images, work_hw

    def output_grid(self, in_hw: tuple[int, int]) -> tuple[int, int]:
        """The size whose ceil(/ stride) grids the levels come out on."""
        if self.pad_to is not None:
            work_hw = self.size if self.size is not None else in_hw
            return tuple(max(p, s) for p, s in zip(self.pad_to, work_hw))
        return in_hw if self.resize_features or self.size is None else self.size

    def restore(self, feature: torch.Tensor, in_hw: tuple[int, int], stride: int) -> torch.Tensor:
        """A level computed at the working size, resized back to the input's grid (``resize_features``)."""
        work_hw = self.size if self.size is not None else in_hw
        if work_hw == tuple(in_hw) or not self.resize_features or self.pad_to is not None:
            return feature  # (with pad_to the levels keep the padded grid)
        return F.interpolate(feature, size=(math.ceil(in_hw[0] / stride), math.ceil(in_hw[1] / stride)),
                             mode='bilinear', align_corners=False)


@dataclass
class VaeStage:
    """The encode stage: the image's latent from the VAE encoder.

    Args:
        sample_posterior: Sample the VAE posterior (seeded by the noise seed + 1) instead of its mean.
        cache: ``'memory'`` or a folder: cache latents by image content so repeated images skip the
            encoder (needs the posterior mean, not sampling).
        scale: Replaces the VAE's ``scaling_factor``. The factor belongs to trained weights (SD's 0.18215
            makes its latents unit-variance); a random-weight VAE of the same architecture gives latents
            of another scale, which the noise at ``t`` may drown. ``tools/compare.py`` uses it for a fair
            random baseline.
        trainable: Let gradients reach the VAE encoder (frozen and in eval mode otherwise).
    """

    sample_posterior: bool = False
    cache: str | None = None
    scale: float | None = None
    trainable: bool = False

    def __post_init__(self):
        if self.cache is not None and self.sample_posterior:
            raise ValueError('latent_cache keeps one latent per image, so it needs the posterior mean: '
                             'use sample_posterior=False or latent_cache=None.')
        if self.cache is not None and self.trainable:
            raise ValueError('latent_cache keeps the latents of a fixed encoder, but trainable_vae=True changes '
                             'the encoder as it trains: use one or the other.')
        if self.scale is not None and not (isinstance(self.scale, (int, float)) and self.scale > 0):
            raise ValueError(f'latent_scale must be a positive number; got {self.scale!r}')
        self.latent_cache = None

    def bind(self, spec: ModelSpec, pretrained, vae: nn.Module, vae_dtype: torch.dtype) -> None:
        """Set the scale on ``vae`` and open the cache in a namespace naming this encoder."""
        if self.scale is not None:
            vae.scaling_factor = float(self.scale)
        if self.cache is not None:
            self.latent_cache = LatentCache(self.cache, f'{spec.name}|{pretrained}|{vae_dtype}|{vae.scaling_factor}')

    def __call__(self, vae: nn.Module, images: torch.Tensor, seed: int | None, channels_last: bool | None
                 ) -> torch.Tensor:
        """Scaled latents of images whose sides are multiples of the VAE's factor."""
        if self.latent_cache is not None:
            return self._cached(vae, images, channels_last)
        generator = None
        if self.sample_posterior and seed is not None:
            generator = torch.Generator(images.device).manual_seed(seed + 1)
        return self.run(vae, images, channels_last, self.sample_posterior, generator)

    def run(self, vae: nn.Module, images: torch.Tensor, channels_last: bool | None, sample: bool = False,
            generator: torch.Generator | None = None) -> torch.Tensor:
        """The encoder in the chosen memory format (cached and uncached paths alike)."""
        if channels_last or (channels_last is None and images.device.type == 'cpu'):
            # A channels-last input is enough: convolutions follow it (weights are reordered per call,
            # which is cheap next to the activations), and the output latent comes back channels-last.
            images = images.contiguous(memory_format=torch.channels_last)
        with torch.set_grad_enabled(self.trainable and torch.is_grad_enabled()):
            return vae(images, sample, generator)

    def _cached(self, vae: nn.Module, images: torch.Tensor, channels_last: bool | None) -> torch.Tensor:
        keys = [self.latent_cache.key(image) for image in images]
        latents = [self.latent_cache.get(key) for key in keys]
        misses = [i for i, latent in enumerate(latents) if latent is None]
        if misses:
            fresh = self.run(vae, images[misses], channels_last)
            for i, latent in zip(misses, fresh):
                self.latent_cache.put(keys[i], latent)
                latents[i] = latent
        return torch.stack([latent.to(images.device) for latent in latents])

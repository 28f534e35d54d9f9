"""Latent conventions: from an image in [-1, 1] to the latent a model's own pipeline gives its denoiser.

One small encoder class per convention, chosen by the VAE's diffusers class (``LATENT_ENCODERS``), never by
model name. Every encoder keeps only what encoding needs (the decoder is dropped) and exposes the same four
attributes: ``scaling_factor`` (a last multiplier; ``vae=dict(scale=...)`` replaces it), ``shift_factor``,
``downsample_factor`` (pixels per latent pixel) and ``latent_channels``.

- ``AutoencoderKL`` (SD, SDXL, Flux.1, SD3, Chroma, Z-Image, Lumina 2, CogView4, HiDream): the posterior mean,
  ``(z - shift) * scale``.
- ``AutoencoderKLHunyuanImage`` (32x): the same, without a shift.
- ``AutoencoderKLQwenImage`` and ``AutoencoderKLWan``: video VAEs. An image is a one-frame video; the latent is
  normalised per channel, ``(z - latents_mean) / latents_std``, as the pipelines do.
- ``AutoencoderKLFlux2`` (FLUX.2): the mean, normalised per 2x2 patch by the VAE's own batch-norm running statistics.
- ``AutoencoderDC`` (SANA's deep-compression autoencoder, 32x): a deterministic ``latent`` times ``scaling_factor``.
"""
from __future__ import annotations

import copy

import torch
import torch.nn as nn
from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution

__all__ = ['VaeEncoder', 'PixelSpace', 'latent_encoder', 'downsample_factor', 'LATENT_ENCODERS']


class VaeEncoder(nn.Module):
    """The encoder half of an ``AutoencoderKL``: image in [-1, 1] -> scaled latent."""

    def __init__(self, vae: nn.Module):
        super().__init__()
        self.encoder = vae.encoder
        self.quant_conv = getattr(vae, 'quant_conv', None)  # None when the VAE was trained without it
        self.scaling_factor = float(vae.config.scaling_factor)
        self.shift_factor = float(getattr(vae.config, 'shift_factor', None) or 0.0)
        self.downsample_factor = downsample_factor(vae.config)
        self.latent_channels = int(getattr(vae.config, 'latent_channels', 0) or vae.config.z_channels)

    def moments(self, images: torch.Tensor) -> torch.Tensor:
        moments = self.encoder(images)
        return moments if self.quant_conv is None else self.quant_conv(moments)

    def forward(self, images: torch.Tensor, sample: bool = False,
                generator: torch.Generator | None = None) -> torch.Tensor:
        posterior = DiagonalGaussianDistribution(self.moments(images))
        latent = posterior.sample(generator) if sample else posterior.mode()
        return (latent - self.shift_factor) * self.scaling_factor


class HunyuanImageVaeEncoder(VaeEncoder):
    """``AutoencoderKLHunyuanImage``: 32x, 64 channels; its encoder ends in the moments (no quant conv)."""


class VideoVaeEncoder(nn.Module):
    """``AutoencoderKLWan`` / ``AutoencoderKLQwenImage``: a (B, 3, H, W) image is a one-frame video (B, 3, 1, H, W);
    the one latent frame is normalised per channel with the VAE's ``latents_mean`` / ``latents_std``."""

    shift_factor = 0.0

    def __init__(self, vae: nn.Module):
        super().__init__()
        # encoding never runs the decoder: a shallow copy of the VAE holds an empty module in its place (which keeps the
        # conv count Qwen-Image's clear_cache takes of it); the caller's VAE keeps its own decoder
        encoder_only = copy.copy(vae)
        encoder_only._modules = dict(vae._modules, decoder=nn.Module())
        self.vae = encoder_only
        self.scaling_factor = 1.0
        self.downsample_factor = downsample_factor(vae.config)
        self.latent_channels = int(vae.config.z_dim)
        self.register_buffer('mean', torch.tensor(vae.config.latents_mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer('std', torch.tensor(vae.config.latents_std).view(1, -1, 1, 1), persistent=False)

    def forward(self, images: torch.Tensor, sample: bool = False,
                generator: torch.Generator | None = None) -> torch.Tensor:
        return self.encode_video(images.unsqueeze(2), sample, generator)[:, :, 0]

    def encode_video(self, clip: torch.Tensor, sample: bool = False,
                     generator: torch.Generator | None = None) -> torch.Tensor:
        """(B, 3, T, H, W) -> (B, C, 1 + (T - 1) // 4, H / 8, W / 8): causal in time, frame 0 alone, then 4 to 1."""
        posterior = self.vae.encode(clip).latent_dist
        latent = posterior.sample(generator) if sample else posterior.mode()
        shape = (1, -1, 1, 1, 1)
        return (latent - self.mean.view(shape).to(latent.dtype)) / self.std.view(shape).to(latent.dtype) \
            * self.scaling_factor


class Flux2VaeEncoder(VaeEncoder):
    """``AutoencoderKLFlux2``: the posterior mean of the 32-channel VAE, normalised as ``Flux2Pipeline`` does: 2x2
    patches folded into 128 channels, standardised by the VAE's batch-norm running statistics, then unfolded again,
    so the latent stays (B, 32, H / 8, W / 8) and the family packs it into tokens as FLUX.1's does."""

    def __init__(self, vae: nn.Module):
        nn.Module.__init__(self)
        self.encoder, self.quant_conv = vae.encoder, getattr(vae, 'quant_conv', None)
        self.scaling_factor, self.shift_factor = 1.0, 0.0  # the config has neither: the batch norm standardises
        self.downsample_factor = downsample_factor(vae.config)
        self.latent_channels = int(vae.config.latent_channels)
        var = vae.bn.running_var.detach() + vae.config.batch_norm_eps
        self.register_buffer('mean', vae.bn.running_mean.detach().clone().view(1, -1, 1, 1), persistent=False)
        self.register_buffer('std', var.sqrt().view(1, -1, 1, 1), persistent=False)

    def forward(self, images: torch.Tensor, sample: bool = False,
                generator: torch.Generator | None = None) -> torch.Tensor:
        posterior = DiagonalGaussianDistribution(self.moments(images))
        z = posterior.sample(generator) if sample else posterior.mode()
        b, c, h, w = z.shape  # the pipeline's _patchify_latents: channel-major, then the 2x2 offsets
        patches = z.view(b, c, h // 2, 2, w // 2, 2).permute(0, 1, 3, 5, 2, 4).reshape(b, c * 4, h // 2, w // 2)
        patches = (patches - self.mean.to(z.dtype)) / self.std.to(z.dtype) * self.scaling_factor
        return patches.view(b, c, 2, 2, h // 2, w // 2).permute(0, 1, 4, 2, 5, 3).reshape(b, c, h, w)


class DcaeEncoder(nn.Module):
    """``AutoencoderDC`` (SANA): a deterministic latent, times ``scaling_factor``; no posterior to sample."""

    shift_factor = 0.0

    def __init__(self, vae: nn.Module):
        super().__init__()
        self.encoder = vae.encoder
        self.scaling_factor = float(vae.config.scaling_factor)
        self.downsample_factor = downsample_factor(vae.config)
        self.latent_channels = int(vae.config.latent_channels)

    def forward(self, images: torch.Tensor, sample: bool = False,
                generator: torch.Generator | None = None) -> torch.Tensor:
        if sample:
            raise ValueError('DC-AE (SANA) encodes deterministically: it has no posterior to sample; use '
                             'vae=dict(sample_posterior=False).')
        return self.encoder(images) * self.scaling_factor


class PixelSpace(nn.Module):
    """The 'VAE encoder' of a pixel-space model (DeepFloyd IF): the image itself is the denoiser's input."""

    scaling_factor, shift_factor, downsample_factor, latent_channels = 1.0, 0.0, 1, 3

    def forward(self, images: torch.Tensor, sample: bool = False, generator: torch.Generator | None = None):
        return images


LATENT_ENCODERS: dict[str, type[nn.Module]] = {
    'AutoencoderKL': VaeEncoder, 'AutoencoderKLHunyuanImage': HunyuanImageVaeEncoder,
    'AutoencoderKLWan': VideoVaeEncoder, 'AutoencoderKLQwenImage': VideoVaeEncoder,
    'AutoencoderKLFlux2': Flux2VaeEncoder, 'AutoencoderDC': DcaeEncoder,
}


def downsample_factor(config) -> int:
    """Pixels per latent pixel of a VAE config (a dict or a diffusers ``FrozenDict``), as its pipeline counts them."""
    get = config.get
    if get('spatial_compression_ratio'):  # HunyuanImage's VAE states it
        return int(get('spatial_compression_ratio'))
    if get('temperal_downsample') is not None:  # Wan / Qwen-Image (sic: diffusers' spelling)
        return 2 ** len(get('temperal_downsample')) * int(get('patch_size') or 1)
    return 2 ** (len(get('block_out_channels') or get('encoder_block_out_channels')) - 1)  # DC-AE: the latter


def latent_encoder(vae: nn.Module) -> nn.Module:
    """The encoder of ``vae`` under its pipeline's latent convention; an unknown VAE class raises, naming the known."""
    name = type(vae).__name__
    try:
        cls = LATENT_ENCODERS[name]
    except KeyError:
        raise TypeError(f'{name} has no latent convention in diffbackbones; known VAE classes: '
                        f'{sorted(LATENT_ENCODERS)} (models/latents.py). Add one there: an encoder class with the '
                        "pipeline's normalisation.") from None
    return cls(vae)

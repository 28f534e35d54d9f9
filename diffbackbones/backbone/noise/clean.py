"""Clean latents as a noise stage: ``noise='clean'`` or ``noise=dict(type='clean', t=1)``.

VPD (Zhao et al. 2023, ``wl-zhao/VPD``) feeds its UNet the VAE posterior's mode with no noise at all, at
timestep 1: ``latents = self.encoder_vq.encode(x).mode()`` and ``t = torch.ones(...)`` in
``vpd_seg.py`` / ``model.py``, and mmseg's port (``mmseg/models/backbones/vpd.py``) does the same. The
denoiser's input is the clean latent itself; ``t`` only sets the timestep embedding.

VPD's latents are not multiplied by SD's 0.18215: its ``encoder_vq`` is the LDM ``first_stage_model``, whose
``encode`` returns the posterior, and the factor is applied only in ``LatentDiffusion.get_first_stage_encoding``,
which VPD never calls. Ask for the same input with ``vae=dict(scale=1.0)`` (``VaeStage.scale``); the VAE
setting stays in the VAE stage so that this stage works with either scale. ``docs/vpd.md`` has the recipe.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from .schedule import NoiseStage

__all__ = ['CleanLatentStage']


@dataclass
class CleanLatentStage(NoiseStage):
    """The noise stage without noise: ``noise=dict(type='clean', t=1)``, VPD's input.

    Deterministic: the denoiser's input is the clean latent (the VAE stage's output, as it scales it), and
    nothing is drawn.

    Args:
        t: Integer training timestep the denoiser is told (1, VPD's, by default); a list runs the clean
            latent at each of them in one batched forward and averages the activations. None: the zoo
            entry's ``default_t``, as for sampled noise.
        seed: Draws no noise here; it still seeds the VAE posterior sample with
            ``vae=dict(sample_posterior=True)``.
        ensemble: Must be 1: without noise, copies would be identical.
    """

    t: int | Sequence[int] | None = 1

    def __post_init__(self):
        super().__post_init__()
        if self.ensemble != 1:
            raise ValueError(f'clean latents are deterministic: an ensemble of {self.ensemble} would run identical '
                             "copies. Use ensemble=1, or noise=dict(type='sampled', ensemble=...) for a noise ensemble.")

    def sample(self, shape: tuple[int, ...], device: torch.device) -> torch.Tensor:
        raise RuntimeError('the clean-latent stage draws no noise')

    def __call__(self, latents: torch.Tensor, predict: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        """The clean latents once per timestep (timestep-major, fp32) and their timesteps; ``predict`` is unused."""
        b = latents.shape[0]
        timesteps = torch.tensor(self.timesteps, device=latents.device).repeat_interleave(b)
        return latents.float().repeat(len(self.timesteps), 1, 1, 1), timesteps

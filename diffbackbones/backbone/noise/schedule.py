"""How a clean latent becomes the noisy input at integer timestep ``t``: DDPM or flow matching.

``t`` is always the integer timestep the denoiser is trained with, in [0, num_train_timesteps).

- DDPM (``'scaled_linear'``: SD1.x/2.x/SDXL/PGv2/Hunyuan; ``'linear'``: PixArt, DiT;
  ``'squaredcos_cap_v2'``: DeepFloyd IF):
  ``x_t = sqrt(abar_t) z + sqrt(1 - abar_t) eps``.
- Flow matching (SD3, SD3.5, Flux): ``x_t = (1 - s) z + s eps`` with ``s = t / 1000``; the
  timestep SD3 receives is ``s * 1000`` and Flux receives ``s`` itself. Schedule shifts only move
  a sampler's steps along ``s``; they do not change what noise a given ``t`` means.

The paper's t=50 on SD's schedule has a noise-to-signal ratio (std of the noise over the scale of
the signal) sqrt(1 - abar) / sqrt(abar) = 0.2256; flow matching reaches the same ratio s / (1 - s)
at s = 0.184, so the flow models' default is t = 184 (``matched_flow_t``; a test recomputes it).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, ClassVar, Sequence

import torch

from diffbackbones.models.zoo import ModelSpec

__all__ = ['NoiseStage', 'NoiseSchedule', 'ddpm_alphas_cumprod', 'noise_to_signal', 'matched_flow_t']


def ddpm_alphas_cumprod(schedule: str, beta_start: float, beta_end: float, steps: int = 1000) -> torch.Tensor:
    if schedule == 'scaled_linear':
        betas = torch.linspace(beta_start ** 0.5, beta_end ** 0.5, steps, dtype=torch.float64) ** 2
    elif schedule == 'linear':
        betas = torch.linspace(beta_start, beta_end, steps, dtype=torch.float64)
    elif schedule == 'squaredcos_cap_v2':  # Nichol & Dhariwal's cosine schedule (DeepFloyd IF), betas capped at 0.999
        abar = lambda x: math.cos((x / steps + 0.008) / 1.008 * math.pi / 2) ** 2
        betas = torch.tensor([min(1 - abar(i + 1) / abar(i), 0.999) for i in range(steps)], dtype=torch.float64)
    else:
        raise ValueError(f'unknown DDPM beta schedule {schedule!r}')
    return torch.cumprod(1 - betas, 0)


def noise_to_signal(spec: ModelSpec, t: int) -> float:
    """Std of the noise over the scale of the clean latent in the input at ``t``."""
    if spec.schedule == 'flow':
        s = t / spec.num_train_timesteps
        return s / (1 - s)
    abar = float(ddpm_alphas_cumprod(spec.schedule, spec.beta_start, spec.beta_end, spec.num_train_timesteps)[t])
    return ((1 - abar) / abar) ** 0.5


def matched_flow_t(ddpm_t: int = 50, beta_start: float = 0.00085, beta_end: float = 0.012) -> int:
    """The flow-matching timestep whose noise-to-signal ratio equals SD's DDPM ``ddpm_t``."""
    abar = float(ddpm_alphas_cumprod('scaled_linear', beta_start, beta_end)[ddpm_t])
    ratio = ((1 - abar) / abar) ** 0.5
    return round(1000 * ratio / (1 + ratio))


class NoiseSchedule(torch.nn.Module):
    """``add_noise(latents, noise, timesteps)`` for a zoo entry's training schedule."""

    def __init__(self, spec: ModelSpec):
        super().__init__()
        self.flow = spec.schedule == 'flow'
        self.num_train_timesteps = spec.num_train_timesteps
        abar = (torch.zeros(0) if self.flow else
                ddpm_alphas_cumprod(spec.schedule, spec.beta_start, spec.beta_end, spec.num_train_timesteps).float())
        self.register_buffer('alphas_cumprod', abar, persistent=False)

    def add_noise(self, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        shape = (-1,) + (1,) * (latents.ndim - 1)
        if self.flow:
            s = (timesteps.float() / self.num_train_timesteps).view(shape)
            return (1 - s) * latents + s * noise
        abar = self.alphas_cumprod.to(latents.device)[timesteps].view(shape)
        return abar.sqrt() * latents + (1 - abar).sqrt() * noise


@dataclass
class NoiseStage:
    """The noise stage: which timesteps, which noise, how many samples; ``noise=dict(t=50, seed=0, ensemble=4)``.

    Args:
        t: Integer training timestep of the noise level and the denoiser's timestep input; a list of
            timesteps runs them all in one batched forward and averages the activations. None: the zoo
            entry's ``default_t`` (50, the paper's, for DDPM models; 184 for flow models, the same
            noise-to-signal ratio).
        seed: Seed of the noise (same image, same features); None draws fresh noise each call.
        ensemble: Noise samples per timestep, run in the same batched forward and averaged.
    """

    t: int | Sequence[int] | None = None
    seed: int | None = 0
    ensemble: int = 1

    # True for a variant that runs the whole denoiser to make its noisy input (the backbone then keeps
    # the modules that pruning would drop)
    runs_denoiser: ClassVar[bool] = False

    def __post_init__(self):
        if not (isinstance(self.ensemble, int) and self.ensemble >= 1):
            raise ValueError(f'noise ensemble (ensemble_size) must be a positive integer; got {self.ensemble!r}')
        if self.seed is not None and not isinstance(self.seed, int):
            raise ValueError(f'noise seed (noise_seed) must be an integer or None (fresh noise); got {self.seed!r}')
        self.schedule, self.timesteps = None, ()

    def bind(self, spec: ModelSpec) -> None:
        """Fill the model's default timestep, check the range, and take its training schedule."""
        self.t = t = spec.default_t if self.t is None else self.t
        timesteps = (t,) if isinstance(t, int) else tuple(t) if isinstance(t, (list, tuple)) else ()
        if not timesteps or not all(isinstance(s, int) and 0 <= s < spec.num_train_timesteps for s in timesteps):
            raise ValueError(f't must be an integer training timestep in [0, {spec.num_train_timesteps}) or a list of '
                             f'them; got {t!r}')
        self.timesteps, self.schedule = timesteps, NoiseSchedule(spec)

    @property
    def members(self) -> int:
        """Forward copies of each image: one per (timestep, noise sample)."""
        return len(self.timesteps) * self.ensemble

    def sample(self, shape: tuple[int, ...], device: torch.device) -> torch.Tensor:
        """(members * B, C, h, w) noise, member-major."""
        e, (b, *chw) = self.members, shape
        if self.seed is None:
            return torch.randn((e * b, *chw), device=device)
        # One draw per member shared across the batch: an image's features do not depend on its
        # batch or its position in it.
        generator = torch.Generator().manual_seed(self.seed)
        noise = torch.randn((e, 1, *chw), generator=generator).to(device)
        return noise.expand(e, b, *chw).reshape(e * b, *chw)

    def __call__(self, latents: torch.Tensor, predict: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        """Noisy latents of every member (member-major, fp32) and their timesteps.

        ``predict(noisy, timesteps)``: the whole denoiser's prediction, for variants that walk the latent
        with the model (DDIM inversion); sampled noise does not use it."""
        b = latents.shape[0]
        timesteps = torch.tensor(self.timesteps, device=latents.device).repeat_interleave(self.ensemble * b)
        noisy = self.schedule.add_noise(latents.float().repeat(self.members, 1, 1, 1),
                                        self.sample(latents.shape, latents.device), timesteps)
        return noisy, timesteps

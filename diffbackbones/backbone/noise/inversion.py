"""DDIM inversion as a noise stage: ``noise='ddim-inversion'`` or ``noise=dict(type='ddim-inversion', t=50)``.

Instead of mixing sampled noise into the clean latent, the latent is walked up to ``t`` with the denoiser
itself and the backbone's conditioning, as the paper code's ``use_ddim_inversion`` does
(``feature/components/ddim_inversion.py``). Each step predicts the noise of the current latent and moves
it to the next, noisier timestep along DDIM's deterministic path:

    x0 = (x - b_cur eps) / a_cur,    x <- a_next x0 + b_next eps

with ``a = sqrt(abar)``, ``b = sqrt(1 - abar)`` (the paper's
``x <- (x - sqrt(1 - a_cur) eps) * sqrt(a_next / a_cur) + sqrt(1 - a_next) eps``, rearranged). For flow
matching ``a = 1 - s``, ``b = s`` and the velocity ``v = eps - x0`` gives ``x <- x + (s_next - s_cur) v``:
Euler's method on the flow ODE, run towards the noise.

The schedule is the paper's: a DDIM schedule of ``inversion_steps`` steps over the training range, so
steps of ``k = num_train_timesteps // inversion_steps`` timesteps, and the prediction of each step is
made at the timestep it moves to (as the paper and diffusers' ``DDIMInverseScheduler`` do). The walk
stops at ``t``: the steps are ``t - (n-1) k, ..., t - k, t`` with ``n = ceil(t / k)`` (at least one),
starting from the clean latent itself (``abar = 1``). At t=50 and the default 100 steps that is 10, 20,
30, 40, 50: five whole-denoiser forwards before the capture forward. Two details differ from the paper
code: its grid (1, 11, 21, ...) overshoots the requested t (it stops at 51 for t=50, then runs the
capture forward at 50), and it treats the clean latent as the sample at timestep 1.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch

from .schedule import NoiseStage
from diffbackbones.models.zoo import ModelSpec

__all__ = ['DdimInversionStage']

Predict = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class DdimInversionStage(NoiseStage):
    """The noise stage by DDIM inversion: ``noise=dict(type='ddim-inversion', t=50, inversion_steps=100)``.

    Deterministic: the same image gives the same noisy latent, and no noise is drawn.

    Args:
        t: Integer training timestep the latent is inverted to (and the capture forward's timestep);
            a list inverts to each (one walk per timestep, their activations averaged). None: the zoo
            entry's ``default_t``.
        seed: Draws no noise here; it still seeds the VAE posterior sample when ``vae=dict(sample_posterior=True)``.
        ensemble: Must be 1: inversion is deterministic, so copies would be identical.
        inversion_steps: Steps of the DDIM schedule over the whole training range (the paper code's 100):
            the walk to ``t`` takes ``ceil(t / (num_train_timesteps // inversion_steps))`` of them, each one
            whole-denoiser forward (``forwards``).
    """

    inversion_steps: int = 100

    runs_denoiser = True

    def __post_init__(self):
        super().__post_init__()
        if self.ensemble != 1:
            raise ValueError(f'ddim-inversion is deterministic: an ensemble of {self.ensemble} would run identical '
                             "copies. Use ensemble=1, or noise=dict(type='sampled', ensemble=...) for a noise ensemble.")
        if not (isinstance(self.inversion_steps, int) and not isinstance(self.inversion_steps, bool)
                and self.inversion_steps >= 1):
            raise ValueError(f'inversion_steps must be a positive integer; got {self.inversion_steps!r}')

    def bind(self, spec: ModelSpec) -> None:
        super().bind(spec)
        if self.inversion_steps > spec.num_train_timesteps:
            raise ValueError(f'inversion_steps must be at most the {spec.num_train_timesteps} training timesteps; '
                             f'got {self.inversion_steps}')
        self.prediction = spec.prediction

    def walk(self, t: int) -> list[int]:
        """The timesteps the latent visits on its way to ``t``, ending at ``t``; each costs one forward."""
        k = self.schedule.num_train_timesteps // self.inversion_steps
        n = max(1, math.ceil(t / k))
        return [t - (n - 1 - i) * k for i in range(n)]

    @property
    def forwards(self) -> int:
        """Whole-denoiser forwards of the inversion, per batch (the capture forward not counted)."""
        return sum(len(self.walk(t)) for t in self.timesteps)

    def levels(self, t: int | None) -> tuple[float, float]:
        """(a, b) of ``x_t = a x0 + b eps`` at timestep ``t``; None is the clean latent, (1, 0)."""
        if t is None:
            return 1.0, 0.0
        if self.schedule.flow:
            s = t / self.schedule.num_train_timesteps
            return 1 - s, s
        abar = float(self.schedule.alphas_cumprod[t])
        return abar ** 0.5, (1 - abar) ** 0.5

    def split(self, x: torch.Tensor, prediction: torch.Tensor, a: float, b: float) -> tuple[torch.Tensor, torch.Tensor]:
        """(x0, eps) implied by the model's ``prediction`` for a sample ``x = a x0 + b eps``."""
        if self.prediction == 'epsilon':
            return (x - b * prediction) / a, prediction
        if self.prediction == 'v_prediction':  # v = a eps - b x0, and a^2 + b^2 = 1
            return a * x - b * prediction, a * prediction + b * x
        if self.prediction == 'flow':  # v = eps - x0, and a + b = 1
            return x - b * prediction, x + a * prediction
        raise ValueError(f'DDIM inversion does not know the prediction type {self.prediction!r}')

    def invert(self, latents: torch.Tensor, t: int, predict: Predict) -> torch.Tensor:
        """The fp32 latent at ``t`` reached from the clean ``latents`` by DDIM inversion."""
        x, current = latents.float(), None
        for target in self.walk(t):
            timesteps = torch.full((x.shape[0],), target, device=x.device, dtype=torch.long)
            x0, eps = self.split(x, predict(x, timesteps).float(), *self.levels(current))
            a, b = self.levels(target)
            x, current = a * x0 + b * eps, target
        return x

    def __call__(self, latents: torch.Tensor, predict: Predict | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Inverted latents of every timestep (timestep-major, fp32) and their timesteps."""
        if predict is None:
            raise ValueError('ddim-inversion needs the denoiser: call it as stage(latents, predict), '
                             'predict(noisy, timesteps) being the whole denoiser\'s prediction (backbone.predict)')
        b = latents.shape[0]
        with torch.no_grad():  # the walk is a fixed input of the capture forward: no graph through it
            noisy = torch.cat([self.invert(latents, t, predict) for t in self.timesteps])
        timesteps = torch.tensor(self.timesteps, device=latents.device).repeat_interleave(b)
        return noisy, timesteps

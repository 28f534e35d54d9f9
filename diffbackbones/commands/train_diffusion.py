"""Train a tiny diffusion model on the embedded shapes set, on the CPU: ``--arch sd`` (the default) a latent
diffusion model of the SD1.5 topology (shapes_sd_tiny), ``--arch flux`` a flow-matching transformer of the Flux
topology on shapes_sd_tiny's VAE (shapes_flux_tiny).

    diffbackbones train-diffusion --out work_dirs/quick --vae-steps 50 --unet-steps 20 --images 64   # a smoke run, ~1 min
    diffbackbones train-diffusion --out work_dirs/tiny         # the shipped recipe (shapes_sd_tiny), ~28 min on 2 cores
    diffbackbones train-diffusion --arch flux --out work_dirs/flux-quick --transformer-steps 10 --images 64 --samples 2
    diffbackbones train-diffusion --arch flux --out work_dirs/flux   # the shipped recipe of shapes_flux_tiny

``--arch sd``: two stages, fixed seeds, from scratch (``diffbackbones.training.shapes_sd.train_shapes_model``):

1. A tiny ``AutoencoderKL`` (SD VAE topology: 4 down blocks, factor 8, 4 latent channels) trained with
   L1 reconstruction, a small KL term and a texture-energy term; its ``scaling_factor`` is then set to
   1 / std of the latents, the role 0.18215 plays for SD's VAE.
2. A tiny ``UNet2DConditionModel`` with ``test_sd_tiny``'s layout, epsilon objective, SD's scaled_linear
   schedule (0.00085..0.012, 1000 steps), conditioned on one fixed prompt through a tiny CLIP text encoder
   (random, frozen) and a character-level CLIP tokenizer.

Writes a complete diffusers folder (``unet/ vae/ text_encoder/ tokenizer/ scheduler/ model_index.json``,
fp16 safetensors) that ``StableDiffusionPipeline.from_pretrained`` and
``DiffusionBackbone('shapes_sd_tiny', pretrained=FOLDER)`` load, a ``README.md`` with the full command
and commit that made it, and ``training/``: ``losses.png``, ``samples.png`` (DDIM samples),
``reconstructions.png`` (held-out images over their VAE reconstructions), ``train_log.json``.

``--arch flux`` (``diffbackbones.training.shapes_flux.train_shapes_flux``): one stage on the latents of the shipped
shapes_sd_tiny VAE (copied unchanged): a tiny ``FluxTransformer2DModel`` (4 double + 4 single blocks) trained
with flow matching as diffusers' Flux training examples do it (``FlowMatchEulerDiscreteScheduler``, uniform
timestep density by default, target noise - latents), conditioned on the fixed prompt through tiny random frozen
CLIP (pooled) and T5 (sequence) encoders. Writes a ``FluxPipeline`` folder (fp16 safetensors), a ``README.md``
and ``training/``: ``losses.png``, ``samples.png`` (``FluxPipeline`` samples from the written folder),
``train_log.json``. Only the flags of the chosen arch apply (and are recorded in the README).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from diffbackbones.training.shapes_sd import train_shapes_model
from diffbackbones.data.shapes import VARIANTS
from .base import run_command


# The options each arch takes, in the order the README's command lists them ('sd': exactly as before --arch).
SD_OPTIONS = ('variant', 'images', 'vae_steps', 'vae_batch', 'vae_crop', 'vae_lr', 'kl_weight', 'texture_weight',
              'unet_steps', 'unet_batch', 'unet_lr', 'samples', 'sample_steps', 'seed', 'overwrite')
FLUX_OPTIONS = ('variant', 'images', 'transformer_steps', 'transformer_batch', 'transformer_lr', 'weighting',
                'empty_prompts', 'samples', 'sample_steps', 'seed', 'threads', 'overwrite')


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('--out', required=True, help='output folder (a diffusers pipeline folder is written here)')
    parser.add_argument('--arch', choices=('sd', 'flux'), default='sd',
                        help="'sd': VAE + SD1.5-topology UNet (shapes_sd_tiny); 'flux': a Flux-topology flow-matching "
                             "transformer on shapes_sd_tiny's VAE (shapes_flux_tiny)")
    parser.add_argument('--variant', choices=(*VARIANTS, 'both'), default='both', help='shapes variant(s) to train on')
    parser.add_argument('--images', type=int, default=2000, help='training images rendered in memory')
    parser.add_argument('--vae-steps', type=int, default=2000)
    parser.add_argument('--vae-batch', type=int, default=16)
    parser.add_argument('--vae-crop', type=int, default=64, help='square crop side for VAE training (pixels)')
    parser.add_argument('--vae-lr', type=float, default=2e-3)
    parser.add_argument('--kl-weight', type=float, default=1e-4, help='weight of the per-dimension KL term')
    parser.add_argument('--texture-weight', type=float, default=1.0,
                        help='weight of the texture-energy term (phase-free local gradient statistics); 0: L1 + KL only')
    parser.add_argument('--unet-steps', type=int, default=1500)
    parser.add_argument('--unet-batch', type=int, default=16)
    parser.add_argument('--unet-lr', type=float, default=1e-3)
    parser.add_argument('--transformer-steps', type=int, default=2400, help='--arch flux: transformer training steps')
    parser.add_argument('--transformer-batch', type=int, default=32, help='--arch flux')
    parser.add_argument('--transformer-lr', type=float, default=1e-3, help='--arch flux')
    parser.add_argument('--weighting', choices=('none', 'logit_normal'), default='none',
                        help="--arch flux: timestep density (diffusers' compute_density_for_timestep_sampling); none: uniform")
    parser.add_argument('--empty-prompts', type=float, default=0.1,
                        help='--arch flux: share of samples conditioned on the empty prompt')
    parser.add_argument('--samples', type=int, default=16, help='images in the sample grid')
    parser.add_argument('--sample-steps', type=int, default=None,
                        help='sampler steps for the sample grid (default: 50 DDIM steps for sd, 28 Euler steps for flux)')
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--threads', type=int, default=1,
                        help='--arch flux: torch CPU threads (1: faster for this small model, and the same bytes anywhere)')
    parser.add_argument('--overwrite', action='store_true', help='replace an existing output folder')


def run(args: argparse.Namespace) -> dict:
    flux = args.arch == 'flux'
    if args.sample_steps is None:
        args.sample_steps = 28 if flux else 50
    options = {k: getattr(args, k) for k in (FLUX_OPTIONS if flux else SD_OPTIONS)}
    # the README records every setting, so the command reproduces the folder whatever the defaults become
    flags = ' '.join(f'--{k.replace("_", "-")}' + ('' if v is True else f' {v}')
                     for k, v in options.items() if v is not False)
    command = f'diffbackbones train-diffusion --out {args.out} {"--arch flux " if flux else ""}{flags}'
    try:
        if flux:
            from diffbackbones.training.shapes_flux import train_shapes_flux
            result = train_shapes_flux(args.out, progress=True, command=command, **options)
        else:
            result = train_shapes_model(args.out, progress=True, command=command, **options)
    except (FileExistsError, ValueError) as e:
        raise SystemExit(str(e)) from None
    out = Path(args.out)
    print(json.dumps({k: v for k, v in result.items() if not isinstance(v, list)}, indent=1))
    print(f'wrote {out} ({sum(f.stat().st_size for f in out.rglob("*") if f.is_file()) / 1e6:.1f} MB)')
    return result


def main(argv=None) -> dict:
    return run_command(__name__, argv)

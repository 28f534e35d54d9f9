"""Train a tiny latent diffusion model of the SD1.5 topology on the embedded shapes set, on the CPU.

    diffbackbones train-diffusion --out work_dirs/quick --vae-steps 50 --unet-steps 20 --images 64   # a smoke run, ~1 min
    diffbackbones train-diffusion --out work_dirs/tiny         # the shipped recipe (shapes_sd_tiny), ~28 min on 2 cores

Two stages, fixed seeds, from scratch (``diffbackbones.diffusion_training.train_shapes_model``):

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
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..diffusion_training import train_shapes_model
from ..segmentation.shapes import VARIANTS
from .base import run_command


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('--out', required=True, help='output folder (a diffusers pipeline folder is written here)')
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
    parser.add_argument('--samples', type=int, default=16, help='images in the DDIM sample grid')
    parser.add_argument('--sample-steps', type=int, default=50, help='DDIM steps for the sample grid')
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--overwrite', action='store_true', help='replace an existing output folder')


def run(args: argparse.Namespace) -> dict:
    options = {k: v for k, v in vars(args).items() if k not in ('command', 'out')}
    # the README records every setting, so the command reproduces the folder whatever the defaults become
    flags = ' '.join(f'--{k.replace("_", "-")}' + ('' if v is True else f' {v}')
                     for k, v in options.items() if v is not False)
    try:
        result = train_shapes_model(args.out, progress=True, command=f'diffbackbones train-diffusion --out {args.out} {flags}',
                                    **options)
    except (FileExistsError, ValueError) as e:
        raise SystemExit(str(e)) from None
    out = Path(args.out)
    print(json.dumps({k: v for k, v in result.items() if not isinstance(v, list)}, indent=1))
    print(f'wrote {out} ({sum(f.stat().st_size for f in out.rglob("*") if f.is_file()) / 1e6:.1f} MB)')
    return result


def main(argv=None) -> dict:
    return run_command(__name__, argv)

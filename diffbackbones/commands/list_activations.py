"""Print the activation catalog of a zoo model: layer id, kind, channels, size and stride.

    diffbackbones list test_sd_tiny
    diffbackbones list sd15 --size 512
    diffbackbones list sdxl --size 1024 --kind cross-q
    diffbackbones list sd3 --size 768x1344        # height x width

The denoiser is built on the meta device from the embedded config: no weights, no forward (a 12 B
parameter Flux lists in about a second). From Python: ``diffbackbones.list_activations(denoiser, latent_hw)``.
"""
from __future__ import annotations

import argparse

from diffbackbones.models.catalog import ActivationInfo, list_activations
from diffbackbones.models.loading import build_denoiser
from diffbackbones.models.zoo import MODELS, get_model_spec
from .base import run_command
from .cli import add_model_argument, resolve_model


def image_size(text: str) -> tuple[int, int]:
    h, _, w = text.lower().partition('x')
    try:
        return int(h), int(w or h)
    except ValueError:
        raise argparse.ArgumentTypeError(f'--size takes pixels as N or HxW, e.g. 1024 or 768x1344; got {text!r}')


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_argument(parser, 'zoo name: ' + ', '.join(sorted(MODELS)), choices=sorted(MODELS))
    parser.add_argument('--size', type=image_size, help="image size in pixels, N or HxW (default: the model's own)")
    parser.add_argument('--kind', help='only this kind (res-out, self-k, cross-q, vit-block-out, ...)')


def run(args: argparse.Namespace) -> list[ActivationInfo]:
    spec = get_model_spec(resolve_model(args))
    h, w = args.size or (spec.image_size, spec.image_size)
    vae_factor = spec.vae_factor
    if h % vae_factor or w % vae_factor:
        raise SystemExit(f'--size must be a multiple of the VAE factor {vae_factor}; got {h}x{w}')
    denoiser = build_denoiser(spec, 'meta')
    rows = [a for a in list_activations(denoiser, (h // vae_factor, w // vae_factor),
                                        n_text_tokens=spec.n_text_tokens or 77)
            if args.kind is None or a.kind == args.kind]
    print(f'{"layer id":<48} {"kind":<14} {"channels":>8}  {"h x w":>11}  stride')
    for a in rows:
        print(f'{a.name:<48} {a.kind:<14} {a.channels:>8}  {a.size[0]:>5} x {a.size[1]:<5}  {h // a.size[0]}')
    return rows


def main(argv=None) -> list[ActivationInfo]:
    return run_command(__name__, argv)

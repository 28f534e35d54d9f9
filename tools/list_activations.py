"""Print the activation catalog of a zoo model: layer id, kind, channels, size and stride.

    python tools/list_activations.py sd15 --size 512
    python tools/list_activations.py sdxl --size 1024 --kind cross-q

The denoiser is built on the meta device from the embedded config: no weights, no forward.
"""
from __future__ import annotations

import argparse

import torch
from diffusers import UNet2DConditionModel

from diffbackbones import list_activations
from diffbackbones.zoo import MODELS, get_model_spec, load_config


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('model', choices=sorted(MODELS))
    parser.add_argument('--size', type=int, help='image size in pixels (default: the model\'s own)')
    parser.add_argument('--kind', help='only this kind (res-out, self-k, cross-q, vit-block-out, ...)')
    args = parser.parse_args()
    spec = get_model_spec(args.model)
    size = args.size or spec.image_size
    with torch.device('meta'):
        unet = UNet2DConditionModel.from_config(load_config(spec, 'unet'))
    latent = size // 8
    print(f'{"layer id":<48} {"kind":<14} {"channels":>8}  {"h x w":>9}  stride')
    for a in list_activations(unet, (latent, latent)):
        if args.kind is None or a.kind == args.kind:
            print(f'{a.name:<48} {a.kind:<14} {a.channels:>8}  {a.size[0]:>4} x {a.size[1]:<4}  {size // a.size[0]}')


if __name__ == '__main__':
    main()

"""Extract a feature pyramid and write a PCA picture of every level.

    python tools/pca_demo.py                                   # tiny random-weight model, offline
    python tools/pca_demo.py --model sd15 --pretrained --image photo.jpg --size 512

Each level's channels are projected on their first three principal components and shown as RGB
next to the input. Real weights give semantic colours; a random-weight model still shows the layout.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from diffbackbones import DiffusionBackbone
from diffbackbones.backbone.diffusion_backbone import pixels_to_input


def synthetic_image(size: int, seed: int = 0) -> np.ndarray:
    """A deterministic test picture: a few coloured shapes on a gradient background."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    canvas = Image.fromarray((np.stack([yy, xx, 1 - yy], -1) * 160 + 40).astype(np.uint8))
    draw = ImageDraw.Draw(canvas)
    for _ in range(4):
        x0, y0 = rng.integers(0, size * 3 // 4, 2)
        r = int(rng.integers(size // 8, size // 4))
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)([x0, y0, x0 + r, y0 + r], fill=colour)
    return np.asarray(canvas)


def pca_rgb(feat: torch.Tensor) -> np.ndarray:
    """(C, h, w) -> (h, w, 3) uint8: the first three principal components, min-max scaled."""
    c, h, w = feat.shape
    x = feat.float().reshape(c, -1).T
    x = x - x.mean(0)
    _, _, v = torch.linalg.svd(x, full_matrices=False)
    proj = x @ v[:3].T
    proj = (proj - proj.min(0).values) / (proj.max(0).values - proj.min(0).values + 1e-8)
    return (proj.reshape(h, w, 3).numpy() * 255).astype(np.uint8)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--model', default='test_sd_tiny', help='zoo name (sd15, sd21, sdxl, pgv2, test_sd_tiny, ...)')
    parser.add_argument('--activations', default='practical', help='preset name or comma-separated layer ids')
    parser.add_argument('--pretrained', nargs='?', const=True, default=False,
                        help='load real weights (the hub id, or a local diffusers folder given here)')
    parser.add_argument('--image', help='input picture (default: a synthetic one)')
    parser.add_argument('--size', type=int, default=256, help='working image size')
    parser.add_argument('--prompt', default='')
    parser.add_argument('--t', type=int, default=None, help="timestep (default: the model's: 50, or 184 for flow-matching models)")
    parser.add_argument('--out', default='work_dirs/demo', help='output folder')
    args = parser.parse_args()

    activations = args.activations if ',' not in args.activations else args.activations.split(',')
    backbone = DiffusionBackbone(args.model, activations, pretrained=args.pretrained, t=args.t, prompt=args.prompt)
    print(backbone)
    if args.image:
        picture = np.asarray(Image.open(args.image).convert('RGB').resize((args.size, args.size), Image.BICUBIC))
    else:
        picture = synthetic_image(args.size)
    images = pixels_to_input(picture)
    with torch.no_grad():
        levels = backbone(images)
    tiles = [picture]
    for feat, info in zip(levels, backbone.feature_info):
        print(f"level stride {info['reduction']:>3}: {tuple(feat.shape)}")
        tiles.append(np.asarray(Image.fromarray(pca_rgb(feat[0])).resize((args.size, args.size), Image.NEAREST)))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f'pca_{args.model}_{args.activations.replace(",", "+")[:60]}.png'
    Image.fromarray(np.concatenate(tiles, axis=1)).save(path)
    print(f'wrote {path}  (input, then one PCA picture per level, fine to coarse)')


if __name__ == '__main__':
    main()

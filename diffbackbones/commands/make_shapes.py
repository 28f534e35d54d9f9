"""Write the embedded synthetic "shapes" segmentation set (``diffbackbones.segmentation.shapes``).

    diffbackbones make-shapes data/shapes                              # mmseg layout, 200 train / 50 val
    diffbackbones make-shapes data/shapes-geometry --variant geometry  # only the outline names the class
    diffbackbones make-shapes data/shapes-ddpm --layout ddpm-seg       # real/{train,test}, 30 / 20, .npy labels
"""
from __future__ import annotations

import argparse
from pathlib import Path

from ..segmentation.shapes import LAYOUTS, VARIANTS, make_shapes_dataset
from .base import run_command


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('root', nargs='?', default='data/shapes')
    parser.add_argument('--train', type=int, default=None, help='training images (default 200; ddpm-seg: 30)')
    parser.add_argument('--val', type=int, default=None, help='validation / test images (default 50; ddpm-seg: 20)')
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--variant', choices=VARIANTS, default='texture',
                        help='texture: class-specific texture and hue; geometry: appearance independent of the class')
    parser.add_argument('--layout', choices=LAYOUTS, default='mmseg',
                        help="mmseg: img_dir/ann_dir; ddpm-seg: real/{train,test} with .npy labels (diffbackbones probe)")


def run(args: argparse.Namespace) -> Path:
    ddpm = args.layout == 'ddpm-seg'
    n_train = args.train if args.train is not None else (30 if ddpm else 200)
    n_val = args.val if args.val is not None else (20 if ddpm else 50)
    root = make_shapes_dataset(args.root, n_train, n_val, seed=args.seed, variant=args.variant, layout=args.layout)
    print(f'shapes dataset ({args.variant}, {args.layout} layout) ready in {root} '
          f'({n_train} train / {n_val} {"test" if ddpm else "val"} images)')
    return root


def main(argv=None) -> Path:
    return run_command(__name__, argv)

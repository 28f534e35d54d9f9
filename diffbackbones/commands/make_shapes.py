"""Write the embedded synthetic "shapes" sets: segmentation (``diffbackbones.data.shapes``), depth estimation
(``diffbackbones.data.depth_shapes``, NYU Depth v2's layout) or instance segmentation
(``diffbackbones.data.shapes_instances``, COCO's format).

    diffbackbones make-shapes data/shapes                              # mmseg layout, 200 train / 50 val
    diffbackbones make-shapes data/shapes-geometry --variant geometry  # only the outline names the class
    diffbackbones make-shapes data/shapes-ddpm --layout ddpm-seg       # real/{train,test}, 30 / 20, .npy labels
    diffbackbones make-shapes data/shapes-depth --task depth           # images/annotations {train,test}, 200 / 50,
                                                                       # 16-bit PNG depth in mm (mmseg NYUDataset)
    diffbackbones make-shapes data/shapes-instances --task instances   # {train,val}/ + annotations/instances_*.json
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from diffbackbones.data.shapes import LAYOUTS, VARIANTS, make_shapes_dataset
from .base import command_parser, run_command

TASKS = ('segmentation', 'depth', 'instances')


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('root', nargs='?', default='data/shapes')
    parser.add_argument('--task', choices=TASKS, default='segmentation',
                        help='segmentation: the shapes label set; depth: the shapes-depth set in NYU Depth v2 layout; '
                             'instances: every shape an instance, COCO format (mmdet)')
    parser.add_argument('--train', type=int, default=None, help='training images (default 200; ddpm-seg: 30)')
    parser.add_argument('--val', type=int, default=None,
                        help='validation / test images (default 50; ddpm-seg: 20; depth: the test split)')
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--variant', choices=VARIANTS, default='texture',
                        help='texture: class-specific texture and hue; geometry: appearance independent of the class '
                             '(segmentation only)')
    parser.add_argument('--layout', choices=LAYOUTS, default='mmseg',
                        help='mmseg: img_dir/ann_dir; ddpm-seg: real/{train,test} with .npy labels '
                             '(diffbackbones probe; segmentation only)')


def _refuse_segmentation_flags(args: argparse.Namespace, allowed: tuple[str, ...] = ()) -> None:
    conflicts = [f'--{name} {getattr(args, name)}' for name, default in (('variant', 'texture'), ('layout', 'mmseg'))
                 if getattr(args, name) != default and name not in allowed]
    if conflicts:
        command_parser(sys.modules[__name__], 'diffbackbones make-shapes').error(
            f'{" and ".join(conflicts)} only apply to --task segmentation, not --task {args.task}')


def _run_instances(args: argparse.Namespace) -> Path:
    _refuse_segmentation_flags(args, allowed=('variant',))
    from diffbackbones.data.shapes_instances import make_instances_dataset
    n_train = args.train if args.train is not None else 200
    n_val = args.val if args.val is not None else 50
    root = make_instances_dataset(args.root, n_train, n_val, seed=args.seed, variant=args.variant)
    print(f'shapes-instances dataset (COCO format) ready in {root} ({n_train} train / {n_val} val images; '
          f'annotations/instances_{{train,val}}.json)')
    return root


def _run_depth(args: argparse.Namespace) -> Path:
    _refuse_segmentation_flags(args)
    from diffbackbones.data.depth_shapes import make_depth_dataset
    n_train = args.train if args.train is not None else 200
    n_test = args.val if args.val is not None else 50
    root = make_depth_dataset(args.root, n_train, n_test, seed=args.seed)
    print(f'shapes-depth dataset (NYU layout) ready in {root} ({n_train} train / {n_test} test images)')
    return root


def run(args: argparse.Namespace) -> Path:
    if getattr(args, 'task', 'segmentation') == 'depth':
        return _run_depth(args)
    if getattr(args, 'task', 'segmentation') == 'instances':
        return _run_instances(args)
    ddpm = args.layout == 'ddpm-seg'
    n_train = args.train if args.train is not None else (30 if ddpm else 200)
    n_val = args.val if args.val is not None else (20 if ddpm else 50)
    root = make_shapes_dataset(args.root, n_train, n_val, seed=args.seed, variant=args.variant, layout=args.layout)
    print(f'shapes dataset ({args.variant}, {args.layout} layout) ready in {root} '
          f'({n_train} train / {n_val} {"test" if ddpm else "val"} images)')
    return root


def main(argv=None) -> Path:
    return run_command(__name__, argv)

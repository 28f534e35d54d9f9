"""Write an embedded correspondence set: semantic pairs in SPair-71k's layout (default), geometric sequences
in HPatches' layout, or temporal videos in DAVIS' layout (and JHMDB's, in ``jhmdb/``).

    diffbackbones make-correspondence data/shapes-pairs                 # 150 trn / 30 val / 30 test pairs
    diffbackbones correspondence test_sd_tiny --data data/shapes-pairs
    diffbackbones make-correspondence data/geo --task geometric         # 6 i_* + 6 v_* sequences, 60 pairs
    diffbackbones make-correspondence data/video --task temporal        # 3 videos of 10 frames
"""
from __future__ import annotations

import argparse
from pathlib import Path

from diffbackbones.tasks.correspondence.geometric.synthetic import make_geometric_dataset
from diffbackbones.tasks.correspondence.synthetic import make_correspondence_dataset
from diffbackbones.tasks.correspondence.temporal.synthetic import make_temporal_dataset
from .base import run_command

DEFAULT_ROOT = {'semantic': 'data/shapes-pairs', 'geometric': 'data/shapes-hpatches', 'temporal': 'data/shapes-video'}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('root', nargs='?', default=None,
                        help=f'where to write it (default: {", ".join(f"{k}: {v}" for k, v in DEFAULT_ROOT.items())})')
    parser.add_argument('--task', choices=sorted(DEFAULT_ROOT), default='semantic')
    parser.add_argument('--train', type=int, default=150, help='semantic: pairs in PairAnnotation/trn')
    parser.add_argument('--val', type=int, default=30, help='semantic: pairs in PairAnnotation/val')
    parser.add_argument('--test', type=int, default=30, help='semantic: pairs in PairAnnotation/test')
    parser.add_argument('--sequences', type=int, default=6,
                        help='geometric: sequences of each kind (illumination, viewpoint), 5 pairs each')
    parser.add_argument('--videos', type=int, default=3, help='temporal: videos')
    parser.add_argument('--frames', type=int, default=10, help='temporal: frames per video')
    parser.add_argument('--seed', type=int, default=0)


def run(args: argparse.Namespace) -> Path:
    root = args.root or DEFAULT_ROOT[args.task]
    if args.task == 'geometric':
        root = make_geometric_dataset(root, args.sequences, args.sequences, seed=args.seed)
        print(f'shapes sequences ready in {root} ({args.sequences} illumination + {args.sequences} viewpoint, '
              f'{10 * args.sequences} pairs, HPatches layout)')
    elif args.task == 'temporal':
        root = make_temporal_dataset(root, args.videos, args.frames, seed=args.seed)
        print(f'shapes videos ready in {root} ({args.videos} videos of {args.frames} frames: DAVIS-2017 layout, and '
              f'JHMDB layout in {Path(root) / "jhmdb"})')
    else:
        root = make_correspondence_dataset(root, args.train, args.val, args.test, seed=args.seed)
        print(f'shapes pairs ready in {root} ({args.train} trn / {args.val} val / {args.test} test pairs, SPair-71k '
              'layout)')
    return root


def main(argv=None) -> Path:
    return run_command(__name__, argv)

"""Write the embedded correspondence set (shapes pairs with known similarity transforms) in SPair-71k's layout.

    diffbackbones make-correspondence data/shapes-pairs                 # 150 trn / 30 val / 30 test pairs
    diffbackbones correspondence test_sd_tiny --data data/shapes-pairs
"""
from __future__ import annotations

import argparse
from pathlib import Path

from diffbackbones.tasks.correspondence.synthetic import make_correspondence_dataset
from .base import run_command


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('root', nargs='?', default='data/shapes-pairs')
    parser.add_argument('--train', type=int, default=150, help='pairs in PairAnnotation/trn')
    parser.add_argument('--val', type=int, default=30)
    parser.add_argument('--test', type=int, default=30)
    parser.add_argument('--seed', type=int, default=0)


def run(args: argparse.Namespace) -> Path:
    root = make_correspondence_dataset(args.root, args.train, args.val, args.test, seed=args.seed)
    print(f'shapes pairs ready in {root} ({args.train} trn / {args.val} val / {args.test} test pairs, SPair-71k layout)')
    return root


def main(argv=None) -> Path:
    return run_command(__name__, argv)

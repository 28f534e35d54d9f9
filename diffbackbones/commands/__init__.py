"""The ``diffbackbones`` command: the package's tasks as subcommands.

    diffbackbones list shapes_sd_tiny
    diffbackbones make-shapes work_dirs/shapes
    diffbackbones screen test_sd_tiny --images work_dirs/shapes/img_dir/val --labels work_dirs/shapes/ann_dir/val --out work_dirs/screen

``diffbackbones COMMAND --help`` shows each command's flags and a runnable example. The commands are
thin: each parses its flags and calls the library function that does the work (``diffbackbones.screen``,
``diffbackbones.extract``, ...), so everything they do can be done from Python too.
"""
from __future__ import annotations

import argparse
import importlib
import sys
from typing import Sequence

from .base import command_parser

__all__ = ['COMMANDS', 'main']

# subcommand -> (module in this package, one-line summary). The summaries live here, not in the modules,
# so `diffbackbones --help` imports no command (some pull in heavy libraries).
COMMANDS = {
    'list': ('list_activations', 'every activation of a model (layer ids, kinds, channels, sizes)'),
    'extract': ('extract', 'features of an image folder to disk (a FeatureStore), resumable'),
    'screen': ('screen', "screen every activation by the paper's three properties, rank the survivors"),
    'probe': ('probe', "label-scarce segmentation: DDPM-seg's pixel-classifier protocol"),
    'correspondence': ('correspondence', 'semantic correspondence: PCK of zero-shot or trained features'),
    'benchmark': ('benchmark', 'speed and memory of the backbone against baselines in the same process'),
    'memory': ('memory', 'parameter memory at real size per weight format, GPU fit, fine-tuning memory per rank'),
    'train-diffusion': ('train_diffusion', 'train the tiny latent diffusion model shipped as shapes_sd_tiny'),
    'make-shapes': ('make_shapes', 'draw the embedded shapes sets: segmentation (mmseg or DDPM-seg layout) or depth (NYU layout)'),
    'make-correspondence': ('make_correspondence', 'draw the embedded synthetic correspondence set'),
    'generate-labelled': ('generate_labelled', 'generate images and label them from features captured while generating'),
}


def main(argv: Sequence[str] | None = None) -> int:
    """The console script: ``diffbackbones COMMAND [flags]``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog='diffbackbones', description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    subparsers = parser.add_subparsers(dest='command', metavar='COMMAND', required=True)
    # Only the chosen command's module is imported: `diffbackbones list --help` needs no mmseg or matplotlib.
    chosen = argv[0] if argv and argv[0] in COMMANDS else None
    for name, (module_name, summary) in COMMANDS.items():
        subparser = subparsers.add_parser(name, help=summary)
        if name == chosen:
            command_parser(importlib.import_module(f'{__name__}.{module_name}'), f'diffbackbones {name}', subparser)
    args = parser.parse_args(argv)
    importlib.import_module(f'{__name__}.{COMMANDS[args.command][0]}').run(args)
    return 0

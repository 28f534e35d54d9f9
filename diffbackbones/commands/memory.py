"""Memory of backbones at real size, counted on the meta device (no weights, nothing allocated).

    diffbackbones memory                                    # SDXL, SD3.5-large and FLUX.1-dev, their presets
    diffbackbones memory sdxl:legacy flux_dev:default       # MODEL or MODEL:PRESET
    diffbackbones memory --costs flux2_dev qwen_image       # one table: parameters, GiB, FLOPs per 1024 px image

Prints three Markdown tables (``diffbackbones.tasks.memory``): parameter GiB of each backbone with its denoiser in
bf16, int8, float8 and nf4; which of those formats fit a 24, 48 and 80 GB GPU; and the GiB per rank of
fine-tuning the pruned denoiser with AdamW, fully sharded over 1, 2, 4 and 8 ranks.
"""
from __future__ import annotations

import argparse

from diffbackbones.models.zoo import MODELS
from diffbackbones.tasks.memory import backbone_memory, cost_table, memory_tables
from .base import run_command

DEFAULT_MODELS = ('sdxl', 'sd35_large', 'flux_dev')


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('models', nargs='*', default=list(DEFAULT_MODELS),
                        help="MODEL or MODEL:PRESET (default: " + ' '.join(DEFAULT_MODELS) + ", each with 'practical' "
                             "or else 'default')")
    parser.add_argument('--costs', action='store_true',
                        help='print one table instead: denoiser parameters kept, bf16 GiB, TFLOPs per 1024 px image '
                             '(backbone and whole denoiser, counted on the meta device) and the formats that fit '
                             'each GPU')


def run(args: argparse.Namespace) -> str:
    entries = []
    for item in args.models:
        model, _, preset = item.partition(':')
        if model not in MODELS:
            raise SystemExit(f'unknown model {model!r}; zoo: {", ".join(sorted(MODELS))}')
        preset = preset or ('practical' if 'practical' in MODELS[model].presets else 'default')
        entries.append(backbone_memory(model, preset))
    tables = cost_table(entries) if args.costs else memory_tables(entries)
    print(tables)
    return tables


def main(argv=None) -> None:
    return run_command(__name__, argv)

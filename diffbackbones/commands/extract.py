"""Extract a backbone's features for a folder of images to disk (safetensors shards), resumable.

    diffbackbones make-shapes data/shapes
    diffbackbones extract test_sd_tiny --images data/shapes/img_dir/val --out work_dirs/features
    diffbackbones extract ... --resume                          # after a kill: continues where it stopped
    torchrun --nproc_per_node=2 tools/extract.py ...            # images split across ranks (gloo on CPU)
    torchrun --nproc_per_node=2 --no-python diffbackbones extract ...   # the same with the installed command

Each image's activations are stored one tensor per activation, on the working size's grid (``--aggregate``:
every activation resized to the finest one's grid and concatenated into one tensor, as the paper code's
``--aggregate_output``), fp16 by default, in shards of ``--shard-size`` images written atomically (temporary
file, then rename). The store's ``settings.json`` records every setting that decides the values; a folder
holding another run is refused (``--resume`` continues a run with identical settings, and names any
setting that differs). Under ``torchrun`` this command initialises the process group (nccl with GPUs, gloo
otherwise) and rank r of N takes images r, r + N, ...

From Python: ``store = diffbackbones.extract('test_sd_tiny', images, out, t=50)``, then

    from diffbackbones import FeatureStore
    store = FeatureStore('work_dirs/features')      # lazy: by image, by activation
"""
from __future__ import annotations

import argparse
import os

import torch
import torch.distributed as dist

from .cli import activations_option, add_model_argument, pretrained_option, resolve_model
from diffbackbones.tasks.extraction.extract import STORE_DTYPES, run_extraction
from diffbackbones.models.zoo import get_model_spec
from .base import run_command



def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_argument(parser)
    parser.add_argument('--activations', default='practical', help='preset name or comma-separated layer ids')
    parser.add_argument('--images', required=True, help='an image folder, or a text file with one image path per line')
    parser.add_argument('--out', required=True, help='the store folder')
    parser.add_argument('--weights', default=None,
                        help="'random', a local diffusers folder or hub id; omit: the zoo's weights (random for test models)")
    parser.add_argument('--t', type=int, default=None, help="timestep (default: the model's: 50, or 184 for flow-matching models)")
    parser.add_argument('--prompt', default='')
    parser.add_argument('--ensemble', type=int, default=1)
    parser.add_argument('--image-size', type=int, default=None, help='working size (default: each image as it is)')
    parser.add_argument('--dtype', default='fp32', help='backbone dtype')
    parser.add_argument('--store-dtype', choices=sorted(STORE_DTYPES), default='fp16')
    parser.add_argument('--aggregate', action='store_true', help='one tensor per image: levels at the finest grid')
    parser.add_argument('--shard-size', type=int, default=32, help='images per shard')
    parser.add_argument('--batch-size', type=int, default=1, help='images per forward (same-size neighbours only)')
    parser.add_argument('--resume', action='store_true', help='continue a run in --out with identical settings')


def run(args: argparse.Namespace) -> dict:
    """Run the extraction (one rank of it under torchrun); returns this rank's counts and timings."""
    resolve_model(args)
    # The process group belongs to the process, so the entry point (not the library) opens and closes it.
    own_group = int(os.environ.get('WORLD_SIZE', 1)) > 1 and not dist.is_initialized()
    if own_group:
        dist.init_process_group('nccl' if torch.cuda.is_available() else 'gloo')
    try:
        result = run_extraction(
            args.model, args.images, args.out, activations=activations_option(args.activations),
            pretrained=pretrained_option(get_model_spec(args.model), args.weights), store_dtype=args.store_dtype,
            aggregate=args.aggregate, shard_size=args.shard_size, batch_size=args.batch_size, resume=args.resume,
            progress=True, t=args.t, prompt=args.prompt, ensemble_size=args.ensemble, image_size=args.image_size,
            dtype=args.dtype)
    except (ValueError, FileNotFoundError) as e:
        raise SystemExit(str(e)) from None
    finally:
        if own_group:
            dist.destroy_process_group()
    if result.rank == 0:
        print(f'{result.total} / {result.n_images} images in {result.store.root} ({result.written} new on rank 0, '
              f'{result.resumed_from} there before); {result.written / max(result.seconds, 1e-9):.2f} images/s')
    return result.to_dict()


def main(argv=None) -> dict:
    return run_command(__name__, argv)

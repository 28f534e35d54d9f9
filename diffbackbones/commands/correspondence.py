"""Correspondence with a diffusion backbone: semantic (SPair-71k's PCK@0.1, two protocols; the default),
geometric (HPatches homography estimation) and temporal (DAVIS-2017 J&F, JHMDB PCK) with ``--task``.

    diffbackbones make-correspondence data/pairs                               # the embedded set
    diffbackbones correspondence test_sd_tiny --data data/pairs                # prints the table, writes pictures
    diffbackbones make-correspondence data/geo --task geometric                # HPatches' layout
    diffbackbones correspondence shapes_sd_tiny --task geometric --data data/geo
    diffbackbones make-correspondence data/video --task temporal               # DAVIS' layout (+ JHMDB's in jhmdb/)
    diffbackbones correspondence shapes_sd_tiny --task temporal --data data/video

``--task geometric``: SIFT keypoints (``--keypoints`` 1000), described by the activations, mutual nearest
neighbours, ``cv2.findHomography`` (``--estimator ransac`` with ``--ransac-threshold`` 3 px, or ``lmeds``);
mean corner error and accuracy at 1, 3, 5 px, illumination and viewpoint apart, with SIFT's own descriptors as
a baseline row. ``--task temporal``: DINO's label propagation of frame 0's masks (DAVIS) or joints (JHMDB),
frames one by one through the backbone at ``--short-side`` (default: the model's size). Their options from
Python: ``diffbackbones.evaluate_geometric`` / ``evaluate_temporal``.

From Python: ``result = diffbackbones.evaluate_correspondence('test_sd_tiny', 'data/pairs',
protocol='trained')``, then ``print(result.table())`` and ``result.save(folder)``.

Data: an SPair-71k root (``JPEGImages/``, ``PairAnnotation/{trn,val,test}/``) with ``--train/--val/--test``
naming its splits, or the paper's list-of-pairs JSONs (``--val spair_71k_val-360.json``: a path, or a file
in ``--data`` or ``--data/JPEGImages``).

``--protocol trained`` (default; the paper's Table 1): every image resized to the working size, every
level resized to 128 x 128 and concatenated, one 3x3 convolution (C -> C, no bias) trained with a symmetric
CLIP cross-entropy at the keypoints (temperature 0.07), AdamW lr 5e-4 wd 0.01, 2 epochs x 5,000 random
training pairs, validated every 500 steps and after the last; matching on 512 x 512 upsampled maps.
``--report test`` (default) takes the weights with the best validation PCK@0.1 (bbox, per keypoint) and
reports the test split; ``--report paper-best-val`` reports what the paper's code logs: the best validation
value of each metric over the run (on ``spair_71k_val-360.json`` in the paper).

``--protocol zero-shot`` (DIFT): the chosen activations as they are, upsampled to each image's size, cosine
similarity, hard argmax. ``--preset dift`` sets DIFT's configuration: SD2.1 (its 768 px weights,
stabilityai/stable-diffusion-2-1), ``up-level1-upsampler-out``, t = 261, an ensemble of 8, 768 px,
prompt "a photo of a {category}".

PCK@0.1 by bbox (0.1 x the larger side of the target box) and by image (of the target image), per keypoint
and per image (the mean over pairs), per category and overall. Writes ``correspondence.json`` and
``pictures/`` into ``--out``.

The paper's targets (Meng et al. 2024, Table 1; SPair-71k PCK@0.1 img / bbox, per keypoint), given SPair-71k
in data/SPair-71k with the paper's three JSONs in its JPEGImages/ and the weights (``--t 51`` on SD1.5: the
paper's t=50 as its PNDM scheduler hands it to the UNet, see configs/paper/; the paper ran fp16, ``--dtype fp16``
on a GPU):

    Ours-v1.5    77.78 / 69.83   diffbackbones correspondence sd15 --activations practical --t 51 --data data/SPair-71k --train spair_71k_train.json --val spair_71k_val-360.json --report paper-best-val
    Ours-XL      81.72 / 75.18   diffbackbones correspondence sdxl --activations practical --data data/SPair-71k --train spair_71k_train.json --val spair_71k_val-360.json --report paper-best-val
    Legacy-v1.5  75.14 / 66.73   diffbackbones correspondence sd15 --activations legacy --t 51 --data data/SPair-71k --train spair_71k_train.json --val spair_71k_val-360.json --report paper-best-val
    DHF          72.56 / 64.61   (Diffusion Hyperfeatures; not a model of this package)

DIFT's zero-shot evaluation on SPair-71k's test split (its eval_spair.py: per image and per point
PCK@0.1 by bbox):

    diffbackbones correspondence --preset dift --data data/SPair-71k
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

from .cli import activations_option, add_model_argument, given_options, pretrained_option, resolve_model
from diffbackbones.tasks.correspondence.evaluate import (CORRESPONDENCE_PRESETS, TASKS, check_free,
                                                         evaluate_correspondence)
from diffbackbones.tasks.correspondence.geometric.evaluate import RESULT_FILE as GEOMETRIC_FILE, evaluate_geometric
from diffbackbones.tasks.correspondence.geometric.hpatches import D2NET_EXCLUDED
from diffbackbones.tasks.correspondence.temporal.evaluate import RESULT_FILE as TEMPORAL_FILE, evaluate_temporal
from diffbackbones.utils.outputs import refuse_earlier_run
from diffbackbones.tasks.correspondence.features import DIFT_PROMPT, PAPER_PROMPT
from diffbackbones.models.zoo import get_model_spec
from .base import command_parser, run_command


# evaluate_correspondence's argument -> this command's flag, where the names differ
_FLAG_OF = {'pretrained': 'weights', 'ensemble_size': 'ensemble'}
# flags of one task only: given with another, they stop the command instead of being ignored
_SEMANTIC_ONLY = {'preset', 'protocol', 'train', 'val', 'test', 'report', 'epochs', 'steps_per_epoch', 'lr',
                  'weight_decay', 'temperature', 'feature_size', 'load_size', 'val_every', 'alpha', 'seed'}
_OTHER_TASKS = {'keypoints', 'estimator', 'ransac_threshold', 'all_sequences', 'short_side'}


class _Given(argparse.Action):
    """Store the value and remember that the command line gave it: a preset yields to it."""

    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, self.const if self.nargs == 0 else values)  # nargs=0: a switch
        namespace._given = getattr(namespace, '_given', set()) | {self.dest}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    def add(*names, **kwargs):
        parser.add_argument(*names, action=_Given, **kwargs)

    # a preset may name the model: the positional may be left out
    add_model_argument(parser, "zoo name (sd15, sdxl, sd21, shapes_sd_tiny, test_sd_tiny, ...; default: --preset's)",
                       optional=True)
    add('--preset', choices=sorted(CORRESPONDENCE_PRESETS), default=None,
        help="a published configuration (its options can still be overridden)")
    add('--activations', default='practical', help='preset name or comma-separated layer ids')
    add('--levels', default=None, help='comma-separated indices of the levels to use (default: all)')
    add('--task', choices=TASKS, default='semantic',
        help='semantic (SPair-71k pairs), geometric (HPatches) or temporal (DAVIS / JHMDB)')
    add('--data', required=True, help='SPair-71k root or list-of-pairs .json; HPatches folder (geometric); DAVIS '
                                      'or JHMDB root, or the embedded video set (temporal)')
    add('--protocol', choices=('trained', 'zero-shot'), default='trained')
    add('--weights', default=None,
        help="'random', a local diffusers folder or hub id; omit: the zoo's weights (random for test models)")
    add('--t', type=int, default=None, help="timestep (default: the model's: 50, or 184 for flow-matching models)")
    add('--ensemble', type=int, default=1, help='noise samples averaged per image')
    add('--prompt', default=None,
        help=f'prompt template, {{category}} is filled in (default: trained: the paper\'s fixed '
             f'prompt; zero-shot: "{DIFT_PROMPT}")')
    add('--image-size', type=int, default=None, help="working size (default: the model's)")
    add('--dtype', default='fp32')
    add('--train', default='trn', help='training split name or list-of-pairs .json')
    add('--val', default='val', help='validation split name or .json')
    add('--test', default='test', help='test split name or .json')
    add('--report', choices=('test', 'paper-best-val'), default='test')
    add('--epochs', type=int, default=2)
    add('--steps-per-epoch', type=int, default=5000)
    add('--lr', type=float, default=5e-4)
    add('--weight-decay', type=float, default=0.01)
    add('--temperature', type=float, default=0.07)
    add('--feature-size', type=int, default=128, help='grid the levels are resized to (trained)')
    add('--load-size', type=int, default=512, help='grid matching runs on (trained)')
    add('--val-every', type=int, default=500)
    add('--alpha', type=float, default=0.1)
    add('--seed', type=int, default=0)
    add('--cache-mb', type=float, default=2048, help='image features kept in memory')
    add('--keypoints', type=int, default=1000, help='geometric: most SIFT keypoints kept per image')
    add('--estimator', choices=('ransac', 'lmeds'), default='ransac', help='geometric: cv2.findHomography method')
    add('--ransac-threshold', type=float, default=3.0, help='geometric: RANSAC reprojection threshold, px')
    add('--all-sequences', nargs=0, const=True, default=False,
        help="geometric: keep the 8 large sequences D2-Net's download deletes (CAPS and DIFT leave them out)")
    add('--short-side', type=int, default=None, help="temporal: the frames' working short side (default: the "
                                                       "model's image size)")
    add('--out', default='work_dirs/correspondence')
    add('--pictures', type=int, default=8, help='pairs drawn')
    parser.add_argument('--overwrite', action='store_true', help="replace an earlier run's correspondence.json")


def resolve(args: argparse.Namespace) -> argparse.Namespace:
    """The preset's values, except where the command line set something else; the protocol's prompt.

    Applies to flags straight from the parser (they carry which flags were given); once only.
    """
    given = vars(args).pop('_given', set())
    if resolve_model(args, required=False) is not None:  # named on the command line: the preset yields to it
        given.add('model')
    if args.preset:
        for key, value in CORRESPONDENCE_PRESETS[args.preset].items():
            flag = _FLAG_OF.get(key, key)
            if flag not in given:  # as the flag would give it: layer ids comma-separated
                setattr(args, flag, ','.join(value) if isinstance(value, (list, tuple)) else value)
    if args.model is None:
        raise ValueError('name the model first (or a --preset): `diffbackbones correspondence MODEL --data ...`')
    if args.task != 'semantic':
        semantic = sorted(given & _SEMANTIC_ONLY)
        if semantic:
            raise ValueError(f'--{", --".join(f.replace("_", "-") for f in semantic)}: the semantic task\'s, not '
                             f'--task {args.task}\'s')
        args.prompt = args.prompt or ''
    else:
        other = sorted(given & _OTHER_TASKS)
        if other:
            raise ValueError(f'--{", --".join(f.replace("_", "-") for f in other)}: geometric or temporal, '
                             'not semantic (add --task)')
    if args.prompt is None:
        args.prompt = PAPER_PROMPT if args.protocol == 'trained' else DIFT_PROMPT
    return args


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The flags as ``run`` uses them (the preset applied)."""
    parser = command_parser(sys.modules[__name__], 'diffbackbones correspondence')
    args = parser.parse_args(argv)
    try:
        return resolve(args)
    except ValueError as e:
        parser.error(str(e))


def _run_other_task(args: argparse.Namespace, options: dict):
    """--task geometric / temporal: the result (its own file in --out, checked free before the long part)."""
    common = dict(activations=activations_option(args.activations), levels=_levels(args.levels),
                  pretrained=pretrained_option(get_model_spec(args.model), args.weights), prompt=args.prompt,
                  pictures=args.pictures, progress=True, **options)
    if args.task == 'geometric':
        refuse_earlier_run(Path(args.out) / GEOMETRIC_FILE, args.overwrite)
        return evaluate_geometric(args.model, args.data, keypoints=args.keypoints, estimator=args.estimator,
                                  ransac_threshold=args.ransac_threshold, cache_mb=args.cache_mb,
                                  exclude=() if args.all_sequences else D2NET_EXCLUDED, **common)
    refuse_earlier_run(Path(args.out) / TEMPORAL_FILE, args.overwrite)
    return evaluate_temporal(args.model, args.data, short_side=args.short_side, **common)


def run(args: argparse.Namespace) -> dict:
    try:
        if hasattr(args, '_given'):  # not yet resolved (parse_args resolves)
            resolve(args)
        out = Path(args.out)
        options = dict(dtype=args.dtype, ensemble_size=args.ensemble, **given_options(args))
        if args.task != 'semantic':
            result = _run_other_task(args, options)
            result.settings['command'] = {k: v for k, v in vars(args).items() if k != 'command'}
            result.save(out, overwrite=True)
            print(result.table())
            print(f'peak memory {result.peak_rss_gb:.2f} GB (RSS), {result.seconds:.0f} s; written to {out}')
            return result.to_dict()
        check_free(out, args.overwrite)  # before the long part
        result = evaluate_correspondence(
            args.model, args.data, protocol=args.protocol, activations=activations_option(args.activations),
            levels=_levels(args.levels),
            pretrained=pretrained_option(get_model_spec(args.model), args.weights), prompt=args.prompt,
            train=args.train, val=args.val, test=args.test, report=args.report, epochs=args.epochs,
            steps_per_epoch=args.steps_per_epoch, lr=args.lr, weight_decay=args.weight_decay,
            temperature=args.temperature, feature_size=args.feature_size, load_size=args.load_size,
            val_every=args.val_every, alpha=args.alpha, seed=args.seed, cache_mb=args.cache_mb,
            pictures=args.pictures, progress=True, **options)
        # correspondence.json records the command's flags
        result.settings = {k: v for k, v in vars(args).items() if k != 'command'}
        result.save(out, overwrite=True)
    except (ValueError, FileNotFoundError, FileExistsError) as e:
        raise SystemExit(str(e)) from None
    print(result.table())
    print(f'peak memory {result.peak_rss_gb:.2f} GB (RSS), {result.seconds:.0f} s; pictures in {out / "pictures"}')
    return result.to_dict()


def _levels(text: str | None) -> list[int] | None:
    try:
        return None if text is None else [int(i) for i in text.split(',')]
    except ValueError:
        raise ValueError(f'--levels takes comma-separated level indices (0,2); got {text!r}') from None


def main(argv: Sequence[str] | None = None) -> dict:
    return run_command(__name__, argv)

"""Generate images and label them with a pixel classifier on the features captured while they are generated.

    diffbackbones generate-labelled --out work_dirs/labelled          # shapes_sd_tiny, offline, ~1 min on a CPU

DatasetDM / DiffuMask-style synthetic segmentation data, with ``diffbackbones.tasks.generation``: the model's
pipeline generates ``--images`` pictures (DDIM, ``--steps`` steps, ``--size`` px); ``capture_generation``
keeps the ``--activations`` at ``--step`` (-1: the last step). The same model as a ``DiffusionBackbone``,
at that step's timestep and prompt, gives the features of ``--real`` labelled images of the embedded
shapes set; an ensemble of DDPM-seg pixel classifiers trained on them labels every pixel of the
generated images, and is scored on ``--held-out`` further real images (accuracy, mIoU, and the accuracy
of always answering the most frequent class, the chance to beat).

Writes to ``--out``: ``images/NNNNN.png``, ``masks/NNNNN.png`` (class ids 0..3: background, circle, square,
triangle; mode L), ``pictures/NNNNN.png`` (image | coloured mask) and ``labelled.json``.

From Python: ``diffbackbones.tasks.generation.generate_labelled(...)`` returns a ``LabelledSet`` (``save(folder)``);
``diffbackbones.capture_generation`` captures during any pipeline of a supported family.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from .cli import activations_option, add_model_argument, resolve_model
from diffbackbones.tasks.generation import generate_labelled
from diffbackbones.utils.outputs import refuse_earlier_run
from .base import run_command


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_argument(parser, 'zoo name of a text-to-image model with weights', default='shapes_sd_tiny')
    parser.add_argument('--weights', default=None, help="a local diffusers folder (default: the zoo's weights)")
    parser.add_argument('--activations', default='practical', help='preset name or comma-separated layer ids')
    parser.add_argument('--prompt', default=None, help="generation prompt (default: the shapes model's)")
    parser.add_argument('--images', type=int, default=4, help='images generated')
    parser.add_argument('--steps', type=int, default=10, help='sampling steps (DDIM)')
    parser.add_argument('--step', type=int, default=-1, help='the step whose features label the images (-1: last)')
    parser.add_argument('--size', type=int, default=128, help='image side, pixels')
    parser.add_argument('--guidance-scale', type=float, default=1.0, help='classifier-free guidance (1: none)')
    parser.add_argument('--real', type=int, default=16, help='labelled real shapes images to train on')
    parser.add_argument('--held-out', type=int, default=8, help='real images the classifier is scored on')
    parser.add_argument('--pixels-per-image', type=int, default=500, help='labelled pixels sampled per real image')
    parser.add_argument('--classifiers', type=int, default=3, help='pixel classifiers in the ensemble')
    parser.add_argument('--max-epochs', type=int, default=10)
    parser.add_argument('--batch-size', type=int, default=256, help='pixels per classifier batch')
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--out', default='work_dirs/labelled')
    parser.add_argument('--overwrite', action='store_true', help="replace an earlier run's files in --out")


def run(args: argparse.Namespace) -> dict:
    resolve_model(args)
    out = Path(args.out)
    try:
        refuse_earlier_run(out / 'labelled.json', args.overwrite)  # before the long part
        result = generate_labelled(
            model=args.model, pretrained=args.weights or True, activations=activations_option(args.activations),
            prompt=args.prompt, images=args.images, steps=args.steps, step=args.step, size=args.size,
            guidance_scale=args.guidance_scale, real=args.real, held_out=args.held_out,
            pixels_per_image=args.pixels_per_image, classifiers=args.classifiers, max_epochs=args.max_epochs,
            batch_size=args.batch_size, seed=args.seed)
        result.save(out, overwrite=args.overwrite)
    except (ValueError, FileNotFoundError, FileExistsError) as e:
        raise SystemExit(str(e)) from None
    scores, settings = result.held_out, result.settings
    print(f'generated {len(result.images)} images of {settings["size"]} px in {settings["steps"]} steps; features '
          f'captured at step {settings["step"]} (t={settings["t"]}), levels of {settings["channels"]} channels')
    print(f'classifier on {settings["held_out"]} held-out real images: pixel accuracy {100 * scores["accuracy"]:.1f}% '
          f'(most frequent class alone: {100 * scores["majority"]:.1f}%), mIoU {100 * scores["miou"]:.1f}%')
    for i, counts in enumerate(result.to_dict()['pixels_per_class']):
        print(f'  image {i:05d}: pixels per class {counts}')
    print(f'{result.seconds:.0f} s; images, masks and pictures in {out}')
    return result.to_dict()


def main(argv=None) -> dict:
    return run_command(__name__, argv)

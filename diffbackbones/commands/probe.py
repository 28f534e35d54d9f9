"""Label-scarce segmentation with a diffusion backbone: DDPM-seg's pixel-classifier protocol.

    diffbackbones make-shapes data/shapes-ddpm --layout ddpm-seg        # the embedded set, 30 / 20
    diffbackbones probe test_sd_tiny --data data/shapes-ddpm            # prints the table, writes pictures

From Python: ``result = diffbackbones.evaluate_probe('test_sd_tiny', 'data/shapes-ddpm')``,
then ``print(result.table())`` and ``result.save(folder)``.

Data: ``ROOT/real/{train,test}/`` (images with same-name ``.npy`` label maps, DDPM-seg's layout) or
mmseg's ``img_dir/``/``ann_dir/``. Images are resized to ``--resolution`` (256), scaled to [-1, 1]; the
backbone runs at its working size (``--image-size``, the model's own by default) and its levels, kept on
that grid, are upsampled bilinearly to 256 x 256 per sampled pixel (never as whole maps). An ensemble
of ``--models`` (10) MLPs is trained on the labelled training pixels (classes of 1-19 pixels in an image
are ignored), Adam 1e-3, batches of 64, at most 100 epochs with the original's early stop; each
predicts by argmax, the ensemble by majority vote; mIoU over all classes but the ignore label, absent
classes counting 0 (also printed over present classes). ``--splits 5`` pools train and test and
redraws splits of the same sizes (seeds ``--seed`` + k), reporting mean +- std. Writes ``probe.json``
and ``pictures/`` (image | labels | prediction) in ``--out``.

The paper's targets (Horse-21, 30 labelled images; Meng et al. 2024, Table 2), given the data in
``data/horse21`` (DDPM-seg's release) and the weights:

    Ours-v1.5    60.2 +- 0.9   diffbackbones probe sd15 --activations practical --t 51 --data data/horse21 --prompt "a photo of a horse" --splits 5
    Ours-XL      62.7 +- 0.7   diffbackbones probe sdxl --activations practical --data data/horse21 --prompt "a photo of a horse" --splits 5
    Legacy-v1.5  59.4 +- 1.3   diffbackbones probe sd15 --activations legacy --t 51 --data data/horse21 --prompt "a photo of a horse" --splits 5
    DDPM         65.0          (the DDPM-seg baseline; not a model of this package)
"""
from __future__ import annotations

import argparse
from pathlib import Path

from .cli import activations_option, add_model_argument, given_options, pretrained_option, resolve_model
from diffbackbones.tasks.label_scarce.evaluate import check_free, evaluate_probe
from diffbackbones.models.zoo import get_model_spec
from .base import run_command



def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_argument(parser)
    parser.add_argument('--activations', default='practical', help='preset name or comma-separated layer ids')
    parser.add_argument('--data', required=True, help='dataset root (DDPM-seg or mmseg layout)')
    parser.add_argument('--weights', default=None,
                        help="'random', a local diffusers folder, or omit: the zoo's weights (random for test models)")
    parser.add_argument('--t', type=int, default=None, help="timestep (default: the model's: 50, or 184 for flow-matching models)")
    parser.add_argument('--prompt', default='')
    parser.add_argument('--image-size', type=int, default=None, help="backbone working size (default: the model's)")
    parser.add_argument('--resolution', type=int, default=256, help='label resolution features are upsampled to')
    parser.add_argument('--dtype', default='fp32')
    parser.add_argument('--quantization', choices=['int8', 'float8', 'nf4'],
                        help="quantize the denoiser's linear layers (denoiser=dict(quantization=...))")
    parser.add_argument('--models', type=int, default=10, help='classifiers in the ensemble')
    parser.add_argument('--max-epochs', type=int, default=100)
    parser.add_argument('--batch-size', type=int, default=64, help='pixels per classifier batch')
    parser.add_argument('--ignore', type=int, default=255, help='ignore label (DDPM-seg Bedroom-28: 0)')
    parser.add_argument('--num-classes', type=int, default=None, help='default: the largest label id + 1')
    parser.add_argument('--splits', type=int, default=1, help='1: the published split; k > 1: k redrawn splits')
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--out', default='work_dirs/probe')
    parser.add_argument('--pictures', type=int, default=8, help='test images drawn (split 1)')
    parser.add_argument('--overwrite', action='store_true', help="replace an earlier run's probe.json in --out")


def run(args: argparse.Namespace) -> dict:
    resolve_model(args)
    out = Path(args.out)
    try:
        check_free(out, args.overwrite)  # before the long part
        options = dict(prompt=args.prompt, dtype=args.dtype, **given_options(args))
        if args.quantization:
            options['denoiser'] = dict(quantization=args.quantization)
        result = evaluate_probe(args.model, args.data, activations=activations_option(args.activations),
                                pretrained=pretrained_option(get_model_spec(args.model), args.weights),
                                splits=args.splits, seed=args.seed, resolution=args.resolution, models=args.models,
                                max_epochs=args.max_epochs, batch_size=args.batch_size, ignore=args.ignore,
                                num_classes=args.num_classes, progress=True, **options)
        # probe.json records the command's flags (what reruns it), with what the backbone resolved
        flags = {key: value for key, value in vars(args).items() if key != 'command'}
        result.settings = dict(flags, **{key: result.settings[key] for key in ('levels', 'channels', 'n_classes')})
        result.save(out, pictures=args.pictures, overwrite=args.overwrite)
    except (ValueError, FileNotFoundError, FileExistsError) as e:
        raise SystemExit(str(e)) from None
    features = result.features
    print(f'features: {features["channels"]} channels per pixel from levels {features["level_shapes"]}; kept at '
          f'native grids: {features["nbytes"] / 2 ** 20:.1f} MB (upsampled in full: '
          f'{features["upsampled_nbytes"] / 2 ** 30:.2f} GB)')
    for k, split in enumerate(result.splits):
        print(f'split {k + 1}: mIoU {100 * split["miou"]:.2f} (present classes: {100 * split["miou_present"]:.2f})')
    print('\n' + result.table())
    print(f'mIoU {result.miou_mean:.2f} +- {result.miou_std:.2f} over {len(result.splits)} split(s) '
          f'(absent classes count 0; over present classes: {result.miou_present_mean:.2f})')
    print(f'peak memory {result.peak_rss_gb:.2f} GB (RSS), {result.seconds:.0f} s; pictures in {out / "pictures"}')
    return result.to_dict()


def main(argv=None) -> dict:
    return run_command(__name__, argv)

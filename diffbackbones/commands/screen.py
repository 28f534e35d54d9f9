"""Screen every activation of a diffusion model by the paper's three properties; rank the survivors.

    diffbackbones make-shapes work_dirs/shapes-ddpm --layout ddpm-seg
    diffbackbones screen test_sd_tiny --images work_dirs/shapes-ddpm/real/test --labels work_dirs/shapes-ddpm/real/test --out work_dirs/screen
    diffbackbones screen shapes_sd_tiny --images ... --labels ... --rank work_dirs/shapes-ddpm --validate --out work_dirs/screen-ranked

From Python: ``report = diffbackbones.screen('test_sd_tiny', images, labels=...)``, then
``report.rank(data)`` (a ``Preset``) and ``report.save(folder)``.

Qualitative stage: for ``--n-images`` images (16) under ``--seeds`` noise seeds (4) at the same t, every
activation in the catalog (``--kinds``/``--levels`` filter it) gets DNI (diffusion noise), DNI below and
above a quarter of Nyquist, GI (granularity, cycles per image) and, with label maps, LI (locality); see
``diffbackbones.tasks.screening.properties`` for the exact definitions. Writes ``screen.csv``, ``screen.png``
(each metric along the execution order, coloured by kind, level boundaries marked), ``pca.png`` (the first three
principal components of every activation as RGB, first image) and ``candidates.json`` (the paper's rules
made numeric: increments dropped; DNI > ``--dni-max`` dropped unless LI > ``--li-max`` shows locality;
q/k with LI > ``--li-max`` dropped where a clean activation exists at the same stride).

Quantitative stage (``--rank DATA``, a labelled set in DDPM-seg's or mmseg's layout): each candidate alone
feeds the probe's pixel classifier in a fast setting (``--rank-models`` 1 classifier, ``--rank-epochs`` 2,
``--rank-pixels`` 1000 sampled pixels per training image, the first ``--rank-train`` 30 / ``--rank-test`` 20
images), and ``preset.json`` takes the best ``--k`` (4), at most ``--per-stride`` (2) per stride, as levels
fine to coarse: ``DiffusionBackbone(model, 'preset.json')``, ``timm.create_model(..., activations='preset.json')``
and mmseg's ``backbone=dict(type='DiffusionBackbone', activations='preset.json')`` accept it.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

from .cli import add_model_argument, pretrained_option, resolve_model
from diffbackbones.tasks.screening.screen import check_free, screen
from diffbackbones.utils.outputs import peak_rss_gb
from diffbackbones.models.zoo import get_model_spec
from .base import run_command


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_argument(parser)
    parser.add_argument('--weights', default=None,
                        help="'random', a local diffusers folder or hub id; omit: the zoo's weights (random for test models)")
    parser.add_argument('--images', required=True, help='image folder')
    parser.add_argument('--labels', default=None, help='label maps (same names, .png or .npy) for LI')
    parser.add_argument('--ignore', type=int, default=255)
    parser.add_argument('--n-images', type=int, default=16)
    parser.add_argument('--seeds', type=int, default=4, help='noise seeds per image (>= 2)')
    parser.add_argument('--t', type=int, default=None, help="timestep (default: the model's: 50, or 184 for flow-matching models)")
    parser.add_argument('--prompt', default='')
    parser.add_argument('--image-size', type=int, default=None, help="working size (default: the model's)")
    parser.add_argument('--kinds', default=None, help='comma-separated kinds to screen (default: all)')
    parser.add_argument('--levels', default=None, help='comma-separated name prefixes, e.g. up-level1,up-level2')
    parser.add_argument('--dni-max', type=float, default=0.5)
    parser.add_argument('--li-max', type=float, default=0.05)
    parser.add_argument('--rank', default=None, help='labelled set (DDPM-seg or mmseg layout): rank the candidates')
    parser.add_argument('--rank-models', type=int, default=1)
    parser.add_argument('--rank-epochs', type=int, default=2)
    parser.add_argument('--rank-resolution', type=int, default=128)
    parser.add_argument('--rank-train', type=int, default=30, help='training images used (DDPM-seg: 30)')
    parser.add_argument('--rank-test', type=int, default=20, help='test images used')
    parser.add_argument('--rank-pixels', type=int, default=1000, help='labelled pixels sampled per training image')
    parser.add_argument('--validate', action='store_true',
                        help="with --rank: Spearman of DNI/GI/LI against the probe, and the preset's probe mIoU "
                             "against the best single activation and the model's legacy preset (validation.json)")
    parser.add_argument('--k', type=int, default=4, help='activations in preset.json')
    parser.add_argument('--per-stride', type=int, default=2)
    parser.add_argument('--out', default='work_dirs/screen')
    parser.add_argument('--overwrite', action='store_true', help="replace an earlier screen's files in --out")


def run(args: argparse.Namespace) -> dict:
    resolve_model(args)
    start, out = time.time(), Path(args.out)
    try:
        check_free(out, args.overwrite)  # before the long part
        spec = get_model_spec(args.model)
        options = {} if args.image_size is None else dict(image_size=args.image_size)
        report = screen(args.model, args.images, args.labels, pretrained=pretrained_option(spec, args.weights),
                        n_images=args.n_images, seeds=args.seeds, t=args.t, prompt=args.prompt,
                        kinds=args.kinds.split(',') if args.kinds else None,
                        levels=args.levels.split(',') if args.levels else None, dni_max=args.dni_max,
                        li_max=args.li_max, ignore=args.ignore, progress=True, **options)
        candidates = report.candidates()
        print(f'{args.model}: screened {len(report.rows)} activations on {len(report.images)} images x '
              f'{args.seeds} seeds at t={report.t}')
        print(f'{len(candidates)} of {len(report.rows)} activations survive the rules')
        if args.rank:
            report.rank(args.rank, k=args.k, per_stride=args.per_stride, validate=args.validate,
                        models=args.rank_models, epochs=args.rank_epochs, resolution=args.rank_resolution,
                        n_train=args.rank_train, n_test=args.rank_test, pixels=args.rank_pixels, ignore=args.ignore,
                        progress=True)
        report.save(out, overwrite=True)
    except (ValueError, FileNotFoundError, FileExistsError) as e:
        raise SystemExit(str(e)) from None
    print(f'{out / "screen.csv"}, screen.png, pca.png, candidates.json')
    if report.ranked is not None:
        print(f'{"activation":>48} {"stride":>6} {"mIoU":>7}')
        for r in report.ranked:
            print(f'{r["name"]:>48} {r["stride"]:6d} {r["miou"]:7.2f}')
        print(f'preset.json: {[list(level) for level in report.preset.levels]}')
    if report.validation is not None:
        check = report.validation
        print('Spearman correlation with the probe mIoU over the candidates: ' +
              ', '.join(f'{m.upper()} {v:+.2f}' for m, v in check['spearman'].items()))
        for label, value in check['miou'].items():
            print(f'{label:>28}: probe mIoU {value:.2f}  {check["choices"][label]}')
    peak_gb = peak_rss_gb()
    print(f'{time.time() - start:.0f} s; peak memory {peak_gb:.2f} GB (RSS)')
    return report.to_dict()


def main(argv=None) -> dict:
    return run_command(__name__, argv)

"""Learned vs random diffusion features: one segmentation recipe, run with trained and with random weights.

    python tools/compare.py                                           # every model below, both shapes variants
    python tools/compare.py --models shapes_flux_tiny --variants geometry --iters 100
    python tools/compare.py --models shapes_flux_tiny --weights trained \\
        --activations diffbackbones/models/weights/shapes_flux_tiny/screening/preset.json   # another preset

The demo's recipe (UPerHead + fusion on frozen features, 300 iterations, ``tools/train.py``) on each
shipped model, each with its own config in ``configs/toy/``:

- ``shapes_sd_tiny``: the demo config itself ('practical' activations);
- ``shapes_flux_tiny``: the transformer's 'default' (four mid-depth block outputs) through mmseg's
  MultiLevelNeck;
- ``combined``: both models as one ``CombinedDiffusionBackbone`` (one shared VAE), trained weights only.

For each shapes variant each model's config is trained up to three times, everything else equal: with
the shipped weights (``trained``), with ``pretrained=False`` (the same architecture, seeded random
weights, as is: ``random``), and with random weights whose latents are rescaled to unit variance
(``random-rescaled``, via ``latent_scale``): the trained VAE's scaling factor leaves a random VAE's
latents far smaller than the noise at t, so "random, as is" is handicapped by that as well as by knowing
nothing; "random, rescaled" is the fair baseline. The final validation mIoU of each run is printed in
one table. Logs and checkpoints go to ``<work-dir>/<model>/<variant>-<weights>/``.

``--activations`` (a preset name, a preset file such as the screen's ``preset.json``, or comma-separated
layer ids) replaces the backbone's activations in configs with a neck; the neck's ``in_channels`` follow.
"""
from __future__ import annotations

import argparse
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from diffbackbones.data.shapes import VARIANTS, make_shapes_dataset
from diffbackbones.integrations.mmseg.demo import random_backbone, unit_variance_scale

REPO = Path(__file__).resolve().parents[1]
TOY = REPO / 'configs' / 'toy'
DATA_ROOTS = {'texture': 'data/shapes', 'geometry': 'data/shapes-geometry'}
WEIGHTS = ('trained', 'random', 'random-rescaled')


@dataclass(frozen=True)
class Recipe:
    config: Path
    weights: tuple[str, ...] = WEIGHTS  # the runs it gets (the combined backbone: trained only)


RECIPES = {
    'shapes_sd_tiny': Recipe(TOY / 'upernet_shapes-sd-tiny-practical_1xb8-300_shapes-geometry-128x128.py'),
    'shapes_flux_tiny': Recipe(TOY / 'upernet_shapes-flux-tiny-default_1xb8-300_shapes-geometry-128x128.py'),
    'combined': Recipe(TOY / 'upernet_shapes-sd-flux-tiny-combined_1xb8-300_shapes-geometry-128x128.py', ('trained',)),
}


def activation_options(config: Path, activations: str) -> list[str]:
    """cfg-options that swap the backbone's activations and give the neck the new levels' channels."""
    from mmengine.config import Config

    from diffbackbones.commands.cli import activations_option
    if 'neck' not in Config.fromfile(config).model:
        raise SystemExit(f'--activations needs a config with a neck (it adapts to any levels); {config.name} has none')
    try:
        levels = random_backbone(config, activations_option(activations)).feature_info
    except (ValueError, FileNotFoundError) as e:  # unknown preset or layer id: the backbone's message names the fix
        raise SystemExit(f'--activations {activations}: {e}') from None
    channels = ','.join(str(info['num_chs']) for info in levels)
    return [f'model.backbone.activations={activations}',  # mmengine's DictAction splits a comma list too
            f'model.neck.in_channels=[{channels}]']


def train_once(config: Path, data_root: str, pretrained: bool, iters: int | None, work_dir: Path,
               latent_scale: float | None = None, extra: list[str] = ()) -> float:
    """Train with tools/train.py; returns the last validation mIoU it logged."""
    options = [f'{loader}.dataset.data_root={data_root}' for loader in
               ('train_dataloader', 'val_dataloader', 'test_dataloader')]
    options.append(f'model.backbone.pretrained={pretrained}')
    if latent_scale is not None:
        options.append(f'model.backbone.vae.scale={latent_scale:.6g}')
    if iters is not None:
        options += [f'train_cfg.max_iters={iters}', f'train_cfg.val_interval={iters}',
                    f'default_hooks.checkpoint.interval={iters}', f'param_scheduler.0.end={iters}']
    options += list(extra)
    work_dir.mkdir(parents=True, exist_ok=True)
    log_path = work_dir / 'compare.log'
    with open(log_path, 'w') as log:
        proc = subprocess.run([sys.executable, str(REPO / 'tools' / 'train.py'), str(config), '--work-dir', str(work_dir),
                               '--cfg-options', *options], stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
    text = log_path.read_text()
    if proc.returncode != 0:
        raise SystemExit(f'training failed ({log_path}):\n{text[-3000:]}')
    scores = re.findall(r'Iter\(val\) \[\d+/\d+\].*?mIoU: ([\d.]+)', text)
    if not scores:
        raise SystemExit(f'no validation mIoU in {log_path}')
    return float(scores[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--models', nargs='+', choices=list(RECIPES), default=list(RECIPES))
    parser.add_argument('--variants', nargs='+', choices=VARIANTS, default=['geometry', 'texture'])
    parser.add_argument('--weights', nargs='+', choices=WEIGHTS, default=list(WEIGHTS),
                        help='which runs (a recipe that lacks one skips it)')
    parser.add_argument('--activations', default=None,
                        help="preset name, preset file or comma-separated layer ids (configs with a neck)")
    parser.add_argument('--iters', type=int, default=None, help='training iterations (default: the config\'s)')
    parser.add_argument('--work-dir', type=Path, default=Path('work_dirs/compare'))
    args = parser.parse_args()

    rows = []
    for name in args.models:
        recipe = RECIPES[name]
        extra = activation_options(recipe.config, args.activations) if args.activations else []
        runs = [w for w in recipe.weights if w in args.weights]
        for variant in args.variants:
            data_root = make_shapes_dataset(REPO / DATA_ROOTS[variant], variant=variant)
            scale = unit_variance_scale(recipe.config, data_root) if 'random-rescaled' in runs else None
            scores = {}
            for weights in runs:
                print(f'[compare] {name}, {variant} variant, {weights} weights: training ...', flush=True)
                scores[weights] = train_once(recipe.config, DATA_ROOTS[variant], weights == 'trained', args.iters,
                                             args.work_dir / name / f'{variant}-{weights}',
                                             scale if weights == 'random-rescaled' else None, extra)
                print(f'[compare] {name}, {variant} variant, {weights} weights: val mIoU {scores[weights]:.2f}',
                      flush=True)
            rows.append((name, variant, scale, scores))

    print('\nval mIoU of the demo recipe, trained vs random diffusion weights (everything else equal)'
          + (f'; activations {args.activations}' if args.activations else ''))
    print('(rescaled: random weights with unit-variance latents, x scale; gain: trained - rescaled; -: not run)')
    print(f'{"model":<17} {"variant":<9} {"trained":>8} {"random":>8} {"rescaled":>9} {"scale":>6} {"gain":>7}')
    for name, variant, scale, s in rows:
        cells = [f'{s[w]:.2f}' if w in s else '-' for w in WEIGHTS]
        gain = f'{s["trained"] - s["random-rescaled"]:+.2f}' if {'trained', 'random-rescaled'} <= set(s) else '-'
        print(f'{name:<17} {variant:<9} {cells[0]:>8} {cells[1]:>8} {cells[2]:>9} '
              f'{"x%.2f" % scale if scale else "-":>6} {gain:>7}')


if __name__ == '__main__':
    main()

"""Learned vs random diffusion features: one segmentation recipe, run with trained and with random weights.

    python tools/compare.py                               # the demo config, both shapes variants
    python tools/compare.py --variants geometry --iters 100

For each shapes variant the config is trained with ``tools/train.py`` three times, everything else
equal: with the backbone's pretrained weights (the shipped ``shapes_sd_tiny``), with ``pretrained=False``
(the same architecture, seeded random weights, as is), and with random weights whose latents are
rescaled to unit variance (``latent_scale``): the trained VAE's scaling factor leaves a random VAE's
latents far smaller than the noise at t, so "random, as is" is handicapped by that as well as by
knowing nothing; "random, rescaled" is the fair baseline. The final validation mIoU of each run is
printed side by side. Logs and checkpoints go to ``<work-dir>/<variant>-<weights>/``.
"""
from __future__ import annotations

import argparse
import re
import subprocess
import sys
from pathlib import Path

from diffbackbones.segmentation.shapes import VARIANTS, make_shapes_dataset

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / 'configs' / 'toy' / 'upernet_shapes-sd-tiny-practical_1xb8-300_shapes-geometry-128x128.py'
DATA_ROOTS = {'texture': 'data/shapes', 'geometry': 'data/shapes-geometry'}


def unit_variance_scale(config: Path, data_root: Path, n_images: int = 32) -> float:
    """The ``latent_scale`` that gives the random-weight VAE unit-variance latents on training images."""
    import numpy as np
    import torch
    from mmengine.config import Config
    from PIL import Image

    from diffbackbones import DiffusionBackbone
    from diffbackbones.backbone import pixels_to_input
    settings = Config.fromfile(config).model.backbone
    backbone = DiffusionBackbone(settings.model, settings.activations, pretrained=False)
    paths = sorted((data_root / 'img_dir' / 'train').glob('*.png'))[:n_images]
    pixels = np.stack([np.asarray(Image.open(p).convert('RGB')) for p in paths])
    with torch.no_grad():
        latents = backbone.encode(pixels_to_input(pixels))
    return backbone.vae.scaling_factor / latents.float().std().item()


def train_once(config: Path, data_root: str, pretrained: bool, iters: int | None, work_dir: Path,
               latent_scale: float | None = None) -> float:
    """Train with tools/train.py; returns the last validation mIoU it logged."""
    options = [f'{loader}.dataset.data_root={data_root}' for loader in
               ('train_dataloader', 'val_dataloader', 'test_dataloader')]
    options.append(f'model.backbone.pretrained={pretrained}')
    if latent_scale is not None:
        options.append(f'model.backbone.vae.scale={latent_scale:.6g}')
    if iters is not None:
        options += [f'train_cfg.max_iters={iters}', f'train_cfg.val_interval={iters}',
                    f'default_hooks.checkpoint.interval={iters}', f'param_scheduler.0.end={iters}']
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
    parser.add_argument('--config', type=Path, default=DEMO, help='segmentation config (its backbone must have weights)')
    parser.add_argument('--variants', nargs='+', choices=VARIANTS, default=['geometry', 'texture'])
    parser.add_argument('--iters', type=int, default=None, help='training iterations (default: the config\'s)')
    parser.add_argument('--work-dir', type=Path, default=Path('work_dirs/compare'))
    args = parser.parse_args()

    rows = []
    for variant in args.variants:
        data_root = make_shapes_dataset(REPO / DATA_ROOTS[variant], variant=variant)
        scale = unit_variance_scale(args.config, data_root)
        runs = (('trained', True, None), ('random', False, None), ('random-rescaled', False, scale))
        scores = {}
        for weights, pretrained, latent_scale in runs:
            print(f'[compare] {variant} variant, {weights} weights: training ...', flush=True)
            scores[weights] = train_once(args.config, DATA_ROOTS[variant], pretrained, args.iters,
                                         args.work_dir / f'{variant}-{weights}', latent_scale)
            print(f'[compare] {variant} variant, {weights} weights: val mIoU {scores[weights]:.2f}', flush=True)
        rows.append((variant, scale, scores))

    print(f'\n{args.config.name}: val mIoU, trained vs random diffusion weights (everything else equal)')
    print('(rescaled: random weights with unit-variance latents, x scale; gain: trained - rescaled)')
    print(f'{"variant":<10} {"trained":>8} {"random":>8} {"rescaled":>9} {"scale":>6} {"gain":>7}')
    for variant, scale, s in rows:
        print(f'{variant:<10} {s["trained"]:8.2f} {s["random"]:8.2f} {s["random-rescaled"]:9.2f} '
              f'{"x%.2f" % scale:>6} {s["trained"] - s["random-rescaled"]:+7.2f}')


if __name__ == '__main__':
    main()

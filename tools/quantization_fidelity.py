"""Fidelity of quantized denoisers on the shipped models: features of each format against fp32 on the embedded
shapes set (relative error and cosine per level), and the label-scarce probe's mIoU with each, side by side.

    python tools/quantization_fidelity.py [--models shapes_sd_tiny shapes_flux_tiny] [--formats int8 float8]

The probe is DDPM-seg's protocol (``diffbackbones probe``) on the embedded set in DDPM-seg's layout
(``diffbackbones make-shapes data/shapes-ddpm --layout ddpm-seg``, written if missing).
"""
import argparse
import time
from pathlib import Path

import torch

from diffbackbones import DiffusionBackbone, evaluate_probe
from diffbackbones.data.shapes import make_shapes_dataset
from diffbackbones.tasks.fidelity import feature_fidelity
from diffbackbones.utils.images import read_image


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--models', nargs='+', default=['shapes_sd_tiny', 'shapes_flux_tiny'])
    parser.add_argument('--formats', nargs='+', default=['int8', 'float8'])
    parser.add_argument('--data', default='data/shapes-ddpm')
    parser.add_argument('--probe-models', type=int, default=3, help='classifiers in the probe ensemble')
    args = parser.parse_args(argv)
    start = time.time()
    data = Path(args.data)
    if not (data / 'real').is_dir():   # what `diffbackbones make-shapes DIR --layout ddpm-seg` writes: 30 / 20
        make_shapes_dataset(data, n_train=30, n_val=20, layout='ddpm-seg')
    images = torch.stack([read_image(p) for p in sorted((data / 'real' / 'test').glob('*.png'))])
    batches = images.split(4)
    rows = []
    for model in args.models:
        reference = DiffusionBackbone(model)
        probe = evaluate_probe(model, data, models=args.probe_models)
        rows.append((model, 'fp32', '', '', f'{probe.miou_mean:.2f}'))
        for fmt in args.formats:
            quantized = DiffusionBackbone(model, denoiser=dict(quantization=fmt))
            levels = feature_fidelity(reference, quantized, batches)
            probe = evaluate_probe(model, data, models=args.probe_models, denoiser=dict(quantization=fmt))
            rows.append((model, fmt, ', '.join(f'{100 * level["relative_error"]:.2f}' for level in levels),
                         ', '.join(f'{level["cosine"]:.5f}' for level in levels), f'{probe.miou_mean:.2f}'))
    print('| model | weights | relative error per level (%) | cosine per level | probe mIoU |')
    print('| --- | --- | --- | --- | --- |')
    for row in rows:
        print('| ' + ' | '.join(row) + ' |')
    print(f'{time.time() - start:.0f} s, {len(images)} test images of {data}')


if __name__ == '__main__':
    main()

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
from diffbackbones.models.zoo import MODELS
from diffbackbones.tasks.fidelity import feature_fidelity
from diffbackbones.utils.images import read_image


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--models', nargs='+', default=['shapes_sd_tiny', 'shapes_flux_tiny'])
    parser.add_argument('--formats', nargs='+', default=['int8', 'float8'])
    parser.add_argument('--data', default='data/shapes-ddpm')
    parser.add_argument('--probe-formats', nargs='*', default=['int8'], help='formats the probe also runs on')
    parser.add_argument('--probe', nargs='*', default=None, help='models the probe runs on (default: all)')
    parser.add_argument('--probe-models', type=int, default=1, help='classifiers in the probe ensemble')
    args = parser.parse_args(argv)
    start = time.time()
    data = Path(args.data)
    if not (data / 'real').is_dir():   # what `diffbackbones make-shapes DIR --layout ddpm-seg` writes: 30 / 20
        make_shapes_dataset(data, n_train=30, n_val=20, layout='ddpm-seg')
    images = torch.stack([read_image(p) for p in sorted((data / 'real' / 'test').glob('*.png'))])
    batches = images.split(4)
    print('| model | weights | relative error per level (%) | cosine per level | probe mIoU |')
    print('| --- | --- | --- | --- | --- |', flush=True)
    for model in args.models:
        preset = 'practical' if 'practical' in MODELS[model].presets else 'default'
        reference = DiffusionBackbone(model, preset)
        probed = args.probe is None or model in args.probe
        if probed:
            probe = evaluate_probe(model, data, activations=preset, models=args.probe_models)
            print(f'| {model} | fp32 | | | {probe.miou_mean:.2f} |', flush=True)
        for fmt in args.formats:
            quantized = DiffusionBackbone(model, preset, denoiser=dict(quantization=fmt))
            levels = feature_fidelity(reference, quantized, batches)
            miou = ''
            if probed and fmt in args.probe_formats:
                result = evaluate_probe(model, data, activations=preset, models=args.probe_models,
                                        denoiser=dict(quantization=fmt))
                miou = f'{result.miou_mean:.2f}'
            print(f'| {model} | {fmt} | ' + ', '.join(f'{100 * level["relative_error"]:.2f}' for level in levels) +
                  ' | ' + ', '.join(f'{level["cosine"]:.5f}' for level in levels) + f' | {miou} |', flush=True)
    print(f'{time.time() - start:.0f} s, {len(images)} test images of {data}')


if __name__ == '__main__':
    main()

"""Memory of the label-scarce probe at the paper's size, against materialising the upsampled features.

    python tools/benchmark_probe.py                       # Horse-21-sized: 30 train / 30 test, SD1.5 practical

The probe keeps each image's levels at their native grid and upsamples only the pixels a batch needs.
This measures that phase alone at real size without weights or data: levels of the exact shapes
SD1.5's ``practical`` preset gives at its 512 px working size (from the catalog, on the meta device),
filled with random values; a capped number of ensemble steps (memory does not grow with steps) and a
full prediction of every test image. It prints the peak RSS and what full upsampling would need. The
backbone itself runs before this phase and is released (``evaluate_probe`` deletes it), so a run's
peak is the larger of this and the backbone's own (printed from its parameter count).
"""
import argparse
import resource

import torch
from tqdm import tqdm

from diffbackbones import DiffusionBackbone
from diffbackbones.tasks.label_scarce.pixel_classifier import PixelFeatures, predict, train_ensemble


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--model', default='sd15')
    parser.add_argument('--activations', default='practical')
    parser.add_argument('--image-size', type=int, default=512)
    parser.add_argument('--train', type=int, default=30)
    parser.add_argument('--test', type=int, default=30)
    parser.add_argument('--resolution', type=int, default=256)
    parser.add_argument('--classes', type=int, default=21)
    parser.add_argument('--models', type=int, default=10)
    parser.add_argument('--steps', type=int, default=200, help='ensemble steps (memory does not grow with them)')
    args = parser.parse_args()

    with torch.device('meta'):  # shapes only: the real architecture, no weights
        backbone = DiffusionBackbone(args.model, args.activations, pretrained=False, image_size=args.image_size,
                                     resize_features=False)
    params = sum(p.numel() for p in backbone.parameters())
    shapes = [(info['num_chs'], -(-args.image_size // info['reduction']), -(-args.image_size // info['reduction']))
              for info in backbone.feature_info]  # the working grid the probe keeps
    del backbone
    n = args.train + args.test
    features = PixelFeatures([torch.randn(n, *shape) for shape in shapes], (args.resolution, args.resolution))
    full_gb = n * args.resolution ** 2 * features.channels * 4 / 2 ** 30
    generator = torch.Generator().manual_seed(0)
    labels = torch.randint(0, args.classes, (args.train, args.resolution, args.resolution), generator=generator)
    ys, xs = torch.meshgrid(torch.arange(args.resolution), torch.arange(args.resolution), indexing='ij')
    pixels = torch.cat([torch.stack([torch.full((ys.numel(),), i), ys.flatten(), xs.flatten()], 1)
                        for i in range(args.train)])
    models, _ = train_ensemble(features, pixels, labels.flatten(), args.classes, seeds=range(args.models),
                               max_iters=args.steps, progress=lambda total: tqdm(total=total, leave=False))
    for i in tqdm(range(args.train, n), desc='predict', leave=False):
        predict(models, features, i)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20
    print(f'{args.model} {args.activations} at {args.image_size} px: levels {shapes}, {features.channels} channels')
    print(f'{args.train} train + {args.test} test images, {args.models} classifiers, {args.steps} steps, prediction '
          f'of every test pixel')
    print(f'features kept at native grids: {features.nbytes / 2 ** 30:.2f} GB; upsampled in full: {full_gb:.1f} GB')
    print(f'peak RSS of the probe phase: {peak:.2f} GB ({peak / full_gb:.3f}x of full upsampling)')
    print(f'the backbone, run and released before it: {params / 1e9:.2f} B parameters = '
          f'{params * 4 / 2 ** 30:.2f} GB fp32, {params * 2 / 2 ** 30:.2f} GB fp16')


if __name__ == '__main__':
    main()

"""Label-scarce segmentation with a diffusion backbone: DDPM-seg's pixel-classifier protocol.

    python tools/make_shapes.py data/shapes-ddpm --layout ddpm-seg        # the embedded set, 30 / 20
    python tools/probe.py --model test_sd_tiny --data data/shapes-ddpm      # prints the table, writes pictures

Data: ``ROOT/real/{train,test}/`` (images with same-name ``.npy`` label maps, DDPM-seg's layout) or
mmseg's ``img_dir/``/``ann_dir/``. Images are resized to ``--resolution`` (256), scaled to [-1, 1]; the
backbone runs at its working size (``--image-size``, the model's own by default) and its levels, kept on
that grid, are upsampled bilinearly to 256 x 256 per sampled pixel (never as whole maps). An ensemble
of ``--models`` (10) MLPs is trained on the labelled training pixels (classes of 1-19 pixels in an image
are ignored), Adam 1e-3, batches of 64, at most 100 epochs with the original's early stop; each
predicts by argmax, the ensemble by majority vote; mIoU over all classes but the ignore label, absent
classes counting 0 (also printed over present classes). ``--splits 5`` pools train and test and
redraws splits of the same sizes (seeds ``--seed`` + k), reporting mean +- std.

The paper's targets (Horse-21, 30 labelled images; Meng et al. 2024, Table 2), given the data in
``data/horse21`` (DDPM-seg's release) and the weights:

    Ours-v1.5    60.2 +- 0.9   python tools/probe.py --model sd15 --activations practical --t 51 --data data/horse21 --prompt "a photo of a horse" --splits 5
    Ours-XL      62.7 +- 0.7   python tools/probe.py --model sdxl --activations practical --data data/horse21 --prompt "a photo of a horse" --splits 5
    Legacy-v1.5  59.4 +- 1.3   python tools/probe.py --model sd15 --activations legacy --t 51 --data data/horse21 --prompt "a photo of a horse" --splits 5
    DDPM         65.0          (the DDPM-seg baseline; not a model of this package)
"""
import argparse
import json
import resource
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from diffbackbones import DiffusionBackbone, get_model_spec
from diffbackbones.cli import activations_option, pretrained_option
from diffbackbones.probe import (PixelFeatures, clean_labels, compute_iou, extract_levels, find_split, load_pair,
                                 predict, redraw_split, train_ensemble)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--model', required=True, help='zoo name (sd15, sdxl, shapes_sd_tiny, test_sd_tiny, ...)')
    parser.add_argument('--activations', default='practical', help='preset name or comma-separated layer ids')
    parser.add_argument('--data', required=True, help='dataset root (DDPM-seg or mmseg layout)')
    parser.add_argument('--weights', default=None,
                        help="'random', a local diffusers folder, or omit: the zoo's weights (random for test models)")
    parser.add_argument('--t', type=int, default=None, help="timestep (default: the model's: 50, or 184 for flow-matching models)")
    parser.add_argument('--prompt', default='')
    parser.add_argument('--image-size', type=int, default=None, help="backbone working size (default: the model's)")
    parser.add_argument('--resolution', type=int, default=256, help='label resolution features are upsampled to')
    parser.add_argument('--dtype', default='fp32')
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
    return parser.parse_args(argv)


def build_backbone(args) -> DiffusionBackbone:
    spec = get_model_spec(args.model)
    return DiffusionBackbone(args.model, activations_option(args.activations),
                             pretrained=pretrained_option(spec, args.weights), t=args.t, prompt=args.prompt,
                             image_size=args.image_size or spec.image_size, resize_features=False,
                             dtype=args.dtype)


def palette(n: int) -> np.ndarray:
    rng = np.random.default_rng(0)
    colours = rng.integers(40, 256, (max(n, 1), 3)).astype(np.uint8)
    colours[0] = 0
    return colours


def draw(path: Path, image: torch.Tensor, label: torch.Tensor, pred: torch.Tensor, n_classes: int, ignore: int):
    colours = palette(n_classes)

    def colourise(m):
        m = m.numpy()
        out = colours[np.clip(m, 0, n_classes - 1)]
        out[m == ignore] = 255
        return out
    rgb = ((image.permute(1, 2, 0) + 1) * 127.5).clamp(0, 255).byte().numpy()
    Image.fromarray(np.concatenate([rgb, colourise(label), colourise(pred)], axis=1)).save(path)


def main(argv=None) -> dict:
    args = parse_args(argv)
    start = time.time()
    out = Path(args.out)
    if (out / 'probe.json').exists() and not args.overwrite:
        raise SystemExit(f'{out / "probe.json"} holds an earlier run; choose another --out or pass --overwrite.')
    out.mkdir(parents=True, exist_ok=True)
    published = {split: find_split(args.data, split) for split in ('train', 'test')}
    pairs = published['train'] + published['test']
    loaded = [load_pair(image, label, args.resolution) for image, label in tqdm(pairs, desc='load', leave=False)]
    images = [image for image, _ in loaded]
    labels = [label for _, label in loaded]
    labelled = [lbl[lbl != args.ignore] for lbl in labels]
    n_classes = args.num_classes or 1 + max(int(lbl.max()) for lbl in labelled if lbl.numel())

    backbone = build_backbone(args)
    settings = dict(vars(args), levels=[list(level) for level in backbone.levels],
                    channels=[i['num_chs'] for i in backbone.feature_info], n_classes=n_classes)
    levels = extract_levels(backbone, images, progress=lambda r: tqdm(r, desc='features', leave=False))
    del backbone  # the classifiers need only the features
    features = PixelFeatures(levels, (args.resolution, args.resolution))
    n_train = len(published['train'])
    print(f'features: {features.channels} channels per pixel from levels '
          f'{[tuple(level.shape[1:]) for level in levels]}; kept at native grids: {features.nbytes / 2 ** 20:.1f} MB '
          f'(upsampled in full: {len(images) * args.resolution ** 2 * features.channels * 4 / 2 ** 30:.2f} GB)')

    results = []
    for k in range(args.splits):
        seed = args.seed + k
        train_ids, test_ids = (list(range(n_train)), list(range(n_train, len(pairs)))) if args.splits == 1 \
            else redraw_split(n_train, len(pairs) - n_train, seed)
        rows = []
        for n in train_ids:
            label = clean_labels(labels[n], args.ignore)
            ys, xs = torch.nonzero(label != args.ignore, as_tuple=True)
            rows.append((torch.stack([torch.full_like(ys, n), ys, xs], 1), label[ys, xs]))
        pixels, targets = torch.cat([r[0] for r in rows]), torch.cat([r[1] for r in rows])
        models, logs = train_ensemble(features, pixels, targets, n_classes,
                                      seeds=[seed * 1000 + m for m in range(args.models)],
                                      max_epochs=args.max_epochs, batch_size=args.batch_size,
                                      progress=lambda total: tqdm(total=total, desc=f'split {k + 1}/{args.splits}: '
                                                                  f'{args.models} classifiers', leave=False))
        preds = [predict(models, features, n) for n in tqdm(test_ids, desc='predict', leave=False)]
        iou = compute_iou(preds, [labels[n] for n in test_ids], n_classes, args.ignore)
        if k == 0:
            pictures = out / 'pictures'
            pictures.mkdir(exist_ok=True)
            for n, pred in list(zip(test_ids, preds))[:args.pictures]:
                name = f'{pairs[n][0].parent.name}-{pairs[n][0].stem}.png'
                draw(pictures / name, images[n], labels[n], pred, n_classes, args.ignore)
        results.append(dict(seed=seed, train=[str(pairs[n][0]) for n in train_ids],
                            test=[str(pairs[n][0]) for n in test_ids], classifiers=logs, **iou))
        print(f'split {k + 1}: mIoU {100 * iou["miou"]:.2f} (present classes: {100 * iou["miou_present"]:.2f})')

    mious = [100 * r['miou'] for r in results]
    summary = dict(miou_mean=statistics.mean(mious), miou_std=statistics.stdev(mious) if len(mious) > 1 else 0.0,
                   miou_present_mean=statistics.mean(100 * r['miou_present'] for r in results))
    print(f'\n{"class":>10} ' + ' '.join(f'{f"split {k + 1}":>8}' for k in range(len(results))))
    for c in results[0]['iou']:
        print(f'{c:>10} ' + ' '.join(f'{100 * r["iou"][c]:8.2f}' for r in results))
    print(f'{"mIoU":>10} ' + ' '.join(f'{m:8.2f}' for m in mious))
    print(f'mIoU {summary["miou_mean"]:.2f} +- {summary["miou_std"]:.2f} over {len(results)} split(s) '
          f'(absent classes count 0; over present classes: {summary["miou_present_mean"]:.2f})')
    peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20
    elapsed = time.time() - start
    print(f'peak memory {peak_gb:.2f} GB (RSS), {elapsed:.0f} s; pictures in {out / "pictures"}')
    report = dict(settings=settings, splits=results, **summary, peak_rss_gb=peak_gb, seconds=elapsed)
    (out / 'probe.json').write_text(json.dumps(report, indent=1, default=str))
    return report


if __name__ == '__main__':
    main(sys.argv[1:])

"""How much shape a frozen backbone's features carry: a plain linear pixel probe, trained vs random weights.

    python tools/linear_probe.py                                  # shapes_sd_tiny, shipped vs random, 128 and 256 px
    python tools/linear_probe.py --weights work_dirs/tiny         # a model trained by tools/train_diffusion.py

The probe, kept deliberately plain so it measures the features and not the head: the geometry variant of
the shapes set (only the outline names the class), ``--train`` / ``--test`` images rendered with fixed
seeds (128 px, bilinearly resized to each of ``--sizes``); the backbone's levels, each bilinearly resized to the
finest level's grid and concatenated; every channel standardised with the training features' mean and
std; one linear layer (a 1x1 convolution) whose logits are bilinearly upsampled to the label map;
class-weighted cross-entropy (weights: inverse class frequency of the training pixels), full-batch Adam.
mIoU over the four classes on the test pixels at full resolution. Same seeds for every backbone, so two
runs differ only in the diffusion weights.
"""
from __future__ import annotations

import argparse
import json

import numpy as np
import torch
import torch.nn.functional as F

from diffbackbones import DiffusionBackbone
from diffbackbones.backbone.diffusion_backbone import pixels_to_input
from diffbackbones.tasks.label_scarce.pixel_classifier import compute_iou
from diffbackbones.data.shapes import SHAPES_CLASSES, render_sample

N_CLASSES = len(SHAPES_CLASSES)


def shapes_split(n: int, seed: int, size: int = 128, variant: str = 'geometry') -> tuple[torch.Tensor, torch.Tensor]:
    """(n, 3, size, size) images in [-1, 1] and (n, size, size) labels, rendered at 128 px and resized."""
    rng = np.random.default_rng(seed)
    images, labels = zip(*(render_sample(rng, 128, variant) for _ in range(n)))
    images, labels = pixels_to_input(np.stack(images)), torch.from_numpy(np.stack(labels)).long()
    if size != 128:
        images = F.interpolate(images, size=(size, size), mode='bilinear', align_corners=False)
        labels = F.interpolate(labels[:, None].float(), size=(size, size), mode='nearest')[:, 0].long()
    return images, labels


@torch.no_grad()
def pyramid_features(backbone: DiffusionBackbone, images: torch.Tensor, batch: int = 16) -> torch.Tensor:
    """Every level resized to the finest level's grid and concatenated: (N, C, h, w), float32."""
    chunks = []
    for i in range(0, len(images), batch):
        levels = backbone(images[i:i + batch])
        size = levels[0].shape[-2:]
        chunks.append(torch.cat([F.interpolate(f.float(), size=size, mode='bilinear', align_corners=False)
                                 for f in levels], 1))
    return torch.cat(chunks)


def linear_probe_miou(train_features: torch.Tensor, train_labels: torch.Tensor, test_features: torch.Tensor,
                      test_labels: torch.Tensor, steps: int = 300, lr: float = 0.02, seed: int = 0) -> dict:
    """Train the probe on the training features and return per-class IoU and mIoU (percent) on the test set."""
    mean = train_features.mean((0, 2, 3), keepdim=True)
    std = train_features.std((0, 2, 3), keepdim=True) + 1e-6
    x_train, x_test = (train_features - mean) / std, (test_features - mean) / std
    counts = torch.bincount(train_labels.flatten(), minlength=N_CLASSES).float()
    weight = counts.sum() / (N_CLASSES * counts.clamp(min=1))
    torch.manual_seed(seed)
    head = torch.nn.Conv2d(x_train.shape[1], N_CLASSES, 1)
    optimizer = torch.optim.Adam(head.parameters(), lr=lr)
    size = train_labels.shape[-2:]
    for _ in range(steps):
        logits = F.interpolate(head(x_train), size=size, mode='bilinear', align_corners=False)
        loss = F.cross_entropy(logits, train_labels, weight=weight)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        pred = F.interpolate(head(x_test), size=test_labels.shape[-2:], mode='bilinear', align_corners=False).argmax(1)
    scores = compute_iou(pred, test_labels, N_CLASSES)  # over every test pixel; an absent class counts 0
    return dict(miou=100 * scores['miou'], iou={name: 100 * scores['iou'][c] for c, name in enumerate(SHAPES_CLASSES)})


@torch.no_grad()
def latent_features(backbone: DiffusionBackbone, images: torch.Tensor) -> torch.Tensor:
    """The VAE's latents with each cell's 3x3 neighbourhood: what the denoiser is given to work from."""
    latents = backbone.encode(images).float()
    n, c, h, w = latents.shape
    return F.unfold(latents, 3, padding=1).reshape(n, c * 9, h, w)


FEATURES = {'levels': pyramid_features, 'latents': latent_features}


def probe_backbone(backbone: DiffusionBackbone, train, test, features: str = 'levels', **kwargs) -> dict:
    read = FEATURES[features]
    return linear_probe_miou(read(backbone, train[0]), train[1], read(backbone, test[0]), test[1], **kwargs)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--model', default='shapes_sd_tiny')
    parser.add_argument('--weights', default=None, help='a diffusers folder; default: the shipped weights')
    parser.add_argument('--activations', default='practical')
    parser.add_argument('--sizes', default='128,256', help='input sizes, comma-separated')
    parser.add_argument('--t', type=int, default=None, help="timestep (default: the model's)")
    parser.add_argument('--train', type=int, default=64, help='training images')
    parser.add_argument('--test', type=int, default=32, help='test images')
    parser.add_argument('--variant', default='geometry')
    parser.add_argument('--features', choices=sorted(FEATURES), default='levels',
                        help="levels: the backbone's output; latents: the VAE latents (3x3 neighbourhoods), a diagnostic")
    args = parser.parse_args(argv)

    extra = {} if args.t is None else {'t': args.t}
    weights = {'trained': args.weights or True, 'random': False}
    results = {}
    for size in [int(s) for s in args.sizes.split(',')]:
        train = shapes_split(args.train, 2000, size, args.variant)
        test = shapes_split(args.test, 3000, size, args.variant)
        for name, pretrained in weights.items():
            backbone = DiffusionBackbone(args.model, args.activations, pretrained=pretrained, image_size=None, **extra)
            results[f'{name}@{size}'] = probe_backbone(backbone, train, test, args.features)
        trained, random = results[f'trained@{size}']['miou'], results[f'random@{size}']['miou']
        print(f'{size} px: linear probe mIoU trained {trained:.1f}, random {random:.1f}, margin {trained - random:+.1f}  '
              + ' '.join(f'{c} {v:.1f}' for c, v in results[f'trained@{size}']['iou'].items()), flush=True)
    print(json.dumps(results))
    return results


if __name__ == '__main__':
    main()

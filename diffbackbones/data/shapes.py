""""shapes": a small, deterministic synthetic segmentation set, embedded so demos and tests need no download.

Each 128 px image shows one to three shapes (circle, square, triangle) on a textured background. Two
variants:

- ``texture`` (the default): every class has its own texture (stripes, checkerboard, dots) and hue
  range, with random colour jitter, so both texture and shape carry the label;
- ``geometry``: the same shapes, but each region's texture family and hue are drawn independently of
  its class, so no per-pixel colour or texture rule segments it: only the outline names the class.

Written in mmseg's layout:

    root/img_dir/{train,val}/00000.png      RGB
    root/ann_dir/{train,val}/00000.png      uint8 labels 0..3

or in DDPM-seg's (the label-scarce protocol of ``diffbackbones.tasks.label_scarce.pixel_classifier``;
30 train / 20 test):

    root/real/{train,test}/00000.png        RGB
    root/real/{train,test}/00000.npy        uint8 labels 0..3

    python tools/make_shapes.py data/shapes [--variant geometry] [--layout ddpm-seg]
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

__all__ = ['SHAPES_CLASSES', 'SHAPES_PALETTE', 'VARIANTS', 'LAYOUTS', 'make_shapes_dataset', 'render_sample',
           'render_instances']

SHAPES_CLASSES = ('background', 'circle', 'square', 'triangle')
SHAPES_PALETTE = [[0, 0, 0], [220, 60, 60], [60, 200, 60], [60, 90, 230]]
# Base hue (RGB) of each class; instances jitter around it.
_CLASS_RGB = np.array([[120, 110, 90], [200, 70, 60], [70, 170, 80], [70, 90, 200]], dtype=np.float32)
VARIANTS = ('texture', 'geometry')
LAYOUTS = ('mmseg', 'ddpm-seg')


def _texture(kind: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """A (size, size) pattern in [0, 1]; one family per class, random phase and period."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    period = rng.uniform(5, 9)
    phase = rng.uniform(0, 2 * np.pi)
    if kind == 0:    # background: smooth blotches plus fine noise
        blotch = sum(np.sin(xx / rng.uniform(8, 20) + rng.uniform(0, 6)) * np.sin(yy / rng.uniform(8, 20) + rng.uniform(0, 6))
                     for _ in range(2)) / 2
        return 0.5 + 0.3 * blotch + 0.1 * rng.standard_normal((size, size))
    if kind == 1:    # circles: horizontal stripes
        return 0.5 + 0.5 * np.sign(np.sin(2 * np.pi * yy / period + phase))
    if kind == 2:    # squares: checkerboard
        return 0.5 + 0.5 * np.sign(np.sin(2 * np.pi * xx / period + phase) * np.sin(2 * np.pi * yy / period))
    # triangles: dots
    return (np.sin(2 * np.pi * xx / period + phase) * np.sin(2 * np.pi * yy / period) > 0.5).astype(np.float32)


def _mask(kind: int, size: int, rng: np.random.Generator) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    r = rng.uniform(size * 0.12, size * 0.25)
    cy, cx = rng.uniform(r, size - r, 2)
    if kind == 1:
        return (yy - cy) ** 2 + (xx - cx) ** 2 <= r ** 2
    if kind == 2:
        return (np.abs(yy - cy) <= r * 0.85) & (np.abs(xx - cx) <= r * 0.85)
    # upward triangle: inside three half-planes
    top, base = cy - r, cy + r * 0.8
    half_width = (yy - top) / (base - top) * r
    return (yy >= top) & (yy <= base) & (np.abs(xx - cx) <= half_width)


def _appearance(kind: int, geometry: bool, rng: np.random.Generator) -> int:
    """The texture family and hue a region of class ``kind`` is drawn with."""
    return int(rng.integers(0, 4)) if geometry else kind


def render_sample(rng: np.random.Generator, size: int = 128, variant: str = 'texture') -> tuple[np.ndarray, np.ndarray]:
    """One (H, W, 3) uint8 image and its (H, W) uint8 label map."""
    image, label, _ = render_instances(rng, size, variant)
    return image, label


def render_instances(rng: np.random.Generator, size: int = 128,
                     variant: str = 'texture') -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``render_sample``'s image and label map (the same draws), and the (H, W) uint8 instance map: 0 the
    background, k the k-th shape drawn where it is visible (a later shape hides an earlier one)."""
    if variant not in VARIANTS:
        raise ValueError(f'variant must be one of {VARIANTS}; got {variant!r}')
    geometry = variant == 'geometry'
    label, instances = np.zeros((size, size), np.uint8), np.zeros((size, size), np.uint8)
    look = _appearance(0, geometry, rng)
    colour = _CLASS_RGB[look] + rng.uniform(-25, 25, 3)
    if geometry:  # the background wears any family's texture, as the shapes do
        image = (0.45 + 0.55 * _texture(look, size, rng)[..., None]) * colour
    else:
        image = _texture(0, size, rng)[..., None] * colour * 1.2
    for number in range(1, int(rng.integers(1, 4)) + 1):
        kind = int(rng.integers(1, 4))
        mask = _mask(kind, size, rng)
        look = _appearance(kind, geometry, rng)
        colour = _CLASS_RGB[look] + rng.uniform(-30, 30, 3)
        pattern = 0.45 + 0.55 * _texture(look, size, rng)[..., None]
        image = np.where(mask[..., None], pattern * colour, image)
        label[mask], instances[mask] = kind, number
    return np.clip(image, 0, 255).astype(np.uint8), label, instances


def make_shapes_dataset(root: str | Path, n_train: int = 200, n_val: int = 50, size: int = 128,
                        seed: int = 0, variant: str = 'texture', layout: str = 'mmseg') -> Path:
    """Write the set under ``root`` (idempotent: an existing complete set is left as is).

    ``layout='ddpm-seg'`` writes ``real/{train,test}`` with ``.npy`` labels; ``n_val`` is then the test split.
    """
    if layout not in LAYOUTS:
        raise ValueError(f'layout must be one of {LAYOUTS}; got {layout!r}')
    root = Path(root)
    for split, count, split_seed in (('train', n_train, seed), ('val', n_val, seed + 1)):
        if layout == 'mmseg':
            img_dir, ann_dir, label_suffix = root / 'img_dir' / split, root / 'ann_dir' / split, '.png'
        else:
            img_dir = ann_dir = root / 'real' / ('test' if split == 'val' else split)
            label_suffix = '.npy'
        if img_dir.is_dir() and len(list(img_dir.glob('*.png'))) == count and \
                len(list(ann_dir.glob(f'*{label_suffix}'))) == count:
            continue
        img_dir.mkdir(parents=True, exist_ok=True)
        ann_dir.mkdir(parents=True, exist_ok=True)
        rng = np.random.default_rng(split_seed)
        for i in range(count):
            image, label = render_sample(rng, size, variant)
            Image.fromarray(image).save(img_dir / f'{i:05d}.png')
            if layout == 'mmseg':
                Image.fromarray(label).save(ann_dir / f'{i:05d}.png')
            else:
                np.save(ann_dir / f'{i:05d}.npy', label)
    return root

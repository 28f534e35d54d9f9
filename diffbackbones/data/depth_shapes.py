""""shapes-depth": a small, deterministic synthetic depth-estimation set in NYU Depth v2's on-disk format.

Each 128 px image is a pinhole camera's view, from ``h`` = 1.0-1.6 m above a flat ground, tilted down by
8-16 degrees (focal length 0.9 x the image size, principal point at the centre):

- the **ground plane**: camera row ``y`` (pixels below the principal point) meets it at z-depth
  ``h / (sin(tilt) + y / f * cos(tilt))``, so depth grows toward the horizon; it wears a checkerboard laid
  out in ground coordinates (0.5 m squares), which shrinks toward the horizon (a perspective cue);
- a **back wall**, a fronto-parallel plane at the scene category's depth, which bounds everything:
  ``bedroom``: 3.5-6 m, ``classroom``: 7-9.8 m (so no depth reaches VPDDepthHead's ``max_depth=10``);
- **one to four objects** (circle, square, triangle silhouettes with ``shapes.py``'s textures) standing on
  the ground at random depths between the nearest visible ground and the wall: their image size is
  ``f * S / z`` for a world size ``S`` of 0.4-1.2 m and their base sits on the ground row of their depth
  ``z``; they are drawn far to near, so nearer objects occlude farther ones. An object's depth is ``z``
  (circles bulge toward the camera by up to a tenth of their radius).

Depths are z-depths (distance along the optical axis, as NYU's are); every pixel has one in (0.3, 10) m.
Colours darken mildly with distance. Sample categories alternate ``bedroom``, ``classroom``, ... : two of
NYU's own scene classes, so mmseg's ``NYUDataset`` reads the set unchanged and gives each image the category
id VPD's per-image class context (``class_embed_select``) selects with.

Written in mmseg's ``NYUDataset`` layout (the category is the file name before ``_<digits>``):

    root/images/{train,test}/bedroom_00000.jpg         RGB JPEG (quality 95)
    root/annotations/{train,test}/bedroom_00000.png    16-bit PNG, depth in millimetres

so ``LoadDepthAnnotation(depth_rescale_factor=1e-3)`` yields metres.

    diffbackbones make-shapes data/shapes-depth --task depth [--train 200] [--val 50]
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from .shapes import _texture

__all__ = ['SHAPES_DEPTH_CATEGORIES', 'CATEGORY_DEPTH_RANGES', 'MAX_DEPTH', 'make_depth_dataset',
           'render_depth_sample', 'render_depth_scene']

SHAPES_DEPTH_CATEGORIES = ('bedroom', 'classroom')
# Depth (m) of the back wall per category: it bounds every depth in the scene.
CATEGORY_DEPTH_RANGES = {'bedroom': (3.5, 6.0), 'classroom': (7.0, 9.8)}
MAX_DEPTH = 10.0
_FOCAL = 0.9            # focal length, in units of the image size
_CHECKER = 0.5          # ground checkerboard square, metres
_GROUND_RGB = np.array([150, 130, 100], np.float32)
_WALL_RGB = np.array([170, 175, 185], np.float32)
_OBJECT_RGB = np.array([[200, 70, 60], [70, 170, 80], [70, 90, 200]], np.float32)


def _shade(depth: np.ndarray) -> np.ndarray:
    """Mild darkening with distance: 1 at the camera, ~0.6 at 10 m."""
    return (1.0 - 0.04 * depth)[..., None]


def render_depth_scene(rng: np.random.Generator, size: int = 128, category: str = 'bedroom') -> dict:
    """One scene: ``image`` (H, W, 3) uint8, ``depth`` (H, W) float32 metres, and how it was built.

    Also returned: ``camera`` (height, tilt in radians, focal in pixels, horizon row), ``wall_depth``,
    ``ground`` (bool mask of visible ground pixels before objects) and ``objects``: a list, far to near, of
    dicts with ``kind`` (1 circle, 2 square, 3 triangle), ``depth`` (m), ``mask`` (its full silhouette,
    occluded or not) and ``visible`` (the pixels it shows in the final image).
    """
    if category not in CATEGORY_DEPTH_RANGES:
        raise ValueError(f'category must be one of {SHAPES_DEPTH_CATEGORIES}; got {category!r}')
    height = rng.uniform(1.0, 1.6)
    tilt = np.deg2rad(rng.uniform(8.0, 16.0))
    focal = _FOCAL * size
    wall = rng.uniform(*CATEGORY_DEPTH_RANGES[category])
    centre = (size - 1) / 2
    y = (np.arange(size, dtype=np.float64) - centre) / focal          # normalised image row, down positive
    x = (np.arange(size, dtype=np.float64) - centre) / focal
    denom = np.sin(tilt) + y * np.cos(tilt)                            # > 0 below the horizon
    with np.errstate(divide='ignore'):
        ground_z = np.where(denom > 0, height / np.where(denom > 0, denom, 1.0), np.inf)
    ground_rows = ground_z < wall
    depth_rows = np.where(ground_rows, ground_z, wall)
    depth = np.repeat(depth_rows[:, None], size, axis=1)
    ground = np.repeat(ground_rows[:, None], size, axis=1)

    # Ground: checkerboard in world coordinates (X right, Z forward along the ground).
    zz = np.repeat(np.where(ground_rows, ground_z, 0.0)[:, None], size, axis=1)
    world_x = x[None, :] * zz
    world_z = (np.cos(tilt) - y * np.sin(tilt))[:, None] * zz
    offset_x, offset_z = rng.uniform(0, 2 * _CHECKER, 2)
    checker = (np.floor((world_x + offset_x) / _CHECKER) + np.floor((world_z + offset_z) / _CHECKER)) % 2
    # Fade the checker toward the horizon, where squares get smaller than a pixel (avoids aliasing).
    square_px = _CHECKER * focal * denom[:, None] ** 2 / height       # approx. rows per square at that row
    contrast = np.clip((square_px - 1.0) / 3.0, 0.0, 1.0) * 0.35
    ground_rgb = _GROUND_RGB + rng.uniform(-30, 30, 3)
    ground_img = (0.8 + contrast * (2 * checker - 1))[..., None] * ground_rgb
    wall_rgb = _WALL_RGB + rng.uniform(-40, 40, 3)
    wall_img = (0.55 + 0.45 * _texture(0, size, rng))[..., None] * wall_rgb
    image = np.where(ground[..., None], ground_img, wall_img)

    # Objects: nearest allowed depth is the ground at the bottom row (so the base is in view).
    near = max(float(ground_z[-1]), 0.5) + 0.1
    far = wall - 0.3
    rows, cols = np.mgrid[0:size, 0:size].astype(np.float64)
    objects = []
    for _ in range(int(rng.integers(1, 5))):
        kind = int(rng.integers(1, 4))
        z = rng.uniform(near, far)
        world_size = rng.uniform(0.4, 1.2)
        radius = focal * world_size / z / 2                          # half the image size, pixels
        base = centre + focal * (height / z - np.sin(tilt)) / np.cos(tilt)  # ground row at depth z
        cx = rng.uniform(-radius * 0.5, size - 1 + radius * 0.5)
        if kind == 1:
            cy = base - radius
            r2 = ((rows - cy) ** 2 + (cols - cx) ** 2) / radius ** 2
            mask = r2 <= 1
            obj_depth = z - 0.1 * world_size / 2 * np.sqrt(np.clip(1 - r2, 0, 1))
        elif kind == 2:
            half = radius * 0.85
            mask = (rows <= base) & (rows >= base - 2 * half) & (np.abs(cols - cx) <= half)
            obj_depth = np.full((size, size), z)
        else:
            top = base - 2 * radius
            half_width = (rows - top) / (base - top) * radius
            mask = (rows >= top) & (rows <= base) & (np.abs(cols - cx) <= half_width)
            obj_depth = np.full((size, size), z)
        colour = _OBJECT_RGB[kind - 1] + rng.uniform(-35, 35, 3)
        pattern = 0.45 + 0.55 * _texture(kind, size, rng)
        objects.append(dict(kind=kind, depth=float(z), mask=mask, _depth=obj_depth, _img=pattern[..., None] * colour))

    objects.sort(key=lambda o: -o['depth'])                           # far to near: painter's algorithm
    for obj in objects:
        mask = obj['mask']
        depth = np.where(mask, obj.pop('_depth'), depth)
        image = np.where(mask[..., None], obj.pop('_img'), image)
    owner = np.full((size, size), -1)
    for i, obj in enumerate(objects):
        owner[obj['mask']] = i
    for i, obj in enumerate(objects):
        obj['visible'] = owner == i

    image = np.clip(image * _shade(depth), 0, 255).astype(np.uint8)
    depth = depth.astype(np.float32)
    horizon = centre - focal * np.tan(tilt)
    return dict(image=image, depth=depth, category=category, wall_depth=float(wall), ground=ground,
                objects=objects, camera=dict(height=float(height), tilt=float(tilt), focal=float(focal),
                                             horizon_row=float(horizon)))


def render_depth_sample(rng: np.random.Generator, size: int = 128, category: str = 'bedroom'
                        ) -> tuple[np.ndarray, np.ndarray]:
    """One (H, W, 3) uint8 image and its (H, W) float32 depth map in metres."""
    scene = render_depth_scene(rng, size, category)
    return scene['image'], scene['depth']


def make_depth_dataset(root: str | Path, n_train: int = 200, n_test: int = 50, size: int = 128,
                       seed: int = 0) -> Path:
    """Write the set under ``root`` (idempotent: an existing complete split is left as is).

    Sample ``i`` of a split is ``SHAPES_DEPTH_CATEGORIES[i % 2]``, named ``<category>_<i:05d>``; the train
    split uses ``seed``, the test split ``seed + 1``.
    """
    root = Path(root)
    for split, count, split_seed in (('train', n_train, seed), ('test', n_test, seed + 1)):
        img_dir, ann_dir = root / 'images' / split, root / 'annotations' / split
        if img_dir.is_dir() and ann_dir.is_dir() and len(list(img_dir.glob('*.jpg'))) == count and \
                len(list(ann_dir.glob('*.png'))) == count:
            continue
        img_dir.mkdir(parents=True, exist_ok=True)
        ann_dir.mkdir(parents=True, exist_ok=True)
        rng = np.random.default_rng(split_seed)
        for i in range(count):
            category = SHAPES_DEPTH_CATEGORIES[i % len(SHAPES_DEPTH_CATEGORIES)]
            image, depth = render_depth_sample(rng, size, category)
            name = f'{category}_{i:05d}'
            Image.fromarray(image).save(img_dir / f'{name}.jpg', quality=95)
            millimetres = np.clip(np.round(depth.astype(np.float64) * 1000), 0, 65535).astype(np.uint16)
            Image.fromarray(millimetres).save(ann_dir / f'{name}.png')
    return root

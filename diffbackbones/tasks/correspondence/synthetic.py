"""The embedded correspondence set: pairs of shapes images whose target is a known similarity transform
of the source, written in SPair-71k's layout, so demos and tests need no download.

Each pair shows one object instance (a convex polygon of its category, painted with a texture tied to
the object's own frame, so every corner looks different) on two new background textures. The target
object is the source object moved by a random similarity transform: rotation (up to 72 degrees), scale,
translation and, in a third of the pairs, a mirror flip. Keypoints are the polygon's corners and its centre.

    root/JPEGImages/<category>/<name>.jpg
    root/ImageAnnotation/<category>/<name>.json
    root/PairAnnotation/{trn,val,test}/<id>-<src>-<trg>:<category>.json

The pair files carry SPair-71k's fields (``src_imname``, ``trg_imname``, ``category``, ``src_kps``,
``trg_kps``, ``src_bndbox``, ``trg_bndbox``, ``src_imsize``, ``trg_imsize``, ``mirror``) plus
``transform``: the 2 x 3 matrix taking source pixels to target pixels (x, y order).

    python tools/make_correspondence.py data/shapes-pairs
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
from PIL import Image

__all__ = ['CATEGORIES', 'make_correspondence_dataset', 'render_object', 'object_mask', 'similarity_matrix',
           'background_texture', 'apply_matrix']

# Canonical convex outlines (x, y), centred near 0, radius about 1. Irregular on purpose: no symmetry maps
# one corner onto another.
CATEGORIES = {
    'triangle': np.array([[0.0, -1.0], [0.95, 0.7], [-0.7, 0.55]]),
    'trapezoid': np.array([[-0.55, -0.75], [0.45, -0.75], [0.95, 0.6], [-0.95, 0.7]]),
    'pentagon': np.array([[0.0, -1.0], [0.9, -0.25], [0.6, 0.85], [-0.55, 0.8], [-0.95, -0.35]]),
}
SPLITS = {'trn': 0, 'val': 1, 'test': 2}
# Objects stand within +-36 degrees of upright in every image (SPair-71k's objects are mostly upright too),
# so the relative rotation of a pair is up to 72 degrees.
MAX_ROTATION = math.pi / 5


def similarity_matrix(scale: float, angle: float, flip: bool, shift) -> np.ndarray:
    """2 x 3 matrix: x' = s R(angle) F x + shift, F mirroring x when ``flip``."""
    c, s = math.cos(angle), math.sin(angle)
    linear = scale * np.array([[c, -s], [s, c]]) @ np.diag([-1.0 if flip else 1.0, 1.0])
    return np.concatenate([linear, np.asarray(shift, float)[:, None]], axis=1)


def apply_matrix(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    """(N, 2) points moved by a 2 x 3 affine matrix."""
    return points @ matrix[:, :2].T + matrix[:, 2]


def background_texture(h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    """(h, w, 3) float RGB in about [0, 255]: a tinted grey of two sine blotches and fine noise."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    blotch = sum(np.sin(xx / rng.uniform(6, 18) + rng.uniform(0, 6)) * np.sin(yy / rng.uniform(6, 18) + rng.uniform(0, 6))
                 for _ in range(2)) / 2
    grey = 0.5 + 0.3 * blotch + 0.08 * rng.standard_normal((h, w))
    return grey[..., None] * rng.uniform(60, 200, 3)


def _object_frame(matrix: np.ndarray, h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """The object-frame coordinates (u, v) of every pixel centre of an h x w image."""
    inverse = np.linalg.inv(np.vstack([matrix, [0, 0, 1]]))[:2]
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    u, v = np.moveaxis(apply_matrix(inverse, np.stack([xx + 0.5, yy + 0.5], -1)), -1, 0)  # pixel centres
    return u, v


def _inside(outline: np.ndarray, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    inside = np.ones(u.shape, bool)
    for a, b in zip(outline, np.roll(outline, -1, axis=0)):  # convex, clockwise in image coordinates
        inside &= (b[0] - a[0]) * (v - a[1]) - (b[1] - a[1]) * (u - a[0]) >= 0
    return inside


def object_mask(outline: np.ndarray, matrix: np.ndarray, h: int, w: int) -> np.ndarray:
    """(h, w) bool: the pixels ``render_object`` paints for this outline and placement."""
    return _inside(outline, *_object_frame(matrix, h, w))


def render_object(image: np.ndarray, outline: np.ndarray, matrix: np.ndarray, colours: np.ndarray,
                  period: float) -> np.ndarray:
    """Paint the object (canonical ``outline`` placed by ``matrix``) onto ``image`` (H, W, 3), in place.

    The texture lives in the object's frame (stripes along its x axis, a colour ramp along y), so the
    rendered target is exactly the source object moved by the relative transform.
    """
    h, w = image.shape[:2]
    u, v = _object_frame(matrix, h, w)
    inside = _inside(outline, u, v)
    ramp = np.clip((v + 1) / 2, 0, 1)[..., None]
    stripes = 0.55 + 0.45 * (np.sin(2 * np.pi * u / period) > 0)[..., None]
    paint = ((1 - ramp) * colours[0] + ramp * colours[1]) * stripes
    image[inside] = paint[inside]
    return image


def _place(rng: np.random.Generator, outline: np.ndarray, h: int, w: int, flip: bool) -> np.ndarray:
    """A random similarity that keeps the whole object (and its keypoints) well inside an h x w image."""
    scale = rng.uniform(0.22, 0.34) * min(h, w)
    angle = rng.uniform(-MAX_ROTATION, MAX_ROTATION)
    placed = apply_matrix(similarity_matrix(scale, angle, flip, (0, 0)), outline)
    low, high = -placed.min(0) + 4, np.array([w, h]) - placed.max(0) - 4
    return similarity_matrix(scale, angle, flip, rng.uniform(low, high))


def _image_record(name: str, category: str, kps: np.ndarray, bbox: list[int], w: int, h: int) -> dict:
    return dict(filename=f'{name}.jpg', category=category, image_width=w, image_height=h, image_depth=3,
                bndbox=bbox, kps={str(i): [int(x), int(y)] for i, (x, y) in enumerate(kps)})


def make_correspondence_dataset(root: str | Path, n_train: int = 150, n_val: int = 30, n_test: int = 30,
                                seed: int = 0) -> Path:
    """Write the set under ``root`` (idempotent: a complete existing set is left as it is)."""
    root = Path(root)
    counts = {'trn': n_train, 'val': n_val, 'test': n_test}
    if all(len(list((root / 'PairAnnotation' / split).glob('*.json'))) == n for split, n in counts.items()):
        return root
    names = sorted(CATEGORIES)
    pair_id = 0
    for split, count in counts.items():
        rng = np.random.default_rng([seed, SPLITS[split]])
        out = root / 'PairAnnotation' / split
        out.mkdir(parents=True, exist_ok=True)
        for i in range(count):
            pair_id += 1
            category = names[i % len(names)]
            outline = CATEGORIES[category]
            keypoints = np.concatenate([outline, outline.mean(0, keepdims=True)])
            colours = rng.uniform(30, 255, (2, 3))
            period = rng.uniform(0.25, 0.45)
            mirror = bool(rng.random() < 1 / 3)
            record = {}
            for side, flip in (('src', False), ('trg', mirror)):
                h, w = (int(v) for v in rng.integers(96, 161, 2))
                matrix = _place(rng, outline, h, w, flip)
                image = render_object(background_texture(h, w, rng), outline, matrix, colours, period)
                name = f'{split}_{pair_id:05d}_{side}'
                kps = np.clip(np.round(apply_matrix(matrix, keypoints) - 0.5), 0, [w - 1, h - 1]).astype(int)
                corners = apply_matrix(matrix, outline)
                bbox = [int(math.floor(corners[:, 0].min())), int(math.floor(corners[:, 1].min())),
                        int(math.ceil(corners[:, 0].max())), int(math.ceil(corners[:, 1].max()))]
                (root / 'JPEGImages' / category).mkdir(parents=True, exist_ok=True)
                Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).save(
                    root / 'JPEGImages' / category / f'{name}.jpg', quality=95)
                (root / 'ImageAnnotation' / category).mkdir(parents=True, exist_ok=True)
                (root / 'ImageAnnotation' / category / f'{name}.json').write_text(
                    json.dumps(_image_record(name, category, kps, bbox, w, h)))
                record.update({f'{side}_imname': f'{name}.jpg', f'{side}_kps': kps.tolist(), f'{side}_bndbox': bbox,
                               f'{side}_imsize': [w, h, 3], f'{side}_matrix': matrix})
            # The renderer places pixel (i, j) at (j + 0.5, i + 0.5); the stored transform acts on pixel
            # indices (x, y) as the keypoints are written: trg ~ transform @ (x, y, 1), up to rounding.
            src_m, trg_m = record.pop('src_matrix'), record.pop('trg_matrix')
            to_centre = np.array([[1, 0, 0.5], [0, 1, 0.5], [0, 0, 1]])
            relative = (np.linalg.inv(to_centre) @ np.vstack([trg_m, [0, 0, 1]]) @
                        np.linalg.inv(np.vstack([src_m, [0, 0, 1]])) @ to_centre)
            record.update(category=category, mirror=int(mirror), transform=relative[:2].round(6).tolist(),
                          pair_id=pair_id)
            src, trg = record['src_imname'][:-4], record['trg_imname'][:-4]
            (out / f'{pair_id:06d}-{src}-{trg}:{category}.json').write_text(json.dumps(record))
    return root

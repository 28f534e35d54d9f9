"""The embedded geometric set: textured shapes scenes in HPatches' layout, warped by known homographies.

Each sequence is one scene: a background texture with shapes painted on it (the semantic set's objects,
whose stripes and colour ramps give corners and blobs for a detector). The scene is drawn on a canvas
larger than the images, so that every image is filled by it with no empty border:

- image 1 is the canvas' centre;
- a viewpoint sequence (``v_*``) sees it through homographies that move the four corners of that window by
  up to ``MAX_CORNER_SHIFT`` x k / 5 of the margin (image k, k = 2..6: harder as k grows, as in HPatches);
  ``H_1_k`` = G_k G_1^-1, exact by construction (both G are the warps the images were drawn with);
- an illumination sequence (``i_*``) keeps image 1's geometry (``H_1_k`` is the identity) and changes its
  light: a gain, a gamma and a colour cast, drawn at random and stronger as k grows.

    root/{i_000,v_000,...}/{1..6}.ppm, H_1_{2..6}
"""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from ..synthetic import CATEGORIES, background_texture, render_object, similarity_matrix

__all__ = ['make_geometric_dataset', 'MAX_CORNER_SHIFT']

MAX_CORNER_SHIFT = 0.9  # of the margin, at image 6
SHAPES_PER_SCENE = 14


def _scene(h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    canvas = background_texture(h, w, rng)
    outlines = list(CATEGORIES.values())
    for _ in range(SHAPES_PER_SCENE):
        scale = rng.uniform(0.06, 0.16) * min(h, w)
        matrix = similarity_matrix(scale, rng.uniform(-np.pi, np.pi), bool(rng.random() < 0.5),
                                   rng.uniform([0, 0], [w, h]))
        render_object(canvas, outlines[rng.integers(len(outlines))], matrix, rng.uniform(20, 255, (2, 3)),
                      rng.uniform(0.2, 0.5))
    return np.clip(canvas, 0, 255).astype(np.uint8)


def _window(w: int, h: int) -> np.ndarray:
    return np.array([[0, 0], [w - 1, 0], [w - 1, h - 1], [0, h - 1]], np.float64)


def _light(image: np.ndarray, strength: float, rng: np.random.Generator) -> np.ndarray:
    gain = np.exp(rng.uniform(-0.6, 0.5) * strength)
    gamma = np.exp(rng.uniform(-0.5, 0.5) * strength)
    cast = np.exp(rng.uniform(-0.3, 0.3, 3) * strength)
    lit = gain * cast * (image / 255.0) ** gamma
    return np.clip(np.round(lit * 255), 0, 255).astype(np.uint8)


def _write_homography(path: Path, H: np.ndarray) -> None:
    path.write_text(''.join(' '.join(f'{v:.12g}' for v in row) + '\n' for row in H))


def make_geometric_dataset(root: str | Path, illumination: int = 6, viewpoint: int = 6,
                           size: tuple[int, int] = (192, 144),
                           seed: int = 0) -> Path:
    """Write ``illumination`` i_* and ``viewpoint`` v_* sequences of ``size`` = (w, h) images under ``root``
    (idempotent: a complete set is left as it is). Returns ``root``."""
    root = Path(root)
    names = [f'i_{i:03d}' for i in range(illumination)] + [f'v_{i:03d}' for i in range(viewpoint)]
    if all((root / name / 'H_1_6').is_file() and (root / name / '6.ppm').is_file() for name in names):
        return root
    w, h = size
    margin = max(8, min(w, h) // 5)
    for number, name in enumerate(names):
        rng = np.random.default_rng([seed, number])
        canvas = _scene(h + 2 * margin, w + 2 * margin, rng)
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        first = np.array([[1, 0, -margin], [0, 1, -margin], [0, 0, 1]], np.float64)  # canvas -> image 1
        reference = cv2.warpPerspective(canvas, first, (w, h), flags=cv2.INTER_LINEAR)
        Image.fromarray(reference).save(folder / '1.ppm')
        for k in range(2, 7):
            if name.startswith('i_'):
                image, H = _light(reference, (k - 1) / 5, rng), np.eye(3)
            else:
                shift = rng.uniform(-1, 1, (4, 2)) * margin * MAX_CORNER_SHIFT * (k - 1) / 5
                seen = _window(w, h) + margin + shift  # the canvas quadrilateral image k shows
                warp = cv2.getPerspectiveTransform(seen.astype(np.float32), _window(w, h).astype(np.float32))
                image = cv2.warpPerspective(canvas, warp, (w, h), flags=cv2.INTER_LINEAR)
                H = warp @ np.linalg.inv(first)
            Image.fromarray(image).save(folder / f'{k}.ppm')
            _write_homography(folder / f'H_1_{k}', H / H[2, 2])
    return root

"""The embedded temporal set: videos of moving, turning, occluding shapes, in DAVIS-2017's layout with their
masks, and in JHMDB's layout with keypoint tracks (one shape's corners and centre).

Each video has ``OBJECTS`` textured shapes (the semantic set's, texture tied to each object's frame) over a
background texture. Each object moves along a straight line and turns steadily between two random poses;
later objects are drawn over earlier ones, so they occlude them, and the last one crosses the frame. The
masks are the visible pixels of each object (ids 1, 2, 3 in drawing order). The tracked "person" of the
JHMDB layout is object 1, a pentagon: its 5 corners and its centre are the joints (positions given even where
another object hides them, as JHMDB's are). Ground truth is exact by construction.

Frames are 228 x 128 by default, about DAVIS' 16:9 (854 x 480).

    root/JPEGImages/480p/<video>/00000.jpg, root/Annotations/480p/<video>/00000.png, root/ImageSets/2017/val.txt
    root/jhmdb/Rename_Images/shapes/<video>/00001.png, root/jhmdb/joint_positions/shapes/<video>/joint_positions.mat
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from ..synthetic import CATEGORIES, apply_matrix, background_texture, object_mask, render_object, similarity_matrix
from .davis import write_labels

__all__ = ['make_temporal_dataset', 'OBJECTS']

OBJECTS = 3
TRACKED = 'pentagon'


def _pose(rng: np.random.Generator, h: int, w: int, scale: float, side: int | None) -> tuple[float, np.ndarray]:
    """An angle and a centre keeping an object of this scale inside the frame (at one side when asked)."""
    low, high = np.array([scale, scale]) + 2, np.array([w, h]) - scale - 2
    centre = rng.uniform(low, high)
    if side is not None:
        centre[0] = low[0] if side == 0 else high[0]
    return rng.uniform(-0.8, 0.8), centre


def make_temporal_dataset(root: str | Path, videos: int = 3, frames: int = 10, size: tuple[int, int] = (228, 128),
                          seed: int = 0, static: bool = False) -> Path:
    """Write ``videos`` videos of ``frames`` frames of ``size`` = (w, h) under ``root`` in both layouts
    (idempotent: a complete set is left as it is); ``static`` keeps every object still. Returns ``root``."""
    from scipy.io import savemat  # JHMDB's joint files are MATLAB files

    root = Path(root)
    names = [f'shapes_{i:03d}' for i in range(videos)]
    listing = root / 'ImageSets' / '2017' / 'val.txt'
    jhmdb = root / 'jhmdb'
    if listing.is_file() and all((jhmdb / 'joint_positions' / 'shapes' / n / 'joint_positions.mat').is_file()
                                 for n in names):
        return root
    w, h = size
    for number, name in enumerate(names):
        rng = np.random.default_rng([seed, number])
        background = background_texture(h, w, rng)
        kinds = [TRACKED] + list(rng.choice(sorted(CATEGORIES), OBJECTS - 1))
        paths = []
        for i, kind in enumerate(kinds):
            scale = rng.uniform(0.16, 0.24) * min(h, w)
            crossing = i == OBJECTS - 1  # the top object crosses the frame
            side = int(rng.integers(2)) if crossing else None
            start = _pose(rng, h, w, scale, side)
            end = start if static else _pose(rng, h, w, scale, None if side is None else 1 - side)
            paths.append((CATEGORIES[kind], scale, start, end, rng.uniform(30, 255, (2, 3)), rng.uniform(0.25, 0.45)))
        folders = {key: root / sub / name
                   for key, sub in (('frames', 'JPEGImages/480p'), ('labels', 'Annotations/480p'))}
        folders['jhmdb'] = jhmdb / 'Rename_Images' / 'shapes' / name
        for folder in folders.values():
            folder.mkdir(parents=True, exist_ok=True)
        joints = []
        for t in range(frames):
            a = t / max(frames - 1, 1)
            image, labels = background.copy(), np.zeros((h, w), np.uint8)
            for obj, (outline, scale, (angle0, centre0), (angle1, centre1), colours, period) in enumerate(paths, 1):
                matrix = similarity_matrix(scale, (1 - a) * angle0 + a * angle1, False, (1 - a) * centre0 + a * centre1)
                render_object(image, outline, matrix, colours, period)
                labels[object_mask(outline, matrix, h, w)] = obj
                if obj == 1:  # pixel indices: the renderer puts pixel (i, j) at (j + 0.5, i + 0.5)
                    joints.append(apply_matrix(matrix, np.concatenate([outline, outline.mean(0, keepdims=True)])) - 0.5)
            rgb = np.clip(image, 0, 255).astype(np.uint8)
            Image.fromarray(rgb).save(folders['frames'] / f'{t:05d}.jpg', quality=95)
            write_labels(folders['labels'] / f'{t:05d}.png', labels)
            Image.fromarray(rgb).save(folders['jhmdb'] / f'{t + 1:05d}.png')
        mat = jhmdb / 'joint_positions' / 'shapes' / name
        mat.mkdir(parents=True, exist_ok=True)
        savemat(str(mat / 'joint_positions.mat'), {'pos_img': np.stack(joints).transpose(2, 1, 0) + 1})  # 1-based
    listing.parent.mkdir(parents=True, exist_ok=True)
    listing.write_text(''.join(f'{n}\n' for n in names))
    return root

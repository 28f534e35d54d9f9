"""Pictures of depth maps: a colour map, and input | ground truth | prediction panels.

    from diffbackbones.integrations.mmseg.depth_pictures import save_depth_panels
    save_depth_panels([(image, gt, pred), ...], 'work_dirs/depth/panels.png', max_depth=10.0)

Depths are metres; ground truth and prediction share one colour scale (0 .. ``max_depth``, ``magma``:
near is dark purple, far is pale yellow); invalid depths (NaN, inf, <= 0) are drawn black.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
from PIL import Image

from diffbackbones.utils.pictures import GAP, side_by_side, stack_rows

__all__ = ['colorize_depth', 'depth_panel', 'save_depth_panels']

_CMAP = 'magma'


def _lut() -> np.ndarray:
    import matplotlib
    return (matplotlib.colormaps[_CMAP](np.linspace(0.0, 1.0, 256))[:, :3] * 255).round().astype(np.uint8)


def colorize_depth(depth, max_depth: float = 10.0) -> np.ndarray:
    """(H, W) depth in metres -> (H, W, 3) uint8; 0 .. ``max_depth`` spans the colour map, invalid is black."""
    depth = np.asarray(depth, dtype=np.float64)
    if depth.ndim == 3 and depth.shape[0] == 1:
        depth = depth[0]
    if depth.ndim != 2:
        raise ValueError(f'depth must be (H, W); got shape {depth.shape}')
    valid = np.isfinite(depth) & (depth > 0)
    # Start at 0.15 of the map so the nearest valid depth is still clearly not black (= invalid).
    t = np.clip(np.where(valid, depth, 0.0) / max_depth, 0.0, 1.0)
    index = np.round((0.15 + 0.85 * t) * 255).astype(np.int64)
    rgb = _lut()[index]
    rgb[~valid] = 0
    return rgb


def _resize_depth(depth: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    if depth.shape == shape:
        return depth
    resized = Image.fromarray(depth.astype(np.float32), mode='F').resize((shape[1], shape[0]), Image.NEAREST)
    return np.asarray(resized, dtype=np.float32)


def depth_panel(image, gt, pred, max_depth: float = 10.0, gap: int = GAP) -> np.ndarray:
    """Input | ground truth | prediction side by side: (H, 3W + 2 * gap, 3) uint8, white gaps.

    ``gt`` and ``pred`` are resized (nearest) to the image's size if they differ, and share one colour scale.
    """
    image = np.asarray(image)
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=2)
    image = image[..., :3].astype(np.uint8)
    shape = image.shape[:2]
    columns = [image]
    for depth in (gt, pred):
        depth = np.asarray(depth, dtype=np.float32)
        if depth.ndim == 3 and depth.shape[0] == 1:
            depth = depth[0]
        columns.append(colorize_depth(_resize_depth(depth, shape), max_depth))
    return side_by_side(columns, gap=gap)


def save_depth_panels(samples: Iterable[Sequence], path: str | Path, max_depth: float = 10.0,
                      gap: int = GAP) -> Path:
    """Stack ``depth_panel(image, gt, pred)`` of each ``(image, gt, pred)`` vertically and write a PNG."""
    panels = [depth_panel(image, gt, pred, max_depth, gap) for image, gt, pred in samples]
    if not panels:
        raise ValueError('save_depth_panels needs at least one (image, gt, pred) sample')
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(stack_rows(panels, gap)).save(path)
    return path
